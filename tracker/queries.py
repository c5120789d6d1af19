"""``FrameTrackingQueries``: the read side, for the CLI, the HTTP API and scripts.

Every statement is parameterised and built once. Each query is served by an
index or a rollup (``tests/integration/test_queries.py`` checks the plans):
the journey by ``frame_id`` indexes, windows by ``frame_timestamp`` partitions
and indexes, statistics by the hourly rollups. The pool runs read-only
(``default_transaction_read_only``) and, where the migrations could create it,
as the ``tracker_read`` role.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from tracker.config import Settings
from tracker.db import call_db, connect_pool
from tracker.errors import InvalidQuery, NotFound

MAX_HOURS = 24 * 400
MAX_LIMIT = 1000
_ID_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,256}$")


def check_frame_id(frame_id: str) -> str:
    if not isinstance(frame_id, str) or not _ID_RE.match(frame_id) or not frame_id.strip():
        raise InvalidQuery("frame id must be 1-256 printable characters")
    return frame_id


def check_camera_id(camera_id: str) -> str:
    if not isinstance(camera_id, str) or len(camera_id) > 128 or not _ID_RE.match(camera_id):
        raise InvalidQuery("camera id must be 1-128 printable characters")
    return camera_id


def check_hours(hours: float) -> float:
    if not isinstance(hours, (int, float)) or not 0 < hours <= MAX_HOURS or hours != hours:
        raise InvalidQuery(f"hours must be > 0 and <= {MAX_HOURS}")
    return float(hours)


def check_limit(limit: int) -> int:
    if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidQuery(f"limit must be between 1 and {MAX_LIMIT}")
    return limit


def check_threshold(ms: float) -> float:
    if not isinstance(ms, (int, float)) or not 0 <= ms <= 86_400_000 or ms != ms:
        raise InvalidQuery("threshold_ms must be between 0 and 86400000")
    return float(ms)


def _iso(ts: datetime | None) -> str | None:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z") if ts else None


def _round(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(float(x), nd)


JOURNEY_FRAME = """
SELECT frame_id, frame_timestamp, camera_id, state, captured_at, queued_at,
       processing_started_at, completed_at, failed_at, total_processing_time_ms,
       error_type, error_message, error_stage, metadata, last_trace_id, events_applied,
       last_event_at
FROM frame_metadata WHERE frame_id = $1
ORDER BY frame_timestamp LIMIT 1
"""
JOURNEY_EVENTS = """
SELECT event_id::text AS event_id, event_type, occurred_at, recorded_at, producer, stage,
       attempt, duration_ms, error_type, error_message, trace_id, span_id, topic,
       "partition", "offset", lifecycle_flag, camera_id, frame_timestamp,
       extract(epoch FROM occurred_at - lag(occurred_at) OVER (ORDER BY occurred_at, event_id))
           * 1000.0 AS since_previous_ms
FROM frame_events WHERE frame_id = $1
ORDER BY occurred_at, event_id
LIMIT 1000
"""
JOURNEY_STAGES = """
SELECT stage, attempt, status, started_at, finished_at, duration_ms, error_type, error_message
FROM processing_stages WHERE frame_id = $1
ORDER BY coalesce(started_at, finished_at), stage, attempt
"""
SLOW = """
SELECT m.frame_id, m.camera_id, m.frame_timestamp, m.state, m.total_processing_time_ms,
       m.last_trace_id, s.stage AS slowest_stage, s.duration_ms AS slowest_stage_ms
FROM frame_metadata m
LEFT JOIN LATERAL (
    SELECT stage, duration_ms FROM processing_stages ps
    WHERE ps.frame_id = m.frame_id AND ps.frame_timestamp = m.frame_timestamp
      AND ps.duration_ms IS NOT NULL
    ORDER BY ps.duration_ms DESC LIMIT 1) s ON true
WHERE m.frame_timestamp >= $1 AND m.total_processing_time_ms >= $2
  AND ($3::text IS NULL OR m.camera_id = $3)
ORDER BY m.total_processing_time_ms DESC, m.frame_id
LIMIT $4
"""
# Failed frames come from frame_metadata (the partial index on failed_at keeps
# that to the failed rows); the frames they are a share of come from the hourly
# rollup, which the projection keeps exact, instead of counting every frame of
# the window. Hence the window starts on an hour, as the other rollup reads do.
FAILURES = """
SELECT coalesce(m.error_stage, '(none)') AS stage, m.error_type, m.camera_id,
       count(*) AS failures,
       min(m.failed_at) AS first_seen, max(m.failed_at) AS last_seen,
       (array_agg(m.frame_id ORDER BY m.failed_at DESC))[1] AS sample_frame_id,
       (array_agg(m.last_trace_id ORDER BY m.failed_at DESC))[1] AS sample_trace_id
