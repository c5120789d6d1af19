"""The Kafka Connect peer, configured by TRACKER_*: Kafka Connect standalone (the
broker's version) with the Debezium JDBC sink connector, both from Maven Central,
writing the same rows into an identically shaped table (``frame_events`` of its
own migrated database).

    python -m bench.peer_connect --limit 200000 --json-prefix P

A JVM sink cannot read our records: they are Avro in single-object encoding,
for which Connect has no converter without a schema registry. So the first
``--limit`` records of the source topics are first copied, outside the timed
part, into a JSON topic pair (same partitions, keys and order), each value the
finished ``frame_events`` row with its Connect schema (``JsonConverter`` with
``schemas.enable``). Connect therefore skips the decoding and validation that
our consumer and the Quix peer do: its figure flatters it.

Connector settings are Debezium's defaults except what correct rows need: the
table and its key (``primary.key.mode=record_value`` on the table's primary
key, ``insert.mode=upsert`` so that a redelivered record is harmless, as ours),
``schema.evolution=none`` (the table exists) and ``stringtype=unspecified`` on
the JDBC URL so that PostgreSQL casts the uuid, timestamptz and jsonb columns
from their JSON strings. Timed from the first row visible in the table to the
last (``count(*)`` polled every 0.25 s), since sink tasks commit offsets only
once a minute. Prints one JSON line: records, seconds, copy_seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from aiokafka import AIOKafkaProducer

from tracker.adapters.kafka import client_kwargs, ensure_topics, make_admin, make_consumer, topic_partitions
from tracker.codec import FrameEventCodec
from tracker.config import Settings
from tracker.store.postgres import COLUMNS, message_to_row
from tracker.telemetry import header, parse_traceparent

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "bench" / "connect"
POM = HERE / "pom.xml"
LOG4J = HERE / "log4j2.properties"
CACHE = Path(os.environ.get("STACK_DIR", "") or (ROOT / ".stack")) / "connect"

# Connect types of the frame_events columns, in COLUMNS order.
_TYPES = {
    "attempt": "int32",
    "duration_ms": "double",
    "partition": "int32",
    "offset": "int64",
    "schema_fingerprint": "bytes",
}
_REQUIRED = {
    "event_id", "event_type", "frame_id", "camera_id", "frame_timestamp", "occurred_at", "producer",
    "attempt", "data", "topic", "partition", "offset", "schema_fingerprint",
}  # fmt: skip
SCHEMA = {
    "type": "struct",
    "name": "frame_events",
    "optional": False,
    "fields": [
        {"field": c, "type": _TYPES.get(c, "string"), "optional": c not in _REQUIRED} for c in COLUMNS
    ],
}


def pom_property(name: str) -> str:
    m = re.search(rf"<{name}>([^<]+)</{name}>", POM.read_text())
    if m is None:
        raise RuntimeError(f"{POM} has no {name}")
    return m.group(1).strip()


def ensure_libs() -> tuple[Path, Path]:
    """Connect's jars and the Debezium plugin, fetched once with Maven into the stack folder."""
    kafka, debezium = pom_property("kafka.version"), pom_property("debezium.version")
    home = CACHE / f"{kafka}-{debezium}"
    if (home / ".complete").is_file():
        return home / "lib", home / "plugins"
    tmp = CACHE / f".{kafka}-{debezium}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    base = ["mvn", "-q", "-B", "-f", str(POM)]
    steps = [
        [*base, "dependency:copy-dependencies", f"-DoutputDirectory={tmp / 'lib'}"],
        [
            *base,
            "dependency:copy",
            f"-Dartifact=io.debezium:debezium-connector-jdbc:{debezium}:tar.gz:plugin",
            f"-DoutputDirectory={tmp / 'archive'}",
        ],
    ]
    for cmd in steps:
        r = subprocess.run(cmd, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"Maven failed (exit {r.returncode}): {' '.join(cmd[5:])}\n{r.stdout[-3000:]}")
    (tmp / "plugins").mkdir()
    for archive in (tmp / "archive").glob("*.tar.gz"):
        with tarfile.open(archive) as t:
            t.extractall(tmp / "plugins", filter="data")
    shutil.rmtree(home, ignore_errors=True)
    tmp.rename(home)
    (home / ".complete").write_text(f"{kafka} {debezium}\n")
    return home / "lib", home / "plugins"


