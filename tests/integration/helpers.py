"""Helpers shared by integration tests: run workers, publish, read back."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from aiokafka import AIOKafkaConsumer
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bench.workers import tracker_argv
from bench.workers import tracker_env as env_for
from projections.columns import FRAME_COLS, STAGE_COLS, frame_to_db, stage_to_db
from projections.fold import ProjEvent, fold
from tracker.adapters.kafka import topic_partitions
from tracker.adapters.postgres import SQL_DIR, MigrationReport, migrate
from tracker.config import Settings
from tracker.publisher import FramePublisher
from tracker.simulator import SimulationConfig, SimulationResult, simulate
from tracker.store.consumer import ConsumerStats, EventStoreConsumer
from tracker.telemetry import setup_tracing

ROOT = Path(__file__).resolve().parents[2]
_exporter: InMemorySpanExporter | None = None


def span_exporter() -> InMemorySpanExporter:
    """The process's tracer provider, with an in-memory exporter attached once."""
    global _exporter
    if _exporter is None:
        provider = setup_tracing("tracker-tests")
        _exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(_exporter))
    return _exporter


async def publish_simulation(settings: Settings, **cfg: object) -> SimulationResult:
    span_exporter()
    config = SimulationConfig(**{"realtime": False, **cfg})  # type: ignore[arg-type]
    async with FramePublisher(settings, producer_name="test") as pub:
        return await simulate(pub, config, record_ids=True)


async def consume_until_idle(settings: Settings, **kw: object) -> ConsumerStats:
    async with EventStoreConsumer(settings, **kw) as worker:  # type: ignore[arg-type]
        return await worker.run(until_idle=True)


