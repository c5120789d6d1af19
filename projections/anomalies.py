"""The anomaly detector's PostgreSQL side, run in a projection writer's transaction.

Each batch a writer (the projection worker, or the inline projection) commits
also moves its partitions' watermarks (the latest capture time each has
carried). When the watermark (the least over the partitions that are not idle)
has passed a window's end by the lateness, the writer closes that window: reads
its runs from the generation's ``processing_stages``, has the
:class:`~projections.detector.Detector` judge it, writes the anomalies and the
learned state. All of it is in the batch's transaction, with the checkpoints,
so a crash or a redelivery neither loses nor repeats a window, and a restarted
worker carries on with what was learned.

Two writers may see the watermark pass at once: the detector's row is taken
``FOR UPDATE`` before a window is closed (the second writer then finds it
closed). Runs that arrive after their window closed (later than the lateness)
are not judged; they stay in the projection.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from projections.detector import (
    SLOW_FRAME,
    STAGE_SLOW,
    Detector,
    DetectorConfig,
    Finding,
    StageWindow,
    Window,
    closable,
)
from tracker import metrics

log = logging.getLogger(__name__)

TopicPartitionKey = tuple[str, int]

UPSERT_WATERMARKS = (
    'INSERT INTO anomaly_watermarks AS w (generation, topic, "partition", latest) '
    "SELECT $1, t, p, l FROM unnest($2::text[], $3::int[], $4::timestamptz[]) AS k(t, p, l) "
    'ON CONFLICT (generation, topic, "partition") DO UPDATE SET latest = greatest(w.latest, EXCLUDED.latest)'
)
# The latest of a partition of the stage events' topic that no batch has carried
# yet: it holds the watermark back until one has.
NOT_YET = datetime(1970, 1, 1, tzinfo=UTC)
# The watermark: none while a partition is NOT_YET; else the least
# latest capture time of the partitions within idle seconds of the most advanced
# one (a partition that stopped carrying anything does not hold it back for ever).
SELECT_DETECTOR = (
    "SELECT d.window_s, d.lateness_s, d.next_window, CASE "
    " WHEN EXISTS (SELECT 1 FROM anomaly_watermarks WHERE generation = $1 "
    "  AND latest = '1970-01-01 00:00:00+00') "
    " THEN NULL "
    " ELSE (SELECT min(latest) FROM anomaly_watermarks w WHERE w.generation = $1 AND w.latest >= "
    "  (SELECT max(latest) FROM anomaly_watermarks WHERE generation = $1) - make_interval(secs => $2)) "
    "END AS mark "
    "FROM anomaly_detector d WHERE d.generation = $1"
)
INSERT_DETECTOR = (
    "INSERT INTO anomaly_detector (generation, window_s, lateness_s) VALUES ($1, $2, $3) "
    "ON CONFLICT (generation) DO NOTHING"
)
# FOR UPDATE: two writers never close the same window (the second waits, then
# reads the first one's next window).
LOCK_DETECTOR = "SELECT next_window, state FROM anomaly_detector WHERE generation = $1 FOR UPDATE"
UPDATE_DETECTOR = (
    "UPDATE anomaly_detector SET next_window = $2, state = $3::jsonb, updated_at = now() "
    "WHERE generation = $1"
)
COPY_WATERMARKS = (
    'INSERT INTO anomaly_watermarks AS w (generation, topic, "partition", latest) '
    'SELECT $2, topic, "partition", latest FROM anomaly_watermarks WHERE generation = $1 '
    'ON CONFLICT (generation, topic, "partition") DO UPDATE SET latest = greatest(w.latest, EXCLUDED.latest)'
)


def _ts(epoch: int | float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _epoch(ts: datetime) -> float:
    return ts.timestamp()


class _Sql:
    """The statements that name one generation's tables."""

    def __init__(self, g: int) -> None:
        ps, fm, an = f"processing_stages_g{g}", f"frame_metadata_g{g}", f"anomalies_g{g}"
        self.first_capture = f"SELECT min(frame_timestamp) FROM {ps}"
        bucket = "(floor(extract(epoch FROM frame_timestamp) / $3::int) * $3::int)::bigint"
        self.stage_windows = (
            f"SELECT {bucket} AS w, camera_id, stage, count(*) AS runs, "
            "count(*) FILTER (WHERE status IN ('failed', 'conflicted')) AS failures, "
            "count(duration_ms) FILTER (WHERE status = 'completed') AS timed, "
            "percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) "
            "  FILTER (WHERE status = 'completed') AS p50, "
            "percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) "
            "  FILTER (WHERE status = 'completed') AS p95 "
            f"FROM {ps} WHERE frame_timestamp >= $1 AND frame_timestamp < $2 AND status <> 'running' "
            "GROUP BY 1, 2, 3"
        )
        self.camera_windows = (
            f"SELECT {bucket} AS w, camera_id, count(DISTINCT frame_id) AS frames "
            f"FROM {ps} WHERE frame_timestamp >= $1 AND frame_timestamp < $2 AND status <> 'running' "
            "GROUP BY 1, 2"
        )
        # The frames of slow windows that ran beyond their threshold.
        self.slow_frames = (
            "SELECT s.frame_id, s.frame_timestamp, s.camera_id, s.stage, s.attempt, s.duration_ms, "
            "k.expected, f.last_trace_id "
            f"FROM {ps} s JOIN unnest($3::text[], $4::text[], $5::timestamptz[], $6::float8[], $7::float8[]) "
            "  AS k(cam, st, lo, thr, expected) "
            "ON s.camera_id = k.cam AND s.stage = k.st AND s.frame_timestamp >= k.lo "
            "AND s.frame_timestamp < k.lo + make_interval(secs => $8) AND s.duration_ms > k.thr "
            f"LEFT JOIN {fm} f ON f.frame_id = s.frame_id AND f.frame_timestamp = s.frame_timestamp "
            "WHERE s.frame_timestamp >= $1 AND s.frame_timestamp < $2 AND s.status = 'completed'"
        )
        cols = (
            "kind, camera_id, stage, frame_id, frame_timestamp, attempt, started_at, ended_at, windows, "
            "score, expected, observed, detected_at, trace_id"
        )
        arrays = (
            "$1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::int[], "
            "$7::timestamptz[], $8::timestamptz[], $9::int[], $10::float8[], $11::float8[], $12::float8[], "
            "$13::timestamptz[], $14::text[]"
        )
        # An episode seen again: extended, its peak window's figures kept.
        peak = "EXCLUDED.score > a.score"
        self.upsert = (
            f"INSERT INTO {an} AS a ({cols}) SELECT * FROM unnest({arrays}) "
            "ON CONFLICT (kind, camera_id, stage, frame_id, started_at) DO UPDATE SET "
            "ended_at = greatest(a.ended_at, EXCLUDED.ended_at), windows = a.windows + EXCLUDED.windows, "
            f"expected = CASE WHEN {peak} THEN EXCLUDED.expected ELSE a.expected END, "
            f"observed = CASE WHEN {peak} THEN EXCLUDED.observed ELSE a.observed END, "
            "trace_id = coalesce(a.trace_id, EXCLUDED.trace_id), "
            "score = greatest(a.score, EXCLUDED.score)"
        )
        self.table = an


