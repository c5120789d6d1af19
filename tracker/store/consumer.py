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
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from aiokafka.structs import OffsetAndMetadata
from opentelemetry.trace import Link, SpanKind
from prometheus_client import Gauge
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from tracker import metrics
from tracker.adapters.dead_letters import DeadLetterPublisher
from tracker.adapters.kafka import messaging_attributes
from tracker.codec import FrameEventCodec
from tracker.config import Settings
from tracker.domain import FAILURE_EVENT_TYPES, FINISHING_EVENT_TYPES, STAGE_EVENT_TYPES
from tracker.errors import (
    BodyError,
    BrokerError,
    DecodeError,
    FramingError,
    TrackerError,
    UnknownSchemaError,
    ValidationError,
)
from tracker.runtime import KafkaWorker, WorkerStats
from tracker.store.batch import store_batch
from tracker.store.ports import DeadLetterSink, EventStore, InlineProjection, InlineStep
from tracker.store.postgres import PostgresEventStore, message_to_row
from tracker.telemetry import get_tracer, header, parse_traceparent, remote_span_context

log = logging.getLogger(__name__)
MAX_LINKS = 128


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


@dataclass
class ConsumerStats(WorkerStats):
    stored: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    flagged: int = 0


@dataclass
class _Prepared:
    """A fetched batch, decoded, waiting for its turn to be written."""

    batch: dict[TopicPartition, list[Any]]
    offsets: dict[TopicPartition, OffsetAndMetadata]
    records: int
    decoded: DecodedBatch
    # The inline projection's fold of ``decoded`` (None without one).
    projection: Any = None


class EventStoreConsumer(KafkaWorker[_Prepared]):
    """Stores every valid event once; see the module's docstring."""

    kind = "event-store"
    stats: ConsumerStats
    # Two batches in hand at most: while one is written (PostgreSQL busy), the
    # next is fetched and decoded (this process busy).
    pipelined = True

    def __init__(
        self,
        settings: Settings,
        *,
        codec: FrameEventCodec | None = None,
        group_id: str | None = None,
        on_batch: Callable[[ConsumerStats], None] | None = None,
        inline: InlineProjection | None = None,
    ) -> None:
        super().__init__(settings, group_id=group_id or settings.groups.event_store)
        self.codec = codec or FrameEventCodec()
        self.stats = ConsumerStats()
        self._on_batch = on_batch
        self._tracer = get_tracer("tracker.store.consumer")
        self._store: EventStore | None = None
        self._dlq: DeadLetterSink | None = None
        # An inline projection is kept in each append's transaction.
        self.inline = inline

    @property
    def topics_to_ensure(self) -> list[str]:
        return [*self.settings.topics.events, self.settings.topics.dlq]

    async def open(self, stack: contextlib.AsyncExitStack) -> None:
        store = self._store = PostgresEventStore(self.pool)
        today = datetime.now(UTC).date()
        days = {today + timedelta(days=d) for d in range(-1, 3)}
        await self.retry_db(lambda: store.ensure_partitions(days))
        dlq = DeadLetterPublisher(self.settings.kafka, self.settings.topics.dlq)
        await dlq.start()
        stack.push_async_callback(lambda: asyncio.shield(dlq.stop()))
        self._dlq = dlq
        if self.inline is not None:
            await self.inline.open(self.pool)
        # Known label sets start at zero, so rate() sees the first dead letter.
        for topic in self.settings.topics.events:
            for cls in (FramingError, UnknownSchemaError, BodyError, ValidationError):
                metrics.dlq_records.labels(topic, cls.__name__)

    async def position(self, tp: TopicPartition) -> int | None:
        return await self.kafka_position(tp)

    def lag_series(self, tp: TopicPartition) -> tuple[Gauge, tuple[str, ...]]:
        return metrics.consumer_lag, (self.group_id, tp.topic, str(tp.partition))

    def prepare(self, batch: dict[TopicPartition, list[Any]]) -> _Prepared:
        """The CPU part of a batch: decoding and validation (and the inline projection's fold)."""
        decoded = decode_batch(self.codec, (m for msgs in batch.values() for m in msgs))
        inline = self.inline
        return _Prepared(
            batch=batch,
            offsets={tp: OffsetAndMetadata(msgs[-1].offset + 1, "") for tp, msgs in batch.items()},
            records=sum(len(msgs) for msgs in batch.values()),
            decoded=decoded,
            projection=inline.prepare(decoded.good, decoded.rows) if inline and decoded.good else None,
        )

    async def write(self, prepared: _Prepared) -> int:
        """Make one decoded batch durable, then commit it (raises Interrupted)."""
        if self._store is None or self._dlq is None:
            raise TrackerError("EventStoreConsumer is not started: call start() first")
        consumer, store, dlq = self.consumer, self._store, self._dlq
        batch, offsets, n, decoded = prepared.batch, prepared.offsets, prepared.records, prepared.decoded
        dead = decoded.dead
        links = decoded.links
        # server.address, server.port and messaging.client.id (that of the consumer the runtime made)
        client = messaging_attributes(self.settings.kafka, self.kind)

        spans = [
            self._tracer.start_span(
                f"process {topic}",
                kind=SpanKind.CONSUMER,
                links=links.get(topic, []),
                attributes={
                    "messaging.system": "kafka",
                    "messaging.operation.type": "process",
                    "messaging.operation.name": "process",
                    "messaging.destination.name": topic,
                    "messaging.consumer.group.name": self.group_id,
                    "messaging.batch.message_count": sum(
                        len(m) for tp, m in batch.items() if tp.topic == topic
                    ),
                    **client,
                },
            )
            for topic in sorted({tp.topic for tp in batch})
        ]
        try:
            if dead:
                await self._retry_kafka(lambda: dlq.send_all(dead))
            if decoded.good:
                step = None
                if self.inline is not None:
                    inline, fold = self.inline, prepared.projection
                    await self.durable(lambda: inline.before(fold))
                    step = self._inline_step(fold, offsets, consumer.assignment())
                result, flagged = await store_batch(store, decoded, run=self.durable, inline=step)
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
            assigned = consumer.assignment()
            mine = {tp: om for tp, om in offsets.items() if tp in assigned}
            try:
                if mine:
                    await consumer.commit(mine)
            except (CommitFailedError, IllegalStateError) as e:
                # The group rebalanced under us (or is rebalancing right now).
                log.warning("offset commit failed after a rebalance (records will be redelivered): %s", e)
        except BaseException as e:
            for span in spans:
                span.set_attribute("error.type", type(e).__qualname__)
            raise
        finally:
            for span in spans:
                span.end()
        self.stats.batches += 1
        self.stats.records += n
        self.stats.dead_lettered += len(dead)
        if self._on_batch:
            self._on_batch(self.stats)
        return n

    def _inline_step(
        self, fold: Any, offsets: dict[TopicPartition, OffsetAndMetadata], assigned: Any
    ) -> InlineStep:
        """The inline projection's write, with checkpoints for the partitions still ours."""
        inline = self.inline
        assert inline is not None
        positions = {(tp.topic, tp.partition): om.offset for tp, om in offsets.items() if tp in assigned}
        every = [
            (topic, p)
            for topic in self.topics
            for p in sorted(self.consumer.partitions_for_topic(topic) or ())
        ]
        return lambda conn: inline.apply(conn, fold, positions, every)

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
            if et in FINISHING_EVENT_TYPES:
                stage = (row["stage"] if et in STAGE_EVENT_TYPES else "total") or "unknown"
                status = "failed" if et in FAILURE_EVENT_TYPES else "completed"
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
