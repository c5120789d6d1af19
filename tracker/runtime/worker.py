"""The runtime every long-running consumer-group worker is built on.

A worker (the event-store consumer, the projection worker) keeps only what is
its own: what to open besides the database pool and the Kafka consumer, how to
turn a fetched batch into something to write (:meth:`KafkaWorker.prepare`,
CPU only), how to make it durable (:meth:`KafkaWorker.write`), and where its
partitions stand for lag. The runtime owns the rest, once:

- lifecycle: ``start()`` opens everything on an exit stack, so a failing start
  closes what it had opened; ``stop()`` closes it all, shielded from
  cancellation; ``async with``;
- the loop: ``run(until_idle=...)``, with the next batch fetched and prepared
  while the previous one is written when the worker is ``pipelined`` (writes,
  and so commits, still happen one batch at a time and in order);
- outages: :meth:`KafkaWorker.durable` pauses fetching on the partitions the
  worker owns, retries while the database is unavailable, resumes only the
  partitions still owned, and raises :class:`~tracker.errors.Interrupted` when a stop was
  requested meanwhile (the batch stays uncommitted and is redelivered);
- rebalances: a revocation waits for the batch being written;
- lag, refreshed after every batch and on a timer; background tasks whose
  failure is raised by the worker's next step instead of vanishing;
- SIGTERM and SIGINT (:func:`on_stop_signals`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import Gauge

from tracker import metrics
from tracker.adapters.kafka import broker_error, ensure_topics, make_consumer, next_batch
from tracker.adapters.postgres import connect_pool, retry_while_unavailable
from tracker.adapters.progress import ProgressSampler, periodically
from tracker.config import Settings
from tracker.errors import BrokerError, DatabaseUnavailable, Interrupted, TrackerError
from tracker.runtime.write_behind import WriteBehind

log = logging.getLogger(__name__)

P = TypeVar("P")
T = TypeVar("T")
Batch = dict[TopicPartition, list[Any]]


def on_stop_signals(callback: Callable[[], None]) -> None:
    """Call ``callback`` on SIGTERM (how supervisors stop a process) and SIGINT."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, callback)


@dataclass
class WorkerStats:
    """What every worker counts; each worker's stats add their own fields."""

    batches: int = 0
    records: int = 0
    db_retries: int = 0
    started: float = field(default_factory=time.monotonic)


class _Rebalance(ConsumerRebalanceListener):
    """Revocation waits for the batch being written: it finishes (and commits)
    or is abandoned before the partitions move, so the next owner never races a
    half-written batch of ours."""

    def __init__(self, worker: KafkaWorker[Any]) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Any) -> None:
        async with self.worker._batch_lock:
            log.info("partitions revoked: %s", _names(revoked))
            await self.worker.on_revoked(list(revoked))
            for tp in revoked:
                gauge, labels = self.worker.lag_series(tp)
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned: %s", _names(assigned))
        await self.worker.on_assigned(list(assigned))
        self.worker.assigned.set()


def _names(tps: Any) -> list[str]:
    return sorted(f"{tp.topic}[{tp.partition}]" for tp in tps)


