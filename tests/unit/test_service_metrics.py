"""The service-side metrics API of tracker.metrics: get_metrics, ServiceMetrics,
TimingContext; label mapping, exemplars, and the OpenMetrics exposition.

The families live in the process-wide registry, so every test records under a
service name of its own and reads its samples back by that name.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tracker import metrics, service_metrics
from tracker.metrics import REGISTRY, ServiceMetrics, TimingContext, get_metrics

_names = itertools.count()


def new_service() -> ServiceMetrics:
    return get_metrics(f"svc-{next(_names)}")


def value(name: str, **labels: str) -> float:
    """A sample's value, 0 when the series does not exist."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def samples(service: str) -> list[Sample]:
    """Every sample of ``service`` in the OpenMetrics exposition, parsed."""
    body, content_type = metrics.exposition()
    assert content_type.startswith("application/openmetrics-text")
    return [
        s
        for fam in text_string_to_metric_families(body.decode())
        for s in fam.samples
        if s.labels.get("service") == service
    ]


def exemplar_of(service: str, name: str, **labels: str) -> dict[str, str] | None:
    found = [
        s for s in samples(service) if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert found, f"no {name}{labels} for {service}"
    with_ex = [s.exemplar for s in found if s.exemplar is not None]
    return dict(with_ex[0].labels) if with_ex else None


@pytest.fixture
def tracer() -> Tracer:
    """A tracer of a local SDK provider (the global one is left alone)."""
    return TracerProvider().get_tracer("test")


@pytest.fixture
def fresh_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """No get_metrics call has happened yet in this 'process'."""
    monkeypatch.setattr(service_metrics, "_services", {})
    monkeypatch.setattr(service_metrics, "_default_service", None)


def ids_of(span: Any) -> dict[str, str]:
    ctx = span.get_span_context()
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}


# ---- get_metrics -----------------------------------------------------------------------


def test_one_object_per_service_name() -> None:
    m = get_metrics("camera-test")
    assert get_metrics("camera-test") is m
    assert get_metrics("processor-test") is not m
    assert m.service == "camera-test"


@pytest.mark.parametrize("name", ["", " camera", "camera ", "cam\nera", "cam\x00", "x" * 65])
def test_bad_service_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="service name"):
        get_metrics(name)


def test_a_service_name_is_a_string() -> None:
    with pytest.raises(TypeError):
        get_metrics(None)  # type: ignore[arg-type]
    assert get_metrics("x" * 64).service == "x" * 64


# ---- attributes -> labels ----------------------------------------------------------------


def test_attributes_map_to_the_fixed_label_set() -> None:
    m = new_service()
    m.increment_frames_processed(attributes={"camera_id": "cam-1"})
    m.increment_frames_processed(attributes={"camera_id": "cam-1"}, amount=2)
    # a missing key is the empty value, which Prometheus treats as no label
    assert value("frames_processed_total", service=m.service, camera_id="cam-1", stage="", status="") == 3
    m.increment_frames_processed({"camera_id": 7, "stage": "detect", "status": "completed"})
    assert value(
        "frames_processed_total", service=m.service, camera_id="7", stage="detect", status="completed"
    )
    m.increment_frames_processed({"camera_id": None})
    m.increment_frames_processed()
    assert value("frames_processed_total", service=m.service, camera_id="", stage="", status="") == 2


def test_unknown_keys_are_refused_with_the_allowed_ones() -> None:
    m = new_service()
    with pytest.raises(ValueError, match=r"'camera'.*allowed keys: camera_id, stage, status"):
        m.increment_frames_processed({"camera": "cam-1"})
    with pytest.raises(ValueError, match=r"allowed keys: camera_id, stage$"):
        m.increment_errors("Boom", attributes={"status": "failed"})
    # error_type is the argument, service comes from get_metrics: neither is an attribute
    with pytest.raises(ValueError, match="'error_type'"):
        m.increment_errors("Boom", attributes={"error_type": "Other"})
    with pytest.raises(ValueError, match="'service'"):
        m.increment_frames_processed({"service": "other"})
    with pytest.raises(TypeError):
        m.increment_frames_processed(["camera_id"])  # type: ignore[arg-type]
    assert not samples(m.service), "a refused call recorded something"


@pytest.mark.parametrize("key", ["frame_id", "frame.id"])
def test_frame_id_is_never_a_label(key: str) -> None:
    m = new_service()
    with pytest.raises(ValueError, match=r"never a metric label.*one series per frame.*exemplar"):
        m.increment_frames_processed({"camera_id": "cam-1", key: "f-1"})
    with pytest.raises(ValueError, match="never a metric label"):
        m.increment_errors("Boom", attributes={key: "f-1"})
    assert not samples(m.service)


