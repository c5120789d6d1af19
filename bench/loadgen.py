"""Steady offered load for the freshness scenario, configured by TRACKER_*.

Plans the simulator's realistic mix for ``--duration`` seconds at ``--rate``
events/s (cameras x 10 fps, ~10 events per frame), encodes every record up
front (so that the measurement window costs only the sends), then sends each
record when its virtual time comes, through a producer configured like
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
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.mix import TraceIds, plan_events
from tracker import events as ev
from tracker.adapters.kafka import make_producer
from tracker.codec import FrameEventCodec
from tracker.config import Settings
from tracker.simulator import SimulationConfig


def plan(
    settings: Settings, cfg: SimulationConfig
) -> list[tuple[float, str, bytes, bytes, list[tuple[str, bytes]], str | None]]:
    """Every record, encoded, with its send time (virtual seconds) and, for a
    frame's first record, the frame id."""
    codec = FrameEventCodec()
    traces = TraceIds(cfg.seed)
    items = []
    for t, event in plan_events(cfg):
        topic = settings.topics.of(event.source)
        probe = event.frame_id if isinstance(event, ev.FrameCaptured) else None
        items.append((t, topic, event.frame_id.encode(), codec.encode(event), traces.headers(event), probe))
    return items


async def run(
    settings: Settings, rate: float, duration: float, sample_every: int, seed: int
) -> dict[str, Any]:
    fps = 10.0
    cameras = max(1, round(rate / 10.0 / fps))
    # Plan with a start a little ahead; the schedule is relative to it anyway.
    start = datetime.now(UTC) + timedelta(seconds=duration * rate / 15000.0 + 1.0)
    cfg = SimulationConfig(
        cameras=cameras, fps=fps, duration_s=duration, seed=seed, realtime=False, start=start
    )
    items = plan(settings, cfg)
    producer = make_producer(settings.kafka)
    await producer.start()
    frames = 0
    out = sys.stdout
    print("READY", flush=True)
    t0 = time.monotonic()
    try:
        i, n = 0, len(items)
        while i < n:
            now = time.monotonic() - t0
            while i < n and items[i][0] <= now:
                _, topic, key, value, headers, probe = items[i]
                if probe is not None:
                    frames += 1
                    if frames % sample_every == 0:
                        out.write(f"P {probe} {time.time():.6f}\n")
                await producer.send(topic, value=value, key=key, headers=headers)
                i += 1
            out.flush()
            if i < n:
                await asyncio.sleep(max(0.0, min(0.005, items[i][0] - (time.monotonic() - t0))))
        await producer.flush()
    finally:
        await producer.stop()
    seconds = time.monotonic() - t0
    return {
        "events": len(items),
        "frames": frames,
        "cameras": cameras,
        "seconds": round(seconds, 3),
        "offered_eps": round(len(items) / max(seconds, 1e-6), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.loadgen")
    ap.add_argument("--rate", type=float, required=True)
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--sample-every", type=int, default=4)
    ap.add_argument("--seed", type=int, default=11)
    a = ap.parse_args()
    out = asyncio.run(run(Settings.from_env(), a.rate, a.duration, a.sample_every, a.seed))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
