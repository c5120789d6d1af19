"""The PostgreSQL event store and the Kafka dead-letter sink pass the contract
suites (tests/support/contracts.py), against the local stack."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.integration.helpers import read_topic
from tests.support.contracts import DeadLetterSinkContract, Delivered, EventStoreContract, ReadBack
from tracker.adapters.dead_letters import DeadLetterPublisher
from tracker.adapters.kafka import ensure_topics
from tracker.adapters.postgres import connect_pool
from tracker.config import Settings
from tracker.store.postgres import COLUMNS, PostgresEventStore

# Each column as the row holds it: the uuid and the jsonb as text.
_CASTS = {"event_id": "event_id::text", "data": "data::text"}
_READ_BACK = "SELECT " + ", ".join(_CASTS.get(c, f'"{c}"') for c in COLUMNS) + " FROM frame_events"


class TestPostgresEventStore(EventStoreContract):
    @pytest.fixture
    async def store(self, settings: Settings) -> AsyncIterator[PostgresEventStore]:
        pool = await connect_pool(settings.database, max_size=2)
        try:
            yield PostgresEventStore(pool)
        finally:
            await pool.close()

    @pytest.fixture
    def read_back(self, db: asyncpg.Connection) -> ReadBack:
        async def rows():  # type: ignore[no-untyped-def]
            return [tuple(r) for r in await db.fetch(_READ_BACK)]

        return rows


class TestKafkaDeadLetterSink(DeadLetterSinkContract):
    @pytest.fixture
    async def sink(self, settings: Settings) -> AsyncIterator[DeadLetterPublisher]:
        # One partition: Kafka keeps order per partition, and the contract's
        # "in order" is about the letters, not the partitioner.
        await ensure_topics(settings.kafka, settings.topics, [settings.topics.dlq], partitions=1)
        sink = DeadLetterPublisher(settings.kafka, settings.topics.dlq)
        await sink.start()
        try:
            yield sink
        finally:
            await sink.stop()

    @pytest.fixture
    def delivered(self, settings: Settings) -> Delivered:
        async def letters():  # type: ignore[no-untyped-def]
            return [
                (m.key, m.value, list(m.headers)) for m in await read_topic(settings, settings.topics.dlq)
            ]

        return letters
