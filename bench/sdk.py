"""The producer-side SDK a camera or processor service embeds, measured in one process.

    python -m bench.sdk throughput --frames 20000 --tasks 32 --reps 3
    python -m bench.sdk overhead --frames 20000 --reps 7

Configured by ``TRACKER_*`` like every worker (the harness gives it a topic
pair of its own); prints one JSON line with its results.

``throughput``: frames through ``FrameRepository.save`` against the real broker,
through the real :class:`~tracker.publisher.FramePublisher` (its producer is
``tracker.adapters.kafka.make_producer``'s: ``acks=all``, idempotent). Each frame is
captured, queued, processing, runs three empty stages (each started and
completed) and completes: ten events. ``save`` is called where a service calls
it: after the frame is queued (``FrameCaptured`` + ``FrameQueued``, what a
camera service hands over), after processing started (``ProcessingStarted``,
before the work, so the frame is visible as in progress) and at the end (the
six stage events and ``ProcessingCompleted``). ``tasks`` asyncio tasks take
frames from one counter, as a service handles frames concurrently. Tracing is
the SDK provider of ``tracker.telemetry.setup_tracing`` (each send is a
recording span), exporting nowhere.

``overhead``: what the instrumentation adds around an empty stage, without any
publishing. The same loop over frames runs (a) with ``@traced`` on the process
function, ``set_frame_context``, a ``start_as_current_span`` and a
``TimingContext`` per stage, ``increment_frames_processed``,
``observe_processing_duration`` and one structured log line (``setup_logging``
at INFO to a discarding stream, so formatting counts), and (b) with the domain
calls only. Measured first with ``setup_tracing``'s processors only (no OTLP
endpoint: exporting nowhere), then again with a ``BatchSpanProcessor`` to an
exporter that discards (the queueing and the export thread of a service that
exports, without the encoding and the network).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from tracker.config import Settings
from tracker.domain import Frame, ProcessingState
from tracker.logs import get_logger, setup_logging
from tracker.metrics import TimingContext, get_metrics
from tracker.publisher import FramePublisher
from tracker.repository import FrameRepository
from tracker.telemetry import set_frame_context, setup_tracing, traced

SERVICE = "bench-sdk"
STAGES = ("detect", "analyze", "notify")
EVENTS_PER_FRAME = 10  # captured, queued, processing started, 3 x (stage started, completed), completed
SAVES = ("queued", "processing", "end")  # where the throughput loop saves, and what each publishes
SAVE_EVENTS = {"queued": 2, "processing": 1, "end": 2 * len(STAGES) + 1}

log = get_logger("bench.sdk")
metrics = get_metrics(SERVICE)
tracer = trace.get_tracer("bench.sdk")


def _ms_summary(seconds: Sequence[float]) -> dict[str, float]:
    s = sorted(seconds)
    if not s:
        return {}

    def q(p: float) -> float:
        return round(1000.0 * s[max(0, min(len(s) - 1, round(p * len(s) + 0.5) - 1))], 2)

    return {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": round(1000.0 * s[-1], 2)}


# ---- throughput: frames through save ------------------------------------------------


async def _one_frame(repo: FrameRepository, camera_id: str, lat: dict[str, list[float]]) -> int:
    """One frame's whole life, saved three times; returns the events its saves published."""
    frame = Frame.capture(camera_id)
    frame.transition_to(ProcessingState.QUEUED)
    t0 = time.perf_counter()
    n = await repo.save(frame)
    t1 = time.perf_counter()
    frame.transition_to(ProcessingState.PROCESSING)
    n += await repo.save(frame)
    t2 = time.perf_counter()
    for name in STAGES:
        stage = frame.start_processing_stage(name)
        stage.complete()
    frame.mark_as_completed()
    t3 = time.perf_counter()
    n += await repo.save(frame)
    t4 = time.perf_counter()
    lat["queued"].append(t1 - t0)
    lat["processing"].append(t2 - t1)
    lat["end"].append(t4 - t3)
    return n


async def _run_frames(repo: FrameRepository, frames: int, tasks: int, cameras: int) -> dict[str, Any]:
    lat: dict[str, list[float]] = {k: [] for k in SAVES}
    taken = 0
    events = 0

    async def worker() -> None:
        nonlocal taken, events
        while taken < frames:
            i = taken
            taken += 1
            n = await _one_frame(repo, f"cam{i % cameras:03d}", lat)
            events += n  # not `events += await ...`: that reads `events` before the await

    gc.collect()
    c0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(tasks, frames))))
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "frames": frames,
        "tasks": tasks,
        "events": events,
        "seconds": round(secs, 4),
        "frames_per_s": frames / secs,
        "events_per_s": events / secs,
        "cpu_s": round(cpu, 3),
        "cpu_us_per_frame": round(1e6 * cpu / frames, 1),
        "save_ms": {k: _ms_summary(v) for k, v in lat.items()},
    }


async def throughput(
    settings: Settings, frames: int, tasks: int, reps: int, sequential: int, cameras: int
) -> dict[str, Any]:
    setup_tracing(SERVICE)
    publisher = FramePublisher(settings, producer_name=SERVICE)
    repo = FrameRepository(publisher)
    out: dict[str, Any] = {"frames_per_rep": frames, "tasks": tasks, "reps": []}
    t_start = time.perf_counter()
    await publisher.start()
    out["start_s"] = round(time.perf_counter() - t_start, 3)
    try:
        warm = await _run_frames(repo, max(tasks, min(frames, 200)), tasks, cameras)  # connections, metadata
        total_frames, total_events = warm["frames"], warm["events"]
        out["warmup_frames"] = warm["frames"]
        if sequential:
            # One frame at a time: what a single save costs when nothing else is in flight.
            seq = await _run_frames(repo, sequential, 1, cameras)
            total_frames += seq["frames"]
            total_events += seq["events"]
            out["sequential"] = seq
        for _ in range(reps):
            r = await _run_frames(repo, frames, tasks, cameras)
            total_frames += r["frames"]
            total_events += r["events"]
            out["reps"].append(r)
    finally:
        await publisher.stop()  # waits for the repository's background saves of ended frames, flushes
    out["frames_total"] = total_frames
    out["events_saved"] = total_events  # what the service's own saves reported published
    out["events_acknowledged"] = publisher.published  # delivery callbacks of the publisher
    return out


