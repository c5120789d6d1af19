"""TimingContext, the service-side timer of tracker.metrics.

Standalone, it records into the first service that called get_metrics (or
``unknown_service`` before any), or into the service it is bound to; each run
observes its duration and counts the frame as completed or failed, a failure
also as an error by its exception class, and a cancelled or interrupted run
not at all. Errors are counted once per run, whether the service also calls
increment_errors or not, nested stages apart; inside a span the samples carry
its exemplar; a context can be reused.

Every test records under a service name of its own (helpers in
tests/support/metric_samples.py; the ``tracer`` and ``fresh_defaults``
fixtures are in tests/unit/conftest.py).
"""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.trace import Tracer

from tests.support.metric_samples import exemplar_of, ids_of, new_service, samples, value
from tracker import metrics
from tracker.metrics import TimingContext, get_metrics


def test_timing_context_standalone_records_into_the_first_service(fresh_defaults: None) -> None:
    first = get_metrics("camera-first")
    get_metrics("processor-second")
    with TimingContext("cam-1", "face_detection") as timer:
        pass
    assert timer.metrics is first
    assert timer.seconds is not None and timer.seconds >= 0
    labels = {"service": "camera-first", "camera_id": "cam-1", "stage": "face_detection"}
    assert value("frame_processing_duration_seconds_count", **labels) == 1
    assert value("frame_processing_duration_seconds_sum", **labels) == pytest.approx(timer.seconds)
    assert value("frames_processed_total", **labels, status="completed") == 1
    assert (
        value(
            "frames_processed_total",
            service="processor-second",
            camera_id="cam-1",
            stage="face_detection",
            status="completed",
        )
        == 0
    )


def test_timing_context_before_any_get_metrics_is_unknown_service(fresh_defaults: None) -> None:
    before = value(
        "frames_processed_total", service="unknown_service", camera_id="c", stage="s", status="completed"
    )
    with TimingContext("c", "s") as timer:
        pass
    assert timer.metrics.service == metrics.DEFAULT_SERVICE == "unknown_service"
    assert (
        value(
            "frames_processed_total", service="unknown_service", camera_id="c", stage="s", status="completed"
        )
        == before + 1
    )
    # the fallback does not take the default's place: the first real service does
    m = get_metrics("late-service")
    assert metrics.default_metrics() is m
    assert TimingContext("c", "s").metrics is m


def test_timing_context_bound_explicitly(fresh_defaults: None) -> None:
    get_metrics("the-default")
    m = get_metrics("explicit")
    with TimingContext("cam-1", "detect", metrics=m) as a:
        pass
    with m.timing("cam-1", "detect") as b:
        pass
    assert a.metrics is m and b.metrics is m
    assert (
        value(
            "frames_processed_total",
            service="explicit",
            camera_id="cam-1",
            stage="detect",
            status="completed",
        )
        == 2
    )
    assert (
        value(
            "frames_processed_total",
            service="the-default",
            camera_id="cam-1",
            stage="detect",
            status="completed",
        )
        == 0
    )


def test_timing_context_on_exception() -> None:
    m = new_service()
    with pytest.raises(KeyError), m.timing("cam-1", "detect") as timer:
        raise KeyError("no model")
    labels = {"service": m.service, "camera_id": "cam-1", "stage": "detect"}
    # the duration is observed, the run counted as failed, the error by its class
    assert timer.seconds is not None
    assert value("frame_processing_duration_seconds_count", **labels) == 1
    assert value("frames_processed_total", **labels, status="failed") == 1
    assert value("frames_processed_total", **labels, status="completed") == 0
    assert value("frame_errors_total", **labels, error_type="KeyError") == 1


@pytest.mark.parametrize("abandon", [asyncio.CancelledError, KeyboardInterrupt])
def test_timing_context_records_nothing_when_abandoned(abandon: type[BaseException]) -> None:
    m = new_service()
    with pytest.raises(abandon), m.timing("cam-1", "detect") as timer:
        raise abandon()
    assert timer.seconds is not None
    assert samples(m.service) == []


