"""``EventStoreConsumer``: consumer group ``<prefix>.event-store``.

For each batch: decode and validate every record; send the bad ones to the
dead-letter topic and wait for the acknowledgement; append the good ones to
``frame_events`` in one transaction; only then commit the offsets. Nothing is
acknowledged to Kafka before it is durable (in PostgreSQL or in the DLQ), and a
redelivered batch is harmless because appends are idempotent on event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata
from opentelemetry.trace import Link, SpanKind
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from tracker import metrics
from tracker.codec import FrameEventCodec
from tracker.config import Settings
from tracker.db import connect_pool, retry_while_unavailable
from tracker.dlq import DeadLetterPublisher
from tracker.errors import (
    BodyError,
    BrokerError,
    DatabaseUnavailable,
    DecodeError,
    FramingError,
    UnknownSchemaError,
    ValidationError,
)
from tracker.events import from_micros
from tracker.kafka import ensure_topics, make_consumer, next_batch
from tracker.lifecycle import TERMINAL, flag_batch
from tracker.progress import ProgressSampler, periodically
from tracker.store import AppendResult, PostgresEventStore, message_to_row
from tracker.telemetry import get_tracer, header, parse_traceparent, remote_span_context

log = logging.getLogger(__name__)
MAX_LINKS = 128
T = TypeVar("T")
_FINISHED = frozenset({"StageCompleted", "StageFailed", "ProcessingCompleted", "ProcessingFailed"})


@dataclass
class DecodedBatch:
    """A batch split into valid records (with their Kafka metadata) and dead letters."""

    good: list[dict[str, Any]] = field(default_factory=list)
    # ``frame_events`` rows of ``good``, built while decoding; their lifecycle
    # flag (the last column) is set once the stored terminals are known.
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    dead: list[tuple[Any, DecodeError]] = field(default_factory=list)
    links: dict[str, list[Link]] = field(default_factory=dict)


def decode_batch(codec: FrameEventCodec, messages: Iterable[Any]) -> DecodedBatch:
    """Decode and validate records; keep each one's trace context and links."""
    out = DecodedBatch()
    for msg in messages:
        try:
            decoded = codec.decode_record(msg.value)
        except DecodeError as e:
            out.dead.append((msg, e))
            continue
        tctx = parse_traceparent(header(msg.headers, "traceparent"))
        out.good.append(decoded.record)
        out.rows.append(message_to_row(msg, decoded.record, decoded.fingerprint, tctx))
        if tctx is not None:
            tl = out.links.setdefault(msg.topic, [])
            if len(tl) < MAX_LINKS:
                tl.append(Link(remote_span_context(*tctx)))
    return out


async def _direct(fn: Callable[[], Awaitable[T]]) -> T:
    return await fn()


async def store_batch(
    store: PostgresEventStore,
    batch: DecodedBatch,
    *,
    run: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]] = _direct,
) -> tuple[AppendResult, list[dict[str, Any]]]:
    """The event store's database steps for one decoded batch: partitions,
    lifecycle flags against stored terminal events, idempotent append.

    ``run`` wraps each step (the consumer pauses fetching and retries there).
    Returns the append result and the records flagged as lifecycle violations.
    """
    good = batch.good
    first_us = min(r["frame_timestamp"] for r in good)
    last_us = max(r["frame_timestamp"] for r in good)
    days = {from_micros(r["frame_timestamp"]).date() for r in good}
    await run(lambda: store.ensure_partitions(days))
    frames = sorted(
        {r["frame_id"] for r in good if r["event_type"] in TERMINAL or r["event_type"].startswith("Stage")}
    )
    stored_terminals: dict[str, list[tuple[str, str, int]]] = {}
    if frames:
        stored_terminals = await run(
            lambda: store.stored_terminals(frames, from_micros(first_us), from_micros(last_us))
        )
    flag_batch(good, stored_terminals)
    rows = list(batch.rows)
    for i, rec in enumerate(good):
        if rec.get("lifecycle_flag"):
            rows[i] = (*rows[i][:-1], rec["lifecycle_flag"])
    result = await run(lambda: store.append(rows))
    return result, [r for r in good if r.get("lifecycle_flag")]


