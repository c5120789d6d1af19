"""The worker runtime (tracker/runtime/) that both workers are built on."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from aiokafka.errors import KafkaConnectionError

import tracker.adapters.dead_letters
import tracker.runtime.worker
from projections.worker import ProjectionWorker
from tracker.config import Settings
from tracker.errors import BrokerError, TrackerError
from tracker.store.consumer import EventStoreConsumer


async def _connections(settings: Settings) -> int:
    """Sessions open on the test's database, other than the one asking."""
    dbname = settings.database.url.get().rsplit("/", 1)[1]
    conn = await asyncpg.connect(settings.database.url.get())
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                dbname,
            )
        )
    finally:
        await conn.close()


@pytest.mark.parametrize("worker_cls", [EventStoreConsumer, ProjectionWorker])
async def test_a_failing_start_leaves_nothing_open(
    settings: Settings, worker_cls: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Everything opened before the failing step (the pool, the dead-letter
    producer) is closed before the error propagates."""
    producers: list[Any] = []
    real_producer = tracker.adapters.dead_letters.make_producer

    def recording_producer(*a: Any, **kw: Any) -> Any:
        producers.append(real_producer(*a, **kw))
        return producers[-1]

    real_consumer = tracker.runtime.worker.make_consumer

    def failing_consumer(*a: Any, **kw: Any) -> Any:
        consumer = real_consumer(*a, **kw)

        async def start() -> None:
            raise KafkaConnectionError("broker refused the group (test)")

        consumer.start = start
        return consumer

    monkeypatch.setattr(tracker.adapters.dead_letters, "make_producer", recording_producer)
    monkeypatch.setattr(tracker.runtime.worker, "make_consumer", failing_consumer)
    before = await _connections(settings)
    worker = worker_cls(settings)
    with pytest.raises(BrokerError) as raised:  # the driver's error, as one line that says why
        await worker.start()
    assert isinstance(raised.value.__cause__, KafkaConnectionError)
    assert worker.pool is None
    assert await _connections(settings) == before
    if worker_cls is EventStoreConsumer:
        assert len(producers) == 1 and producers[0]._closed  # the DLQ producer was started, then stopped
    with pytest.raises(TrackerError, match="start"):
        await worker.run()
    await worker.stop()  # and stopping what never started is harmless


async def test_workers_hold_at_most_the_pool_size_and_work_with_one_connection(settings: Settings) -> None:
    """TRACKER_DATABASE_POOL_SIZE bounds each worker's pool, down to one
    connection (a server that allows one at a time): a worker's database steps
    run one after the other, so both workers get through a batch with one."""
    from tests.integration.helpers import projection_vs_store, publish_simulation

    sim = await publish_simulation(settings, cameras=2, fps=5, duration_s=2, failure_rate=0.2)
    one = settings.with_overrides(database_pool_size=1)
    async with EventStoreConsumer(one) as store_worker:
        assert store_worker.pool.get_max_size() == 1
        stats = await store_worker.run(until_idle=True)
    assert stats.stored == sim.events
    async with ProjectionWorker(one) as projection_worker:
        assert projection_worker.pool.get_max_size() == 1
        await projection_worker.run(until_idle=True)
    actual, expected = await projection_vs_store(settings)
    assert actual == expected
    async with ProjectionWorker(settings.with_overrides(database_pool_size=3)) as bigger:
        assert bigger.pool.get_max_size() == 3


async def test_a_revoked_partition_leaves_no_lag_series_behind(settings: Settings) -> None:
    """Once another instance owns a partition, this one's last lag value for it
    must go: a ``sum`` over instances would otherwise count it twice."""
    from aiokafka import TopicPartition

    from tracker import metrics
    from tracker.runtime.worker import _Rebalance

    for worker in (EventStoreConsumer(settings), ProjectionWorker(settings)):
        kept, moved = TopicPartition(settings.topics.camera, 0), TopicPartition(settings.topics.camera, 1)
        for tp in (kept, moved):
            gauge, labels = worker.lag_series(tp)
            gauge.labels(*labels).set(42)
        await _Rebalance(worker).on_partitions_revoked([moved])
        text = metrics.exposition()[0].decode()
        name = (
            "tracker_consumer_lag_records"
            if isinstance(worker, EventStoreConsumer)
            else ("tracker_projection_lag_records")
        )
        topic = settings.topics.camera
        series = [line for line in text.splitlines() if line.startswith(name + "{") and topic in line]
        assert len(series) == 1 and 'partition="0"' in series[0], series
        gauge, labels = worker.lag_series(kept)
        gauge.remove(*labels)