def run_cli(
    settings: Settings,
    *args: str,
    timeout: float = 180,
    check: bool = True,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        tracker_argv(*args),
        env=env_for(settings, **(extra_env or {})),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"tracker {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


async def read_topic(settings: Settings, topic: str) -> list:
    """Every record of a topic, from the beginning, without a group."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap, group_id=None, enable_auto_commit=False
    )
    tps = await topic_partitions(settings.kafka, [topic])
    await consumer.start()
    out = []
    try:
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                out.extend(msgs)
    finally:
        await consumer.stop()
    return out


async def project_until_idle(settings: Settings):
    from projections.worker import ProjectionWorker

    async with ProjectionWorker(settings) as worker:
        return await worker.run(until_idle=True)


async def projection_vs_store(settings: Settings) -> tuple[dict, dict]:
    """(actual, expected): the live generation's rows and rollups, and a fold of frame_events."""
    import asyncpg

    from projections.columns import FAILURE_COLS, failure_from_db
    from projections.events import STORE_COLUMNS, from_store
    from projections.fold import (
        FRAME_COUNTERS,
        STAGE_COUNTERS,
        Rollup,
        failure_totals,
        fold,
        frame_contribution,
        rollup_totals,
        stage_camera_contribution,
        stage_contribution,
    )
    from projections.store import FRAME_COLS, STAGE_COLS, frame_from_db, stage_from_db
    from tests.support.projection_store_contract import comparable_failures

    conn = await asyncpg.connect(settings.database.url.get())
    try:
        g = await conn.fetchval("SELECT generation FROM projection_state WHERE projection = 'frames'")
        events = [from_store(r) for r in await conn.fetch(f"SELECT {STORE_COLUMNS} FROM frame_events")]
        frames = [
            frame_from_db(r)
            for r in await conn.fetch(f"SELECT {', '.join(FRAME_COLS)} FROM frame_metadata_g{g}")
        ]
        stages = [
            stage_from_db(r)
            for r in await conn.fetch(f"SELECT {', '.join(STAGE_COLS)} FROM processing_stages_g{g}")
        ]
        fstats = await conn.fetch("SELECT * FROM frame_stats_hourly")
        pstats = await conn.fetch("SELECT * FROM performance_stats")
        scstats = await conn.fetch("SELECT * FROM stage_camera_stats")
        failures = await conn.fetch(f"SELECT {', '.join(FAILURE_COLS)} FROM failure_stats_g{g}")
    finally:
        await conn.close()
    ref = fold(sorted(events, key=lambda e: e.order_key))
    ref_f: dict = {}
    for row in ref.frames.values():
        k, r = frame_contribution(row)
        ref_f.setdefault(k, Rollup()).add(r)
    ref_s: dict = {}
    for stage_row in ref.stages.values():
        k, r = stage_contribution(stage_row)
        ref_s.setdefault(k, Rollup()).add(r)
    ref_sc = rollup_totals(ref.stages.values(), stage_camera_contribution)

    def comparable(r: Rollup, counters: tuple[str, ...]) -> tuple:
        *counts, latency_count, latency_sum_ms, buckets = r.as_row(counters)
        return (*counts, latency_count, round(latency_sum_ms, 3), tuple(buckets))

    def frow(r: Rollup) -> tuple:
        return comparable(r, FRAME_COUNTERS)

    def srow(r: Rollup) -> tuple:
        return comparable(r, STAGE_COUNTERS)

    def stage_values(r: asyncpg.Record) -> tuple:
        return (
            r["runs"],
            r["completed"],
            r["failed"],
            r["conflicted"],
            r["running"],
            r["duration_count"],
            round(r["duration_sum_ms"], 3),
            tuple(r["duration_buckets"]),
        )

    actual = {
        "frames": {(r.frame_id, r.frame_timestamp): r for r in frames},
        "stages": {(r.frame_id, r.frame_timestamp, r.stage, r.attempt): r for r in stages},
        "frame_stats": {
            (r["camera_id"], r["hour"]): (
                r["frames"],
                r["captured"],
                r["queued"],
                r["processing"],
                r["completed"],
                r["failed"],
                r["conflicted"],
                r["processing_time_count"],
                round(r["processing_time_sum_ms"], 3),
                tuple(r["processing_time_buckets"]),
            )
            for r in fstats
            if r["frames"]
        },
        "stage_stats": {(r["stage"], r["hour"]): stage_values(r) for r in pstats if r["runs"]},
        "stage_camera_stats": {
            (r["camera_id"], r["stage"], r["hour"]): stage_values(r) for r in scstats if r["runs"]
        },
        "failure_stats": comparable_failures(dict(failure_from_db(r) for r in failures)),
    }
    expected = {
        "frames": ref.frames,
        "stages": {k: v for k, v in ref.stages.items()},
        "frame_stats": {k: frow(v) for k, v in ref_f.items()},
        "stage_stats": {k: srow(v) for k, v in ref_s.items()},
        "stage_camera_stats": {k: srow(v) for k, v in ref_sc.items()},
        "failure_stats": comparable_failures(failure_totals(ref.frames.values(), ref.stages.values())),
    }
    return actual, expected


def assert_same_projection(actual: dict, expected: dict) -> None:
    for part in ("frames", "stages", "frame_stats", "stage_stats", "stage_camera_stats", "failure_stats"):
        a, e = actual[part], expected[part]
        missing, extra = set(e) - set(a), set(a) - set(e)
        assert not missing and not extra, f"{part}: missing {list(missing)[:3]}, extra {list(extra)[:3]}"
        diff = [k for k in e if a[k] != e[k]]
        assert not diff, f"{part}: {len(diff)} rows differ, e.g. {diff[0]}:\n{a[diff[0]]}\n!=\n{e[diff[0]]}"


# -- Databases of their own ------------------------------------------------------------


def database_url(name: str) -> str:
    """The stack's database URL with another database name."""
    parts = urlsplit(Settings.from_env().database.url.get())
    return urlunsplit(parts._replace(path=f"/{name}"))


@asynccontextmanager
async def empty_database() -> AsyncIterator[str]:
    """A fresh, empty database on the stack's server (its URL), dropped on exit."""
    base = Settings.from_env().database.url.get()
    name = f"tracker_test_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(base)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield database_url(name)
    finally:
        admin = await asyncpg.connect(base)
        try:
            drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
            for _ in range(40):
                try:
                    await admin.execute(drop)
                    break
                except asyncpg.exceptions.InsufficientPrivilegeError:
                    # A session of the read-only query role is still closing (a pool
                    # closed a moment ago): FORCE may not end another role's session.
                    await asyncio.sleep(0.25)
            else:
                await admin.execute(drop)
        finally:
            await admin.close()


async def migrate_until(conn: asyncpg.Connection, directory: Path, migration: str) -> None:
    """Apply the migrations that come before ``migration`` (e.g. ``"005_failure_rollup"``),
    copied into ``directory``."""
    for f in SQL_DIR.iterdir():
        if f.name.endswith(".sql") and f.name < migration:
            shutil.copy(str(f), directory / f.name)
    await migrate(conn, directory)


async def migrate_also(conn: asyncpg.Connection, directory: Path, migration: str) -> MigrationReport:
    """Apply ``migration`` itself after :func:`migrate_until` (later ones may follow it in SQL_DIR)."""
    shutil.copy(str(SQL_DIR / f"{migration}.sql"), directory / f"{migration}.sql")
    return await migrate(conn, directory)


async def store_generation(conn: asyncpg.Connection, generation: int, events: Iterable[ProjEvent]) -> None:
    """Write the reference fold of ``events`` as ``generation``'s frame and stage rows
    (their days' partitions first), as an existing generation holds them."""
    folded = fold(sorted(events, key=lambda e: e.order_key))
    stamps = [r.frame_timestamp for r in folded.frames.values()]
    for t in (f"frame_metadata_g{generation}", f"processing_stages_g{generation}"):
        await conn.execute("SELECT tracker_ensure_partitions($1, $2, $3)", t, min(stamps), max(stamps))
    await conn.copy_records_to_table(
        f"frame_metadata_g{generation}",
        records=[frame_to_db(r) for r in folded.frames.values()],
        columns=FRAME_COLS,
    )
    await conn.copy_records_to_table(
        f"processing_stages_g{generation}",
        records=[stage_to_db(r) for r in folded.stages.values()],
        columns=STAGE_COLS,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def api_server(settings: Settings) -> AsyncIterator[str]:
    """``tracker serve``'s server in this process, on a free port: its base URL."""
    from tracker.api.app import serve

    port = free_port()
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(settings, port=port, ready=ready, stop=stop))
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        await task
