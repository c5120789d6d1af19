"""Frame events from the publisher to frame_events, through the real broker and database."""

from __future__ import annotations

import asyncio
import io
import json
import os
import uuid
from datetime import UTC, datetime

import asyncpg
import avro.io
import avro.schema
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.integration.conftest import stack, wait_for
from tests.integration.helpers import (
    consume_until_idle,
    publish_simulation,
    read_topic,
    run_cli,
    span_exporter,
)
from tracker import events as ev
from tracker.adapters.kafka import ensure_topics, topic_partitions
from tracker.codec import MAGIC, SCHEMA_DIR, FrameEventCodec
from tracker.config import Settings
from tracker.store.consumer import EventStoreConsumer
from tracker.telemetry import parse_traceparent


async def stored_ids(db: asyncpg.Connection) -> list[str]:
    return [str(r["event_id"]) for r in await db.fetch("SELECT event_id FROM frame_events")]


async def test_cli_simulate_then_consume_stores_exactly_the_published_events(
    settings: Settings, db: asyncpg.Connection, tmp_path
) -> None:
    ids_file = tmp_path / "ids.txt"
    out = run_cli(
        settings,
        "simulate",
        "--cameras",
        "3",
        "--fps",
        "25",
        "--duration",
        "4",
        "--fast",
        "--seed",
        "7",
        "--ids-out",
        str(ids_file),
        "--json",
    )
    summary = json.loads(out.stdout)
    assert summary["frames"] == 300
    published = ids_file.read_text().split()
    assert len(published) == summary["events"] > 300 * 6
    consumed = json.loads(
        run_cli(settings, "consume", "--until-idle", "--metrics-port", "0", "--json").stdout
    )
    assert consumed["stored"] == len(published) and consumed["dead_lettered"] == 0
    ids = await stored_ids(db)
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(published)
    # Every row carries the trace context its record was published with.
    records = await read_topic(settings, settings.topics.camera) + await read_topic(
        settings, settings.topics.processing
    )
    codec = FrameEventCodec()
    expected = {}
    for m in records:
        tp = parse_traceparent(dict(m.headers)["traceparent"])
        expected[codec.decode_record(m.value).record["event_id"]] = (
            tp[0],
            tp[1],
            m.topic,
            m.partition,
            m.offset,
        )
    rows = await db.fetch(
        'SELECT event_id::text, trace_id, span_id, topic, "partition", "offset" FROM frame_events'
    )
    assert {r["event_id"]: tuple(r)[1:] for r in rows} == expected
    # One trace per frame: every event of a frame carries the same trace id.
    per_frame = await db.fetch("SELECT frame_id, count(DISTINCT trace_id) AS n FROM frame_events GROUP BY 1")
    assert len(per_frame) == 300 and {r["n"] for r in per_frame} == {1}


async def test_trace_ids_are_the_publisher_spans(settings: Settings, db: asyncpg.Connection) -> None:
    exporter = span_exporter()
    exporter.clear()
    result = await publish_simulation(settings, cameras=2, fps=10, duration_s=2, seed=3)
    sends = {
        s.attributes["messaging.message.id"]: s
        for s in exporter.get_finished_spans()
        if s.name.startswith("send ")
    }
    assert set(sends) == set(result.event_ids)
    span = next(iter(sends.values()))
    assert span.kind.name == "PRODUCER" and span.attributes["messaging.system"] == "kafka"
    assert span.attributes["frame.id"]  # stamped by the frame-context span processor
    stats = await consume_until_idle(settings)
    assert stats.stored == len(result.event_ids)
    rows = await db.fetch("SELECT event_id::text, trace_id, span_id FROM frame_events")
    for r in rows:
        ctx = sends[r["event_id"]].context
        assert (r["trace_id"], r["span_id"]) == (format(ctx.trace_id, "032x"), format(ctx.span_id, "016x"))
    # The consumer's own span is a CONSUMER `process <topic>` span linked to producers.
    process = [s for s in exporter.get_finished_spans() if s.name.startswith("process ")]
    assert process and all(s.kind.name == "CONSUMER" for s in process)
    linked = {link.context.span_id for s in process for link in s.links}
    assert linked <= {s.context.span_id for s in sends.values()} and linked


async def test_redelivery_leaves_the_row_count_unchanged(settings: Settings, db: asyncpg.Connection) -> None:
    result = await publish_simulation(settings, cameras=2, fps=10, duration_s=3, seed=5)
    first = await consume_until_idle(settings)
    assert first.stored == len(result.event_ids)
    before = await db.fetchval("SELECT count(*) FROM frame_events")
    # Reset the group's offsets to the beginning, as an operator would.
    resetter = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap,
        group_id=settings.groups.event_store,
        enable_auto_commit=False,
    )
    tps = await topic_partitions(settings.kafka, settings.topics.events)
    await resetter.start()
    try:
        resetter.assign(tps)
        assert len(tps) == 2 * settings.topics.partitions
        await resetter.commit({tp: 0 for tp in tps})
    finally:
        await resetter.stop()
    second = await consume_until_idle(settings)
    assert second.records == len(result.event_ids)
    assert second.stored == 0 and second.duplicates == len(result.event_ids)
    assert await db.fetchval("SELECT count(*) FROM frame_events") == before


