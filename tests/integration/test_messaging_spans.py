"""The tracker's Kafka spans carry the OpenTelemetry messaging attributes.

A publisher's ``send <topic>`` (PRODUCER) spans and the event-store consumer's
``process <topic>`` (CONSUMER) spans name the broker (``server.address`` and
``server.port``: the first bootstrap server), the client
(``messaging.client.id``: the ``client_id`` of the real aiokafka client that
sent or fetched the records), ``messaging.operation.name`` and
``messaging.operation.type``, and on failure ``error.type``. Spans are read
from an in-memory exporter on the process's tracer provider.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError

import tracker.store.consumer
from tests.integration.helpers import span_exporter
from tracker.adapters.kafka import server_address
from tracker.config import Settings
from tracker.errors import BrokerError
from tracker.publisher import FramePublisher
from tracker.simulator import SimulationConfig, simulate
from tracker.store.consumer import EventStoreConsumer

pytestmark = pytest.mark.integration

SIMULATION = SimulationConfig(cameras=2, fps=5, duration_s=1, realtime=False)


def spans_named(prefix: str, topics: Sequence[str]) -> list[Any]:
    return [
        s
        for s in span_exporter().get_finished_spans()
        if s.name.startswith(prefix) and s.attributes.get("messaging.destination.name") in topics
    ]


def check_client(span: Any, settings: Settings, client_id: str, operation: str) -> list[str]:
    """What a span lacks of the broker, client and operation attributes."""
    host, port = server_address(settings.kafka)
    want = {
        "messaging.system": "kafka",
        "server.address": host,
        "server.port": port,
        "messaging.client.id": client_id,
        "messaging.operation.name": operation,
        "messaging.operation.type": operation,
    }
    a = span.attributes
    return [f"{span.name}: {k}={a.get(k)!r}, expected {v!r}" for k, v in want.items() if a.get(k) != v]


async def test_send_and_process_spans_name_broker_client_and_operation(settings: Settings) -> None:
    span_exporter().clear()
    async with FramePublisher(settings, producer_name="spans") as pub:
        result = await simulate(pub, SIMULATION, record_ids=True)
        producer_client = pub._producer.client._client_id
    assert producer_client.startswith("tracker-publisher-spans-")

    sends = spans_named("send ", settings.topics.events)
    assert {s.attributes["messaging.message.id"] for s in sends} == set(result.event_ids)
    problems = [p for s in sends for p in check_client(s, settings, producer_client, "send")]
    assert problems == []
    for s in sends:  # after the broker's acknowledgement: where the record went
        assert s.attributes["messaging.destination.partition.id"].isdigit()
        assert s.attributes["messaging.kafka.offset"] >= 0
        assert "error.type" not in s.attributes

    async with EventStoreConsumer(settings) as worker:
        stats = await worker.run(until_idle=True)
        consumer_client = worker.consumer._client._client_id
    assert stats.stored == len(result.event_ids)
    assert consumer_client.startswith("tracker-event-store-")
    process = spans_named("process ", settings.topics.events)
    assert process and {s.attributes["messaging.consumer.group.name"] for s in process} == {
        settings.groups.event_store
    }
    problems = [p for s in process for p in check_client(s, settings, consumer_client, "process")]
    assert problems == []
    assert sum(s.attributes["messaging.batch.message_count"] for s in process) == len(result.event_ids)
    assert not [s for s in process if "error.type" in s.attributes]

    # The check notices a span without them.
    assert check_client(sends[0], settings, "someone-else", "process") == [
        f"{sends[0].name}: messaging.client.id={producer_client!r}, expected 'someone-else'",
        f"{sends[0].name}: messaging.operation.name='send', expected 'process'",
        f"{sends[0].name}: messaging.operation.type='send', expected 'process'",
    ]


async def test_failed_send_and_process_spans_carry_error_type(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    span_exporter().clear()
    async with FramePublisher(settings, producer_name="spans") as pub:
        result = await simulate(pub, SIMULATION, record_ids=True)
        producer_client = pub._producer.client._client_id

        async def refused(*args: Any, **kwargs: Any) -> Any:
            raise KafkaConnectionError("broker gone (test)")

        monkeypatch.setattr(pub._producer, "send", refused)
        before = len(spans_named("send ", settings.topics.events))
        with pytest.raises(BrokerError):
            await simulate(pub, SimulationConfig(cameras=1, fps=1, duration_s=1, realtime=False))
    failed = spans_named("send ", settings.topics.events)[before:]
    assert len(failed) == 1
    assert failed[0].attributes["error.type"] == "KafkaConnectionError"
    assert check_client(failed[0], settings, producer_client, "send") == []

    async def store_fails(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("database said no (test)")

    monkeypatch.setattr(tracker.store.consumer, "store_batch", store_fails)
    async with EventStoreConsumer(settings) as worker:
        with pytest.raises(RuntimeError, match="database said no"):
            await worker.run(until_idle=True)
        consumer_client = worker.consumer._client._client_id
    process = spans_named("process ", settings.topics.events)
    assert process and result.event_ids
    assert {s.attributes.get("error.type") for s in process} == {"RuntimeError"}
    assert [p for s in process for p in check_client(s, settings, consumer_client, "process")] == []