class KafkaWorker(ABC, Generic[P]):
    """A consumer-group worker; subclasses say how a batch is handled."""

    #: The worker's name in metrics labels and progress samples.
    kind: ClassVar[str]
    #: Write one batch while fetching and preparing the next.
    pipelined: ClassVar[bool] = False

    stats: WorkerStats

    def __init__(self, settings: Settings, *, group_id: str) -> None:
        self.settings = settings
        self.group_id = group_id
        self.assigned = asyncio.Event()  # set once partitions were first assigned
        self._stopping = asyncio.Event()
        self._batch_lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._pool: Any = None
        self._exit: contextlib.AsyncExitStack | None = None
        self._background: list[asyncio.Task[Any]] = []
        self.progress = ProgressSampler(f"{self.kind}/{uuid.uuid4().hex[:12]}")

    # ---- what a worker says about itself --------------------------------------
    @property
    def topics(self) -> Sequence[str]:
        """Topics to subscribe to."""
        return self.settings.topics.events

    @property
    def topics_to_ensure(self) -> Sequence[str]:
        """Topics created at start if missing."""
        return self.topics

    async def open(self, stack: contextlib.AsyncExitStack) -> None:
        """Open the worker's own resources (the pool is open); push their closers on ``stack``."""

    @abstractmethod
    def prepare(self, batch: Batch) -> P:
        """The CPU part of a batch (decoding); no I/O."""

    @abstractmethod
    async def write(self, prepared: P) -> int:
        """Make a prepared batch durable and acknowledge it; returns how many
        records it made durable. Database steps go through :meth:`durable`."""

    async def on_assigned(self, tps: list[TopicPartition]) -> None:
        """Partitions assigned (before the first fetch from them)."""

    async def on_revoked(self, tps: list[TopicPartition]) -> None:
        """Partitions revoked (no batch is being written)."""

    @abstractmethod
    async def position(self, tp: TopicPartition) -> int | None:
        """Where the worker stands in ``tp`` (its next offset), for lag; ``None``: unknown."""

    @abstractmethod
    def lag_series(self, tp: TopicPartition) -> tuple[Gauge, tuple[str, ...]]:
        """The gauge and label values of the worker's lag for ``tp``. The runtime
        sets it, and removes it when ``tp`` is revoked: a partition another
        instance now owns must not keep this one's last value (a ``sum`` over
        instances would count the partition twice)."""

    # ---- lifecycle ----------------------------------------------------------
    @property
    def consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise TrackerError(f"{type(self).__name__} is not started: call start() first")
        return self._consumer

    @property
    def pool(self) -> Any:
        return self._pool

    async def start(self) -> None:
        """Open the pool, the worker's own resources and the consumer. A failure
        closes whatever was already open before it propagates."""
        async with contextlib.AsyncExitStack() as stack:
            await ensure_topics(self.settings.kafka, self.settings.topics, list(self.topics_to_ensure))
            # At most TRACKER_DATABASE_POOL_SIZE connections (one is enough: a
            # worker's database steps run one at a time).
            self._pool = await self.retry_db(
                lambda: connect_pool(self.settings.database, min_size=1), startup=True
            )
            stack.push_async_callback(self._close_pool)
            await self.open(stack)
            consumer = make_consumer(
                self.settings.kafka,
                group_id=self.group_id,
                role=self.kind,
                max_poll_records=self.settings.batch.max_records,
            )
            consumer.subscribe(list(self.topics), listener=_Rebalance(self))
            stack.push_async_callback(self._close_consumer)
            self._consumer = consumer
            try:
                await consumer.start()
            except KafkaError as e:
                raise await broker_error(self.settings.kafka, f"{self.kind} cannot start", e) from e
            # Lag also refreshes on a timer: a stalled or paused worker (no
            # batches) is exactly when lag alerts need fresh numbers.
            self.spawn(periodically(self.update_lag, 5.0))
            self._exit = stack.pop_all()

    async def stop(self) -> None:
        """Leave the group and close everything; safe to call twice and under cancellation."""
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(BaseException):
                await task
        self._background.clear()
        exit_stack, self._exit = self._exit, None
        if exit_stack is not None:
            await exit_stack.aclose()

    async def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.shield(pool.close())

    async def _close_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await asyncio.shield(consumer.stop())

    async def __aenter__(self: Any) -> Any:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def request_stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def install_signal_handlers(self) -> None:
        on_stop_signals(self.request_stop)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A background task of this worker: cancelled by ``stop()``; if it
        dies, its error is raised by the worker's next loop step."""
        task = asyncio.create_task(coro)
        self._background.append(task)
        return task

    def _raise_background_failure(self) -> None:
        for task in self._background:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise TrackerError(f"a background task of {self.kind} failed") from task.exception()

    # ---- the loop -----------------------------------------------------------
    async def run(self, *, until_idle: bool = False, idle_timeout_s: float = 60.0) -> Any:
        """Handle batches until stopped (or, with ``until_idle``, until caught up)."""
        consumer = self.consumer
        await self.progress.maybe_sample(self._pool, force=True)  # position 0: rates start here
        if until_idle:
            try:
                await asyncio.wait_for(self.assigned.wait(), idle_timeout_s)
            except TimeoutError:
                raise BrokerError("no partitions assigned within the idle timeout") from None
        async with WriteBehind[bool]() as behind:
            while not self._stopping.is_set():
                self._raise_background_failure()
                try:
                    batch = await next_batch(consumer, self.settings.batch, stopping=self._stopping)
                except KafkaError as e:  # e.g. not authorized to read: one line that says so
                    raise await broker_error(self.settings.kafka, f"{self.kind} cannot fetch", e) from e
                if batch:
                    t0 = time.perf_counter()
                    prepared = self.prepare(batch)
                    prepare_s = time.perf_counter() - t0
                    if not self.pipelined:
                        if not await self._write_locked(prepared, prepare_s):
                            break
                        continue
                    if await behind.wait() is False:
                        break  # stop requested while the database was down
                    behind.start(self._write_locked(prepared, prepare_s))
                    continue
                if behind.in_flight:
                    if await behind.wait() is False:
                        break
                elif until_idle and await self.caught_up():
                    break
        await self.progress.maybe_sample(self._pool, force=True)
        return self.stats

    async def _write_locked(self, prepared: P, prepare_s: float) -> bool:
        """Write one batch; ``False`` if it was abandoned."""
        t0 = time.perf_counter() - prepare_s
        async with self._batch_lock:
            try:
                n = await self.write(prepared)
            except Interrupted:
                return False
        metrics.batch_records.labels(self.kind).observe(n)
        metrics.worker_records.labels(self.kind).inc(n)  # throughput: rate() of it
        metrics.batch_duration.labels(self.kind).observe(time.perf_counter() - t0)
        self.progress.advance(n)
        await self.update_lag()
        await self.progress.maybe_sample(self._pool)
        return True

    async def caught_up(self) -> bool:
        """Whether every partition of the assignment is read to its end. A partition revoked
        meanwhile (a rebalance during ``end_offsets``) has no position: not caught up, and the
        next check sees the new assignment."""
        consumer = self.consumer
        assignment = list(consumer.assignment())
        if not assignment:
            return False
        ends = await consumer.end_offsets(assignment)
        for tp in assignment:
            pos = await self.kafka_position(tp)
            if pos is None or pos < ends[tp]:
                return False
        return True

    async def update_lag(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        for tp in consumer.assignment():
            hw = consumer.highwater(tp)
            if hw is None:
                continue
            pos = await self.position(tp)
            if pos is not None and tp in consumer.assignment():
                gauge, labels = self.lag_series(tp)
                gauge.labels(*labels).set(max(0, hw - pos))

    # ---- the database ---------------------------------------------------------
    async def retry_db(self, fn: Callable[[], Awaitable[T]], *, startup: bool = False) -> T:
        """Retry while the database is unavailable, unless a stop was requested
        (or, at start-up, the start-up timeout has passed)."""

        def counted(_: BaseException) -> None:
            self.stats.db_retries += 1
            metrics.db_retries.labels(self.kind).inc()

        return await retry_while_unavailable(
            fn,
            on_retry=counted,
            should_stop=self._stopping.is_set,
            give_up_after_s=self.settings.database.startup_timeout_s if startup else None,
        )

    async def durable(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run a database step of a batch, pausing fetching while the database is down.

        Raises :class:`~tracker.errors.Interrupted` when a stop was requested
        during the outage: the batch is given up uncommitted, and its records
        are delivered again to whoever reads next.
        """
        try:
            return await fn()
        except DatabaseUnavailable:
            pass
        consumer = self.consumer
        paused = list(consumer.assignment())
        consumer.pause(*paused)
        metrics.worker_paused.labels(self.kind).set(1)
        try:
            return await self.retry_db(fn)
        except DatabaseUnavailable:
            if self._stopping.is_set():
                log.warning("stopping during a database outage; batch left uncommitted")
                raise Interrupted("stop requested during a database outage") from None
            raise
        finally:
            # Only what is still ours: a rebalance during the outage may have moved some.
            owned = consumer.assignment()
            consumer.resume(*[tp for tp in paused if tp in owned])
            metrics.worker_paused.labels(self.kind).set(0)

    async def kafka_position(self, tp: TopicPartition) -> int | None:
        """The consumer's own position in ``tp`` (bounded wait; ``None`` if unknown)."""
        try:
            return await asyncio.wait_for(self.consumer.position(tp), 1.0)
        except (TimeoutError, KafkaError, TrackerError):
            return None
