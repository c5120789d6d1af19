"""The in-memory ports pass the contract suites (tests/support/contracts.py), no services needed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.contracts import (
    DeadLetterSinkContract,
    Delivered,
    EventStoreContract,
    Fetched,
    ReadBack,
)
from tracker.errors import BrokerError, FramingError
from tracker.store.in_memory import InMemoryDeadLetterSink, InMemoryEventStore


class TestInMemoryEventStore(EventStoreContract):
    @pytest.fixture
    def store(self) -> InMemoryEventStore:
        return InMemoryEventStore()

    @pytest.fixture
    def read_back(self, store: InMemoryEventStore) -> ReadBack:
        async def rows():  # type: ignore[no-untyped-def]
            return list(store.rows.values())

        return rows


class TestInMemoryDeadLetterSink(DeadLetterSinkContract):
    @pytest.fixture
    async def sink(self) -> AsyncIterator[InMemoryDeadLetterSink]:
        sink = InMemoryDeadLetterSink()
        await sink.start()
        yield sink
        await sink.stop()

    @pytest.fixture
    def delivered(self, sink: InMemoryDeadLetterSink) -> Delivered:
        async def letters():  # type: ignore[no-untyped-def]
            return [(d.key, d.value, list(d.headers)) for d in sink.letters]

        return letters

    async def test_told_to_fail_it_raises_a_retriable_broker_error_until_told_otherwise(
        self, sink: InMemoryDeadLetterSink
    ) -> None:
        dead = [(Fetched("t.frames.camera", 0, 1, b"k", b"\x00"), FramingError("short"))]
        sink.unavailable = True
        with pytest.raises(BrokerError) as caught:
            await sink.send_all(dead)
        assert caught.value.retriable and sink.letters == []
        sink.unavailable = False
        await sink.send_all(dead)
        assert [d.value for d in sink.letters] == [b"\x00"]