FROM frame_metadata m
WHERE m.frame_timestamp >= $1 AND m.failed_at IS NOT NULL
GROUP BY 1, 2, 3
ORDER BY failures DESC, stage, m.error_type, m.camera_id
"""
FRAMES_PER_CAMERA = """
SELECT camera_id, sum(frames) AS frames FROM frame_stats_hourly WHERE hour >= $1 GROUP BY camera_id
"""
STAGE_FAILURES = """
SELECT stage, error_type, count(*) AS failures, min(finished_at) AS first_seen,
       max(finished_at) AS last_seen,
       (array_agg(frame_id ORDER BY finished_at DESC))[1] AS sample_frame_id
FROM processing_stages
WHERE frame_timestamp >= $1 AND status IN ('failed', 'conflicted')
GROUP BY 1, 2 ORDER BY failures DESC, stage, error_type
"""
CAMERA_STATS = """
SELECT camera_id, sum(frames) AS frames, sum(captured) AS captured, sum(queued) AS queued,
       sum(processing) AS processing, sum(completed) AS completed, sum(failed) AS failed,
       sum(conflicted) AS conflicted, sum(processing_time_count) AS timed,
       sum(processing_time_sum_ms) AS time_sum_ms,
       tracker_array_sum(processing_time_buckets) AS buckets
FROM frame_stats_hourly WHERE hour >= $1
GROUP BY camera_id ORDER BY camera_id
"""
STAGE_STATS = """
SELECT stage, sum(runs) AS runs, sum(completed) AS completed, sum(failed) AS failed,
       sum(conflicted) AS conflicted, sum(running) AS running,
       sum(duration_count) AS timed, sum(duration_sum_ms) AS time_sum_ms,
       tracker_array_sum(duration_buckets) AS buckets
