"""PostgreSQL adapter of the ``frames`` projection: one generation's tables.

``apply`` writes one batch in one transaction: the folded frame and stage rows,
the rollup deltas and the checkpoints. Before writing it checks that the stored
checkpoints are the ones this writer expects (optimistic concurrency): a
zombie worker after a rebalance, or a live worker after a rebuild was swapped
in, finds them changed, writes nothing, and re-seeks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import asyncpg

# The columns, row conversions and statements are re-exported: the store's
# users (tests, bench) import them from here.
from projections.columns import FRAME_COLS, STAGE_COLS, frame_from_db, frame_to_db, stage_from_db, stage_to_db
from projections.fold import (
    FRAME_COUNTERS,
    STAGE_COUNTERS,
    BatchFold,
    ProjEvent,
    frame_contribution,
    rollup_deltas,
    stage_contribution,
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
from tracker.db import call_db
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

TopicPartitionKey = tuple[str, int]


@dataclass(frozen=True)
class ApplyResult:
    frames: int
    stages: int
    events: int


class FramesProjectionStore:
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

    async def ensure_partitions(self, generation: int, timestamps: Iterable[datetime]) -> None:
        days = {ts.date() for ts in timestamps}
        known = self._known_days.setdefault(generation, set())
        missing = days - known
        if not missing:
            return
        lo, hi = min(missing), max(missing)
        tables = self._s(generation).tables

        async def run() -> None:
            async with self._pool.acquire() as conn:
                for t in tables:
                    await conn.execute(
                        ENSURE_PARTITIONS,
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
        await self.ensure_partitions(generation, [r.frame_timestamp for r in batch.frames.values()])
        s = self._s(generation)

        async def run() -> ApplyResult:
            async with self._pool.acquire() as conn, conn.transaction():
                if check_live:
                    # FOR SHARE: a rebuild's swap (FOR UPDATE) waits for this batch,
                    # and this batch sees the swap once it is committed.
                    live = await conn.fetchval(SELECT_LIVE_GENERATION_FOR_SHARE, PROJECTION)
                    if live != generation:
                        raise GenerationChanged(f"live generation is now {live}")
                if positions:
                    stored = {
                        (r["topic"], r["partition"]): r["next_offset"]
                        for r in await conn.fetch(SELECT_CHECKPOINTS_FOR_UPDATE, PROJECTION, generation)
                    }
                    for (topic, partition), (expected, _) in positions.items():
                        at = stored.get((topic, partition))
                        if at != expected:
                            raise CheckpointConflict(
                                f"{topic}[{partition}]: stored checkpoint {at}, expected {expected}"
                            )
                result = await self._write(conn, s, batch) if batch.frames else ApplyResult(0, 0, 0)
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
