"""The local stack answers with real clients (issue: two commands on a fresh machine)."""

from __future__ import annotations

import uuid

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tracker.config import Settings


async def test_kafka_round_trip_with_aiokafka(settings: Settings) -> None:
    topic = f"{settings.topics.prefix}.smoke"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
        assert topic in await admin.list_topics()
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    payload = uuid.uuid4().bytes
    try:
        meta = await producer.send_and_wait(topic, payload, key=b"k", headers=[("h", b"v")])
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka.bootstrap,
        group_id=f"{settings.groups.prefix}.smoke",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        msg = await consumer.getone()
    finally:
        await consumer.stop()
    assert (msg.value, msg.key, msg.headers, msg.partition) == (payload, b"k", (("h", b"v"),), meta.partition)


async def test_postgres_round_trip_with_asyncpg(db: asyncpg.Connection) -> None:
    await db.execute("CREATE TEMP TABLE smoke (id int PRIMARY KEY, note text)")
    await db.execute("INSERT INTO smoke VALUES ($1, $2)", 1, "hello")
    assert await db.fetchval("SELECT note FROM smoke WHERE id = 1") == "hello"
    assert (await db.fetchval("SHOW server_version_num")) >= "150000"
