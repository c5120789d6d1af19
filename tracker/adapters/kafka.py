"""The aiokafka adapter: client construction, security pass-through, topics.

Building a client never touches the network; ``start()`` does. Every Kafka
client of the project is made here so that SASL/TLS settings apply everywhere,
and so that each one tells the broker who it is: its ``client_id`` is
``tracker-<role>-<instance>`` (see :func:`client_id`), which broker logs,
quotas, request metrics and the ``messaging.client.id`` span attribute show.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import ssl
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    for_code,
)

from tracker.config import BatchSettings, KafkaSettings, TopicSettings
from tracker.errors import BrokerError, ConfigError

log = logging.getLogger(__name__)

DEFAULT_KAFKA_PORT = 9092
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def instance_name(kafka: KafkaSettings) -> str:
    """This process among its peers: ``TRACKER_INSTANCE_ID`` if set, else ``<hostname>-<pid>``."""
    return kafka.instance_id or f"{socket.gethostname()}-{os.getpid()}"


def client_id(kafka: KafkaSettings, role: str) -> str:
    """``tracker-<role>-<instance>``: the role (``event-store``, ``projections``,
    ``publisher-<producer name>``, ``dlq``, ``admin``, ``replay``, ``status``)
    and the instance (:func:`instance_name`), with characters other than
    letters, digits, ``.``, ``_`` and ``-`` replaced by ``_``."""
    return _UNSAFE.sub("_", f"tracker-{role}-{instance_name(kafka)}")


def server_address(kafka: KafkaSettings) -> tuple[str, int]:
    """Host and port of the first bootstrap server (what spans report as
    ``server.address`` and ``server.port``); the port defaults to 9092."""
    first = kafka.bootstrap.split(",")[0].strip()
    if first.startswith("["):  # [IPv6]:port
        host, _, rest = first[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif first.count(":") == 1:
        host, _, port = first.partition(":")
    else:  # a bare host, or an IPv6 address without a port
        host, port = first, ""
    return host, int(port) if port.isdigit() else DEFAULT_KAFKA_PORT


def messaging_attributes(kafka: KafkaSettings, role: str) -> dict[str, str | int]:
    """The span attributes that say which broker and which client: ``server.address``,
    ``server.port`` and ``messaging.client.id`` (that of the client made with ``role``)."""
    host, port = server_address(kafka)
    return {"server.address": host, "server.port": port, "messaging.client.id": client_id(kafka, role)}


def client_kwargs(kafka: KafkaSettings) -> dict[str, Any]:
    """Connection and security options shared by producers, consumers and admin."""
    kw: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap,
        "security_protocol": kafka.security_protocol,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        try:
            ctx = ssl.create_default_context(cafile=kafka.ssl_cafile or None)
            if kafka.ssl_certfile:
                ctx.load_cert_chain(kafka.ssl_certfile, kafka.ssl_keyfile or None)
        except (OSError, ssl.SSLError) as e:
            reason = f"{e.strerror}: {e.filename}" if e.filename else (e.strerror or e)
            raise ConfigError(f"Kafka TLS files (TRACKER_KAFKA_SSL_*): {reason}") from None
        kw["ssl_context"] = ctx
    if kafka.sasl_mechanism:
        kw["sasl_mechanism"] = kafka.sasl_mechanism
        kw["sasl_plain_username"] = kafka.sasl_username
        kw["sasl_plain_password"] = kafka.sasl_password.get()
    return kw


def make_producer(kafka: KafkaSettings, *, role: str = "producer", **overrides: Any) -> AIOKafkaProducer:
    """Idempotent, ``acks=all``: a retried send after a broker bounce is not duplicated.
    ``role`` names the client (:func:`client_id`)."""
    kw: dict[str, Any] = {
        "client_id": client_id(kafka, role),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "max_batch_size": 256 * 1024,
        "request_timeout_ms": 30_000,
        "retry_backoff_ms": 200,
    }
    kw.update(overrides)
    return AIOKafkaProducer(**client_kwargs(kafka), **kw)


def make_consumer(
    kafka: KafkaSettings, *topics: str, group_id: str | None, role: str = "consumer", **overrides: Any
) -> AIOKafkaConsumer:
    """A consumer without auto-commit, reading committed records only; ``role``
    names the client (:func:`client_id`)."""
    kw: dict[str, Any] = {
        "client_id": client_id(kafka, role),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        # Bounded prefetch: aiokafka buffers at most one fetch response ahead of
        # the batch being written, so a slow database means a paused fetch
        # (back-pressure), never a growing buffer.
        "max_partition_fetch_bytes": 1024 * 1024,
        "fetch_max_bytes": 16 * 1024 * 1024,
        "session_timeout_ms": kafka.session_timeout_ms,
        "heartbeat_interval_ms": max(500, kafka.session_timeout_ms // 4),
        # Our batches can wait on a database outage with retries; allow that
        # without being evicted from the group (heartbeats keep running).
        "max_poll_interval_ms": 600_000,
    }
    if group_id and kafka.instance_id:
        # Static membership: one id per worker *and* group.
        kw["group_instance_id"] = f"{kafka.instance_id}:{group_id}"
    kw.update(overrides)
    return AIOKafkaConsumer(*topics, **client_kwargs(kafka), **kw)


async def next_batch(
    consumer: AIOKafkaConsumer,
    batching: BatchSettings,
    *,
    stopping: asyncio.Event | None = None,
) -> dict[TopicPartition, list[Any]]:
    """The next batch: up to ``max_records`` records, gathered for at most
    ``linger_ms`` after the first one arrived (``{}`` after ``timeout_ms``
    without any).

    ``getmany`` alone returns whatever is buffered, which under a steady trickle
    means batches of a few records, each paying a whole transaction. Records of
    one partition stay in offset order.
    """
    limit = batching.max_records
    batch = await consumer.getmany(timeout_ms=batching.timeout_ms, max_records=limit)
    if not batch or batching.linger_ms <= 0:
        return batch
    n = sum(len(v) for v in batch.values())
    deadline = asyncio.get_running_loop().time() + batching.linger_ms / 1000
    while n < limit and not (stopping is not None and stopping.is_set()):
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            break
        more = await consumer.getmany(timeout_ms=max(1, int(left * 1000)), max_records=limit - n)
        for tp, msgs in more.items():
            cur = batch.setdefault(tp, [])
            if cur and msgs[0].offset <= cur[-1].offset:
                # A rebalance re-positioned this partition meanwhile: what we
                # held of it is stale and will be (or was) delivered again.
                n -= len(cur)
                cur.clear()
            cur.extend(msgs)
            n += len(msgs)
    return batch


def make_admin(kafka: KafkaSettings, *, role: str = "admin") -> AIOKafkaAdminClient:
    """An admin client; ``role`` names it (:func:`client_id`)."""
    return AIOKafkaAdminClient(
        **client_kwargs(kafka), client_id=client_id(kafka, role), request_timeout_ms=15_000
    )


async def ensure_topics(
    kafka: KafkaSettings, topics: TopicSettings, names: Iterable[str], *, partitions: int | None = None
) -> list[str]:
    """Create the topics ``names`` that are missing (with ``topics``' partitions,
    unless ``partitions`` says otherwise, and replication factor); return the ones created.

    A topic the principal may not describe looks missing; creating it then
    fails as not authorized, which is raised like any refusal by the broker
    (CreateTopics answers per topic, and aiokafka raises none of them).

    No broker answering at all fails at once, saying why. Once one has
    answered, retriable errors are retried for a while: in a cluster with a
    broker down, the metadata may still name that broker (as the controller,
    say) until the cluster has fenced it, a few seconds."""
    wanted = list(dict.fromkeys(names))
    admin = make_admin(kafka)
    try:
        await admin.start()
        deadline = asyncio.get_running_loop().time() + _RETRY_TOPICS_S
        while True:
            try:
                return await _create_missing(admin, topics, wanted, partitions)
            except KafkaError as e:
                if not e.retriable or asyncio.get_running_loop().time() > deadline:
                    raise
                log.warning("cannot ensure topics yet (%s); retrying", _text(e))
                await asyncio.sleep(1.0)
    except KafkaError as e:
        raise await broker_error(kafka, f"cannot ensure topics {wanted}", e) from e
    finally:
        await admin.close()


_RETRY_TOPICS_S = 20.0


async def _create_missing(
    admin: AIOKafkaAdminClient, topics: TopicSettings, wanted: list[str], partitions: int | None
) -> list[str]:
    existing = set(await admin.list_topics())
    missing = [t for t in wanted if t not in existing]
    if not missing:
        return []
    new = [new_topic(topics, t, partitions) for t in missing]
    response = await admin.create_topics(new)
    for topic, code, *message in response.topic_errors:
        error = for_code(code)
        if code and error is not TopicAlreadyExistsError:  # exists: another process won the race
            detail = f" ({message[0]})" if message and message[0] else ""
            raise error(f"cannot create topic {topic}{detail}")
    log.info("created topics %s", missing)
    return missing


def new_topic(topics: TopicSettings, name: str, partitions: int | None = None) -> NewTopic:
    """How the tracker creates topic ``name``: ``topics``' partitions (unless
    ``partitions`` says otherwise), replication factor and, when set, min ISR."""
    configs = {}
    if topics.min_insync_replicas:
        configs["min.insync.replicas"] = str(topics.min_insync_replicas)
    return NewTopic(
        name,
        num_partitions=partitions or topics.partitions,
        replication_factor=topics.replication_factor,
        topic_configs=configs,
    )


async def broker_error(kafka: KafkaSettings, doing: str, e: KafkaError) -> BrokerError:
    """``e`` as one line that says what went wrong, without a secret: why no
    broker could be reached (aiokafka only logs it), or who was refused what."""
    if isinstance(e, KafkaConnectionError) and (reason := await unreachable_reason(kafka)):
        return BrokerError(f"cannot reach Kafka at {kafka.bootstrap}: {reason}", retriable=True)
    if isinstance(e, AUTHORIZATION_ERRORS):
        return BrokerError(f"{doing}: {refusal(kafka, e)}")
    return BrokerError(f"{doing}: {_text(e)}", retriable=e.retriable)


def refusal(kafka: KafkaSettings, e: BaseException) -> str:
    """Who the broker refused, and what (an authorization error), or just the error."""
    if not isinstance(e, AUTHORIZATION_ERRORS):
        return str(e)
    who = f"principal {kafka.sasl_username!r}" if kafka.sasl_username else "this client"
    return f"{who} is not authorized: {_text(e)}"


def _text(e: KafkaError) -> str:
    """The error's class and message, once (a broker's error names its class itself)."""
    text = str(e)
    return text if type(e).__name__ in text else f"{type(e).__name__}: {text}"


AUTHORIZATION_ERRORS = (
    TopicAuthorizationFailedError,
    GroupAuthorizationFailedError,
    ClusterAuthorizationFailedError,
)


async def unreachable_reason(kafka: KafkaSettings) -> str | None:
    """Why the first bootstrap server does not take a client: one connection
    attempt of our own, made as every client of the project makes it (None:
    it does take one)."""
    host, port = server_address(kafka)
    kw = client_kwargs(kafka)
    try:
        conn = await create_conn(
            host,
            port,
            client_id=client_id(kafka, "probe"),
            request_timeout_ms=5_000,
            ssl_context=kw.get("ssl_context"),
            security_protocol=kafka.security_protocol,
            sasl_mechanism=kafka.sasl_mechanism or "PLAIN",
            sasl_plain_username=kafka.sasl_username or None,
            sasl_plain_password=kafka.sasl_password.get() or None,
        )
    except ssl.SSLCertVerificationError as e:
        return f"the broker's TLS certificate is not trusted ({e.verify_message}; TRACKER_KAFKA_SSL_CAFILE)"
    except SaslAuthenticationFailed:
        return (
            f"SASL {kafka.sasl_mechanism} authentication failed for {kafka.sasl_username!r} "
            "(wrong username or password)"
        )
    except (TimeoutError, OSError, KafkaError) as e:
        return f"{type(e).__name__}: {e}"
    conn.close()
    return None


async def topic_partitions(kafka: KafkaSettings, topics: Iterable[str]) -> list[TopicPartition]:
    """Every partition of the given topics (missing topics contribute none)."""
    admin = make_admin(kafka)
    try:
        await admin.start()
        described = await admin.describe_topics(list(topics))
    except KafkaError as e:
        raise await broker_error(kafka, "cannot describe topics", e) from e
    finally:
        await admin.close()
    out = []
    for t in described:
        if t.get("error_code", 0) != 0:
            continue
        out += [TopicPartition(t["topic"], p["partition"]) for p in t["partitions"]]
    return sorted(out)
