"""Prometheus metrics, exposed in the OpenMetrics format so exemplars survive.

``frame_id`` is never a label: it would make one series per frame. Exemplars
(``trace_id``, ``span_id``) are how a latency point leads to one frame's trace.
"""

from __future__ import annotations

import time
from types import TracebackType

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST, generate_latest

from tracker.telemetry import current_trace_ids

REGISTRY = CollectorRegistry(auto_describe=True)

# Frame-level (what the pipeline did).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

tracker_frame_processing_duration = Histogram(
    "tracker_frame_processing_duration_seconds",
    "Time a frame spent in a processing stage (stage='total' for the whole run).",
    ["camera_id", "stage"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
tracker_frames_processed = Counter(
    "tracker_frames_processed",
    "Frames (stage='total') or stage runs that finished, by outcome.",
    ["camera_id", "stage", "status"],
    registry=REGISTRY,
)
tracker_frame_errors = Counter(
    "tracker_frame_errors",
    "Failed stages and frames by error type.",
    ["camera_id", "stage", "error_type"],
    registry=REGISTRY,
)

# Pipeline-level (what the tracker did).
events_published = Counter(
    "tracker_events_published",
    "Events sent by this publisher.",
    ["topic", "event_type"],
    registry=REGISTRY,
)
events_stored = Counter(
    "tracker_events_stored",
    "Events newly appended to frame_events.",
    ["event_type"],
    registry=REGISTRY,
)
events_duplicate = Counter(
    "tracker_events_duplicate",
    "Redelivered events that frame_events already held.",
    registry=REGISTRY,
)
events_flagged = Counter(
    "tracker_events_lifecycle_flagged",
    "Valid events stored but illegal for the frame's lifecycle.",
    ["event_type"],
    registry=REGISTRY,
)
dlq_records = Counter(
    "tracker_dlq_records",
    "Records sent to the dead-letter topic.",
    ["topic", "error_class"],
    registry=REGISTRY,
)
consumer_lag = Gauge(
    "tracker_consumer_lag_records",
    "Records between the committed position and the log end.",
    ["group", "topic", "partition"],
    registry=REGISTRY,
)
projection_lag = Gauge(
    "tracker_projection_lag_records",
    "Records between a projection's checkpoint and the log end.",
    ["projection", "topic", "partition"],
    registry=REGISTRY,
)
dlq_size = Gauge(
    "tracker_dlq_size_records",
    "Records currently held by the dead-letter topic.",
    registry=REGISTRY,
)
replay_running = Gauge(
    "tracker_replay_running",
    "1 while a projection rebuild is running.",
    registry=REGISTRY,
)
worker_events_per_second = Gauge(
    "tracker_worker_events_per_second",
    "Events per second over the last minute, by worker kind.",
    ["worker"],
    registry=REGISTRY,
)
batch_duration = Histogram(
    "tracker_batch_duration_seconds",
    "Wall time to make one batch durable.",
    ["worker"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
batch_records = Histogram(
    "tracker_batch_records",
    "Records per batch.",
    ["worker"],
    buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000),
    registry=REGISTRY,
)
db_retries = Counter(
    "tracker_db_retries",
    "Database operations retried after a transient error.",
    ["worker"],
    registry=REGISTRY,
)
worker_paused = Gauge(
    "tracker_worker_paused",
    "1 while a worker has paused fetching (back-pressure or outage).",
    ["worker"],
    registry=REGISTRY,
)


def _exemplar() -> dict[str, str] | None:
    ids = current_trace_ids()
    return {"trace_id": ids[0], "span_id": ids[1]} if ids else None


def increment_frames_processed(camera_id: str, stage: str = "total", status: str = "completed") -> None:
    tracker_frames_processed.labels(camera_id, stage, status).inc()


def increment_frame_errors(camera_id: str, stage: str, error_type: str) -> None:
    tracker_frame_errors.labels(camera_id, stage, error_type).inc()


def observe_processing_duration(
    camera_id: str,
    stage: str,
    seconds: float,
    *,
    trace_id: str | None = None,
    span_id: str | None = None,
) -> None:
    """Observe one duration, with the given or the current span as the exemplar."""
    exemplar = {"trace_id": trace_id, "span_id": span_id or ""} if trace_id else _exemplar()
    tracker_frame_processing_duration.labels(camera_id, stage).observe(seconds, exemplar)


class TimingContext:
    """``with TimingContext(camera_id, "detect"):`` observes the block's duration,
    and counts it as completed or failed."""

    def __init__(self, camera_id: str, stage: str) -> None:
        self.camera_id = camera_id
        self.stage = stage
        self.seconds: float | None = None
        self._start = 0.0

    def __enter__(self) -> TimingContext:
        self._start = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.seconds = time.perf_counter() - self._start
        observe_processing_duration(self.camera_id, self.stage, self.seconds)
        if exc_type is None:
            increment_frames_processed(self.camera_id, self.stage, "completed")
        else:
            increment_frames_processed(self.camera_id, self.stage, "failed")
            increment_frame_errors(self.camera_id, self.stage, exc_type.__name__)


def exposition() -> tuple[bytes, str]:
    """The registry in the OpenMetrics text format (carries exemplars)."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Expose ``/metrics`` on a background thread (workers without an HTTP API)."""
    if port:
        start_http_server(port, addr=host, registry=REGISTRY)
