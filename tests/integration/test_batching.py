"""Worker batching against the real broker: ``tracker.adapters.kafka.next_batch``."""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition

from tracker.adapters.kafka import ensure_topics, make_consumer, make_producer, next_batch
from tracker.config import Settings


async def _trickle(settings: Settings, topic: str, n: int, gap_s: float) -> None:
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        for i in range(n):
            await producer.send_and_wait(topic, f"r{i}".encode(), partition=0)
            await asyncio.sleep(gap_s)
    finally:
        await producer.stop()


async def _batches(settings: Settings, topic: str, want: int) -> list[list[int]]:
    consumer = make_consumer(settings.kafka, topic, group_id=f"{settings.groups.prefix}.batching")
    await consumer.start()
    got: list[list[int]] = []
    try:
        while sum(len(b) for b in got) < want:
            batch = await asyncio.wait_for(next_batch(consumer, settings.batch), 30)
            if batch:
                got.append([m.offset for m in batch[TopicPartition(topic, 0)]])
    finally:
        await consumer.stop()
    return got


async def test_a_trickle_is_gathered_into_batches_within_the_linger(settings: Settings) -> None:
    topic = settings.topics.camera
    await ensure_topics(settings.kafka, settings.topics, [topic])
    # 40 records, one every 10 ms: about 400 ms of trickle.
    lingering = settings.with_overrides(batch_linger_ms=200, batch_max_records=1000)
    consumer_task = asyncio.create_task(_batches(lingering, topic, 40))
    await asyncio.sleep(1.0)  # the consumer has joined and is polling
    await _trickle(settings, topic, 40, 0.01)
    batches = await consumer_task
    offsets = [o for b in batches for o in b]
    assert offsets == list(range(40)), "every record once, in offset order"
    # Without lingering a poll returns the one or two records buffered; with
    # 200 ms a batch holds what arrived in its window (~20 at this pace).
    assert max(len(b) for b in batches) >= 5, batches


async def test_batch_max_records_closes_a_batch_before_the_linger(settings: Settings) -> None:
    topic = settings.topics.camera
    await ensure_topics(settings.kafka, settings.topics, [topic])
    await _trickle(settings, topic, 25, 0.0)
    capped = settings.with_overrides(batch_linger_ms=5000, batch_max_records=10)
    batches = await _batches(capped, topic, 25)
    assert [len(b) for b in batches] == [10, 10, 5]
    assert [o for b in batches for o in b] == list(range(25))
