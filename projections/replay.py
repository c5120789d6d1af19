"""Zero-downtime rebuild of the ``frames`` projection.

1. Create the tables of a new generation (the live one keeps serving and
   updating meanwhile).
2. Fill it: ``source="topics"`` reads every partition from the beginning, up
   to the log ends seen at the start in bulk, folded in SQL
   (:mod:`projections.bulk`), then event by event;
   ``source="store"`` first folds ``frame_events`` (events that topic retention
   has already dropped are still there) in SQL (:mod:`projections.recompute`),
   with the new generation's checkpoints set to the highest stored offset + 1
   per partition in the same transaction, then continues from the topics. The
   fold is idempotent on event ids, so any overlap is harmless.
3. When its checkpoints have caught up with the live ones, swap it in: in one
   transaction, under the lock that holds the live writer between two batches,
   the new generation catches up with the live checkpoints, the reader views
   point at it and ``projection_state.generation`` changes. The live worker
   notices on its next batch and continues from the new generation's
   checkpoints (an inline projection simply writes to it).
4. Drop the old generation.

Interrupted rebuilds resume: the running row in ``projection_replays``, the new
generation's tables and its checkpoints are all durable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

import asyncpg

from projections.anomalies import COPY_WATERMARKS, AnomalyDetection
from projections.bulk import bulk_load_store, bulk_load_topics
from projections.detector import DetectorConfig
from projections.events import from_kafka
from projections.fold import BatchFold
from projections.ports import ApplyResult
from projections.store import PROJECTION, FramesProjectionStore
from tracker.adapters.kafka import ensure_topics, make_consumer, topic_partitions
from tracker.adapters.postgres import call_db, connect_pool, retry_while_unavailable
from tracker.codec import FrameEventCodec
from tracker.config import Settings
from tracker.errors import ReplayError
from tracker.runtime import WriteBehind

log = logging.getLogger(__name__)


@dataclass
class ReplayProgress:
    generation: int
    phase: str
    events_applied: int
    events_per_s: float
    lag_events: int
    eta_s: float | None


class ProjectionRebuild:
    def __init__(
        self,
        settings: Settings,
        *,
        source: str = "topics",
        on_progress: Callable[[ReplayProgress], None] | None = None,
        swap_lag_threshold: int = 0,
        batch_size: int = 5000,
        since: datetime | None = None,
    ) -> None:
        if source not in ("topics", "store"):
            raise ReplayError(f"unknown source {source!r} (topics or store)")
        if since is not None and source != "store":
            raise ReplayError("--since needs --source store (topics are always read from the start)")
        if since is not None:
            # Whole hours: rollup rows are per hour, so a frame hour is either
            # copied or recomputed, never split.
            since = since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        self.since = since
        self.settings = settings
        self.source = source
        self.on_progress = on_progress
        self.swap_lag_threshold = swap_lag_threshold
        self.batch_size = batch_size
        self.codec = FrameEventCodec()
        self._stopping = asyncio.Event()
        self._applied = 0
        self._t0 = time.monotonic()
        an = settings.anomaly
        self.detection = (
            AnomalyDetection(DetectorConfig(window_s=an.window_s, lateness_s=an.lateness_s))
            if an.enabled
            else None
        )

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> int:
        """Rebuild and swap; returns the new live generation."""
        await ensure_topics(self.settings.kafka, self.settings.topics, self.settings.topics.events)
        pool = await connect_pool(self.settings.database, min_size=1, max_size=3)
        try:
            store = FramesProjectionStore(pool)
            replay_id, gen, resumed = await self._begin(pool)
            try:
                fresh = not (resumed and await store.checkpoints(gen))
                if self.source == "store" and fresh:
                    await self._from_store(pool, store, gen, replay_id)
                elif fresh and not await self._bulk_from_topics(pool, store, gen, replay_id):
                    log.info("rebuild interrupted; run `tracker replay` again to resume")
                    return await store.live_generation()
                old = await self._from_topics(pool, store, gen, replay_id)
                if old is None:
                    log.info("rebuild interrupted; run `tracker replay` again to resume")
                    return await store.live_generation()
                await call_db(lambda: pool.execute("SELECT tracker_drop_frames_generation($1)", old))
                return gen
            except BaseException as e:
                if not isinstance(e, (asyncio.CancelledError, KeyboardInterrupt)):
                    await self._set_status(pool, replay_id, "failed", str(e)[:500])
                raise
        finally:
            await pool.close()

    async def _bulk_from_topics(
        self, pool: asyncpg.Pool, store: FramesProjectionStore, gen: int, rid: int
    ) -> bool:
        """Load the topics up to their ends in bulk, folded in SQL; ``False`` if stopped."""
        base = self._applied

        async def report(read: int, left: int) -> None:
            self._applied = base + read
            await self._progress(pool, rid, self._report(gen, "topics", left))

        read = await bulk_load_topics(
            self.settings,
            pool,
            store,
            gen,
            batch_size=self.batch_size,
            stopping=self._stopping,
            on_batch=report,
        )
        if read is None:
            return False
        self._applied = base + read
        return True

    async def _begin(self, pool: asyncpg.Pool) -> tuple[int, int, bool]:
        async def run() -> tuple[int, int, bool]:
            async with pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    "SELECT id, generation, source FROM projection_replays "
                    "WHERE projection = $1 AND status = 'running' FOR UPDATE",
                    PROJECTION,
                )
                if row is not None:
                    log.info("resuming rebuild %d into generation %d", row["id"], row["generation"])
                    return row["id"], row["generation"], True
                gen = await conn.fetchval(
                    "SELECT greatest(coalesce(max(generation), 0), "
                    "(SELECT generation FROM projection_state WHERE projection = $1)) + 1 "
                    "FROM projection_replays WHERE projection = $1",
                    PROJECTION,
                )
                await conn.execute("SELECT tracker_create_frames_generation($1)", gen)
                rid = await conn.fetchval(
                    "INSERT INTO projection_replays (projection, generation, source, status) "
                    "VALUES ($1, $2, $3, 'running') RETURNING id",
                    PROJECTION,
                    gen,
                    self.source,
                )
                return rid, gen, False

        return await call_db(run)

    async def _set_status(self, pool: asyncpg.Pool, rid: int, status: str, message: str = "") -> None:
        try:
            await pool.execute(
                "UPDATE projection_replays SET status = $2, message = $3, updated_at = now() WHERE id = $1",
                rid,
                status,
                message,
            )
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
            log.warning("could not record rebuild status %s", status)

    def _count(self, applied: ApplyResult | None) -> None:
        if applied is not None:
            self._applied += applied.events

    def _report(self, gen: int, phase: str, lag: int) -> ReplayProgress:
        elapsed = max(1e-6, time.monotonic() - self._t0)
        eps = self._applied / elapsed
        p = ReplayProgress(gen, phase, self._applied, eps, lag, lag / eps if eps > 0 else None)
        if self.on_progress:
            self.on_progress(p)
        return p

    async def _progress(self, pool: asyncpg.Pool, rid: int, p: ReplayProgress) -> None:
        await call_db(
            lambda: pool.execute(
                "UPDATE projection_replays SET events_applied = $2, events_per_s = $3, lag_events = $4, "
                "eta_s = $5, message = $6, updated_at = now() WHERE id = $1",
                rid,
                p.events_applied,
                p.events_per_s,
                p.lag_events,
                p.eta_s,
                p.phase,
            )
        )

    async def _from_store(self, pool: asyncpg.Pool, store: FramesProjectionStore, gen: int, rid: int) -> None:
        self._applied += await bulk_load_store(self.settings, pool, store, gen, self.since)
        self._report(gen, "store", 0)

    async def _from_topics(
        self, pool: asyncpg.Pool, store: FramesProjectionStore, gen: int, rid: int
    ) -> int | None:
        """Fill ``gen`` from the topics, then swap it in; the generation it
        replaced (``None`` if a stop was requested first)."""
        tps = await topic_partitions(self.settings.kafka, self.settings.topics.events)
        consumer = make_consumer(
            self.settings.kafka, group_id=None, role="replay", max_poll_records=self.batch_size
        )
        await consumer.start()
        try:
            consumer.assign(tps)
            mine = await store.checkpoints(gen)
            expected: dict[tuple[str, int], int | None] = {}
            for tp in tps:
                off = mine.get((tp.topic, tp.partition))
                expected[(tp.topic, tp.partition)] = off
                if off is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, off)
            # The rebuild must at least reach the log end seen now, so that it
            # never swaps in a table emptier than the live one.
            target = await consumer.end_offsets(tps)
            last_report = 0.0

            def at(key: tuple[str, int]) -> int:
                return expected[key] or 0

            # One batch is written while the next is fetched, decoded and folded.
            # ``expected`` runs one batch ahead of what is durable; every exit
            # waits for the write in flight first.
            async with WriteBehind[ApplyResult]() as behind:

                async def step() -> bool:
                    """Fetch one batch and start writing it; ``False`` if there was none."""
                    batch = await consumer.getmany(timeout_ms=500, max_records=self.batch_size)
                    if not batch:
                        return False
                    events = []
                    positions = {}
                    for tp, msgs in batch.items():
                        key = (tp.topic, tp.partition)
                        positions[key] = (expected[key], msgs[-1].offset + 1)
                        for m in msgs:
                            e = from_kafka(self.codec, m)
                            if e is not None:
                                events.append(e)
                    folded = BatchFold().extend(events)
                    await behind.wait()
                    apply = partial(
                        store.apply_folded, folded, len(events), generation=gen, positions=positions
                    )
                    behind.start(retry_while_unavailable(apply))
                    for key, (_, new) in positions.items():
                        expected[key] = new
                    self._applied += sum(len(m) for m in batch.values())
                    return True

                async def catch_up(goal: dict[tuple[str, int], int]) -> None:
                    """Apply until every partition has reached ``goal`` (durably)."""
                    idle = 0
                    while any(at(k) < off for k, off in goal.items() if k in expected):
                        idle = 0 if await step() else idle + 1
                        if idle >= 20:  # ~10 s of empty fetches: the topics lack what was applied
                            raise ReplayError(f"cannot reach the live checkpoints {goal} from the topics")
                    await behind.wait()

                while not self._stopping.is_set():
                    reached = all(at((tp.topic, tp.partition)) >= target[tp] for tp in tps)
                    if reached and behind.in_flight:
                        await behind.wait()
                    live_gen = await store.live_generation()
                    live = await store.checkpoints(live_gen)
                    ends = await consumer.end_offsets(tps)
                    behind_live = sum(max(0, live.get(k, 0) - at(k)) for k in expected)
                    to_end = sum(max(0, ends[tp] - at((tp.topic, tp.partition))) for tp in tps)
                    if reached and behind_live <= self.swap_lag_threshold:
                        await self._detect(pool, gen, live_gen)
                        return await self._swap(pool, gen, rid, catch_up)
                    await step()
                    now = time.monotonic()
                    if now - last_report >= 1.0:
                        last_report = now
                        await self._progress(pool, rid, self._report(gen, "topics", to_end))
            return None
        finally:
            await consumer.stop()

    async def _detect(self, pool: asyncpg.Pool, gen: int, live: int) -> None:
        """The anomaly detector's pass over the rebuilt history: up to the live
        generation's watermarks, every window in time order, as the live writer
        closed them (one transaction per chunk of windows, outside the swap's
        lock; the swap closes the last few under it)."""
        detection = self.detection
        if detection is None:
            return

        async def chunk(first: bool) -> int:
            async with pool.acquire() as conn, conn.transaction():
                if first:
                    await conn.execute(COPY_WATERMARKS, live, gen)
                return (await detection.close_windows(conn, gen)).windows

        closed, first = 0, True
        while n := await retry_while_unavailable(partial(chunk, first)):
            closed, first = closed + n, False
        log.info("anomaly detector: %d windows of generation %d closed before the swap", closed, gen)

    async def _swap(
        self,
        pool: asyncpg.Pool,
        gen: int,
        rid: int,
        catch_up: Callable[[dict[tuple[str, int], int]], Awaitable[None]],
    ) -> int:
        """Point the readers at ``gen``; the generation it replaced.

        Under the lock that stops the live writers (the projection worker, or an
        inline projection), ``gen`` first catches up with the live checkpoints:
        whatever they applied between the rebuild's last look and the lock is
        applied to ``gen`` too, so the swap never steps back.
        """

        async def run() -> int:
            async with pool.acquire() as conn, conn.transaction():
                # FOR UPDATE waits for a live writer's in-flight batch (it holds
                # FOR SHARE on this row), so the swap lands between two batches.
                old = await conn.fetchval(
                    "SELECT generation FROM projection_state WHERE projection = $1 FOR UPDATE", PROJECTION
                )
                live = await conn.fetch(
                    'SELECT topic, "partition", next_offset FROM projection_checkpoints '
                    "WHERE projection = $1 AND generation = $2",
                    PROJECTION,
                    old,
                )
                await catch_up({(r["topic"], r["partition"]): r["next_offset"] for r in live})
                if self.detection is not None:
                    # The few windows the live writer closed since _detect's pass.
                    await self.detection.catch_up(conn, gen, int(old))
                await conn.execute("SELECT tracker_point_frames_views($1)", gen)
                await conn.execute(
                    "UPDATE projection_replays SET status = 'swapped', lag_events = 0, eta_s = 0, "
                    "events_applied = $2, updated_at = now(), message = $3 WHERE id = $1",
                    rid,
                    self._applied,
                    f"replaced generation {old}",
                )
                return int(old)

        old = await call_db(run)
        self._report(gen, "swapped", 0)
        log.info("generation %d swapped in (replaced %d)", gen, old)
        return old