def _payload(row: tuple[Any, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c, v in zip(COLUMNS, row, strict=True):
        if c in ("frame_timestamp", "occurred_at"):
            v = v.isoformat()
        elif c == "schema_fingerprint":
            v = base64.b64encode(v).decode()
        out[c] = v
    return out


async def json_copy(settings: Settings, limit: int, targets: dict[str, str]) -> None:
    """The first ``limit`` records of the event topics, as finished rows in JSON, into ``targets``."""
    tps = await topic_partitions(settings.kafka, settings.topics.events)
    await ensure_topics(settings.kafka, settings.topics, list(targets.values()))
    ends = {}
    consumer = make_consumer(settings.kafka, group_id=None, enable_auto_commit=False)
    await consumer.start()
    producer = AIOKafkaProducer(**client_kwargs(settings.kafka), linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    codec = FrameEventCodec()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        n = 0
        pending = []
        while n < limit:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            if not batch and all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                raise RuntimeError(f"the source topics hold {n} records, fewer than {limit}")
            for tp, msgs in batch.items():
                for m in msgs:
                    if n >= limit:
                        break
                    d = codec.decode_record(m.value)
                    tctx = parse_traceparent(header(m.headers, "traceparent"))
                    row = message_to_row(m, d.record, d.fingerprint, tctx)
                    value = json.dumps({"schema": SCHEMA, "payload": _payload(row)}).encode()
                    pending.append(
                        await producer.send(targets[tp.topic], value, key=m.key, partition=m.partition)
                    )
                    n += 1
            if len(pending) > 20_000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
        await consumer.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _failed_task(port: int, name: str) -> str | None:
    """The trace of a failed task of connector ``name`` (Connect's REST API), if any."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/connectors/{name}/status", timeout=2) as r:
            status = json.load(r)
    except (OSError, ValueError):
        return None  # not up yet
    for task in status.get("tasks", []):
        if task.get("state") == "FAILED":
            return str(task.get("trace", ""))[:2000]
    return None


def java_bin() -> str:
    home = os.environ.get("JAVA_HOME")
    return str(Path(home) / "bin" / "java") if home else "java"


async def count_rows(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM frame_events"))
    finally:
        await conn.close()


async def held(settings: Settings, topics: list[str]) -> int:
    """Records in ``topics`` (0 when they do not exist)."""
    admin = make_admin(settings.kafka)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
    finally:
        await admin.close()
    if not set(topics) <= existing:
        return 0
    tps = await topic_partitions(settings.kafka, topics)
    consumer = make_consumer(settings.kafka, group_id=None)
    await consumer.start()
    try:
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


async def run(settings: Settings, limit: int, json_prefix: str, timeout_s: float) -> dict[str, Any]:
    lib, plugins = await asyncio.to_thread(ensure_libs)
    targets = {t: f"{json_prefix}.{t.rsplit('.', 1)[-1]}" for t in settings.topics.events}
    t_copy = time.perf_counter()
    have = await held(settings, list(targets.values()))
    if have == 0:
        await json_copy(settings, limit, targets)
    elif have != limit:
        raise RuntimeError(f"{json_prefix}.* hold {have} records, not {limit}: use another --json-prefix")
    copy_s = time.perf_counter() - t_copy
    db = urlsplit(settings.database.url.get())
    jdbc = f"jdbc:postgresql://{db.hostname}:{db.port or 5432}{db.path}?stringtype=unspecified"
    name = f"bench-jdbc-sink-{settings.groups.prefix}"
    work = Path(tempfile.mkdtemp(prefix="bench-connect-"))
    port = _free_port()
    (work / "worker.properties").write_text(
        "\n".join(
            [
                f"bootstrap.servers={settings.kafka.bootstrap}",
                "key.converter=org.apache.kafka.connect.converters.ByteArrayConverter",
                "value.converter=org.apache.kafka.connect.json.JsonConverter",
                "value.converter.schemas.enable=true",
                f"offset.storage.file.filename={work / 'offsets'}",
                f"plugin.path={plugins}",
                f"listeners=http://127.0.0.1:{port}",
                "",
            ]
        )
    )
    (work / "connector.properties").write_text(
        "\n".join(
            [
                f"name={name}",
                "connector.class=io.debezium.connector.jdbc.JdbcSinkConnector",
                "tasks.max=1",
                f"topics={','.join(targets.values())}",
                f"connection.url={jdbc}",
                f"connection.username={db.username or ''}",
                f"connection.password={db.password or ''}",
                "insert.mode=upsert",
                "primary.key.mode=record_value",
                "primary.key.fields=event_id,frame_timestamp",
                "schema.evolution=none",
                "collection.name.format=frame_events",
                "quote.identifiers=true",
                "",
            ]
        )
    )
    cmd = [
        java_bin(),
        "-cp",
        str(lib / "*"),
        f"-Dlog4j2.configurationFile={LOG4J}",
        "org.apache.kafka.connect.cli.ConnectStandalone",
        str(work / "worker.properties"),
        str(work / "connector.properties"),
    ]
    # The harness stops a peer with SIGTERM: turn it into a cancellation, so that
    # the clean-up below stops the JVM instead of leaving it running.
    me = asyncio.current_task()
    assert me is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, me.cancel)
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=sys.stderr, stderr=sys.stderr)
    dsn = settings.database.url.get()
    first_t: float | None = None
    first_n = 0
    last_status = 0.0
    try:
        t0 = time.perf_counter()
        while True:
            n = await count_rows(dsn)
            now = time.perf_counter()
            if n and first_t is None:
                first_t, first_n = now, n
            if n >= limit:
                break
            if proc.returncode is not None:
                raise RuntimeError(f"Kafka Connect exited {proc.returncode} with {n} of {limit} rows stored")
            if now - last_status >= 2.0:
                last_status = now
                failed = await asyncio.to_thread(_failed_task, port, name)
                if failed:
                    raise RuntimeError(f"the sink task failed with {n} of {limit} rows stored: {failed}")
            if now - t0 > timeout_s:
                raise RuntimeError(f"Kafka Connect stored {n} of {limit} rows in {timeout_s:.0f}s")
            await asyncio.sleep(0.25)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    assert first_t is not None
    seconds = max(1e-6, now - first_t)
    return {
        "records": limit,
        "rows": n,
        "seconds": seconds,
        "rate": (limit - first_n) / seconds,
        "copy_seconds": round(copy_s, 2),
        "first_poll_rows": first_n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.peer_connect")
    ap.add_argument("--limit", type=int, required=True, help="records to copy and sink")
    ap.add_argument("--json-prefix", required=True, help="topics of the JSON copy (made if missing)")
    ap.add_argument("--timeout", type=float, default=900.0)
    a = ap.parse_args()
    out = asyncio.run(run(Settings.from_env(), a.limit, a.json_prefix, a.timeout))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
