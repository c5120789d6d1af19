"""The simulator's realistic mix, as a plain iterator of events.

Same planning as ``tracker.simulator.simulate`` (``plan_frame`` per camera and
capture tick, seeded; events ordered across frames by their virtual time), but
with no publisher in the loop, so the benchmarks can encode and send the
records in bulk. One trace per frame, as the simulator's publisher emits
(every event's ``send`` span is a child of the frame's span).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator
from datetime import UTC, datetime

from tracker import events as ev
from tracker.codec import CONTENT_TYPE
from tracker.simulator import SimulationConfig, plan_frame

_CT = CONTENT_TYPE.encode()


def plan_events(cfg: SimulationConfig) -> Iterator[tuple[float, ev.FrameEvent]]:
    """``(virtual seconds since start, event)`` in the order the simulator sends them."""
    rng = random.Random(cfg.seed)
    start = cfg.start or datetime.now(UTC)
    cameras = [f"{cfg.camera_prefix}-{i + 1:03d}" for i in range(cfg.cameras)]
    processors = [f"processor/{i + 1}" for i in range(max(1, cfg.cameras // 4))]
    interval = 1.0 / cfg.fps
    n_per_camera = int(cfg.fps * cfg.duration_s)
    heap: list[tuple[float, int, ev.FrameEvent]] = []
    seq = 0
    tick = 0
    while tick < n_per_camera or heap:
        while tick < n_per_camera and (not heap or tick * interval <= heap[0][0]):
            for c, camera in enumerate(cameras):
                capture = tick * interval + rng.uniform(0, interval * 0.1) + c * 1e-6
                if cfg.injections.silent(camera, capture):
                    continue
                for t, e in plan_frame(rng, cfg, camera, capture, start, processors[c % len(processors)]):
                    heapq.heappush(heap, (t, seq, e))
                    seq += 1
            tick += 1
        t, _, e = heapq.heappop(heap)
        yield t, e


class TraceIds:
    """W3C trace context as the publisher sends it: one trace id per frame,
    one span id per event."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed ^ 0x7ACE)
        self.frames: dict[str, str] = {}

    def for_event(self, event: ev.FrameEvent) -> tuple[str, str]:
        trace_id = self.frames.get(event.frame_id)
        if trace_id is None:
            trace_id = self.frames[event.frame_id] = f"{self.rng.getrandbits(128):032x}"
        if event.event_type in ("ProcessingCompleted", "ProcessingFailed"):
            self.frames.pop(event.frame_id, None)  # a frame's last event: keep the map small
        return trace_id, f"{self.rng.getrandbits(64):016x}"

    def headers(self, event: ev.FrameEvent) -> list[tuple[str, bytes]]:
        trace_id, span_id = self.for_event(event)
        return [
            ("traceparent", f"00-{trace_id}-{span_id}-03".encode()),
            ("baggage", f"frame.id={event.frame_id},camera.id={event.camera_id}".encode()),
            ("event_type", event.event_type.encode()),
            ("content-type", _CT),
        ]
