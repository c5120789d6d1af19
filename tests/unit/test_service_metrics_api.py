"""The service-side metrics API of tracker.metrics: get_metrics and ServiceMetrics.

One ServiceMetrics per service name (bad names refused); attributes mapped to
a fixed label set (unknown keys and frame ids refused); errors and durations;
exemplars with the current span's trace and span id; the families and labels
of the OpenMetrics exposition, which stay apart from the tracker's own
``tracker_`` families. TimingContext is tested in test_timing_context.py.

The families live in the process-wide registry, so every test records under a
service name of its own and reads its samples back by that name (helpers in
tests/support/metric_samples.py; the ``tracer`` fixture is in
tests/unit/conftest.py).
"""

from __future__ import annotations

import math

import pytest
from opentelemetry.trace import Tracer
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from tests.support.metric_samples import exemplar_of, ids_of, new_service, samples, value
from tracker import metrics
from tracker.metrics import REGISTRY, get_metrics

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
