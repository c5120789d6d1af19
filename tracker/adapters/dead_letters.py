"""The dead-letter topic: records that cannot be decoded or validated.

A dead letter keeps the original key, value and headers byte for byte, plus
``tracker.error.*`` headers saying what was wrong and where it came from.
``tracker dlq replay`` re-publishes dead letters to their original topic
(without the error headers), for after a fix such as a newly kept schema.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from tracker.adapters.kafka import make_consumer, make_producer, topic_partitions
from tracker.config import KafkaSettings, TopicSettings
from tracker.errors import BrokerError, DecodeError
from tracker.metrics import dlq_records
from tracker.store.ports import ERROR_PREFIX, DeadLetterSink, SourceRecord, dead_letter_headers

log = logging.getLogger(__name__)


class DeadLetterPublisher(DeadLetterSink):
    """The dead-letter topic as a :class:`~tracker.store.ports.DeadLetterSink`: sends
    dead letters and waits for their acknowledgement, because the consumer
    commits a poison record's offset only once its dead letter is durable."""

    def __init__(self, kafka: KafkaSettings, topic: str, producer: AIOKafkaProducer | None = None) -> None:
        self.topic = topic
        self._producer = producer or make_producer(
            kafka, role="dlq", max_request_size=8 * 1024 * 1024, linger_ms=0
        )

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def send_all(self, dead: Sequence[tuple[SourceRecord, DecodeError]]) -> None:
        if not dead:
            return
        futures = []
        try:
            for msg, error in dead:
                key, value, headers = dead_letter_record(msg, error)
                futures.append(await self._producer.send(self.topic, key=key, value=value, headers=headers))
            await asyncio.gather(*futures)
        except KafkaError as e:
            raise BrokerError(f"cannot write to {self.topic}: {e}", retriable=True) from e
        for msg, error in dead:
            dlq_records.labels(msg.topic, type(error).__name__).inc()
            log.warning(
                "dead-lettered %s[%d]@%d: %s: %s",
                msg.topic,
                msg.partition,
                msg.offset,
                type(error).__name__,
                error,
            )


def dead_letter_record(
    msg: SourceRecord, error: DecodeError
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """Key, value and headers of the dead letter of ``msg``: its own bytes.

    A record with neither key nor value (a keyless tombstone) is legal in Kafka
    but cannot be produced by aiokafka; its dead letter gets an empty value and
    a ``tracker.error.null-value`` header, so it is kept rather than crashing
    the worker.
    """
    headers = dead_letter_headers(msg, error)
    if msg.key is None and msg.value is None:
        return None, b"", [*headers, (ERROR_PREFIX + "null-value", b"1")]
    return msg.key, msg.value, headers


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)

    def error(self, name: str) -> str:
        for k, v in self.headers:
            if k == ERROR_PREFIX + name:
                return v.decode("utf-8", "replace")
        return ""

    def to_json(self) -> dict[str, Any]:
        return {
            "dlq_partition": self.partition,
            "dlq_offset": self.offset,
            "timestamp_ms": self.timestamp_ms,
            "error_class": self.error("class"),
            "error_message": self.error("message"),
            "error_stage": self.error("stage"),
            "source": f"{self.error('topic')}[{self.error('partition')}]@{self.error('offset')}",
            "key": self.key.decode("utf-8", "replace") if self.key is not None else None,
            "value_bytes": len(self.value or b""),
            "value_hex_head": (self.value or b"")[:32].hex(),
        }


async def read_dead_letters(
    kafka: KafkaSettings, topics: TopicSettings, *, limit: int = 1000
) -> list[DeadLetter]:
    """Read the dead-letter topic from the start (no group, nothing committed)."""
    consumer = make_consumer(kafka, group_id=None, role="dlq", isolation_level="read_uncommitted")
    out: list[DeadLetter] = []
    try:
        tps = await topic_partitions(kafka, [topics.dlq])
        if not tps:
            return []
        await consumer.start()
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining and len(out) < limit:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for msgs in batch.values():
                for m in msgs:
                    out.append(
                        DeadLetter(m.partition, m.offset, m.timestamp, m.key, m.value, list(m.headers or ()))
                    )
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    except KafkaError as e:
        raise BrokerError(f"cannot read {topics.dlq}: {e}", retriable=e.retriable) from e
    finally:
        await consumer.stop()
    out.sort(key=lambda d: (d.timestamp_ms, d.partition, d.offset))
    return out[:limit]


async def latest_dead_letters(
    kafka: KafkaSettings, topics: TopicSettings, *, limit: int = 10
) -> list[DeadLetter]:
    """The ``limit`` newest dead letters (by record time, newest first): at most
    ``limit`` records read from the end of each partition, not the whole topic."""
    consumer = make_consumer(kafka, group_id=None, role="dlq", isolation_level="read_uncommitted")
    out: list[DeadLetter] = []
    try:
        tps = await topic_partitions(kafka, [topics.dlq])
        if not tps:
            return []
        await consumer.start()
        consumer.assign(tps)
        begins = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        remaining = set()
        for tp in tps:
            if ends[tp] > begins[tp]:
                consumer.seek(tp, max(begins[tp], ends[tp] - limit))
                remaining.add(tp)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10.0  # a page waits for this: never for long
        while remaining and loop.time() < deadline:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for msgs in batch.values():
                out.extend(
                    DeadLetter(m.partition, m.offset, m.timestamp, m.key, m.value, list(m.headers or ()))
                    for m in msgs
                )
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    except KafkaError as e:
        raise BrokerError(f"cannot read {topics.dlq}: {e}", retriable=e.retriable) from e
    finally:
        await consumer.stop()
    out.sort(key=lambda d: (d.timestamp_ms, d.partition, d.offset), reverse=True)
    return out[:limit]


async def replay_dead_letters(
    kafka: KafkaSettings, topics: TopicSettings, letters: Sequence[DeadLetter]
) -> int:
    """Re-publish dead letters to their original topics (those of ``topics.events``),
    without the error headers."""
    producer = make_producer(kafka, role="dlq", max_request_size=8 * 1024 * 1024)
    sent = 0
    try:
        await producer.start()
        futures = []
        for d in letters:
            topic = d.error("topic")
            if topic not in topics.events:
                log.warning(
                    "dead letter %d@%d has no known source topic %r; skipped", d.partition, d.offset, topic
                )
                continue
            headers = [(k, v) for k, v in d.headers if not k.startswith(ERROR_PREFIX)]
            futures.append(await producer.send(topic, key=d.key, value=d.value, headers=headers))
        await asyncio.gather(*futures)
        sent = len(futures)
    except KafkaError as e:
        raise BrokerError(f"dead-letter replay failed: {e}", retriable=e.retriable) from e
    finally:
        await producer.stop()
    return sent
