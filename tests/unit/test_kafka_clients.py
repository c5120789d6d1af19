"""Every Kafka client made in tracker.adapters.kafka says who it is: ``client_id`` is
``tracker-<role>-<instance>``, and each caller names its role. Clients are
only built here, never started (building one touches no network)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka.errors import NotEnoughReplicasError, TopicAuthorizationFailedError

import tracker.adapters.kafka as kafka
from tracker.adapters.kafka import (
    client_id,
    make_admin,
    make_consumer,
    make_producer,
    messaging_attributes,
    server_address,
)
from tracker.config import KafkaSettings, Secret, Settings
from tracker.errors import ConfigError


def test_client_id_names_the_role_and_the_instance() -> None:
    assert client_id(KafkaSettings(instance_id="worker-7"), "event-store") == "tracker-event-store-worker-7"
    # without an instance id: this host and process
    assert client_id(KafkaSettings(), "dlq") == f"tracker-dlq-{socket.gethostname()}-{os.getpid()}".replace(
        " ", "_"
    )
    # characters brokers and logs do not like become "_"
    assert client_id(KafkaSettings(instance_id="pod 1"), "publisher-cam/7") == "tracker-publisher-cam_7-pod_1"


@pytest.mark.parametrize(
    ("bootstrap", "expected"),
    [
        ("127.0.0.1:29092", ("127.0.0.1", 29092)),
        ("kafka-1:9093,kafka-2:9093", ("kafka-1", 9093)),
        (" kafka ", ("kafka", 9092)),
        ("[::1]:9094,other:1", ("::1", 9094)),
        ("[::1]", ("::1", 9092)),
        ("::1", ("::1", 9092)),
    ],
)
def test_server_address_is_the_first_bootstrap_server(bootstrap: str, expected: tuple[str, int]) -> None:
    assert server_address(KafkaSettings(bootstrap=bootstrap)) == expected


def test_messaging_attributes() -> None:
    broker = KafkaSettings(bootstrap="kafka:9092,other:9092", instance_id="i1")
    assert messaging_attributes(broker, "event-store") == {
        "server.address": "kafka",
        "server.port": 9092,
        "messaging.client.id": "tracker-event-store-i1",
    }


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """The aiokafka classes replaced by recorders of their keyword arguments."""
    calls: list[tuple[str, dict[str, Any]]] = []

    def recorder(kind: str) -> Any:
        def make(*args: Any, **kw: Any) -> tuple[str, dict[str, Any]]:
            calls.append((kind, kw))
            return kind, kw

        return make

    for cls in ("AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient"):
        monkeypatch.setattr(kafka, cls, recorder(cls))
    yield calls


def test_each_constructor_sets_the_client_id(built: list[tuple[str, dict[str, Any]]]) -> None:
    broker = KafkaSettings(instance_id="i1")
    make_producer(broker, role="dlq")
    make_consumer(broker, "topic", group_id="g", role="event-store")
    make_admin(broker, role="status")
    # without a role: what kind of client it is
    make_producer(broker)
    make_consumer(broker, group_id=None)
    make_admin(broker)
    # an explicit client_id still wins
    make_producer(broker, role="dlq", client_id="mine")
    assert [(kind, kw["client_id"]) for kind, kw in built] == [
        ("AIOKafkaProducer", "tracker-dlq-i1"),
        ("AIOKafkaConsumer", "tracker-event-store-i1"),
        ("AIOKafkaAdminClient", "tracker-status-i1"),
        ("AIOKafkaProducer", "tracker-producer-i1"),
        ("AIOKafkaConsumer", "tracker-consumer-i1"),
        ("AIOKafkaAdminClient", "tracker-admin-i1"),
        ("AIOKafkaProducer", "mine"),
    ]


async def test_the_publishers_name_their_roles(built: list[tuple[str, dict[str, Any]]]) -> None:
    from tracker.adapters.dead_letters import DeadLetterPublisher
    from tracker.publisher import FramePublisher

    s = Settings.from_env({}, instance_id="i1")
    FramePublisher(s, producer_name="processor")
    DeadLetterPublisher(s.kafka, s.topics.dlq)
    assert [kw["client_id"] for _, kw in built] == ["tracker-publisher-processor-i1", "tracker-dlq-i1"]


def test_a_missing_tls_file_is_a_setting_to_fix(tmp_path: Any) -> None:
    broker = KafkaSettings(security_protocol="SASL_SSL", ssl_cafile=str(tmp_path / "nope.pem"))
    with pytest.raises(ConfigError, match=r"TRACKER_KAFKA_SSL_\*.*No such file"):
        kafka.client_kwargs(broker)


async def test_a_refusal_by_the_broker_says_who_was_refused() -> None:
    """Authorization failures and other broker errors become one line each,
    naming the principal; no password in it."""
    broker = KafkaSettings(sasl_username="tracker-publisher", sasl_password=Secret("pw-123"))
    denied = await kafka.broker_error(broker, "cannot fetch", TopicAuthorizationFailedError("t.camera"))
    assert str(denied) == (
        "cannot fetch: principal 'tracker-publisher' is not authorized: "
        "[Error 29] TopicAuthorizationFailedError: t.camera"
    )
    assert not denied.retriable
    other = await kafka.broker_error(KafkaSettings(), "cannot fetch", NotEnoughReplicasError("p0"))
    assert str(other) == "cannot fetch: [Error 19] NotEnoughReplicasError: p0" and other.retriable
    assert "pw-123" not in str(denied) + str(other)
