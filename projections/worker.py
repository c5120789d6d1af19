"""``ProjectionWorker``: consumer group ``<prefix>.projections``.

Offsets live in PostgreSQL, not in Kafka: each batch writes its rows and its
``(projection, generation, topic, partition) -> next offset`` checkpoints in one
transaction, and on assignment the worker seeks to the stored checkpoints. A
crash at any point therefore neither loses nor double-applies an event. (The
same offsets are also committed to Kafka after the database commit, only so that
standard lag tooling sees the group; they are never read back.)
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from projections.events import from_kafka
from projections.fold import ProjEvent
from projections.store import CheckpointConflict, FramesProjectionStore, GenerationChanged
from tracker import metrics
from tracker.codec import FrameEventCodec
from tracker.config import Settings
from tracker.db import connect_pool, retry_while_unavailable
from tracker.errors import BrokerError, DatabaseUnavailable
from tracker.kafka import ensure_topics, make_consumer, next_batch
from tracker.progress import ProgressSampler, periodically

log = logging.getLogger(__name__)


@dataclass
class ProjectionStats:
    batches: int = 0
    records: int = 0
    skipped: int = 0
    frames_written: int = 0
    conflicts: int = 0
    generation_switches: int = 0
    db_retries: int = 0
    started: float = field(default_factory=time.monotonic)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: ProjectionWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # Let an in-flight batch finish; its checkpoint guard keeps it safe anyway.
        async with self.worker._batch_lock:
            for tp in revoked:
                self.worker._expected.pop((tp.topic, tp.partition), None)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.worker._seek_to_checkpoints(list(assigned))
        self.worker._assigned_once.set()


class ProjectionWorker:
    def __init__(self, settings: Settings, *, codec: FrameEventCodec | None = None) -> None:
        self.settings = settings
        self.codec = codec or FrameEventCodec()
        self.stats = ProjectionStats()
        self._stopping = asyncio.Event()
        self._batch_lock = asyncio.Lock()
        self._assigned_once = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._pool: Any = None
        self._store: FramesProjectionStore | None = None
        self.generation = 0
        # (topic, partition) -> the checkpoint we believe is stored (None: no row yet)
        self._expected: dict[tuple[str, int], int | None] = {}
        self._lag_task: asyncio.Task[None] | None = None
        self._progress = ProgressSampler(f"projections/{uuid.uuid4().hex[:12]}")

    def request_stop(self) -> None:
        self._stopping.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)

    async def start(self) -> None:
        await ensure_topics(self.settings, self.settings.event_topics)
        self._pool = await self._retry_db(
            lambda: connect_pool(self.settings, min_size=1, max_size=2), startup=True
        )
        self._store = FramesProjectionStore(self._pool)
        self.generation = await self._retry_db(self._store.live_generation)
        self._consumer = make_consumer(
            self.settings,
            group_id=self.settings.projections_group,
            max_poll_records=self.settings.batch_max_records,
        )
        self._consumer.subscribe(list(self.settings.event_topics), listener=_Rebalance(self))
        await self._consumer.start()
        # Lag gauges also refresh on a timer: a stalled or paused worker (no
        # batches) is exactly when lag alerts need fresh numbers.
        self._lag_task = asyncio.create_task(periodically(self._update_lag, 5.0))

    async def stop(self) -> None:
        if self._lag_task is not None:
            self._lag_task.cancel()
            self._lag_task = None
        if self._consumer is not None:
            await asyncio.shield(self._consumer.stop())
            self._consumer = None
        if self._pool is not None:
            await asyncio.shield(self._pool.close())
            self._pool = None

    async def __aenter__(self) -> ProjectionWorker:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def _seek_to_checkpoints(self, tps: list[TopicPartition]) -> None:
        assert self._consumer is not None and self._store is not None
        stored = await self._retry_db(lambda: self._store.checkpoints(self.generation))  # type: ignore[union-attr]
        begin = [tp for tp in tps if (tp.topic, tp.partition) not in stored]
        for tp in tps:
            off = stored.get((tp.topic, tp.partition))
            self._expected[(tp.topic, tp.partition)] = off
            if off is not None:
                self._consumer.seek(tp, off)
        if begin:
            await self._consumer.seek_to_beginning(*begin)

    async def _retry_db(self, fn: Callable[[], Any], *, startup: bool = False) -> Any:
        """Retry while the database is unavailable, unless a stop was requested
        (or, at start-up, the start-up timeout has passed)."""

        def counted(_: BaseException) -> None:
            self.stats.db_retries += 1
            metrics.db_retries.labels("projections").inc()

        return await retry_while_unavailable(
            fn,
            on_retry=counted,
            should_stop=self._stopping.is_set,
            give_up_after_s=self.settings.startup_timeout_s if startup else None,
        )

    async def run(self, *, until_idle: bool = False, idle_timeout_s: float = 60.0) -> ProjectionStats:
        assert self._consumer is not None, "start() first"
        consumer = self._consumer
        await self._progress.maybe_sample(self._pool, force=True)  # position 0: rates start here
        if until_idle:
            try:
                await asyncio.wait_for(self._assigned_once.wait(), idle_timeout_s)
            except TimeoutError:
                raise BrokerError("no partitions assigned within the idle timeout") from None
        while not self._stopping.is_set():
            batch = await next_batch(consumer, self.settings, stopping=self._stopping)
            if batch:
                async with self._batch_lock:
                    if not await self._process(batch):
                        break
            elif until_idle and await self._caught_up():
                break
        await self._progress.maybe_sample(self._pool, force=True)
        return self.stats

    async def _caught_up(self) -> bool:
        assert self._consumer is not None
        assignment = list(self._consumer.assignment())
        if not assignment:
            return False
        ends = await self._consumer.end_offsets(assignment)
        for tp in assignment:
            if await self._consumer.position(tp) < ends[tp]:
                return False
        return True

    async def _process(self, batch: dict[TopicPartition, list[Any]]) -> bool:
        assert self._consumer is not None and self._store is not None
        t0 = time.perf_counter()
        events: list[ProjEvent] = []
        positions: dict[tuple[str, int], tuple[int | None, int]] = {}
        n = 0
        for tp, msgs in batch.items():
            key = (tp.topic, tp.partition)
            if key not in self._expected:
                continue  # revoked meanwhile
            n += len(msgs)
            positions[key] = (self._expected[key], msgs[-1].offset + 1)
            for m in msgs:
                e = from_kafka(self.codec, m)
                if e is None:
                    self.stats.skipped += 1
                else:
                    events.append(e)
        if not positions:
            return True
        while True:
            try:
                await self._store.apply(
                    events, generation=self.generation, positions=positions, check_live=True
                )
                break
            except DatabaseUnavailable:
                self._consumer.pause(*self._consumer.assignment())
                metrics.worker_paused.labels("projections").set(1)
                try:
                    await self._retry_db(
                        lambda: self._store.apply(  # type: ignore[union-attr]
                            events, generation=self.generation, positions=positions, check_live=True
                        )
                    )
                    break
                except DatabaseUnavailable:
                    if self._stopping.is_set():
                        return False
                    raise
                except (CheckpointConflict, GenerationChanged) as e:
                    await self._resync(e)
                    return True
                finally:
                    self._consumer.resume(*self._consumer.assignment())
                    metrics.worker_paused.labels("projections").set(0)
            except (CheckpointConflict, GenerationChanged) as e:
                await self._resync(e)
                return True
        for key, (_, new) in positions.items():
            self._expected[key] = new
        try:
            await self._consumer.commit(
                {TopicPartition(*k): OffsetAndMetadata(v[1], "") for k, v in positions.items()}
            )
        except KafkaError as e:  # informational only; the database is the truth
            log.debug("kafka offset commit (informational) failed: %s", e)
        self.stats.batches += 1
        self.stats.records += n
        metrics.batch_records.labels("projections").observe(n)
        metrics.batch_duration.labels("projections").observe(time.perf_counter() - t0)
        await self._update_lag()
        self._progress.advance(n)
        await self._progress.maybe_sample(self._pool)
        return True

    async def _resync(self, why: Exception) -> None:
        """Stored checkpoints moved under us: discard the batch and seek to them."""
        assert self._consumer is not None and self._store is not None
        if isinstance(why, GenerationChanged):
            self.stats.generation_switches += 1
            self.generation = await self._retry_db(self._store.live_generation)
            log.info("projection rebuilt: continuing on generation %d", self.generation)
        else:
            self.stats.conflicts += 1
            log.warning("checkpoint conflict (%s); re-seeking", why)
        await self._seek_to_checkpoints(list(self._consumer.assignment()))

    async def _update_lag(self) -> None:
        if self._consumer is None:
            return
        for tp in self._consumer.assignment():
            hw = self._consumer.highwater(tp)
            exp = self._expected.get((tp.topic, tp.partition))
            if hw is not None:
                metrics.projection_lag.labels("frames", tp.topic, str(tp.partition)).set(
                    max(0, hw - (exp or 0))
                )