def test_errors_and_durations() -> None:
    m = new_service()
    m.increment_errors("TimeoutError", attributes={"stage": "detect"})
    m.increment_errors("TimeoutError", attributes={"stage": "detect", "camera_id": "cam-2"})
    assert (
        value(
            "frame_errors_total", service=m.service, camera_id="", stage="detect", error_type="TimeoutError"
        )
        == 1
    )
    assert (
        value(
            "frame_errors_total",
            service=m.service,
            camera_id="cam-2",
            stage="detect",
            error_type="TimeoutError",
        )
        == 1
    )
    with pytest.raises(ValueError, match="error_type"):
        m.increment_errors("")

    m.observe_processing_duration("cam-2", "total", 1.5)
    m.observe_processing_duration("cam-2", "total", 0.004)
    labels = {"service": m.service, "camera_id": "cam-2", "stage": "total"}
    assert value("frame_processing_duration_seconds_count", **labels) == 2
    assert value("frame_processing_duration_seconds_sum", **labels) == pytest.approx(1.504)
    assert value("frame_processing_duration_seconds_bucket", **labels, le="0.005") == 1
    assert value("frame_processing_duration_seconds_bucket", **labels, le="2.5") == 2
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="non-negative"):
            m.observe_processing_duration("cam-2", "total", bad)
    assert value("frame_processing_duration_seconds_count", **labels) == 2


def test_service_calls_leave_the_tracker_families_alone() -> None:
    """What the tracker counts from stored events and what a service counts
    itself are separate families: nothing a service does reaches the former."""

    def tracker_total() -> float:
        return sum(
            s.value
            for fam in REGISTRY.collect()
            if fam.name in ("tracker_frames_processed", "tracker_frame_errors")
            or fam.name == "tracker_frame_processing_duration_seconds"
            for s in fam.samples
            if s.name.endswith(("_total", "_count"))
        )

    before = tracker_total()
    m = new_service()
    m.increment_frames_processed({"camera_id": "cam-1", "stage": "total", "status": "completed"})
    m.increment_errors("Boom", attributes={"camera_id": "cam-1", "stage": "total"})
    m.observe_processing_duration("cam-1", "total", 0.2)
    with pytest.raises(RuntimeError), m.timing("cam-1", "total"):
        raise RuntimeError
    assert tracker_total() == before


# ---- exemplars ---------------------------------------------------------------------------


def test_exemplars_carry_the_current_span(tracer: Tracer) -> None:
    m = new_service()
    with tracer.start_as_current_span("process") as span:
        m.increment_frames_processed({"camera_id": "cam-1"})
        m.increment_errors("Boom", attributes={"camera_id": "cam-1", "stage": "detect"})
        m.observe_processing_duration("cam-1", "total", 0.3)
        with m.timing("cam-1", "detect"):
            pass
    want = ids_of(span)
    assert exemplar_of(m.service, "frames_processed_total", stage="") == want
    assert exemplar_of(m.service, "frames_processed_total", stage="detect", status="completed") == want
    assert exemplar_of(m.service, "frame_errors_total", error_type="Boom") == want
    # on the bucket the observation fell into
    assert exemplar_of(m.service, "frame_processing_duration_seconds_bucket", stage="total", le="0.5") == want
    assert exemplar_of(m.service, "frame_processing_duration_seconds_bucket", stage="detect") == want


def test_no_exemplars_outside_a_span() -> None:
    m = new_service()
    m.increment_frames_processed({"camera_id": "cam-1"})
    m.increment_errors("Boom")
    m.observe_processing_duration("cam-1", "total", 0.3)
    assert samples(m.service)
    assert all(s.exemplar is None for s in samples(m.service))


def test_the_exposition_has_the_documented_families() -> None:
    m = new_service()
    m.increment_frames_processed({"camera_id": "c"})
    m.increment_errors("E")
    m.observe_processing_duration("c", "s", 0.1)
    body, _ = metrics.exposition()
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert fams["frames_processed"].type == "counter"
    assert fams["frame_errors"].type == "counter"
    assert fams["frame_processing_duration_seconds"].type == "histogram"
    for name in (
        "tracker_frames_processed",
        "tracker_frame_errors",
        "tracker_frame_processing_duration_seconds",
    ):
        assert name in fams
    labels = {s.name: set(s.labels) for s in samples(m.service)}
    assert labels["frames_processed_total"] == {"service", "camera_id", "stage", "status"}
    assert labels["frame_errors_total"] == {"service", "camera_id", "stage", "error_type"}
    assert labels["frame_processing_duration_seconds_bucket"] == {"service", "camera_id", "stage", "le"}


# ---- TimingContext -----------------------------------------------------------------------


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