@dataclass(frozen=True)
class Closed:
    """What closing windows found: the findings, and the slow frames reported."""

    windows: int
    findings: list[Finding]
    frames: int


class AnomalyDetection:
    """The detector of one process's projection writer."""

    def __init__(self, config: DetectorConfig | None = None, *, max_windows: int = 360) -> None:
        self.config = config or DetectorConfig()
        self.max_windows = max_windows
        self._sql: dict[int, _Sql] = {}
        # The detector as the last close left it, with the generation and next
        # window it belongs to: reused when the stored row still says so.
        self._cached: tuple[int, datetime, Detector] | None = None

    def _s(self, g: int) -> _Sql:
        if g not in self._sql:
            self._sql[g] = _Sql(g)
        return self._sql[g]

    async def advance(
        self,
        conn: asyncpg.Connection,
        generation: int,
        marks: Mapping[TopicPartitionKey, datetime],
        *,
        partitions: Collection[TopicPartitionKey] = (),
    ) -> Closed:
        """In the caller's transaction: record the batch's watermarks (the latest
        capture time of each partition of the stage events' topic it carried;
        ``partitions``: every partition of that topic), and close the windows
        they let close (at most ``max_windows`` of them)."""
        # One statement: the batch's marks, and NOT_YET for a partition seen for
        # the first time without one (greatest() keeps what a partition has).
        keys = sorted(set(marks) | set(partitions))
        if keys:
            await conn.execute(
                UPSERT_WATERMARKS,
                generation,
                [t for t, _ in keys],
                [p for _, p in keys],
                [marks.get(k, NOT_YET) for k in keys],
            )
        return await self.close_windows(conn, generation)

    async def close_windows(self, conn: asyncpg.Connection, generation: int) -> Closed:
        c = self.config
        row = await conn.fetchrow(SELECT_DETECTOR, generation, float(c.idle_s))
        if row is None:
            await conn.execute(INSERT_DETECTOR, generation, c.window_s, c.lateness_s)
            row = await conn.fetchrow(SELECT_DETECTOR, generation, float(c.idle_s))
        cfg = DetectorConfig(**{**c.to_json(), "window_s": row["window_s"], "lateness_s": row["lateness_s"]})
        mark = _epoch(row["mark"]) if row["mark"] is not None else None
        start = await self._next_start(conn, generation, row["next_window"], cfg)
        if start is None or not closable(start, mark, cfg):
            return Closed(0, [], 0)
        locked = await conn.fetchrow(LOCK_DETECTOR, generation)
        start = await self._next_start(conn, generation, locked["next_window"], cfg)
        starts = closable(start, mark, cfg)[: self.max_windows] if start is not None else []
        if not starts:
            return Closed(0, [], 0)
        det = self._detector(generation, locked["next_window"], locked["state"], cfg)
        # Mutated below: if this transaction fails, the next attempt reads the stored state.
        self._cached = None
        open_before = dict(det.open)
        windows, p95s = await self.windows(
            conn, generation, starts[0], starts[-1] + cfg.window_s, cfg.window_s
        )
        findings: list[Finding] = []
        by_start = {w.start: w for w in windows}
        for s in starts:
            findings.extend(det.close(by_start.get(s) or Window(s, {}, {}), p95s.get(s)))
        frames = await self._write(conn, generation, findings, starts, cfg)
        nxt = _ts(starts[-1] + cfg.window_s)
        await conn.execute(UPDATE_DETECTOR, generation, nxt, json.dumps(det.to_json()))
        self._cached = (generation, nxt, det)
        _observe(findings, frames, open_before, det.open)
        return Closed(len(starts), findings, len(frames))

    async def _next_start(
        self, conn: asyncpg.Connection, generation: int, next_window: datetime | None, cfg: DetectorConfig
    ) -> int | None:
        if next_window is not None:
            return int(_epoch(next_window))
        first = await conn.fetchval(self._s(generation).first_capture)
        if first is None:
            return None
        return int(_epoch(first) // cfg.window_s) * cfg.window_s

    def _detector(
        self, generation: int, next_window: datetime | None, state: Any, cfg: DetectorConfig
    ) -> Detector:
        cached = self._cached
        if cached is not None and next_window is not None and cached[:2] == (generation, next_window):
            return cached[2]
        data = json.loads(state) if isinstance(state, str) else (state or {})
        det = Detector.from_json(data) if data else Detector()
        det.config = cfg
        return det

    async def windows(
        self, conn: asyncpg.Connection, generation: int, lo: int, hi: int, window_s: int
    ) -> tuple[list[Window], dict[int, dict[tuple[str, str], float]]]:
        """The windows in ``[lo, hi)`` (epoch seconds) as the detector reads them."""
        s = self._s(generation)
        stages: dict[int, dict[tuple[str, str], StageWindow]] = {}
        p95s: dict[int, dict[tuple[str, str], float]] = {}
        for r in await conn.fetch(s.stage_windows, _ts(lo), _ts(hi), window_s):
            w = int(r["w"])
            stages.setdefault(w, {})[(r["camera_id"], r["stage"])] = StageWindow(
                int(r["runs"]), int(r["failures"]), int(r["timed"]), r["p50"]
            )
            if r["p95"] is not None:
                p95s.setdefault(w, {})[(r["camera_id"], r["stage"])] = float(r["p95"])
        frames: dict[int, dict[str, int]] = {}
        for r in await conn.fetch(s.camera_windows, _ts(lo), _ts(hi), window_s):
            frames.setdefault(int(r["w"]), {})[r["camera_id"]] = int(r["frames"])
        out = [Window(w, stages.get(w, {}), frames.get(w, {})) for w in range(lo, hi, window_s)]
        return out, p95s

    async def _write(
        self,
        conn: asyncpg.Connection,
        generation: int,
        findings: list[Finding],
        starts: list[int],
        cfg: DetectorConfig,
    ) -> list[asyncpg.Record]:
        s = self._s(generation)
        slow = [f for f in findings if f.kind == STAGE_SLOW and f.frame_threshold_ms is not None]
        frames: list[asyncpg.Record] = []
        if slow:
            frames = list(
                await conn.fetch(
                    s.slow_frames,
                    _ts(starts[0]),
                    _ts(starts[-1] + cfg.window_s),
                    [f.camera_id for f in slow],
                    [f.stage for f in slow],
                    [_ts(f.window_start) for f in slow],
                    [f.frame_threshold_ms for f in slow],
                    [f.expected for f in slow],
                    float(cfg.window_s),
                )
            )
        # The worst frame of each slow window leads to a trace (the episode's exemplar).
        worst: dict[tuple[str, str, int], asyncpg.Record] = {}
        for r in frames:
            w = int(_epoch(r["frame_timestamp"]) // cfg.window_s) * cfg.window_s
            k = (r["camera_id"], r["stage"], w)
            if k not in worst or r["duration_ms"] > worst[k]["duration_ms"]:
                worst[k] = r
        # One row per episode of this batch (an insert may not touch a row twice).
        episodes: dict[tuple[str, str, str, int], list[Any]] = {}
        for f in findings:
            ek = (f.kind, f.camera_id, f.stage, f.started)
            top = worst.get((f.camera_id, f.stage, f.window_start))
            trace = top["last_trace_id"] if top is not None else None
            e = episodes.get(ek)
            if e is None:
                episodes[ek] = [f, 1, f.window_end, trace]
            else:
                e[1] += 1
                e[2] = max(e[2], f.window_end)
                e[3] = e[3] or trace
                if f.score > e[0].score:
                    e[0] = f
        rows: list[tuple[Any, ...]] = []
        for (kind, cam, stage, started), (f, n, ended, trace) in episodes.items():
            rows.append(
                (
                    kind,
                    cam,
                    stage,
                    "",
                    None,
                    None,
                    _ts(started),
                    _ts(ended),
                    n,
                    f.score,
                    f.expected,
                    f.observed,
                    _ts(started + cfg.window_s + cfg.lateness_s),
                    trace,
                )
            )
        # A frame's stage once (its slowest attempt): one row per frame and stage.
        seen: set[tuple[str, str, str]] = set()
        reported: list[asyncpg.Record] = []
        for r in sorted(frames, key=lambda r: (r["frame_id"], r["stage"], -r["duration_ms"])):
            key = (r["frame_id"], r["stage"], r["camera_id"])
            if key in seen:
                continue
            seen.add(key)
            reported.append(r)
            ts = r["frame_timestamp"]
            w = int(_epoch(ts) // cfg.window_s) * cfg.window_s
            expected = float(r["expected"])
            rows.append(
                (
                    SLOW_FRAME,
                    r["camera_id"],
                    r["stage"],
                    r["frame_id"],
                    ts,
                    r["attempt"],
                    ts,
                    ts,
                    1,
                    round(r["duration_ms"] / expected, 6) if expected > 0 else math.inf,
                    expected,
                    r["duration_ms"],
                    _ts(w + cfg.window_s + cfg.lateness_s),
                    r["last_trace_id"],
                )
            )
        if rows:
            await conn.execute(s.upsert, *[list(col) for col in zip(*rows, strict=True)])
        return reported

    async def catch_up(self, conn: asyncpg.Connection, generation: int, live: int) -> int:
        """A rebuild's pass: take the live generation's watermarks and close every
        window they allow in ``generation``, in order; the windows closed."""
        if live != generation:
            await conn.execute(COPY_WATERMARKS, live, generation)
        closed = 0
        while True:
            done = await self.close_windows(conn, generation)
            closed += done.windows
            if done.windows == 0:
                return closed


def _observe(
    findings: list[Finding],
    frames: list[asyncpg.Record],
    open_before: Mapping[str, int],
    open_after: Mapping[str, int],
) -> None:
    """The metrics: episodes opened and abnormal windows by camera, stage and
    kind, the latest score of each open episode (0 once it ended), slow frames
    with their trace as the exemplar."""
    latest: dict[tuple[str, str, str], float] = {}
    for f in findings:
        labels = (f.camera_id, f.stage, f.kind)
        metrics.anomalous_windows.labels(*labels).inc()
        if f.new:
            metrics.anomalies.labels(*labels).inc()
        latest[labels] = f.score
    for labels, score in latest.items():
        metrics.anomaly_score.labels(*labels).set(score)
    for key in open_before.keys() - open_after.keys():
        kind, cam, stage = key.split("|", 2)
        metrics.anomaly_score.labels(cam, stage, kind).set(0)
    for r in frames:
        trace = r["last_trace_id"]
        metrics.anomalies.labels(r["camera_id"], r["stage"], SLOW_FRAME).inc(
            exemplar={"trace_id": trace} if trace else None
        )