# ---- overhead: instrumentation around an empty stage ----------------------------------


async def bare(frame: Frame) -> None:
    frame.transition_to(ProcessingState.PROCESSING)
    for name in STAGES:
        stage = frame.start_processing_stage(name)
        stage.complete()
    frame.mark_as_completed()


@traced(span_name="process_frame")
async def instrumented(frame: Frame) -> None:
    set_frame_context(frame)
    metrics.increment_frames_processed(attributes={"camera_id": frame.camera_id})
    frame.transition_to(ProcessingState.PROCESSING)
    for name in STAGES:
        stage = frame.start_processing_stage(name)
        with tracer.start_as_current_span(f"stage {name}"), TimingContext(frame.camera_id, name):
            pass  # the stage's work: none
        stage.complete()
    frame.mark_as_completed()
    total_ms = frame.total_processing_time_ms or 0.0
    metrics.observe_processing_duration(frame.camera_id, "total", total_ms / 1000)
    log.info("frame processed", stages=len(STAGES), total_ms=round(total_ms, 3))


async def _loop(
    process: Callable[[Frame], Awaitable[None]], frames: int, cameras: list[str]
) -> tuple[float, float]:
    """CPU and wall seconds of ``frames`` frames captured, queued and processed."""
    gc.collect()
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(frames):
        frame = Frame.capture(cameras[i % len(cameras)])
        frame.transition_to(ProcessingState.QUEUED)
        await process(frame)
    return time.process_time() - c0, time.perf_counter() - t0


async def _pairs(frames: int, reps: int, cameras: list[str]) -> list[dict[str, float]]:
    await _loop(instrumented, min(frames, 2000), cameras)  # warm-up: caches, label children, loggers
    await _loop(bare, min(frames, 2000), cameras)
    runs = []
    for rep in range(reps):
        order = ("a", "b") if rep % 2 == 0 else ("b", "a")  # alternate, so drift falls on both
        got: dict[str, tuple[float, float]] = {}
        for which in order:
            got[which] = await _loop(instrumented if which == "a" else bare, frames, cameras)
        (ca, wa), (cb, wb) = got["a"], got["b"]
        runs.append(
            {
                "instrumented_cpu_us": 1e6 * ca / frames,
                "bare_cpu_us": 1e6 * cb / frames,
                "overhead_cpu_us": 1e6 * (ca - cb) / frames,
                "instrumented_wall_us": 1e6 * wa / frames,
                "bare_wall_us": 1e6 * wb / frames,
                "overhead_wall_us": 1e6 * (wa - wb) / frames,
            }
        )
    return runs


class _Discard(io.StringIO):
    """A text stream that drops what it is given (the log lines are formatted all the same)."""

    def write(self, s: str) -> int:
        return len(s)


class _CountingExporter(SpanExporter):
    """Exports nowhere; counts what reached it (spans the batch queue dropped do not)."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


async def overhead(frames: int, reps: int, cameras: int) -> dict[str, Any]:
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        raise SystemExit("an OTLP endpoint is set: the overhead is measured exporting nowhere")
    provider = setup_tracing(SERVICE)
    setup_logging("INFO", "json", stream=_Discard())
    cams = [f"cam{i:03d}" for i in range(cameras)]
    out: dict[str, Any] = {
        "frames_per_rep": frames,
        "spans_per_frame": 1 + len(STAGES),
        "log_lines_per_frame": 1,
    }
    out["sdk"] = await _pairs(frames, reps, cams)
    exporter = _CountingExporter()
    batch = BatchSpanProcessor(exporter)
    provider.add_span_processor(batch)
    out["batch"] = await _pairs(frames, reps, cams)
    batch.force_flush()
    # Spans started while the batch processor was installed: warm-up and repetitions.
    started = (1 + len(STAGES)) * (min(frames, 2000) + frames * reps)
    out["batch_spans_started"] = started
    out["batch_spans_exported"] = exporter.spans
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.sdk")
    sub = ap.add_subparsers(dest="cmd", required=True)
    tp = sub.add_parser("throughput")
    tp.add_argument("--frames", type=int, default=20_000, help="frames per repetition")
    tp.add_argument("--tasks", type=int, default=32, help="concurrent asyncio tasks taking frames")
    tp.add_argument("--reps", type=int, default=3)
    tp.add_argument("--sequential", type=int, default=200, help="frames of the one-task run (0: none)")
    tp.add_argument("--cameras", type=int, default=50)
    op = sub.add_parser("overhead")
    op.add_argument("--frames", type=int, default=20_000, help="frames per repetition and variant")
    op.add_argument("--reps", type=int, default=7)
    op.add_argument("--cameras", type=int, default=50)
    a = ap.parse_args()
    if a.cmd == "throughput":
        out = asyncio.run(throughput(Settings.from_env(), a.frames, a.tasks, a.reps, a.sequential, a.cameras))
    else:
        out = asyncio.run(overhead(a.frames, a.reps, a.cameras))
    out["at"] = datetime.now(UTC).isoformat()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