FROM performance_stats WHERE hour >= $1
GROUP BY stage ORDER BY stage
"""
CAMERA_EXISTS = "SELECT EXISTS (SELECT 1 FROM frame_stats_hourly WHERE camera_id = $1)"


@dataclass(frozen=True)
class TraceLink:
    trace_id: str
    url: str


class FrameTrackingQueries:
    """Read-only queries over the projections and the event store.

    ``connect()`` works both ways, as asyncpg's pools do::

        q = await FrameTrackingQueries.connect()        # close with await q.close()
        async with FrameTrackingQueries.connect() as q:  # closed on exit
            journey = await q.get_frame_journey(frame_id)

    Without ``settings`` they are read from the ``TRACKER_*`` variables.
    """

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self._pool = pool
        self.settings = settings

    @classmethod
    def connect(cls, settings: Settings | None = None) -> _Connecting:
        return _Connecting(cls, settings)

    @classmethod
    async def _open(cls, settings: Settings | None) -> FrameTrackingQueries:
        settings = settings or Settings.from_env()

        async def init(conn: asyncpg.Connection) -> None:
            # Read as tracker_read where the migrations created it.
            if await conn.fetchval(
                "SELECT pg_has_role(current_user, 'tracker_read', 'MEMBER') "
                "FROM pg_roles WHERE rolname = 'tracker_read'"
            ):
                await conn.execute("SET SESSION ROLE tracker_read")

        dsn = settings.query_database_url.get() or None
        pool = await connect_pool(
            settings,
            dsn=dsn,
            min_size=0,
            max_size=settings.database_pool_size,
            server_settings={
                "default_transaction_read_only": "on",
                "statement_timeout": "30000",
                "application_name": "tracker-queries",
            },
            init=init,
        )
        return cls(pool, settings)

    async def close(self) -> None:
        await self._pool.close()

    async def __aenter__(self) -> FrameTrackingQueries:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def trace_link(self, trace_id: str | None) -> TraceLink | None:
        if not trace_id:
            return None
        return TraceLink(trace_id, self.settings.trace_url_template.format(trace_id=trace_id))

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async def run() -> list[asyncpg.Record]:
            async with self._pool.acquire() as conn:
                return await conn.fetch(sql, *args)

        return await call_db(run)

    async def camera_exists(self, camera_id: str) -> bool:
        check_camera_id(camera_id)
        rows = await self._fetch(CAMERA_EXISTS, camera_id)
        return bool(rows[0][0])

    async def get_frame_journey(self, frame_id: str) -> dict[str, Any]:
        check_frame_id(frame_id)

        async def run() -> tuple[Any, list[asyncpg.Record], list[asyncpg.Record]]:
            async with (
                self._pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                # One snapshot: frame row, events and stages agree with each other.
                return (
                    await conn.fetchrow(JOURNEY_FRAME, frame_id),
                    await conn.fetch(JOURNEY_EVENTS, frame_id),
                    await conn.fetch(JOURNEY_STAGES, frame_id),
                )

        frame, events, stages = await call_db(run)
        if frame is None and not events:
            raise NotFound(f"frame {frame_id!r} not found")
        traces: dict[str, dict[str, Any]] = {}
        out_events = []
        for e in events:
            if e["trace_id"] and e["trace_id"] not in traces:
                link = self.trace_link(e["trace_id"])
                assert link is not None
                traces[e["trace_id"]] = {"trace_id": link.trace_id, "url": link.url}
            out_events.append(
                {
                    "event_id": e["event_id"],
                    "event_type": e["event_type"],
                    "occurred_at": _iso(e["occurred_at"]),
                    "recorded_at": _iso(e["recorded_at"]),
                    "since_previous_ms": _round(e["since_previous_ms"]),
                    "producer": e["producer"],
                    "stage": e["stage"],
                    "attempt": e["attempt"],
                    "duration_ms": _round(e["duration_ms"]),
                    "error_type": e["error_type"],
                    "error_message": e["error_message"],
                    "trace_id": e["trace_id"],
                    "span_id": e["span_id"],
                    "lifecycle_flag": e["lifecycle_flag"],
                    "kafka": {"topic": e["topic"], "partition": e["partition"], "offset": e["offset"]},
                }
            )
        first = events[0] if events else None
        out: dict[str, Any] = {
            "frame_id": frame_id,
            "camera_id": frame["camera_id"] if frame else first["camera_id"],  # type: ignore[index]
            "frame_timestamp": _iso(frame["frame_timestamp"] if frame else first["frame_timestamp"]),  # type: ignore[index]
            "state": frame["state"] if frame else None,
            "projected": frame is not None,
            "events": out_events,
            "stages": [
                {
                    "stage": s["stage"],
                    "attempt": s["attempt"],
                    "status": s["status"],
                    "started_at": _iso(s["started_at"]),
                    "finished_at": _iso(s["finished_at"]),
                    "duration_ms": _round(s["duration_ms"]),
                    "error_type": s["error_type"],
                    "error_message": s["error_message"],
                }
                for s in stages
            ],
            "traces": list(traces.values()),
            "anomalies": sorted({e["lifecycle_flag"] for e in events if e["lifecycle_flag"]}),
        }
        if frame is not None:
            out.update(
                {
                    "timestamps": {
                        k: _iso(frame[k])
                        for k in (
                            "captured_at",
                            "queued_at",
                            "processing_started_at",
                            "completed_at",
                            "failed_at",
                        )
                    },
                    "total_processing_time_ms": _round(frame["total_processing_time_ms"]),
                    "error": (
                        {
                            "type": frame["error_type"],
                            "message": frame["error_message"],
                            "stage": frame["error_stage"],
                        }
                        if frame["error_type"]
                        else None
                    ),
                    "metadata": frame["metadata"]
                    if isinstance(frame["metadata"], dict)
                    else __import__("json").loads(frame["metadata"] or "{}"),
                    "events_applied": frame["events_applied"],
                    "trace": (
                        {
                            "trace_id": frame["last_trace_id"],
                            "url": self.settings.trace_url_template.format(trace_id=frame["last_trace_id"]),
                        }
                        if frame["last_trace_id"]
                        else None
                    ),
                }
            )
        return out

    async def find_slow_frames(
        self, threshold_ms: float, hours: float, camera_id: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        check_threshold(threshold_ms)
        check_hours(hours)
        check_limit(limit)
        if camera_id is not None:
            check_camera_id(camera_id)
        since = datetime.now(UTC) - timedelta(hours=hours)
        rows = await self._fetch(SLOW, since, threshold_ms, camera_id, limit)
        return [
            {
                "frame_id": r["frame_id"],
                "camera_id": r["camera_id"],
                "frame_timestamp": _iso(r["frame_timestamp"]),
                "state": r["state"],
                "total_processing_time_ms": _round(r["total_processing_time_ms"]),
                "slowest_stage": r["slowest_stage"],
                "slowest_stage_ms": _round(r["slowest_stage_ms"]),
                "trace_id": r["last_trace_id"],
                "trace_url": self.trace_link(r["last_trace_id"]).url if r["last_trace_id"] else None,  # type: ignore[union-attr]
            }
            for r in rows
        ]

    async def get_failure_analysis(self, hours: float) -> dict[str, Any]:
        check_hours(hours)
        since = _hour_floor(datetime.now(UTC) - timedelta(hours=hours))
        rows = await self._fetch(FAILURES, since)
        stage_rows = await self._fetch(STAGE_FAILURES, since)
        per_camera = {r["camera_id"]: int(r["frames"]) for r in await self._fetch(FRAMES_PER_CAMERA, since)}
        total = sum(per_camera.values())
        failed = sum(int(r["failures"]) for r in rows)
        return {
            "window_hours": hours,
            "since": _iso(since),
            "frames": total,
            "failed_frames": failed,
            "failure_rate": round(failed / total, 6) if total else 0.0,
            "by_stage_error_camera": [
                {
                    "stage": r["stage"],
                    "error_type": r["error_type"],
                    "camera_id": r["camera_id"],
                    "failures": int(r["failures"]),
                    "rate": round(int(r["failures"]) / per_camera[r["camera_id"]], 6)
                    if per_camera.get(r["camera_id"])
                    else None,
                    "first_seen": _iso(r["first_seen"]),
                    "last_seen": _iso(r["last_seen"]),
                    "sample_frame_id": r["sample_frame_id"],
                    "sample_trace_id": r["sample_trace_id"],
                    "sample_trace_url": self.trace_link(r["sample_trace_id"]).url  # type: ignore[union-attr]
                    if r["sample_trace_id"]
                    else None,
                }
                for r in rows
            ],
            "stage_failures": [
                {
                    "stage": r["stage"],
                    "error_type": r["error_type"],
                    "failures": int(r["failures"]),
                    "first_seen": _iso(r["first_seen"]),
                    "last_seen": _iso(r["last_seen"]),
                    "sample_frame_id": r["sample_frame_id"],
                }
                for r in stage_rows
            ],
        }

    async def get_camera_stats(self, hours: float) -> list[dict[str, Any]]:
        check_hours(hours)
        since = _hour_floor(datetime.now(UTC) - timedelta(hours=hours))
        rows = await self._fetch(CAMERA_STATS, since)
        seconds = hours * 3600.0
        return [
            {
                "camera_id": r["camera_id"],
                "frames": int(r["frames"]),
                "throughput_fps": round(int(r["frames"]) / seconds, 4),
                "states": {
                    k: int(r[k])
                    for k in ("captured", "queued", "processing", "completed", "failed", "conflicted")
                },
                "failure_rate": round((int(r["failed"]) + int(r["conflicted"])) / int(r["frames"]), 6)
                if r["frames"]
                else 0.0,
                **_percentiles(r["buckets"], r["timed"], r["time_sum_ms"], "processing_time"),
            }
            for r in rows
        ]

    async def get_stage_performance(self, hours: float) -> list[dict[str, Any]]:
        check_hours(hours)
        since = _hour_floor(datetime.now(UTC) - timedelta(hours=hours))
        rows = await self._fetch(STAGE_STATS, since)
        return [
            {
                "stage": r["stage"],
                "runs": int(r["runs"]),
                "completed": int(r["completed"]),
                "failed": int(r["failed"]),
                "conflicted": int(r["conflicted"]),
                "running": int(r["running"]),
                "failure_rate": round(int(r["failed"]) / int(r["runs"]), 6) if r["runs"] else 0.0,
                **_percentiles(r["buckets"], r["timed"], r["time_sum_ms"], "duration"),
            }
            for r in rows
        ]


def _hour_floor(ts: datetime) -> datetime:
    return ts.replace(minute=0, second=0, microsecond=0)


def _percentiles(buckets: list[int] | None, count: Any, total: Any, prefix: str) -> dict[str, Any]:
    # Import here: percentiles share the projection's bucket bounds, and the
    # projections package depends on tracker, not the reverse. The bounds are
    # repeated in sql/002 (tracker_bucket_bounds) and a test keeps them equal.
    from tracker.buckets import BUCKET_BOUNDS_MS, percentile_from_buckets

    b = list(buckets or [])
    n = int(count or 0)
    return {
        f"{prefix}_count": n,
        f"{prefix}_avg_ms": round(float(total) / n, 3) if n else None,
        f"{prefix}_p50_ms": _round(percentile_from_buckets(b, 0.50)),
        f"{prefix}_p95_ms": _round(percentile_from_buckets(b, 0.95)),
        f"{prefix}_p99_ms": _round(percentile_from_buckets(b, 0.99)),
        "bucket_bounds_ms": list(BUCKET_BOUNDS_MS),
    }


class _Connecting:
    """What ``FrameTrackingQueries.connect()`` returns: await it, or ``async with`` it."""

    def __init__(self, cls: type[FrameTrackingQueries], settings: Settings | None) -> None:
        self._cls = cls
        self._settings = settings
        self._queries: FrameTrackingQueries | None = None

    def __await__(self) -> Generator[Any, None, FrameTrackingQueries]:
        return self._cls._open(self._settings).__await__()

    async def __aenter__(self) -> FrameTrackingQueries:
        self._queries = await self._cls._open(self._settings)
        return self._queries

    async def __aexit__(self, *exc: object) -> None:
        if self._queries is not None:
            queries, self._queries = self._queries, None
            await queries.close()
