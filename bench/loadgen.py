"""Steady offered load for the freshness and soak scenarios, configured by TRACKER_*.

Plans the simulator's realistic mix for ``--duration`` seconds at ``--rate``
events/s (cameras x 10 fps, ~10 events per frame), encodes every record up
front (so that the measurement window costs only the sends; ``--stream``
encodes each record just before its time instead, for runs too long to hold
in memory: the soak), then sends each record when its virtual time comes,
through a producer configured like
``FramePublisher``'s (acks=all, idempotent, linger 5 ms). For one frame in
``--sample-every`` it prints ``P <frame_id> <epoch seconds>`` just before the
frame's first record (FrameCaptured) is handed to the producer; a final JSON
line gives what was actually offered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.mix import TraceIds, plan_events
from tracker import events as ev
from tracker.adapters.kafka import make_producer
from tracker.codec import FrameEventCodec
from tracker.config import Settings
from tracker.simulator import SimulationConfig

Item = tuple[float, str, bytes, bytes, list[tuple[str, bytes]], str | None]


def plan(settings: Settings, cfg: SimulationConfig) -> Iterator[Item]:
    """Every record, encoded, with its send time (virtual seconds) and, for a
    frame's first record, the frame id; in send order, encoded as it is reached."""
    codec = FrameEventCodec()
    traces = TraceIds(cfg.seed)
    for t, event in plan_events(cfg):
        topic = settings.topics.of(event.source)
        probe = event.frame_id if isinstance(event, ev.FrameCaptured) else None
        yield t, topic, event.frame_id.encode(), codec.encode(event), traces.headers(event), probe


async def run(
    settings: Settings, rate: float, duration: float, sample_every: int, seed: int, *, stream: bool = False
) -> dict[str, Any]:
    fps = 10.0
    cameras = max(1, round(rate / 10.0 / fps))
    # Plan with a start a little ahead (the time encoding up front takes); the
    # schedule is relative to it anyway.
    lead = 1.0 if stream else duration * rate / 15000.0 + 1.0
    start = datetime.now(UTC) + timedelta(seconds=lead)
    cfg = SimulationConfig(
        cameras=cameras, fps=fps, duration_s=duration, seed=seed, realtime=False, start=start
    )
    items: Iterator[Item] = plan(settings, cfg) if stream else iter(list(plan(settings, cfg)))
    producer = make_producer(settings.kafka)
    await producer.start()
    frames = sent = 0
    out = sys.stdout
    print("READY", flush=True)
    t0 = time.monotonic()
    try:
        nxt = next(items, None)
        while nxt is not None:
            now = time.monotonic() - t0
            while nxt is not None and nxt[0] <= now:
                _, topic, key, value, headers, probe = nxt
                if probe is not None:
                    frames += 1
                    if frames % sample_every == 0:
                        out.write(f"P {probe} {time.time():.6f}\n")
                await producer.send(topic, value=value, key=key, headers=headers)
                sent += 1
                nxt = next(items, None)
            out.flush()
            if nxt is not None:
                await asyncio.sleep(max(0.0, min(0.005, nxt[0] - (time.monotonic() - t0))))
        await producer.flush()
    finally:
        await producer.stop()
    seconds = time.monotonic() - t0
    return {
        "events": sent,
        "frames": frames,
        "cameras": cameras,
        "seconds": round(seconds, 3),
        "offered_eps": round(sent / max(seconds, 1e-6), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.loadgen")
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--sample-every", type=int, default=4)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--stream", action="store_true", help="encode as the records are reached, not up front")
    a = ap.parse_args()
    out = asyncio.run(run(Settings.from_env(), a.rate, a.duration, a.sample_every, a.seed, stream=a.stream))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
