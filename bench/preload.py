"""Pre-load the simulator's realistic mix into a topic pair, fast.

The records are what ``FramePublisher`` sends for the events the simulator
plans (``bench.mix``: same Avro single-object value, frame-id key,
``traceparent``/``baggage``/``event_type``/``content-type`` headers with one
trace per frame, same murmur2 partitioning, same cross-frame interleaving), but they are produced
with a bare aiokafka producer in large per-partition batches instead of one
traced ``send`` per event (the publisher manages ~2,500 events/s per process
on the reference machine; this manages ~15,000 per process).

    python -m bench.preload --prefix P --cameras 25 --camera-prefix cama \
        --fps 10 --duration 200 --seed 1 --start 1767225600.0

Prints one JSON line: events, frames, per-topic counts, seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from bench.mix import TraceIds, plan_events
from tracker import events as ev
from tracker.adapters.kafka import client_kwargs
from tracker.codec import FrameEventCodec
from tracker.config import Settings
from tracker.simulator import Injection, Injections, SimulationConfig


class BatchingSink:
    """Encodes each event as ``FramePublisher`` would and appends it to a
    per-partition batch; full batches are sent at once."""

    def __init__(self, producer: AIOKafkaProducer, settings: Settings, partitions: int, seed: int) -> None:
        self.producer = producer
        self.settings = settings
        self.codec = FrameEventCodec()
        self.parts = list(range(partitions))
        self.partitioner = DefaultPartitioner()
        self.traces = TraceIds(seed)
        self.batches: dict[tuple[str, int], Any] = {}
        self.inflight: list[asyncio.Future[Any]] = []
        self.counts: dict[str, int] = {}
        self.events = 0

    async def publish(self, event: ev.FrameEvent) -> None:
        topic = self.settings.topics.of(event.source)
        key = event.frame_id.encode()
        p = self.partitioner(key, self.parts, self.parts)
        value = self.codec.encode(event)
        headers = self.traces.headers(event)
        b = self.batches.get((topic, p))
        if b is None:
            b = self.batches[(topic, p)] = self.producer.create_batch()
        if b.append(key=key, value=value, timestamp=None, headers=headers) is None:
            await self._send(topic, p, b)
            b = self.batches[(topic, p)] = self.producer.create_batch()
            b.append(key=key, value=value, timestamp=None, headers=headers)
        self.counts[topic] = self.counts.get(topic, 0) + 1
        self.events += 1

    async def _send(self, topic: str, p: int, b: Any) -> None:
        self.inflight.append(await self.producer.send_batch(b, topic, partition=p))
        if len(self.inflight) >= 64:
            await asyncio.gather(*self.inflight)
            self.inflight.clear()

    async def flush(self) -> None:
        for (topic, p), b in list(self.batches.items()):
            if b.record_count():
                await self._send(topic, p, b)
        self.batches.clear()
        if self.inflight:
            await asyncio.gather(*self.inflight)
            self.inflight.clear()


def make_bulk_producer(settings: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **client_kwargs(settings.kafka),
        acks="all",
        enable_idempotence=True,
        max_batch_size=1024 * 1024,
        max_request_size=4 * 1024 * 1024,
        linger_ms=20,
        request_timeout_ms=60_000,
    )


async def preload(
    settings: Settings,
    *,
    cameras: int,
    camera_prefix: str,
    fps: float,
    duration_s: float,
    seed: int,
    start: datetime,
    partitions: int,
    inject: tuple[str, ...] = (),
) -> dict[str, Any]:
    t0 = time.monotonic()
    producer = make_bulk_producer(settings)
    await producer.start()
    try:
        sink = BatchingSink(producer, settings, partitions, seed)
        cfg = SimulationConfig(
            cameras=cameras,
            fps=fps,
            duration_s=duration_s,
            seed=seed,
            realtime=False,
            start=start,
            camera_prefix=camera_prefix,
            injections=Injections(tuple(Injection.parse(spec) for spec in inject)),
        )
        frames = failed = 0
        for _, event in plan_events(cfg):
            await sink.publish(event)
            if isinstance(event, ev.FrameCaptured):
                frames += 1
            elif isinstance(event, ev.ProcessingFailed):
                failed += 1
        await sink.flush()
    finally:
        await producer.stop()
    return {
        "events": sink.events,
        "frames": frames,
        "failed_frames": failed,
        "topics": sink.counts,
        "seconds": round(time.monotonic() - t0, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.preload")
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--cameras", type=int, required=True)
    ap.add_argument("--camera-prefix", default="cam")
    ap.add_argument("--fps", type=float, required=True)
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--start", type=float, required=True, help="epoch seconds of the first capture")
    ap.add_argument("--partitions", type=int, required=True)
    ap.add_argument("--inject", action="append", default=[], help="as tracker simulate --inject")
    a = ap.parse_args()
    settings = Settings.from_env(topic_prefix=a.prefix)
    out = asyncio.run(
        preload(
            settings,
            cameras=a.cameras,
            camera_prefix=a.camera_prefix,
            fps=a.fps,
            duration_s=a.duration,
            seed=a.seed,
            start=datetime.fromtimestamp(a.start, UTC),
            partitions=a.partitions,
            inject=tuple(a.inject),
        )
    )
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
