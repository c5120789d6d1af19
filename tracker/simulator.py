"""Simulated camera and processor services, publishing through the real publisher.

Frames run through the real domain objects (``Frame``, ``ProcessingStage``) on a
virtual clock, so timings are realistic, seeded and reproducible, while the
events themselves are published for real. In real-time mode each event is sent
when its virtual time comes; with ``realtime=False`` as fast as Kafka takes them.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from opentelemetry import trace

from tracker import events as ev
from tracker.domain import Frame, FrameError, ProcessingState
from tracker.errors import UsageError
from tracker.publisher import FramePublisher
from tracker.telemetry import get_tracer

STAGES = ("detect", "analyze", "notify")
# Median stage durations (ms) and log-normal spread: detection is the heavy one.
STAGE_TIMING = {"detect": (45.0, 0.35), "analyze": (80.0, 0.45), "notify": (8.0, 0.6)}
STAGE_ERRORS = {
    "detect": ("ModelTimeout", "inference exceeded its deadline"),
    "analyze": ("AnalysisError", "no object track could be formed"),
    "notify": ("WebhookError", "notification endpoint answered 503"),
}


#: Injection kinds, and the anomaly kind each should be detected as (None: must not alarm).
INJECTION_KINDS = {
    "slow": "stage_slow",
    "errors": "failure_burst",
    "silent": "camera_silent",
    "drift": None,
}
_INJECTION = re.compile(
    r"(?P<kind>[a-z]+)@(?P<camera>[A-Za-z0-9._-]+)(?:/(?P<stage>[a-z]+))?"
    r":(?P<start>\d+(?:\.\d+)?)\+(?P<duration>\d+(?:\.\d+)?)(?:x(?P<factor>\d+(?:\.\d+)?))?"
)


@dataclass(frozen=True)
class Injection:
    """A labelled anomaly the simulator injects, in seconds of simulated time:

    - ``slow@cam-002/detect:120+60x3``: the stage runs 3x slower on that camera for 60 s from 120 s;
    - ``errors@cam-002/analyze:120+60x0.5``: the stage fails with probability 0.5 meanwhile;
    - ``silent@cam-002:120+60``: the camera sends no frame meanwhile;
    - ``drift@cam-002/notify:0+1800x2``: the stage slows gradually to 2x over 1800 s and stays so
      (a drift that should be learned, not alarmed).
    """

    kind: str
    camera_id: str
    stage: str
    start_s: float
    duration_s: float
    factor: float

    @classmethod
    def parse(cls, spec: str) -> Injection:
        m = _INJECTION.fullmatch(spec.strip())
        if m is None:
            raise UsageError(
                f"--inject {spec!r}: expected KIND@CAMERA[/STAGE]:START+DURATION[xFACTOR], "
                "e.g. slow@cam-002/detect:120+60x3"
            )
        kind, stage = m["kind"], m["stage"] or ""
        if kind not in INJECTION_KINDS:
            raise UsageError(
                f"--inject {spec!r}: unknown kind {kind!r} (one of {', '.join(INJECTION_KINDS)})"
            )
        if kind != "silent" and stage not in STAGES:
            raise UsageError(f"--inject {spec!r}: {kind} needs a stage, one of {', '.join(STAGES)}")
        if kind == "silent" and stage:
            raise UsageError(f"--inject {spec!r}: silent applies to a whole camera, without a stage")
        default = {"slow": 3.0, "errors": 0.5, "silent": 1.0, "drift": 2.0}[kind]
        factor = float(m["factor"]) if m["factor"] else default
        duration = float(m["duration"])
        if duration <= 0:
            raise UsageError(f"--inject {spec!r}: the duration must be positive")
        if kind == "errors" and not 0 < factor <= 1:
            raise UsageError(f"--inject {spec!r}: an error burst's factor is a probability in (0, 1]")
        if kind in ("slow", "drift") and factor <= 0:
            raise UsageError(f"--inject {spec!r}: the factor must be positive")
        return cls(kind, m["camera"], stage, float(m["start"]), duration, factor)

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    def active(self, camera_id: str, t: float) -> bool:
        return camera_id == self.camera_id and self.start_s <= t < self.end_s

    def truth(self, start: datetime) -> dict[str, Any]:
        """The ground truth of this injection, as the simulator writes it."""
        return {
            "kind": self.kind,
            "camera_id": self.camera_id,
            "stage": self.stage,
            "start": (start + timedelta(seconds=self.start_s)).isoformat(),
            "end": (start + timedelta(seconds=self.end_s)).isoformat(),
            "factor": self.factor,
            "expect": INJECTION_KINDS[self.kind],
        }


@dataclass(frozen=True)
class Injections:
    """What the injections do to one frame (empty: the clean mix, unchanged)."""

    items: tuple[Injection, ...] = ()

    def silent(self, camera_id: str, t: float) -> bool:
        return any(i.kind == "silent" and i.active(camera_id, t) for i in self.items)

    def slowdown(self, camera_id: str, stage: str, t: float) -> float:
        f = 1.0
        for i in self.items:
            if i.camera_id != camera_id or i.stage != stage:
                continue
            if i.kind == "slow" and i.active(camera_id, t):
                f *= i.factor
            elif i.kind == "drift" and t >= i.start_s:
                f *= 1 + (i.factor - 1) * min(1.0, (t - i.start_s) / i.duration_s)
        return f

    def failure_probability(self, camera_id: str, stage: str, t: float) -> float:
        return max(
            (
                i.factor
                for i in self.items
                if i.kind == "errors" and i.stage == stage and i.active(camera_id, t)
            ),
            default=0.0,
        )

    def write_truth(self, path: Any, start: datetime) -> None:
        payload = {"start": start.isoformat(), "injections": [i.truth(start) for i in self.items]}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")


@dataclass(frozen=True)
class SimulationConfig:
    cameras: int = 3
    fps: float = 5.0
    duration_s: float = 5.0
    failure_rate: float = 0.05
    retry_rate: float = 0.02  # a stage fails transiently and is retried once
    slow_rate: float = 0.01  # a frame hits a slow path (x10 on one stage)
    seed: int = 1
    realtime: bool = True
    start: datetime | None = None
    camera_prefix: str = "cam"
    injections: Injections = field(default_factory=Injections)

    @property
    def frames(self) -> int:
        return int(self.cameras * self.fps * self.duration_s)


@dataclass
class SimulationResult:
    frames: int = 0
    events: int = 0
    failed_frames: int = 0
    seconds: float = 0.0
    event_ids: list[str] = field(default_factory=list)


class _VirtualClock:
    def __init__(self, start: datetime) -> None:
        self.start = start
        self.t = 0.0  # seconds since start

    def monotonic(self) -> float:
        return self.t

    def wall(self) -> datetime:
        return self.start + timedelta(seconds=self.t)


def plan_frame(
    rng: random.Random,
    cfg: SimulationConfig,
    camera_id: str,
    capture_s: float,
    start: datetime,
    processor: str,
) -> list[tuple[float, ev.FrameEvent]]:
    """All events of one frame, each with its virtual time (seconds since start)."""
    clock = _VirtualClock(start)
    clock.t = capture_s
    frame = Frame.capture(
        camera_id,
        timestamp=clock.wall(),
        metadata={"width": "1920", "height": "1080", "codec": "h264"},
        clock=clock.monotonic,
        wall_clock=clock.wall,
    )
    cam_producer = f"camera-service/{camera_id}"
    out: list[tuple[float, ev.FrameEvent]] = [(clock.t, ev.frame_captured(frame, cam_producer))]
    clock.t += rng.uniform(0.0005, 0.003)
    frame.transition_to(ProcessingState.QUEUED)
    out.append((clock.t, ev.frame_queued(frame, cam_producer)))
    clock.t += rng.lognormvariate(0, 0.8) * 0.010  # queue wait
    frame.transition_to(ProcessingState.PROCESSING)
    out.append((clock.t, ev.processing_started(frame, processor)))
    clock.t += 0.00005  # the first stage starts just after processing does
    fail_at = rng.choice(STAGES) if rng.random() < cfg.failure_rate else None
    slow_at = rng.choice(STAGES) if rng.random() < cfg.slow_rate else None
    inj = cfg.injections
    if inj.items and fail_at is None:
        for name in STAGES:
            p = inj.failure_probability(camera_id, name, capture_s)
            if p and rng.random() < p:
                fail_at = name
                break
    for name in STAGES:
        retried = rng.random() < cfg.retry_rate
        attempts = 2 if retried else 1
        for attempt in range(1, attempts + 1):
            stage = frame.start_processing_stage(name)
            out.append((clock.t, ev.stage_started(stage, processor)))
            median, sigma = STAGE_TIMING[name]
            ms = median * rng.lognormvariate(0, sigma) * (10 if slow_at == name else 1)
            if inj.items:
                ms *= inj.slowdown(camera_id, name, capture_s)
            clock.t += ms / 1000.0
            final_attempt = attempt == attempts
            if (retried and not final_attempt) or (fail_at == name and final_attempt):
                etype, msg = STAGE_ERRORS[name]
                stage.fail(FrameError(etype, msg if final_attempt else msg + " (transient)"))
                out.append((clock.t, ev.stage_finished(stage, processor)))
                if fail_at == name and final_attempt:
                    clock.t += 0.0005
                    frame.mark_as_failed(FrameError(etype, msg))
                    out.append((clock.t, ev.processing_failed(frame, processor, stage=name)))
                    return out
            else:
                stage.complete()
                out.append((clock.t, ev.stage_finished(stage, processor)))
            clock.t += 0.0002
    frame.mark_as_completed()
    out.append((clock.t, ev.processing_completed(frame, processor)))
    return out


async def simulate(
    publisher: FramePublisher,
    cfg: SimulationConfig,
    *,
    record_ids: bool = False,
    on_event: Callable[[ev.FrameEvent], None] | None = None,
    stop: asyncio.Event | None = None,
) -> SimulationResult:
    rng = random.Random(cfg.seed)
    start = cfg.start or datetime.now(UTC)
    cameras = [f"{cfg.camera_prefix}-{i + 1:03d}" for i in range(cfg.cameras)]
    processors = [f"processor/{i + 1}" for i in range(max(1, cfg.cameras // 4))]
    result = SimulationResult()
    t_wall0 = time.monotonic()
    interval = 1.0 / cfg.fps
    n_per_camera = int(cfg.fps * cfg.duration_s)
    # Frames are planned lazily, one capture tick at a time, so memory stays
    # bounded however long the run; the heap orders events across frames.
    heap: list[tuple[float, int, ev.FrameEvent]] = []
    seq = 0
    tick = 0
    # One trace per frame: a "frame <id>" span opens with the frame's first
    # event and closes with its last; every event's send span is its child.
    tracer = get_tracer("tracker.simulator")
    open_frames: dict[str, list[Any]] = {}  # frame_id -> [span | None, events left]

    def plan_tick(i: int) -> None:
        nonlocal seq
        for c, camera in enumerate(cameras):
            capture = i * interval + rng.uniform(0, interval * 0.1) + c * 1e-6
            if cfg.injections.silent(camera, capture):
                continue
            planned = plan_frame(rng, cfg, camera, capture, start, processors[c % len(processors)])
            for t, e in planned:
                heapq.heappush(heap, (t, seq, e))
                seq += 1
            open_frames[planned[0][1].frame_id] = [None, len(planned)]
            result.frames += 1

    while tick < n_per_camera or heap:
        if stop is not None and stop.is_set():
            break
        # Plan ahead while the next capture tick is due before the next event.
        while tick < n_per_camera and (not heap or tick * interval <= heap[0][0]):
            plan_tick(tick)
            tick += 1
        t, _, event = heapq.heappop(heap)
        if cfg.realtime:
            delay = t - (time.monotonic() - t_wall0)
            if delay > 0:
                await asyncio.sleep(delay)
        entry = open_frames[event.frame_id]
        if entry[0] is None:
            entry[0] = tracer.start_span(
                f"frame {event.frame_id}",
                attributes={"frame.id": event.frame_id, "camera.id": event.camera_id},
            )
        await publisher.publish(event, wait=False, context=trace.set_span_in_context(entry[0]))
        entry[1] -= 1
        if entry[1] == 0:
            entry[0].end()
            del open_frames[event.frame_id]
        result.events += 1
        if isinstance(event, ev.ProcessingFailed):
            result.failed_frames += 1
        if record_ids:
            result.event_ids.append(event.event_id)
        if on_event:
            on_event(event)
    for entry in open_frames.values():  # stopped early: close what is open
        if entry[0] is not None:
            entry[0].end()
    await publisher.flush()
    result.seconds = time.monotonic() - t_wall0
    return result