@dataclass
class ConsumerStats:
    batches: int = 0
    records: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    flagged: int = 0
    db_retries: int = 0
    started: float = field(default_factory=time.monotonic)


@dataclass
class _Prepared:
    """A fetched batch, decoded, waiting for its turn to be written."""

    batch: dict[TopicPartition, list[Any]]
    offsets: dict[TopicPartition, OffsetAndMetadata]
    records: int
    decoded: DecodedBatch
    decode_s: float


class _Abandoned(Exception):
    """A batch given up uncommitted because a stop was requested mid-outage."""


class _Rebalance(ConsumerRebalanceListener):
    """Revocation waits for the in-flight batch: it finishes (and commits) or is
    abandoned before the partitions move, so the next owner never races a
    half-written batch of ours."""

    def __init__(self, worker: EventStoreConsumer) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Any) -> None:
        async with self.worker._batch_lock:
            log.info("partitions revoked: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))
        self.worker._assigned_once.set()


class EventStoreConsumer:
    def __init__(
        self,
        settings: Settings,
        *,
        codec: FrameEventCodec | None = None,
        group_id: str | None = None,
        on_batch: Callable[[ConsumerStats], None] | None = None,
    ) -> None:
        self.settings = settings
        self.codec = codec or FrameEventCodec()
        self.group_id = group_id or settings.event_store_group
        self.stats = ConsumerStats()
        self._on_batch = on_batch
        self._stopping = asyncio.Event()
        self._batch_lock = asyncio.Lock()
        self._assigned_once = asyncio.Event()
        self._tracer = get_tracer("tracker.consumer")
        self._consumer: AIOKafkaConsumer | None = None
        self._pool: Any = None
        self._store: PostgresEventStore | None = None
        self._dlq: DeadLetterPublisher | None = None
        self._lag_task: asyncio.Task[None] | None = None
        self._progress = ProgressSampler(f"event-store/{uuid.uuid4().hex[:12]}")

    def request_stop(self) -> None:
        self._stopping.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)

    # ---- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        await ensure_topics(self.settings, [*self.settings.event_topics, self.settings.dlq_topic])
        self._pool = await self._retry_db(
            lambda: connect_pool(self.settings, min_size=1, max_size=2), startup=True
        )
        self._store = PostgresEventStore(self._pool)
        today = datetime.now(UTC).date()
        await self._retry_db(
            lambda: self._store.ensure_partitions(  # type: ignore[union-attr]
                {today + timedelta(days=d) for d in range(-1, 3)}
            )
        )
        self._dlq = DeadLetterPublisher(self.settings)
        await self._dlq.start()
        self._consumer = make_consumer(
            self.settings,
            group_id=self.group_id,
            max_poll_records=self.settings.batch_max_records,
        )
        self._consumer.subscribe(list(self.settings.event_topics), listener=_Rebalance(self))
        await self._consumer.start()
        # Known label sets start at zero, so rate() sees the first dead letter.
        for topic in self.settings.event_topics:
            for cls in (FramingError, UnknownSchemaError, BodyError, ValidationError):
                metrics.dlq_records.labels(topic, cls.__name__)
        # Lag gauges also refresh on a timer: a stalled or paused worker (no
        # batches) is exactly when lag alerts need fresh numbers.
        self._lag_task = asyncio.create_task(periodically(self._update_lag, 5.0))

    async def stop(self) -> None:
        """Leave the group and close everything; safe under cancellation."""
        if self._lag_task is not None:
            self._lag_task.cancel()
            self._lag_task = None
        if self._consumer is not None:
            await asyncio.shield(self._consumer.stop())
            self._consumer = None
        if self._dlq is not None:
            await asyncio.shield(self._dlq.stop())
            self._dlq = None
        if self._pool is not None:
            await asyncio.shield(self._pool.close())
            self._pool = None

    async def __aenter__(self) -> EventStoreConsumer:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    # ---- main loop -----------------------------------------------------------
    async def run(self, *, until_idle: bool = False, idle_timeout_s: float = 60.0) -> ConsumerStats:
        """Consume until stopped (or, with ``until_idle``, until caught up)."""
        assert self._consumer is not None, "start() first"
        consumer = self._consumer
        await self._progress.maybe_sample(self._pool, force=True)  # position 0: rates start here
        if until_idle:
            try:
                await asyncio.wait_for(self._assigned_once.wait(), idle_timeout_s)
            except TimeoutError:
                raise BrokerError("no partitions assigned within the idle timeout") from None
        # Two batches in hand at most: while one is written (PostgreSQL busy), the
        # next is fetched and decoded (this process busy). Writes, and so offset
        # commits, still happen one batch at a time and in order.
        writing: asyncio.Task[bool] | None = None
        try:
            while not self._stopping.is_set():
                batch = await next_batch(consumer, self.settings, stopping=self._stopping)
                if batch:
                    prepared = self._prepare(batch)
                    if writing is not None and not await writing:
                        writing = None
                        break  # stop requested while the database was down
                    writing = asyncio.create_task(self._write_locked(prepared))
                    continue
                if writing is not None:
                    done, writing = await writing, None
                    if not done:
                        break
                    await self._update_lag()
                elif until_idle and await self._caught_up():
                    break
            if writing is not None:
                await writing
                writing = None
        finally:
            if writing is not None:  # leaving on an error: let the write end first
                with contextlib.suppress(Exception):
                    await writing
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

    async def _update_lag(self) -> None:
        if self._consumer is None:
            return
        for tp in self._consumer.assignment():
            hw = self._consumer.highwater(tp)
            if hw is None:
                continue
            try:
                pos = await asyncio.wait_for(self._consumer.position(tp), 1.0)
            except (TimeoutError, KafkaError):
                continue
            metrics.consumer_lag.labels(self.group_id, tp.topic, str(tp.partition)).set(max(0, hw - pos))

    async def _retry_db(self, fn: Callable[[], Any], *, startup: bool = False) -> Any:
        """Retry while the database is unavailable, unless a stop was requested
        (or, at start-up, the start-up timeout has passed)."""

        def counted(_: BaseException) -> None:
            self.stats.db_retries += 1
            metrics.db_retries.labels("event-store").inc()

        return await retry_while_unavailable(
            fn,
            on_retry=counted,
            should_stop=self._stopping.is_set,
            give_up_after_s=self.settings.startup_timeout_s if startup else None,
        )

    def _prepare(self, batch: dict[TopicPartition, list[Any]]) -> _Prepared:
        """The CPU part of a batch: decoding and validation."""
        t0 = time.perf_counter()
        return _Prepared(
            batch=batch,
            offsets={tp: OffsetAndMetadata(msgs[-1].offset + 1, "") for tp, msgs in batch.items()},
            records=sum(len(msgs) for msgs in batch.values()),
            decoded=decode_batch(self.codec, (m for msgs in batch.values() for m in msgs)),
            decode_s=time.perf_counter() - t0,
        )

    async def _write_locked(self, prepared: _Prepared) -> bool:
        async with self._batch_lock:
            done = await self._write(prepared)
        if done:
            await self._update_lag()
        return done

    async def _write(self, prepared: _Prepared) -> bool:
        """Make one decoded batch durable, then commit it. Returns False if abandoned."""
        assert self._consumer is not None and self._store is not None and self._dlq is not None
        t0 = time.perf_counter() - prepared.decode_s
        batch, offsets, n, decoded = prepared.batch, prepared.offsets, prepared.records, prepared.decoded
        dead = decoded.dead
        links = decoded.links

        spans = [
            self._tracer.start_span(
                f"process {topic}",
                kind=SpanKind.CONSUMER,
                links=links.get(topic, []),
                attributes={
                    "messaging.system": "kafka",
                    "messaging.operation.type": "process",
                    "messaging.destination.name": topic,
                    "messaging.consumer.group.name": self.group_id,
                    "messaging.batch.message_count": sum(
                        len(m) for tp, m in batch.items() if tp.topic == topic
                    ),
                },
            )
            for topic in sorted({tp.topic for tp in batch})
        ]
        try:
            if dead:
                await self._retry_kafka(lambda: self._dlq.send_all(dead))  # type: ignore[union-attr]
            if decoded.good:
                result, flagged = await store_batch(self._store, decoded, run=self._durable)
                if flagged:
                    self.stats.flagged += len(flagged)
                    for rec in flagged:
                        metrics.events_flagged.labels(rec["event_type"]).inc()
                self._observe(result.inserted)
                self.stats.stored += len(result.inserted)
                self.stats.duplicates += result.duplicates
                metrics.events_duplicate.inc(result.duplicates)
            # Durable in PostgreSQL and the DLQ: now, and only now, acknowledge,
            # for the partitions still ours. A batch fetched before a rebalance
            # can hold records of a partition since revoked: they are stored, and
            # its new owner re-reads them, which the idempotent append makes harmless.
            assigned = self._consumer.assignment()
            mine = {tp: om for tp, om in offsets.items() if tp in assigned}
            try:
                if mine:
                    await self._consumer.commit(mine)
            except (CommitFailedError, IllegalStateError) as e:
                # The group rebalanced under us (or is rebalancing right now).
                log.warning("offset commit failed after a rebalance (records will be redelivered): %s", e)
        except _Abandoned:
            return False
        finally:
            for span in spans:
                span.end()
        self.stats.batches += 1
        self.stats.records += n
        self.stats.dead_lettered += len(dead)
        metrics.batch_records.labels("event-store").observe(n)
        metrics.batch_duration.labels("event-store").observe(time.perf_counter() - t0)
        self._progress.advance(n)
        await self._progress.maybe_sample(self._pool)
        if self._on_batch:
            self._on_batch(self.stats)
        return True

    async def _durable(self, fn: Callable[[], Any]) -> Any:
        """Run a database step, pausing fetching while the database is down.

        Raises :class:`_Abandoned` when a stop was requested during the outage:
        the batch is left uncommitted and will be redelivered.
        """
        assert self._consumer is not None
        try:
            return await fn()
        except DatabaseUnavailable:
            pass
        paused = list(self._consumer.assignment())
        self._consumer.pause(*paused)
        metrics.worker_paused.labels("event-store").set(1)
        try:
            return await self._retry_db(fn)
        except DatabaseUnavailable:
            if self._stopping.is_set():
                log.warning("stopping during a database outage; batch left uncommitted")
                raise _Abandoned from None
            raise
        finally:
            self._consumer.resume(*[tp for tp in paused if tp in self._consumer.assignment()])
            metrics.worker_paused.labels("event-store").set(0)

    async def _retry_kafka(self, fn: Callable[[], Any]) -> None:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(BrokerError),
            wait=wait_exponential(multiplier=0.2, min=0.2, max=5.0),
            reraise=True,
        ):
            with attempt:
                await fn()

    def _observe(self, inserted: list[Any]) -> None:
        """Metrics for a batch of stored rows. Counters are summed per label set
        and incremented once each, histogram children are looked up once per
        label set: a label lookup per row (a dict lookup under a lock) cost more
        than the rest of this method's per-row work."""
        stored: Counter[str] = Counter()
        processed: Counter[tuple[str, str, str]] = Counter()
        errors: Counter[tuple[str, str, str]] = Counter()
        histograms: dict[tuple[str, str], Any] = {}
        for row in inserted:
            et = row["event_type"]
            stored[et] += 1
            if et in _FINISHED:
                stage = (row["stage"] if et.startswith("Stage") else "total") or "unknown"
                status = "completed" if et.endswith("Completed") else "failed"
                camera = row["camera_id"]
                processed[(camera, stage, status)] += 1
                if status == "failed":
                    errors[(camera, stage, row["error_type"] or "")] += 1
                if row["duration_ms"] is not None:
                    h = histograms.get((camera, stage))
                    if h is None:
                        h = metrics.tracker_frame_processing_duration.labels(camera, stage)
                        histograms[(camera, stage)] = h
                    tid = row["trace_id"]
                    ex = {"trace_id": tid, "span_id": row["span_id"] or ""} if tid else None
                    h.observe(row["duration_ms"] / 1000.0, ex)
        for et, n in stored.items():
            metrics.events_stored.labels(et).inc(n)
        for labels, n in processed.items():
            metrics.tracker_frames_processed.labels(*labels).inc(n)
        for labels, n in errors.items():
            metrics.tracker_frame_errors.labels(*labels).inc(n)
