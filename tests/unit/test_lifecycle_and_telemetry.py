import io
import json
import logging

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tracker.domain import Frame
from tracker.logs import setup_logging
from tracker.store.lifecycle import AFTER_TERMINAL, CONFLICTING_TERMINAL, DUPLICATE_TERMINAL, flag_batch
from tracker.telemetry import (
    FrameContextSpanProcessor,
    frame_context,
    inject_headers,
    parse_traceparent,
)


def rec(eid: str, etype: str, t: int, frame: str = "f") -> dict:
    return {"event_id": eid, "event_type": etype, "occurred_at": t, "frame_id": frame}


def test_lifecycle_flags_by_occurrence_not_arrival() -> None:
    batch = [
        rec("1", "StageCompleted", 50),  # arrives after completion but happened before
        rec("2", "ProcessingCompleted", 100),
        rec("3", "StageStarted", 150),  # after completion: flagged
        rec("4", "StageStarted", 10, frame="other"),
    ]
    assert flag_batch(batch, {}) == 1
    assert [r.get("lifecycle_flag") for r in batch] == [None, None, AFTER_TERMINAL, None]


def test_conflicting_and_duplicate_terminals_against_stored_ones() -> None:
    stored = {"f": [("0", "ProcessingFailed", 90)]}
    batch = [rec("2", "ProcessingCompleted", 100)]
    flag_batch(batch, stored)
    assert batch[0]["lifecycle_flag"] == CONFLICTING_TERMINAL
    batch = [rec("5", "ProcessingFailed", 95)]
    flag_batch(batch, stored)
    assert batch[0]["lifecycle_flag"] == DUPLICATE_TERMINAL
    # A redelivery of the stored terminal itself is not a conflict.
    batch = [rec("0", "ProcessingFailed", 90)]
    assert flag_batch(batch, stored) == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1),
        ),
        (b"00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),
        (b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),
        (b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
        (b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None),
        (b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", None),
        (b"\xff\xfe garbage", None),
        (b"", None),
        (None, None),
        (b"x" * 10_000, None),
    ],
)
def test_parse_traceparent(value, expected) -> None:
    assert parse_traceparent(value) == expected


def test_frame_context_reaches_spans_logs_and_baggage() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(FrameContextSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    frame = Frame.capture("cam-9", frame_id="frame-42")
    out = io.StringIO()
    setup_logging("INFO", "json", stream=out)
    try:
        with frame_context(frame):
            with tracer.start_as_current_span("work"):
                logging.getLogger("x").info("m")
                headers = dict(inject_headers())
            with trace.use_span(trace.INVALID_SPAN):
                pass
    finally:
        setup_logging("WARNING", "json")
    record = json.loads(out.getvalue().splitlines()[0])
    span = exporter.get_finished_spans()[0]
    assert span.attributes["frame.id"] == "frame-42"
    assert span.attributes["camera.id"] == "cam-9"
    assert record["frame_id"] == "frame-42" and record["camera_id"] == "cam-9"
    assert record["trace_id"] == format(span.context.trace_id, "032x")
    assert record["msg"] == "m" and record["level"] == "info" and record["logger"] == "x"
    assert b"frame.id=frame-42" in headers["baggage"]
    assert parse_traceparent(headers["traceparent"])[0] == record["trace_id"]
    # Outside the context nothing leaks.
    with tracer.start_as_current_span("later"):
        pass
    assert "frame.id" not in exporter.get_finished_spans()[-1].attributes
