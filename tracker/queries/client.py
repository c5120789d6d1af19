"""``FrameTrackingQueries``: the pool, ``connect()`` and the queries, which
check their parameters (``checks``), run their statements (``statements``) and
shape the rows (``shaping``, ``journey``)."""

from __future__ import annotations

from collections.abc import Generator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from tracker.adapters.postgres import call_db, connect_pool
from tracker.config import DEFAULT_TRACE_URL_TEMPLATE, Settings
from tracker.errors import NotFound
from tracker.queries import shaping, statements
from tracker.queries.checks import (
    check_camera_id,
    check_frame_id,
    check_hours,
    check_limit,
    check_threshold,
    check_time_range,
    check_trace_id,
)
from tracker.queries.journey import frame_journey
from tracker.queries.shaping import TraceLink


class FrameTrackingQueries:
    """Read-only queries over the projections and the event store.

    ``connect()`` works both ways, as asyncpg's pools do::

        q = await FrameTrackingQueries.connect()        # close with await q.close()
        async with FrameTrackingQueries.connect() as q:  # closed on exit
            journey = await q.get_frame_journey(frame_id)

    Without ``settings`` they are read from the ``TRACKER_*`` variables.
    """

    def __init__(self, pool: asyncpg.Pool, trace_url_template: str = DEFAULT_TRACE_URL_TEMPLATE) -> None:
        self._pool = pool
        self.trace_url_template = trace_url_template

    @classmethod
    def connect(cls, settings: Settings | None = None) -> _Connecting:
        return _Connecting(cls, settings)

    @classmethod
    async def _open(cls, settings: Settings | None) -> FrameTrackingQueries:
        settings = settings or Settings.from_env()

        async def init(conn: asyncpg.Connection) -> None:
            if await conn.fetchval(statements.IS_READ_ROLE_MEMBER):
                await conn.execute(statements.SET_READ_ROLE)

        pool = await connect_pool(
            settings.database,
            dsn=settings.queries.database_url.get() or None,
            min_size=0,
            server_settings={
                "default_transaction_read_only": "on",
                "statement_timeout": "30000",
                "application_name": "tracker-queries",
            },
            init=init,
        )
        return cls(pool, settings.queries.trace_url_template)

    async def close(self) -> None:
        await self._pool.close()

    async def __aenter__(self) -> FrameTrackingQueries:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def trace_link(self, trace_id: str | None) -> TraceLink | None:
        if not trace_id:
            return None
        return TraceLink(trace_id, self.trace_url_template.format(trace_id=trace_id))

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async def run() -> list[asyncpg.Record]:
            async with self._pool.acquire() as conn:
                return await conn.fetch(sql, *args)

        return await call_db(run)

    async def ping(self) -> None:
        """One round trip to the database (readiness checks); raises if it cannot be reached."""
        await self._fetch("SELECT 1")

    async def camera_exists(self, camera_id: str) -> bool:
        check_camera_id(camera_id)
        rows = await self._fetch(statements.CAMERA_EXISTS, camera_id)
        return bool(rows[0]["exists"])

    async def get_frame_journey(self, frame_id: str) -> dict[str, Any]:
        check_frame_id(frame_id)

        async def run() -> tuple[Any, list[asyncpg.Record], list[asyncpg.Record], list[asyncpg.Record]]:
            async with (
                self._pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                # One snapshot: frame row, events, stages and anomalies agree with each other.
                frame = await conn.fetchrow(statements.JOURNEY_FRAME, frame_id)
                anomalies = []
                if frame is not None:
                    anomalies = await conn.fetch(
                        statements.JOURNEY_ANOMALIES, frame_id, frame["camera_id"], frame["frame_timestamp"]
                    )
                return (
                    frame,
                    await conn.fetch(statements.JOURNEY_EVENTS, frame_id),
                    await conn.fetch(statements.JOURNEY_STAGES, frame_id),
                    anomalies,
                )

        frame, events, stages, anomalies = await call_db(run)
        if frame is None and not events:
            raise NotFound(f"frame {frame_id!r} not found")
        return frame_journey(frame_id, frame, events, stages, self.trace_link, anomalies)

    async def find_slow_frames(
        self, threshold_ms: float, hours: float, camera_id: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        check_threshold(threshold_ms)
        check_hours(hours)
        check_limit(limit)
        if camera_id is not None:
            check_camera_id(camera_id)
        since = datetime.now(UTC) - timedelta(hours=hours)
        rows = await self._fetch(statements.SLOW, since, threshold_ms, camera_id, limit)
        return shaping.slow_frames(rows, self.trace_link)

    async def get_failure_analysis(self, hours: float) -> dict[str, Any]:
        check_hours(hours)
        since = _since_hour(hours)
        rows = await self._fetch(statements.FAILURES, since)
        stage_rows = await self._fetch(statements.STAGE_FAILURES, since)
        frames = await self._fetch(statements.FRAMES_PER_CAMERA, since)
        per_camera = {r["camera_id"]: int(r["frames"]) for r in frames}
        return shaping.failure_analysis(hours, since, rows, stage_rows, per_camera, self.trace_link)

    async def get_camera_stats(self, hours: float) -> list[dict[str, Any]]:
        check_hours(hours)
        rows = await self._fetch(statements.CAMERA_STATS, _since_hour(hours))
        return shaping.camera_stats(rows, hours)

    async def get_stage_performance(self, hours: float) -> list[dict[str, Any]]:
        check_hours(hours)
        rows = await self._fetch(statements.STAGE_STATS, _since_hour(hours))
        return shaping.stage_performance(rows)

    async def search_frames_by_prefix(self, prefix: str, limit: int = 50) -> list[dict[str, Any]]:
        """Frames whose id starts with ``prefix``, in id order (an exact id comes first)."""
        check_frame_id(prefix)
        check_limit(limit)
        rows = await self._fetch(statements.SEARCH_PREFIX, prefix, _prefix_end(prefix), limit)
        return shaping.frame_list(rows, self.trace_link)

    async def suggest_frame_ids(self, frame_id: str, limit: int = 5) -> list[str]:
        """Stored ids close to ``frame_id``: its neighbours in byte order, which share
        its longest prefix (a typo near the end, a truncated or over-long id)."""
        check_frame_id(frame_id)
        check_limit(limit)
        rows = await self._fetch(statements.NEIGHBOUR_IDS, frame_id, limit)
        return shaping.closest_ids(frame_id, (r["frame_id"] for r in rows), limit)

    async def search_frames_by_trace_id(self, trace_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The frames whose events carry ``trace_id`` (any case), latest capture first."""
        trace_id = check_trace_id(trace_id)
        check_limit(limit)
        rows = await self._fetch(statements.SEARCH_TRACE, trace_id, limit)
        return shaping.frame_list(rows, self.trace_link)

    async def search_frames_by_camera(
        self, camera_id: str, since: datetime, until: datetime, limit: int = 100
    ) -> list[dict[str, Any]]:
        """A camera's frames captured in ``[since, until)``, latest first."""
        check_camera_id(camera_id)
        check_time_range(since, until)
        check_limit(limit)
        rows = await self._fetch(statements.SEARCH_CAMERA, camera_id, since, until, limit)
        return shaping.frame_list(rows, self.trace_link)

    async def find_failed_frames(self, hours: float, limit: int = 50) -> list[dict[str, Any]]:
        """Frames captured in the last ``hours`` that failed, latest failure first."""
        check_hours(hours)
        check_limit(limit)
        since = datetime.now(UTC) - timedelta(hours=hours)
        rows = await self._fetch(statements.RECENT_FAILED, since, limit)
        return shaping.frame_list(rows, self.trace_link)

    async def find_anomalies(self, hours: float, limit: int = 100) -> dict[str, Any]:
        """Anomaly episodes of the last ``hours`` (those still going on, or that
        ended in the window), latest first, with the count of each kind."""
        check_hours(hours)
        check_limit(limit)
        since = datetime.now(UTC) - timedelta(hours=hours)
        rows = await self._fetch(statements.ANOMALIES, since, limit)
        return shaping.anomalies(hours, since, rows, self.trace_link)

    async def get_baselines(self, camera_id: str, at: datetime) -> dict[str, Any]:
        """p50/p95 in the hour holding ``at``, from the hourly rollups: of the
        camera's total processing time, of every stage's duration on that
        camera, and of every stage's duration on every camera."""
        check_camera_id(camera_id)
        hour = shaping.hour_floor(at.astimezone(UTC))

        async def run() -> tuple[Any, list[asyncpg.Record], list[asyncpg.Record]]:
            async with self._pool.acquire() as conn:
                return (
                    await conn.fetchrow(statements.BASELINE_CAMERA, camera_id, hour),
                    await conn.fetch(statements.BASELINE_CAMERA_STAGES, camera_id, hour),
                    await conn.fetch(statements.BASELINE_STAGES, hour),
                )

        camera, camera_stages, stages = await call_db(run)
        return shaping.baselines(camera_id, hour, camera, camera_stages, stages)


def _prefix_end(prefix: str) -> str:
    """The least string above every string starting with ``prefix`` in byte order
    (UTF-8 keeps code point order): its last character that can grow, grown by one."""
    for i in range(len(prefix) - 1, -1, -1):
        c = ord(prefix[i]) + 1
        if c <= 0x10FFFF:
            if 0xD800 <= c <= 0xDFFF:  # surrogates are no characters in UTF-8
                c = 0xE000
            return prefix[:i] + chr(c)
    return prefix + chr(0x10FFFF)  # only U+10FFFF characters: all but ids that go on with one


def _since_hour(hours: float) -> datetime:
    # The rollups are hourly, so their windows start on the hour.
    return shaping.hour_floor(datetime.now(UTC) - timedelta(hours=hours))


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