def _avro_package_record(event: ev.FrameEvent) -> bytes:
    schema = avro.schema.parse((SCHEMA_DIR / "frame_event.v1.avsc").read_text())
    buf = io.BytesIO()
    avro.io.DatumWriter(schema).write(event.to_record(), avro.io.BinaryEncoder(buf))
    return MAGIC + schema.fingerprint("CRC-64-AVRO") + buf.getvalue()


def _event(**kw) -> ev.FrameEvent:  # type: ignore[no-untyped-def]
    now = datetime.now(UTC)
    base = dict(
        frame_id=f"plain-{uuid.uuid4().hex[:6]}",
        camera_id="cam-plain",
        frame_timestamp=now,
        occurred_at=now,
        producer="plain-client",
    )
    base.update(kw)
    return ev.FrameCaptured(**base)


async def test_poison_records_go_to_the_dlq_and_good_ones_around_them_are_stored(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await ensure_topics(settings.kafka, settings.topics, [*settings.topics.events, settings.topics.dlq])
    codec = FrameEventCodec()
    good_events = [_event(frame_id="same-key") for _ in range(6)]

    def raw(**overrides) -> bytes:  # type: ignore[no-untyped-def]
        rec = {**_event().to_record(), **overrides}
        return codec.encode_record(rec)

    valid = codec.encode(_event())
    poison = {
        "random": os.urandom(64),
        "empty": b"",
        "truncated": valid[:-7],
        "wrong_magic": b"\x00\x00" + valid[2:],
        "unknown_fingerprint": MAGIC + b"\x01" * 8 + valid[10:],
        "empty_frame_id": raw(frame_id=""),
        "oversized_frame_id": raw(frame_id="f" * 300_000),
        "unknown_event_type": raw(event_type="FrameVanished"),
        "timestamp_out_of_range": raw(frame_timestamp=253_402_300_800_000_000),
        "non_utf8": valid.replace(b"cam-plain", b"cam-\xff\xfe\xfd\xfc\xfb", 1),
        "missing_stage": raw(event_type="StageStarted", stage=None),
    }
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap, max_request_size=4 * 1024 * 1024)
    await producer.start()
    sent = {}
    try:
        order = list(poison.items())
        for i, good in enumerate(good_events):
            await producer.send_and_wait(settings.topics.processing, codec.encode(good), key=b"same-key")
            for name, value in order[i * 2 : (i + 1) * 2]:
                meta = await producer.send_and_wait(
                    settings.topics.processing,
                    value,
                    key=b"same-key",
                    headers=[("event_type", b"whatever"), ("x-origin", name.encode())],
                )
                sent[name] = (value, meta.partition, meta.offset)
        # A valid record with a malformed traceparent is stored, without a trace id.
        odd = _event(frame_id="bad-trace")
        await producer.send_and_wait(
            settings.topics.camera,
            _avro_package_record(odd),
            key=b"bad-trace",
            headers=[("traceparent", b"00-nothex-zz-01\xff")],
        )
    finally:
        await producer.stop()
    stats = await consume_until_idle(settings)
    assert stats.dead_lettered == len(poison)
    ids = set(await stored_ids(db))
    assert ids == {e.event_id for e in good_events} | {odd.event_id}
    assert await db.fetchval("SELECT trace_id FROM frame_events WHERE frame_id = 'bad-trace'") is None

    letters = await read_topic(settings, settings.topics.dlq)
    assert len(letters) == len(poison)
    by_origin = {dict(m.headers)["x-origin"].decode(): m for m in letters}
    for name, (value, partition, offset) in sent.items():
        m = by_origin[name]
        h = dict(m.headers)
        assert m.value == value, name  # original bytes, unchanged
        assert m.key == b"same-key" and h["event_type"] == b"whatever"
        assert h["tracker.error.topic"].decode() == settings.topics.processing
        assert (int(h["tracker.error.partition"]), int(h["tracker.error.offset"])) == (partition, offset)
        assert h["tracker.error.class"] and h["tracker.error.message"] and h["tracker.error.stage"]
    assert dict(by_origin["unknown_fingerprint"].headers)["tracker.error.class"] == b"UnknownSchemaError"
    assert dict(by_origin["empty_frame_id"].headers)["tracker.error.stage"] == b"validation"

    # `tracker dlq list` shows them; `dlq replay` sends them back to the source topic.
    listed = json.loads(run_cli(settings, "dlq", "list", "--json").stdout)
    assert len(listed) == len(poison)
    one = listed[0]
    run_cli(settings, "dlq", "replay", "--offset", f"{one['dlq_partition']}:{one['dlq_offset']}")
    again = await consume_until_idle(settings)
    assert again.dead_lettered == 1  # still bad, so dead-lettered again; nothing lost
    bad = run_cli(settings, "dlq", "replay", "--offset", "banana", check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


async def test_lifecycle_violations_are_stored_and_flagged(
    settings: Settings, db: asyncpg.Connection
) -> None:
    from datetime import timedelta

    from tracker.publisher import FramePublisher

    t = datetime.now(UTC)
    common = dict(frame_id="f-contradiction", camera_id="cam-x", frame_timestamp=t, producer="p")
    async with FramePublisher(settings) as pub:
        await pub.publish(ev.ProcessingCompleted(**common, occurred_at=t + timedelta(seconds=1)))
        await pub.publish(ev.StageStarted(**common, occurred_at=t + timedelta(seconds=2), stage="late"))
    await consume_until_idle(settings)
    async with FramePublisher(settings) as pub:
        await pub.publish(
            ev.ProcessingFailed(
                **common, occurred_at=t + timedelta(seconds=3), error_type="E", error_message="m"
            )
        )
    await consume_until_idle(settings)
    flags = {
        r["event_type"]: r["lifecycle_flag"]
        for r in await db.fetch("SELECT event_type, lifecycle_flag FROM frame_events")
    }
    assert flags == {
        "ProcessingCompleted": None,
        "StageStarted": "after_terminal",
        "ProcessingFailed": "conflicting_terminal",
    }


async def test_survives_a_database_outage_and_commits_nothing_early(
    settings: Settings, db: asyncpg.Connection
) -> None:
    first = await publish_simulation(settings, cameras=2, fps=10, duration_s=2, seed=11)
    worker = EventStoreConsumer(settings)
    await worker.start()
    task = asyncio.create_task(worker.run())
    try:
        await wait_for(lambda: _count(settings, len(first.event_ids)), timeout=60)
        await db.close()
        stack("stop-postgres")
        try:
            second = await publish_simulation(settings, cameras=2, fps=10, duration_s=2, seed=12)
            await asyncio.sleep(5)  # the worker is retrying meanwhile
            assert not task.done()
            committed = await _committed(settings)
            # Nothing of the second run is acknowledged while the database is down.
            assert committed == len(first.event_ids)
        finally:
            stack("start-postgres")
        total = len(first.event_ids) + len(second.event_ids)
        await wait_for(lambda: _count(settings, total), timeout=90)
        assert worker.stats.db_retries > 0
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 60)
        await worker.stop()
    conn = await asyncpg.connect(settings.database.url.get())
    try:
        ids = {str(r["event_id"]) for r in await conn.fetch("SELECT event_id FROM frame_events")}
    finally:
        await conn.close()
    assert ids == set(first.event_ids) | set(second.event_ids)


