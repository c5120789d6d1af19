"""PostgreSQL adapter of the ``frames`` projection's store (:class:`ProjectionStore`):
each generation's tables.

``apply`` writes one batch in one transaction: the folded frame and stage rows,
the rollup deltas (and, for a failure rollup group a batch retracted a failure
from, the group set from its rows) and the checkpoints. Before writing it checks that the stored
checkpoints are the ones this writer expects (optimistic concurrency): a
zombie worker after a rebalance, or a live worker after a rebuild was swapped
in, finds them changed, writes nothing, and re-seeks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg

# The columns, row conversions and statements are re-exported: the store's
# users (tests, bench) import them from here.
from projections.columns import (
    FRAME_COLS,
    STAGE_COLS,
    failure_to_db,
    frame_from_db,
    frame_to_db,
    stage_from_db,
    stage_to_db,
)
from projections.fold import (
    FRAME_COUNTERS,
    FRAME_FAILURE,
    STAGE_COUNTERS,
    BatchFold,
    FailureKey,
    FailureStat,
    ProjEvent,
    failure_totals,
    merge_batch,
)
from projections.ports import (
    ApplyResult,
    Positions,
    ProjectionStore,
    TopicPartitionKey,
    check_expected_checkpoints,
    check_live_generation,
)
from projections.statements import (
    ENSURE_PARTITIONS,
    LOCK_FRAMES,
    PROJECTION,
    SELECT_CHECKPOINTS,
    SELECT_CHECKPOINTS_FOR_UPDATE,
    SELECT_LIVE_GENERATION,
    SELECT_LIVE_GENERATION_FOR_SHARE,
    UPSERT_CHECKPOINT,
    GenerationStatements,
    lock_key,
)
from tracker.adapters.postgres import call_db
from tracker.errors import CheckpointConflict, GenerationChanged

__all__ = [
    "FRAME_COLS",
    "PROJECTION",
    "STAGE_COLS",
    "ApplyResult",
    "CheckpointConflict",
    "FramesProjectionStore",
    "GenerationChanged",
    "GenerationStatements",
    "TopicPartitionKey",
    "frame_from_db",
    "frame_to_db",
    "stage_from_db",
    "stage_to_db",
]


class FramesProjectionStore(ProjectionStore):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._stmts: dict[int, GenerationStatements] = {}
        self._known_days: dict[int, set[date]] = {}

    def _s(self, g: int) -> GenerationStatements:
        if g not in self._stmts:
            self._stmts[g] = GenerationStatements(g)
        return self._stmts[g]

    async def live_generation(self) -> int:
        async def run() -> int:
            async with self._pool.acquire() as conn:
                return int(await conn.fetchval(SELECT_LIVE_GENERATION, PROJECTION))

        return await call_db(run)

    async def checkpoints(self, generation: int) -> dict[TopicPartitionKey, int]:
        async def run() -> list[asyncpg.Record]:
            async with self._pool.acquire() as conn:
                return await conn.fetch(SELECT_CHECKPOINTS, PROJECTION, generation)

        return {(r["topic"], r["partition"]): r["next_offset"] for r in await call_db(run)}

    async def ensure_partitions(
        self, generation: int, timestamps: Iterable[datetime], *, conn: asyncpg.Connection | None = None
    ) -> None:
        """Make the days of ``timestamps`` ready in ``generation``'s tables: on a
        connection of the pool (its own short transaction), or on ``conn``, in
        the caller's transaction."""
        days = {ts.date() for ts in timestamps}
        known = self._known_days.setdefault(generation, set())
        missing = days - known
        if not missing:
            return
        lo, hi = min(missing), max(missing)
        tables = self._s(generation).tables

        async def on(c: asyncpg.Connection) -> None:
            for t in tables:
                await c.execute(
                    ENSURE_PARTITIONS,
                    t,
                    datetime(lo.year, lo.month, lo.day),
                    datetime(hi.year, hi.month, hi.day, 23),
                )

        async def run() -> None:
            async with self._pool.acquire() as c:
                await on(c)

        if conn is not None:
            await on(conn)
        else:
            await call_db(run)
        known |= {lo + timedelta(days=i) for i in range((hi - lo).days + 1)}

    async def apply_then(
        self,
        events: Sequence[ProjEvent],
        *,
        generation: int,
        positions: Positions,
        check_live: bool,
        then: Callable[[asyncpg.Connection], Awaitable[Any]],
    ) -> ApplyResult:
        """:meth:`apply`, and ``then(conn)`` in the same transaction after the rows
        (the anomaly detector closing the windows the batch let close)."""
        folded = BatchFold().extend(events)
        return await self._apply_folded(folded, len(events), generation, positions, check_live, then=then)

    async def _apply_folded(
        self,
        batch: BatchFold,
        n_events: int,
        generation: int,
        positions: Positions,
        check_live: bool,
        *,
        then: Callable[[asyncpg.Connection], Awaitable[Any]] | None = None,
    ) -> ApplyResult:
        await self.ensure_partitions(generation, [r.frame_timestamp for r in batch.frames.values()])
        s = self._s(generation)

        async def run() -> ApplyResult:
            async with self._pool.acquire() as conn, conn.transaction():
                if check_live:
                    # FOR SHARE: a rebuild's swap (FOR UPDATE) waits for this batch,
                    # and this batch sees the swap once it is committed.
                    live = await conn.fetchval(SELECT_LIVE_GENERATION_FOR_SHARE, PROJECTION)
                    check_live_generation(live, generation)
                if positions:
                    stored = {
                        (r["topic"], r["partition"]): r["next_offset"]
                        for r in await conn.fetch(SELECT_CHECKPOINTS_FOR_UPDATE, PROJECTION, generation)
                    }
                    check_expected_checkpoints(stored, positions)
                result = await self._write(conn, s, batch) if batch.frames else ApplyResult(0, 0, 0)
                if then is not None:
                    await then(conn)
                if positions:
                    await conn.executemany(
                        UPSERT_CHECKPOINT,
                        [
                            (PROJECTION, generation, topic, partition, new)
                            for (topic, partition), (_, new) in positions.items()
                        ],
                    )
                return ApplyResult(result.frames, result.stages, n_events)

        return await call_db(run)

    async def write_fold(self, conn: asyncpg.Connection, generation: int, batch: BatchFold) -> ApplyResult:
        """Merge a folded batch into ``generation`` in the caller's transaction
        (no checkpoint, no check): what an inline projection writes with an append.
        Partitions still missing (the caller made them ready beforehand, unless
        a rebuild swapped a new generation in meanwhile) are made in that
        transaction: it holds one of the pool's connections already."""
        frames = [r.frame_timestamp for r in batch.frames.values()]
        await self.ensure_partitions(generation, frames, conn=conn)
        return await self._write(conn, self._s(generation), batch)

    async def _write(
        self, conn: asyncpg.Connection, s: GenerationStatements, batch: BatchFold
    ) -> ApplyResult:
        frame_keys = sorted(batch.frames)
        ids = [batch.frames[k].frame_id for k in frame_keys]
        tss = [batch.frames[k].frame_timestamp for k in frame_keys]
        # Serialise writers of the same frame (two workers may own the camera and
        # processing partitions of one frame). Sorted keys: no lock-order deadlock.
        await conn.execute(LOCK_FRAMES, sorted({lock_key(i) for i in ids}))
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
        merged = merge_batch(batch, old_frames, old_stages)
        await conn.execute(s.create_staging)
        if merged.frames:
            await conn.copy_records_to_table(
                "proj_frame_staging", records=[frame_to_db(r) for r in merged.frames], columns=FRAME_COLS
            )
            await conn.execute(s.upsert_frames)
        if merged.stages:
            await conn.copy_records_to_table(
                "proj_stage_staging", records=[stage_to_db(r) for r in merged.stages], columns=STAGE_COLS
            )
            await conn.execute(s.upsert_stages)
        if merged.frame_deltas:
            await conn.executemany(
                s.upsert_frame_stats,
                [
                    (cam, hour, *d.as_row(FRAME_COUNTERS))
                    for (cam, hour), d in sorted(merged.frame_deltas.items())
                ],
            )
        if merged.stage_deltas:
            await conn.executemany(
                s.upsert_stage_stats,
                [
                    (stage, hour, *d.as_row(STAGE_COUNTERS))
                    for (stage, hour), d in sorted(merged.stage_deltas.items())
                ],
            )
        if merged.stage_camera_deltas:
            await conn.executemany(
                s.upsert_stage_camera_stats,
                [(*key, *d.as_row(STAGE_COUNTERS)) for key, d in sorted(merged.stage_camera_deltas.items())],
            )
        if merged.failure_deltas:
            deltas = sorted(merged.failure_deltas.items())
            # Also locks each group's row, which the recompute below relies on.
            await conn.executemany(s.upsert_failure_stats, [failure_to_db(k, d) for k, d in deltas])
            recompute = [k for k, d in deltas if d.recompute]
            if recompute:
                await self._recompute_failures(conn, s, recompute)
        return ApplyResult(len(merged.frames), len(merged.stages), 0)

    async def _recompute_failures(
        self, conn: asyncpg.Connection, s: GenerationStatements, keys: list[FailureKey]
    ) -> None:
        """Set the failure rollup groups ``keys`` from their rows (this batch's included).

        Exact under concurrent writers too: this transaction already holds the
        groups' rows locked (the upsert before), so every other writer that
        added to a group either committed before (its rows are seen by the read
        below: the callers' transactions are READ COMMITTED, so each statement
        reads a new snapshot) or adds its delta after this commit."""
        frame_groups = sorted({(k[2], k[1]) for k in keys if k[0] == FRAME_FAILURE})
        stage_groups = sorted({(k[2], k[1]) for k in keys if k[0] != FRAME_FAILURE})
        frames, stages = [], []
        if frame_groups:
            cams, hours = [c for c, _ in frame_groups], [h for _, h in frame_groups]
            frames = [frame_from_db(r) for r in await conn.fetch(s.select_failed_frames, cams, hours)]
        if stage_groups:
            cams, hours = [c for c, _ in stage_groups], [h for _, h in stage_groups]
            stages = [stage_from_db(r) for r in await conn.fetch(s.select_failed_stages, cams, hours)]
        fresh = failure_totals(frames, stages, set(keys))
        await conn.executemany(
            s.set_failure_stats, [failure_to_db(k, fresh.get(k) or FailureStat()) for k in keys]
        )
