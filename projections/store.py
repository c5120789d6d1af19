"""PostgreSQL adapter of the ``frames`` projection: one generation's tables.

``apply`` writes one batch in one transaction: the folded frame and stage rows,
the rollup deltas and the checkpoints. Before writing it checks that the stored
checkpoints are the ones this writer expects (optimistic concurrency): a
zombie worker after a rebalance, or a live worker after a rebuild was swapped
in, finds them changed, writes nothing, and re-seeks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg

from projections.fold import (
    FRAME_COUNTERS,
    STAGE_COUNTERS,
    BatchFold,
    FrameRow,
    ProjEvent,
    StageRow,
    frame_contribution,
    rollup_deltas,
    stage_contribution,
)
from tracker.db import call_db
from tracker.errors import CheckpointConflict, GenerationChanged

PROJECTION = "frames"
TopicPartitionKey = tuple[str, int]


def _lock_key(frame_id: str) -> int:
    """Stable signed 64-bit advisory-lock key per frame."""
    return int.from_bytes(hashlib.blake2b(frame_id.encode(), digest_size=8).digest(), "big", signed=True)


FRAME_COLS = (
    "frame_id",
    "frame_timestamp",
    "camera_id",
    "state",
    "captured_at",
    "queued_at",
    "processing_started_at",
    "completed_at",
    "failed_at",
    "total_processing_time_ms",
    "error_type",
    "error_message",
    "error_stage",
    "metadata",
    "last_trace_id",
    "events_applied",
    "last_event_at",
    "completed_event_id",
    "completed_duration_ms",
    "failed_event_id",
    "failed_duration_ms",
    "captured_event_id",
    "trace_event_at",
    "trace_event_id",
    "stage_seen_at",
    "event_ids",
)
STAGE_COLS = (
    "frame_id",
    "frame_timestamp",
    "stage",
    "attempt",
    "camera_id",
    "status",
    "started_at",
    "finished_at",
    "duration_ms",
    "error_type",
    "error_message",
    "completed_event_at",
    "completed_event_id",
    "completed_duration_ms",
    "failed_event_at",
    "failed_event_id",
    "failed_duration_ms",
)


def frame_to_db(r: FrameRow) -> tuple[Any, ...]:
    return (
        r.frame_id,
        r.frame_timestamp,
        r.camera_id,
        r.state,
        r.captured_at,
        r.queued_at,
        r.processing_started_at,
        r.completed_at,
        r.failed_at,
        r.total_processing_time_ms,
        r.error_type,
        r.error_message,
        r.error_stage,
        json.dumps(r.metadata, sort_keys=True),
        r.last_trace_id,
        r.events_applied,
        r.last_event_at,
        r.completed_ev[1] if r.completed_ev else None,
        r.completed_ev[2] if r.completed_ev else None,
        r.failed_ev[1] if r.failed_ev else None,
        r.failed_ev[2] if r.failed_ev else None,
        r.captured_ev[1] if r.captured_ev else None,
        r.trace_ev[0] if r.trace_ev else None,
        r.trace_ev[1] if r.trace_ev else None,
        r.stage_seen_at,
        sorted(r.event_ids),
    )


def frame_from_db(rec: Mapping[str, Any]) -> FrameRow:
    meta = json.loads(rec["metadata"]) if isinstance(rec["metadata"], str) else rec["metadata"]
    return FrameRow(
        frame_id=rec["frame_id"],
        frame_timestamp=rec["frame_timestamp"],
        camera_id=rec["camera_id"],
        captured_at=rec["captured_at"],
        queued_at=rec["queued_at"],
        processing_started_at=rec["processing_started_at"],
        completed_at=rec["completed_at"],
        failed_at=rec["failed_at"],
        completed_ev=(rec["completed_at"], rec["completed_event_id"], rec["completed_duration_ms"])
        if rec["completed_event_id"] is not None
        else None,
        failed_ev=(
            rec["failed_at"],
            rec["failed_event_id"],
            rec["failed_duration_ms"],
            rec["error_type"],
            rec["error_message"],
            rec["error_stage"],
        )
        if rec["failed_event_id"] is not None
        else None,
        captured_ev=(rec["captured_at"], rec["captured_event_id"], tuple(sorted((meta or {}).items())))
        if rec["captured_event_id"] is not None
        else None,
        trace_ev=(rec["trace_event_at"], rec["trace_event_id"], rec["last_trace_id"])
        if rec["trace_event_id"] is not None
        else None,
        last_event_at=rec["last_event_at"],
        stage_seen_at=rec["stage_seen_at"],
        event_ids=frozenset(rec["event_ids"]),
    )


def stage_to_db(r: StageRow) -> tuple[Any, ...]:
    c, f = r.completed_ev, r.failed_ev
    return (
        r.frame_id,
        r.frame_timestamp,
        r.stage,
        r.attempt,
        r.camera_id,
        r.status,
        r.started_at,
        r.finished_at,
        r.duration_ms,
        r.error_type,
        r.error_message,
        c[0] if c else None,
        c[1] if c else None,
        c[2] if c else None,
        f[0] if f else None,
        f[1] if f else None,
        f[2] if f else None,
    )


def stage_from_db(rec: Mapping[str, Any]) -> StageRow:
    c = (
        (rec["completed_event_at"], rec["completed_event_id"], rec["completed_duration_ms"], None, None)
        if rec["completed_event_id"] is not None
        else None
    )
    f = (
        (
            rec["failed_event_at"],
            rec["failed_event_id"],
            rec["failed_duration_ms"],
            rec["error_type"],
            rec["error_message"],
        )
        if rec["failed_event_id"] is not None
        else None
    )
    return StageRow(
        frame_id=rec["frame_id"],
        frame_timestamp=rec["frame_timestamp"],
        stage=rec["stage"],
        attempt=rec["attempt"],
        camera_id=rec["camera_id"],
        started_at=rec["started_at"],
        completed_ev=c,
        failed_ev=f,
    )


@dataclass(frozen=True)
class ApplyResult:
    frames: int
    stages: int
    events: int


class _Statements:
    """SQL for one generation, built once (not per batch)."""

    def __init__(self, g: int) -> None:
        fm, ps = f"frame_metadata_g{g}", f"processing_stages_g{g}"
        fsh, pst = f"frame_stats_hourly_g{g}", f"performance_stats_g{g}"
        self.frame_table, self.stage_table = fm, ps
        fcols = ", ".join(FRAME_COLS)
        scols = ", ".join(STAGE_COLS)
        fset = ", ".join(f"{c} = EXCLUDED.{c}" for c in FRAME_COLS[2:]) + ", updated_at = now()"
        sset = ", ".join(f"{c} = EXCLUDED.{c}" for c in STAGE_COLS[4:]) + ", updated_at = now()"
        self.create_staging = (
            f"CREATE TEMP TABLE IF NOT EXISTS proj_frame_staging (LIKE {fm} INCLUDING DEFAULTS) "
            "ON COMMIT DELETE ROWS; "
            f"CREATE TEMP TABLE IF NOT EXISTS proj_stage_staging (LIKE {ps} INCLUDING DEFAULTS) "
            "ON COMMIT DELETE ROWS"
        )
        self.select_frames = (
            f"SELECT {fcols} FROM {fm} t JOIN unnest($1::text[], $2::timestamptz[]) AS k(id, ts) "
            "ON t.frame_id = k.id AND t.frame_timestamp = k.ts"
        )
        self.select_stages = (
            f"SELECT {scols} FROM {ps} t JOIN unnest($1::text[], $2::timestamptz[]) AS k(id, ts) "
            "ON t.frame_id = k.id AND t.frame_timestamp = k.ts"
        )
        self.upsert_frames = (
            f"INSERT INTO {fm} ({fcols}) SELECT {fcols} FROM proj_frame_staging "
            f"ON CONFLICT (frame_id, frame_timestamp) DO UPDATE SET {fset}"
        )
        self.upsert_stages = (
            f"INSERT INTO {ps} ({scols}) SELECT {scols} FROM proj_stage_staging "
            f"ON CONFLICT (frame_id, frame_timestamp, stage, attempt) DO UPDATE SET {sset}"
        )
        self.upsert_frame_stats = (
            f"INSERT INTO {fsh} AS t (camera_id, hour, frames, captured, queued, processing, "
            "completed, failed, conflicted, processing_time_count, processing_time_sum_ms, "
            "processing_time_buckets) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "
            "ON CONFLICT (camera_id, hour) DO UPDATE SET frames = t.frames + EXCLUDED.frames, "
            "captured = t.captured + EXCLUDED.captured, queued = t.queued + EXCLUDED.queued, "
            "processing = t.processing + EXCLUDED.processing, "
            "completed = t.completed + EXCLUDED.completed, failed = t.failed + EXCLUDED.failed, "
            "conflicted = t.conflicted + EXCLUDED.conflicted, "
            "processing_time_count = t.processing_time_count + EXCLUDED.processing_time_count, "
            "processing_time_sum_ms = t.processing_time_sum_ms + EXCLUDED.processing_time_sum_ms, "
            "processing_time_buckets = tracker_array_add(t.processing_time_buckets, "
            "EXCLUDED.processing_time_buckets)"
        )
        self.upsert_stage_stats = (
            f"INSERT INTO {pst} AS t (stage, hour, runs, completed, failed, conflicted, running, "
            "duration_count, duration_sum_ms, duration_buckets) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) "
            "ON CONFLICT (stage, hour) DO UPDATE SET runs = t.runs + EXCLUDED.runs, "
            "completed = t.completed + EXCLUDED.completed, failed = t.failed + EXCLUDED.failed, "
            "conflicted = t.conflicted + EXCLUDED.conflicted, running = t.running + EXCLUDED.running, "
            "duration_count = t.duration_count + EXCLUDED.duration_count, "
            "duration_sum_ms = t.duration_sum_ms + EXCLUDED.duration_sum_ms, "
            "duration_buckets = tracker_array_add(t.duration_buckets, EXCLUDED.duration_buckets)"
        )


_LOCK_FRAMES = "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k ORDER BY k"
_SELECT_CHECKPOINTS = (
    'SELECT topic, "partition", next_offset FROM projection_checkpoints '
    "WHERE projection = $1 AND generation = $2 FOR UPDATE"
)
_UPSERT_CHECKPOINT = (
    'INSERT INTO projection_checkpoints (projection, generation, topic, "partition", next_offset) '
    'VALUES ($1, $2, $3, $4, $5) ON CONFLICT (projection, generation, topic, "partition") '
    "DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()"
)


class FramesProjectionStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._stmts: dict[int, _Statements] = {}
        self._known_days: dict[int, set[date]] = {}

    def _s(self, g: int) -> _Statements:
        if g not in self._stmts:
            self._stmts[g] = _Statements(g)
        return self._stmts[g]

    async def live_generation(self) -> int:
        async def run() -> int:
            async with self._pool.acquire() as conn:
                return int(
                    await conn.fetchval(
                        "SELECT generation FROM projection_state WHERE projection = $1", PROJECTION
                    )
                )

        return await call_db(run)

    async def checkpoints(self, generation: int) -> dict[TopicPartitionKey, int]:
        async def run() -> list[asyncpg.Record]:
            async with self._pool.acquire() as conn:
                return await conn.fetch(
                    'SELECT topic, "partition", next_offset FROM projection_checkpoints '
                    "WHERE projection = $1 AND generation = $2",
                    PROJECTION,
                    generation,
                )

        return {(r["topic"], r["partition"]): r["next_offset"] for r in await call_db(run)}

    async def ensure_partitions(self, generation: int, timestamps: Iterable[datetime]) -> None:
        days = {ts.date() for ts in timestamps}
        known = self._known_days.setdefault(generation, set())
        missing = days - known
        if not missing:
            return
        lo, hi = min(missing), max(missing)
        tables = [
            f"frame_metadata_g{generation}",
            f"processing_stages_g{generation}",
            f"frame_stats_hourly_g{generation}",
            f"performance_stats_g{generation}",
        ]

        async def run() -> None:
            async with self._pool.acquire() as conn:
                for t in tables:
                    await conn.execute(
                        "SELECT tracker_ensure_partitions($1, $2, $3)",
                        t,
                        datetime(lo.year, lo.month, lo.day),
                        datetime(hi.year, hi.month, hi.day, 23),
                    )

        await call_db(run)
        known |= {lo + timedelta(days=i) for i in range((hi - lo).days + 1)}

    async def apply(
        self,
        events: Sequence[ProjEvent],
        *,
        generation: int,
        positions: Mapping[TopicPartitionKey, tuple[int | None, int]] | None = None,
        check_live: bool = False,
    ) -> ApplyResult:
        """Fold ``events`` into ``generation`` in one transaction.

        ``positions`` maps each (topic, partition) of the batch to
        ``(expected stored checkpoint, new checkpoint)``; a mismatch raises
        :class:`CheckpointConflict` and nothing is written.
        """
        return await self.apply_folded(
            BatchFold().extend(events),
            len(events),
            generation=generation,
            positions=positions,
            check_live=check_live,
        )

    async def apply_folded(
        self,
        batch: BatchFold,
        n_events: int,
        *,
        generation: int,
        positions: Mapping[TopicPartitionKey, tuple[int | None, int]] | None = None,
        check_live: bool = False,
    ) -> ApplyResult:
        """:meth:`apply` for ``n_events`` events already folded into ``batch``
        (the CPU part, which a caller may do while the previous batch is written)."""
        await self.ensure_partitions(generation, [k[1] for k in batch.frames])
        s = self._s(generation)

        async def run() -> ApplyResult:
            async with self._pool.acquire() as conn, conn.transaction():
                if check_live:
                    # FOR SHARE: a rebuild's swap (FOR UPDATE) waits for this batch,
                    # and this batch sees the swap once it is committed.
                    live = await conn.fetchval(
                        "SELECT generation FROM projection_state WHERE projection = $1 FOR SHARE", PROJECTION
                    )
                    if live != generation:
                        raise GenerationChanged(f"live generation is now {live}")
                if positions:
                    stored = {
                        (r["topic"], r["partition"]): r["next_offset"]
                        for r in await conn.fetch(_SELECT_CHECKPOINTS, PROJECTION, generation)
                    }
                    for tp, (expected, _) in positions.items():
                        if stored.get(tp) != expected:
                            raise CheckpointConflict(
                                f"{tp[0]}[{tp[1]}]: stored checkpoint {stored.get(tp)}, expected {expected}"
                            )
                result = await self._write(conn, s, batch) if batch.frames else ApplyResult(0, 0, 0)
                if positions:
                    await conn.executemany(
                        _UPSERT_CHECKPOINT,
                        [(PROJECTION, generation, tp[0], tp[1], new) for tp, (_, new) in positions.items()],
                    )
                return ApplyResult(result.frames, result.stages, n_events)

        return await call_db(run)

    async def _write(self, conn: asyncpg.Connection, s: _Statements, batch: BatchFold) -> ApplyResult:
        frame_keys = sorted(batch.frames)
        ids = [k[0] for k in frame_keys]
        tss = [k[1] for k in frame_keys]
        # Serialise writers of the same frame (two workers may own the camera and
        # processing partitions of one frame). Sorted keys: no lock-order deadlock.
        await conn.execute(_LOCK_FRAMES, sorted({_lock_key(i) for i in ids}))
        old_frames = {
            (r["frame_id"], r["frame_timestamp"]): frame_from_db(r)
            for r in await conn.fetch(s.select_frames, ids, tss)
        }
        old_stages = {}
        if batch.stages:
            old_stages = {
                (r["frame_id"], r["frame_timestamp"], r["stage"], r["attempt"]): stage_from_db(r)
                for r in await conn.fetch(s.select_stages, ids, tss)
            }
        fpairs, spairs = [], []
        new_frames = []
        for k in frame_keys:
            old = old_frames.get(k)
            new = batch.frames[k] if old is None else old.merge(batch.frames[k])
            if new != old:
                fpairs.append((old, new))
                new_frames.append(new)
        new_stages = []
        for sk in sorted(batch.stages):
            old_s = old_stages.get(sk)
            new_s = batch.stages[sk] if old_s is None else old_s.merge(batch.stages[sk])
            if new_s != old_s:
                spairs.append((old_s, new_s))
                new_stages.append(new_s)
        await conn.execute(s.create_staging)
        if new_frames:
            await conn.copy_records_to_table(
                "proj_frame_staging", records=[frame_to_db(r) for r in new_frames], columns=FRAME_COLS
            )
            await conn.execute(s.upsert_frames)
        if new_stages:
            await conn.copy_records_to_table(
                "proj_stage_staging", records=[stage_to_db(r) for r in new_stages], columns=STAGE_COLS
            )
            await conn.execute(s.upsert_stages)
        fdeltas = rollup_deltas(fpairs, frame_contribution)
        if fdeltas:
            await conn.executemany(
                s.upsert_frame_stats,
                [(cam, hour, *d.as_row(FRAME_COUNTERS)) for (cam, hour), d in sorted(fdeltas.items())],
            )
        sdeltas = rollup_deltas(spairs, stage_contribution)
        if sdeltas:
            await conn.executemany(
                s.upsert_stage_stats,
                [(stage, hour, *d.as_row(STAGE_COUNTERS)) for (stage, hour), d in sorted(sdeltas.items())],
            )
        return ApplyResult(len(new_frames), len(new_stages), 0)