async def _count(settings: Settings, n: int) -> bool:
    try:
        conn = await asyncpg.connect(settings.database.url.get())
    except (OSError, asyncpg.PostgresError):
        return False
    try:
        return await conn.fetchval("SELECT count(*) FROM frame_events") >= n
    finally:
        await conn.close()


async def _committed(settings: Settings) -> int:
    """Sum of committed offsets of the event-store group (records acknowledged)."""
    c = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap,
        group_id=settings.groups.event_store,
        enable_auto_commit=False,
    )
    tps = await topic_partitions(settings.kafka, settings.topics.events)
    await c.start()
    try:
        total = 0
        for tp in tps:
            total += await c.committed(tp) or 0
        return total
    finally:
        await c.stop()


async def test_a_batch_held_across_a_rebalance_commits_only_partitions_still_owned(
    settings: Settings, db: asyncpg.Connection
) -> None:
    """The next batch is fetched while one is written; a rebalance in between can
    revoke a partition of it. Its records are stored (idempotently) and only the
    partitions still owned are committed: no crash on the revoked one."""
    from aiokafka import TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    from tracker.store.consumer import DecodedBatch, _Prepared

    await ensure_topics(settings.kafka, settings.topics, list(settings.topics.events))
    async with EventStoreConsumer(settings) as consumer:
        await asyncio.wait_for(consumer.assigned.wait(), 30)
        owned = sorted(consumer.consumer.assignment())[0]
        revoked = TopicPartition(settings.topics.camera, 999)  # not (or no longer) ours
        prepared = _Prepared(
            batch={owned: [], revoked: []},
            offsets={owned: OffsetAndMetadata(0, ""), revoked: OffsetAndMetadata(7, "")},
            records=0,
            decoded=DecodedBatch(),
        )
        assert await consumer.write(prepared) == 0  # written, not abandoned
        assert await consumer.consumer.committed(owned) == 0