def test_an_error_is_counted_once_with_timing_and_increment_errors() -> None:
    """The guide's error handling inside or around a TimingContext of the same
    stage: one failure, one error."""
    m = new_service()

    def handled_inside() -> None:
        with m.timing("cam-1", "detect"):
            try:
                raise ValueError("bad frame")
            except ValueError as e:
                m.increment_errors(type(e).__name__, attributes={"stage": "detect"})
                raise

    def handled_outside() -> None:
        try:
            with m.timing("cam-1", "detect"):
                raise ValueError("bad frame")
        except ValueError as e:
            m.increment_errors(type(e).__name__, attributes={"stage": "detect"})
            raise

    def errors() -> float:
        return sum(
            s.value
            for s in samples(m.service)
            if s.name == "frame_errors_total" and s.labels["stage"] == "detect"
        )

    with pytest.raises(ValueError):
        handled_inside()
    assert errors() == 1
    # the explicit count came first, and it has no camera
    assert (
        value("frame_errors_total", service=m.service, camera_id="", stage="detect", error_type="ValueError")
        == 1
    )
    with pytest.raises(ValueError):
        handled_outside()
    assert errors() == 2
    # the context came first, with its camera
    assert (
        value(
            "frame_errors_total",
            service=m.service,
            camera_id="cam-1",
            stage="detect",
            error_type="ValueError",
        )
        == 1
    )
    # both runs failed once each
    assert (
        value("frames_processed_total", service=m.service, camera_id="cam-1", stage="detect", status="failed")
        == 2
    )


def test_distinct_stages_and_explicit_counts_are_not_merged() -> None:
    m = new_service()
    # nested stages: the frame (total) and its stage both failed, as the
    # tracker counts StageFailed and ProcessingFailed
    with pytest.raises(OSError), m.timing("cam-1", "total"), m.timing("cam-1", "detect"):
        raise OSError("disk")
    for stage in ("total", "detect"):
        assert (
            value(
                "frame_errors_total", service=m.service, camera_id="cam-1", stage=stage, error_type="OSError"
            )
            == 1
        )
    # explicit counts for one exception (one per camera) are all kept
    try:
        raise TimeoutError
    except TimeoutError:
        for cam in ("a", "b"):
            m.increment_errors("TimeoutError", attributes={"camera_id": cam, "stage": "notify"})
    for cam in ("a", "b"):
        assert (
            value(
                "frame_errors_total",
                service=m.service,
                camera_id=cam,
                stage="notify",
                error_type="TimeoutError",
            )
            == 1
        )


def test_timing_context_exemplar_inside_a_span(tracer: Tracer) -> None:
    m = new_service()
    with (
        tracer.start_as_current_span("detect") as span,
        pytest.raises(RuntimeError),
        m.timing("cam-1", "detect"),
    ):
        raise RuntimeError
    want = ids_of(span)
    assert exemplar_of(m.service, "frames_processed_total", status="failed") == want
    assert exemplar_of(m.service, "frame_errors_total", error_type="RuntimeError") == want


def test_a_timing_context_can_be_reused() -> None:
    m = new_service()
    timer = m.timing("cam-1", "detect")
    for _ in range(3):
        with timer:
            pass
    assert (
        value(
            "frames_processed_total", service=m.service, camera_id="cam-1", stage="detect", status="completed"
        )
        == 3
    )


def test_a_shared_exception_failing_several_runs_counts_once_per_run() -> None:
    """One exception object raised in several runs (say, a failed future many
    frames await) is one error per run, with or without increment_errors."""
    m = new_service()
    shared = RuntimeError("model failed to load")

    def detect_errors(camera: str) -> float:
        return value(
            "frame_errors_total",
            service=m.service,
            camera_id=camera,
            stage="detect",
            error_type="RuntimeError",
        )

    for _ in range(2):
        with pytest.raises(RuntimeError), m.timing("cam-1", "detect"):
            raise shared
    assert detect_errors("cam-1") == 2
    for _ in range(3):
        with pytest.raises(RuntimeError), m.timing("cam-2", "detect"):
            try:
                raise shared
            except RuntimeError as e:
                m.increment_errors(type(e).__name__, attributes={"camera_id": "cam-2", "stage": "detect"})
                raise
    assert detect_errors("cam-2") == 3
