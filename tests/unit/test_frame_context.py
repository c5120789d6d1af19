"""Frame context as the guide uses it: ``set_frame_context(frame)`` once per
frame, no reset, inside ``@traced`` functions, one frame after another in one
task and many frames in concurrent tasks. No span or log line may carry
another frame's ids."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import random
from collections import defaultdict
from datetime import UTC, datetime

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from tracker.domain import Frame
from tracker.logs import get_logger, setup_logging
from tracker.telemetry import current_frame_context, set_frame_context, setup_tracing, traced

_exporter: InMemorySpanExporter | None = None


@pytest.fixture
def spans() -> InMemorySpanExporter:
    global _exporter
    if _exporter is None:
        _exporter = InMemorySpanExporter()
        setup_tracing("tracker-unit-tests").add_span_processor(SimpleSpanProcessor(_exporter))
    _exporter.clear()
    return _exporter


@pytest.fixture
def log_lines():  # type: ignore[no-untyped-def]
    out = io.StringIO()
    setup_logging("INFO", "json", stream=out)
    yield lambda: [json.loads(line) for line in out.getvalue().splitlines()]
    setup_logging("WARNING", "json")


tracer = trace.get_tracer(__name__)
log = get_logger(__name__)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Service:
    """Written the guide's way: the frame is made current inside the traced method."""

    def __init__(self, jitter: bool = False) -> None:
        self.rng = random.Random(1)
        self.jitter = jitter

    async def _pause(self) -> None:
        await asyncio.sleep(self.rng.uniform(0, 0.002) if self.jitter else 0)

    @traced(span_name="process_frame")
    async def process(self, frame: Frame) -> None:
        set_frame_context(frame)
        await self._pause()
        with tracer.start_as_current_span("process", attributes={"test.expected": frame.frame_id}):
            log.info("processing frame", expected=frame.frame_id, stage="detect")
            await self._pause()
            self.step(frame.frame_id)

    @traced(span_name="step")
    def step(self, expected: str) -> None:
        logging.getLogger("stdlib").info("a standard-library line")  # ids added too
        with tracer.start_as_current_span("inner", attributes={"test.expected": expected}):
            pass

    @traced(span_name="by_id")
    async def by_id(self, frame_id: str) -> None:
        # No frame among the arguments: the span starts frameless and is stamped
        # by set_frame_context, which knows the frame it is about.
        frame = Frame.resume(frame_id, "cam-x", T0)
        set_frame_context(frame)
        with tracer.start_as_current_span("process", attributes={"test.expected": frame_id}):
            await self._pause()


def assert_no_foreign_ids(finished: tuple[ReadableSpan, ...], n_frames: int) -> None:
    by_trace: dict[int, list[ReadableSpan]] = defaultdict(list)
    for s in finished:
        by_trace[s.context.trace_id].append(s)
    assert len(by_trace) == n_frames  # one trace per frame
    for group in by_trace.values():
        expected = {s.attributes["test.expected"] for s in group if "test.expected" in s.attributes}
        assert len(expected) == 1, f"one trace mixes frames {expected}"
        (frame_id,) = expected
        for s in group:
            assert s.attributes.get("frame.id") == frame_id, (
                f"span {s.name!r} of frame {frame_id} carries {s.attributes.get('frame.id')!r}"
            )


def frames(n: int) -> list[Frame]:
    return [Frame.resume(f"frame-{i:03d}", f"cam-{i % 4}", T0) for i in range(n)]


async def test_one_task_one_frame_after_another(spans: InMemorySpanExporter, log_lines) -> None:  # type: ignore[no-untyped-def]
    svc = Service()
    batch = frames(100)
    for frame in batch:
        await svc.process(frame)
    finished = spans.get_finished_spans()
    assert len(finished) == 100 * 4
    assert_no_foreign_ids(finished, 100)
    # After the traced call returns, no frame is left current.
    assert current_frame_context() is None
    lines = [line for line in log_lines() if line.get("expected")]
    assert len(lines) == 100
    assert all(line["frame_id"] == line["expected"] for line in lines)
    stdlib = [line for line in log_lines() if line["logger"] == "stdlib"]
    assert [line["frame_id"] for line in stdlib] == [f.frame_id for f in batch]


async def test_concurrent_tasks(spans: InMemorySpanExporter, log_lines) -> None:  # type: ignore[no-untyped-def]
    svc = Service(jitter=True)
    await asyncio.gather(*(svc.process(f) for f in frames(50)))
    assert_no_foreign_ids(spans.get_finished_spans(), 50)
    lines = [line for line in log_lines() if line.get("expected")]
    assert len(lines) == 50 and all(line["frame_id"] == line["expected"] for line in lines)
    for line in lines:  # each line leads to its span
        assert len(line["trace_id"]) == 32 and len(line["span_id"]) == 16
        assert int(line["trace_flags"], 16) & 1 == 1  # sampled


async def test_frame_found_only_inside_the_function(spans: InMemorySpanExporter) -> None:
    svc = Service(jitter=True)
    # Sequential and concurrent: the outer span started before the frame was known.
    for i in range(20):
        await svc.by_id(f"seq-{i}")
    await asyncio.gather(*(svc.by_id(f"par-{i}") for i in range(30)))
    assert_no_foreign_ids(spans.get_finished_spans(), 50)


async def test_without_traced_a_loop_replaces_the_frame(spans: InMemorySpanExporter) -> None:
    async def handle(frame: Frame) -> None:
        set_frame_context(frame)
        with tracer.start_as_current_span("process", attributes={"test.expected": frame.frame_id}):
            await asyncio.sleep(0)

    for frame in frames(100):
        await handle(frame)
    assert_no_foreign_ids(spans.get_finished_spans(), 100)


async def test_traced_records_errors_and_frame_ids(spans: InMemorySpanExporter) -> None:
    class Boom(Exception):
        pass

    @traced(span_name="sync_fail")
    def sync_fail(frame: Frame) -> None:
        raise Boom("no luck")

    @traced
    async def async_ok(frame: Frame) -> int:
        return 7

    frame = Frame.resume("frame-err", "cam-1", T0)
    with pytest.raises(Boom):
        sync_fail(frame)
    assert await async_ok(frame=frame) == 7
    failed, ok = spans.get_finished_spans()
    assert failed.name == "sync_fail" and failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["error.type"].endswith("Boom")
    assert failed.events[0].name == "exception"
    assert failed.attributes["frame.id"] == "frame-err" and failed.attributes["camera.id"] == "cam-1"
    assert ok.name.endswith("async_ok") and ok.status.status_code is StatusCode.UNSET
    assert ok.attributes["frame.id"] == "frame-err"


async def test_traced_continues_the_trace_a_frame_arrived_with(spans: InMemorySpanExporter) -> None:
    from tracker.telemetry import inject_carrier

    with tracer.start_as_current_span("camera") as camera_span:
        carried = inject_carrier()
    frame = Frame.resume("frame-handoff", "cam-1", T0, trace_context=carried)

    @traced(span_name="process")
    async def process(frame: Frame) -> None:
        pass

    await process(frame)
    processed = next(s for s in spans.get_finished_spans() if s.name == "process")
    assert processed.context.trace_id == camera_span.get_span_context().trace_id
    assert processed.parent is not None and processed.parent.span_id == camera_span.get_span_context().span_id


def test_traced_refuses_generators() -> None:
    with pytest.raises(TypeError, match="generators"):

        @traced
        def gen():  # type: ignore[no-untyped-def]
            yield 1
