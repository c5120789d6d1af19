"""Helpers shared by integration tests: run workers, publish, read back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tracker.config import Settings
from tracker.consumer import ConsumerStats, EventStoreConsumer
from tracker.kafka import topic_partitions
from tracker.publisher import FramePublisher
from tracker.simulator import SimulationConfig, SimulationResult, simulate
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


def env_for(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
    env.update(
        TRACKER_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        TRACKER_DATABASE_URL=settings.database_url.get(),
        TRACKER_TOPIC_PREFIX=settings.topic_prefix,
        TRACKER_GROUP_PREFIX=settings.group_prefix,
        TRACKER_BATCH_TIMEOUT_MS=str(settings.batch_timeout_ms),
    )
    return env


def run_cli(
    settings: Settings, *args: str, timeout: float = 180, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "tracker.cli", *args],
        env=env_for(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"tracker {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


async def read_topic(settings: Settings, topic: str) -> list:  # type: ignore[type-arg]
    """Every record of a topic, from the beginning, without a group."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False
    )
    tps = await topic_partitions(settings, [topic])
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
