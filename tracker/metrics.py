"""Prometheus metrics, exposed in the OpenMetrics format so exemplars survive.

Two sets of frame metrics live here, with different owners (docs/metrics.md
describes every family):

- ``tracker_frame_processing_duration_seconds``, ``tracker_frames_processed_total``
  and ``tracker_frame_errors_total`` are counted by the tracker's event-store
  consumer from the events it stores (``EventStoreConsumer._observe``). The
  dashboards and the alert rules read these, and only these.
- ``frame_processing_duration_seconds``, ``frames_processed_total`` and
  ``frame_errors_total``, labelled with ``service``, are what a camera or
  processor service records itself through :func:`get_metrics` and
  :class:`TimingContext`. They describe the same frames seen from inside the
  service; adding them to the tracker's families would count a frame twice.

``frame_id`` is never a label: it would make one series per frame. Exemplars
(``trace_id``, ``span_id``) are how a latency point or a count leads to one
frame's trace.

Each series is exported by one process, its owner: a labelled family only has
series where its owner records into it, and the unlabelled ones
(:class:`OwnedCounter`, :class:`OwnedGauge`) join the registry when their owner
first records, so the other processes that import this module do not export
them as 0. Names that end in a unit pass it as ``unit=`` (the exposed names do
not change: prometheus-client appends the unit only when it is missing).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST, generate_latest

# Re-exported: the metric helpers (for the tracker's modules) and the service-side
# API (where the Frame Tracking guide imports it from).
from tracker.metrics_registry import (
    DURATION_BUCKETS,
    REGISTRY,
    OwnedCounter,
    OwnedGauge,
)
from tracker.service_metrics import (  # noqa: F401
    DEFAULT_SERVICE,
    ERROR_ATTRIBUTES,
    FRAME_ATTRIBUTES,
    SERVICE_LABEL,
    ServiceMetrics,
    TimingContext,
    default_metrics,
    get_metrics,
    service_frame_errors,
    service_frame_processing_duration,
    service_frames_processed,
)

# Frame-level, from the event store (what the pipeline did, counted once per
# stored event by the event-store consumer).
tracker_frame_processing_duration = Histogram(
    "tracker_frame_processing_duration_seconds",
    "Duration of a finished stage run (stage='total': of the whole frame), from the stored events.",
    ["camera_id", "stage"],
    buckets=DURATION_BUCKETS,
    unit="seconds",
    registry=REGISTRY,
)
tracker_frames_processed = Counter(
    "tracker_frames_processed",
    "Stored StageCompleted/StageFailed (stage=<name>) and ProcessingCompleted/Failed (stage='total') events.",
    ["camera_id", "stage", "status"],
    registry=REGISTRY,
)
tracker_frame_errors = Counter(
    "tracker_frame_errors",
    "Stored StageFailed (stage=<name>) and ProcessingFailed (stage='total') events, by error type.",
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
events_duplicate = OwnedCounter(
    "tracker_events_duplicate",
    "Redelivered events that frame_events already held.",
    registry=None,  # joins REGISTRY when the event-store consumer first counts
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
    unit="records",
    registry=REGISTRY,
)


def _lag(name: str, owner: str, documentation: str) -> Gauge:
    """A per-partition lag gauge, in records; ``owner`` is the group or projection label."""
    return Gauge(name, documentation, [owner, "topic", "partition"], unit="records", registry=REGISTRY)


# Lag, two views, one exporter each (docs/metrics.md says why). The workers:
# the partitions each one is assigned, from its own position.
consumer_lag = _lag(
    "tracker_consumer_lag_records",
    "group",
    "Records between the event-store consumer's position and the log end, on its assigned partitions.",
)
projection_lag = _lag(
    "tracker_projection_lag_records",
    "projection",
    "Records between the projector's checkpoint and the log end, on its assigned partitions.",
)
# tracker serve: every partition, from the broker and the database, whether or
# not any worker runs.
consumer_committed_lag = _lag(
    "tracker_consumer_committed_lag_records",
    "group",
    "Records between the event-store group's committed offset and the log end, every partition.",
)
projection_checkpoint_lag = _lag(
    "tracker_projection_checkpoint_lag_records",
    "projection",
    "Records between a projection's stored checkpoint and the log end, every partition.",
)
dlq_size = OwnedGauge(
    "tracker_dlq_size_records",
    "Records currently held by the dead-letter topic.",
    unit="records",
    registry=None,  # joins REGISTRY when tracker serve first sets it
)
replay_running = OwnedGauge(
    "tracker_replay_running",
    "1 while a projection rebuild is running.",
    registry=None,  # joins REGISTRY when tracker serve first sets it
)
worker_records = Counter(
    "tracker_worker_records",
    "Records a worker made durable (rate() of it is the worker's throughput).",
    ["worker"],
    unit="records",
    registry=REGISTRY,
)
batch_duration = Histogram(
    "tracker_batch_duration_seconds",
    "Wall time to make one batch durable.",
    ["worker"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    unit="seconds",
    registry=REGISTRY,
)
batch_records = Histogram(
    "tracker_batch_records",
    "Records per batch.",
    ["worker"],
    buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000),
    unit="records",
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


# ---- exposition -----------------------------------------------------------------------


def exposition() -> tuple[bytes, str]:
    """The registry in the OpenMetrics text format (carries exemplars)."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Expose ``/metrics`` on a background thread (workers without an HTTP API)."""
    if port:
        start_http_server(port, addr=host, registry=REGISTRY)


# Anomaly detection (projections/anomalies.py), by the projection writer that
# closes the windows. Labels are camera, stage ('' for a camera's own) and
# kind; never a frame id.
anomalies = Counter(
    "tracker_anomalies",
    "Anomalies found: episodes opened (consecutive abnormal windows of a camera, stage and kind) "
    "and, as kind slow_frame, frames of slow windows (exemplar: the frame's trace).",
    ["camera_id", "stage", "kind"],
    registry=REGISTRY,
)
anomalous_windows = Counter(
    "tracker_anomalous_windows",
    "Closed detection windows found abnormal, by camera, stage and kind (what the alert reads).",
    ["camera_id", "stage", "kind"],
    registry=REGISTRY,
)
anomaly_score = Gauge(
    "tracker_anomaly_score",
    "Score of the latest abnormal window of an open episode (in spreads or -log10 of a tail "
    "probability); 0 once the episode ended.",
    ["camera_id", "stage", "kind"],
    registry=REGISTRY,
)
