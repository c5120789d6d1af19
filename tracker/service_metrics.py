"""The frame metrics a camera or processor service records about its own work.

``get_metrics(service)``, :class:`ServiceMetrics` and :class:`TimingContext`
record into ``frame_processing_duration_seconds``, ``frames_processed_total``
and ``frame_errors_total``, labelled with ``service`` (docs/metrics.md says
exactly what each counts). They describe the frames seen from inside a
service; the dashboards and alerts read the tracker's own families instead, so
a frame is never counted twice. ``tracker.metrics`` re-exports this API.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Mapping
from types import TracebackType

from prometheus_client import Counter, Histogram

from tracker.metrics_registry import DURATION_BUCKETS, REGISTRY, _exemplar

# Frame-level, recorded by the services themselves (ServiceMetrics).
SERVICE_LABEL = "service"
#: The attribute keys each service family accepts, in label order.
FRAME_ATTRIBUTES = ("camera_id", "stage", "status")
ERROR_ATTRIBUTES = ("camera_id", "stage")

service_frame_processing_duration = Histogram(
    "frame_processing_duration_seconds",
    "Durations a service observed itself (ServiceMetrics.observe_processing_duration, TimingContext).",
    [SERVICE_LABEL, "camera_id", "stage"],
    buckets=DURATION_BUCKETS,
    unit="seconds",
    registry=REGISTRY,
)
service_frames_processed = Counter(
    "frames_processed",
    "Frames or stage runs a service counted itself (increment_frames_processed, TimingContext).",
    [SERVICE_LABEL, *FRAME_ATTRIBUTES],
    registry=REGISTRY,
)
service_frame_errors = Counter(
    "frame_errors",
    "Errors a service counted itself (ServiceMetrics.increment_errors, TimingContext).",
    [SERVICE_LABEL, *ERROR_ATTRIBUTES, "error_type"],
    registry=REGISTRY,
)


# ---- the service-side API ----------------------------------------------------------

#: The service name used before (or without) any :func:`get_metrics` call;
#: OpenTelemetry's default ``service.name``.
DEFAULT_SERVICE = "unknown_service"
SERVICE_NAME_MAX_LEN = 64
_FRAME_ID_KEYS = frozenset({"frame_id", "frame.id"})
# Set on an exception counted in frame_errors_total: {("timing" | "explicit", stage): unpaired counts}.
_PENDING_ATTR = "_tracker_unpaired_error_counts"

Attributes = Mapping[str, object]


def _label_value(value: object) -> str:
    return "" if value is None else str(value)


def _labels(attributes: Attributes | None, allowed: tuple[str, ...], family: str) -> tuple[str, ...]:
    """``attributes`` as label values in ``allowed`` order; a missing key is ``""``."""
    if attributes is None:
        return ("",) * len(allowed)
    if not isinstance(attributes, Mapping):
        raise TypeError(f"attributes must be a mapping of {', '.join(allowed)}, not {type(attributes)}")
    for key in attributes:
        if key in allowed:
            continue
        if key in _FRAME_ID_KEYS:
            raise ValueError(
                f"{key!r} is never a metric label: it would make one series per frame. "
                "The current span's trace_id and span_id are attached as the exemplar; "
                "they lead to the frame's trace"
            )
        raise ValueError(f"unknown {family} attribute {key!r}; allowed keys: {', '.join(allowed)}")
    return tuple(_label_value(attributes.get(k)) for k in allowed)


def _check_service_name(service: object) -> str:
    if not isinstance(service, str):
        raise TypeError(f"a service name is a str, not {type(service)}")
    if not service or not service.isprintable() or service != service.strip():
        raise ValueError(f"service name {service!r} must be non-empty, printable, without outer spaces")
    if len(service) > SERVICE_NAME_MAX_LEN:
        raise ValueError(f"service name {service[:20]!r}... is longer than {SERVICE_NAME_MAX_LEN} characters")
    return service


def _count_error(exc: BaseException | None, by: str, stage: str) -> bool:
    """Whether a count of ``exc`` at ``stage`` by a TimingContext (``by="timing"``)
    or by increment_errors (``by="explicit"``) is a new error.

    The two see one failure when the guide's error handling runs inside or
    around a TimingContext of the same stage: a count of one kind pairs with an
    earlier unpaired count of the other kind for the same exception and stage,
    and is then not counted again. Counts of the same kind never pair (two
    increment_errors calls, two runs re-raising one shared exception, are two).
    """
    if exc is None:
        return True
    pending: dict[tuple[str, str], int] | None = getattr(exc, _PENDING_ATTR, None)
    if pending is None:
        pending = {}
        try:
            setattr(exc, _PENDING_ATTR, pending)
        except (AttributeError, TypeError):  # an exception that takes no attributes
            return True
    other = ("explicit" if by == "timing" else "timing", stage)
    if pending.get(other, 0) > 0:
        pending[other] -= 1
        return False
    pending[(by, stage)] = pending.get((by, stage), 0) + 1
    return True


class ServiceMetrics:
    """The frame metrics one service records about its own work, labelled
    ``service=<name>``. Get one with :func:`get_metrics`.

    ``attributes`` map onto a fixed label set: ``camera_id``, ``stage`` and
    ``status`` for frames, ``camera_id`` and ``stage`` for errors. A key left
    out gets the empty value (for Prometheus, the same as no label); values are
    turned into strings (``None`` into the empty value); any other key raises
    :class:`ValueError`, ``frame_id`` included: frames are found through the
    exemplar, the current span's ``trace_id`` and ``span_id``, which every
    observation and increment carries when it happens inside a valid span.
    """

    def __init__(self, service: str) -> None:
        self.service = _check_service_name(service)

    def __repr__(self) -> str:
        return f"ServiceMetrics({self.service!r})"

    def increment_frames_processed(self, attributes: Attributes | None = None, *, amount: float = 1) -> None:
        """Add ``amount`` to ``frames_processed_total{service, camera_id, stage, status}``."""
        labels = _labels(attributes, FRAME_ATTRIBUTES, "frames_processed")
        service_frames_processed.labels(self.service, *labels).inc(amount, _exemplar())

    def increment_errors(self, error_type: str, attributes: Attributes | None = None) -> None:
        """Add one to ``frame_errors_total{service, camera_id, stage, error_type}``.

        Called inside an ``except`` block (the guide's error handling), the
        exception being handled is counted once even when a
        :class:`TimingContext` of the same ``stage`` counts it too, whether
        that context is inside the ``try`` (it counted first: this call adds
        nothing) or around it (this call counted first: the context adds
        nothing when the exception leaves it).
        """
        kind = _label_value(error_type)
        if not kind:
            raise ValueError("error_type must be non-empty, e.g. type(e).__name__")
        labels = _labels(attributes, ERROR_ATTRIBUTES, "frame_errors")
        if _count_error(sys.exc_info()[1], "explicit", labels[1]):
            service_frame_errors.labels(self.service, *labels, kind).inc(1, _exemplar())

    def observe_processing_duration(self, camera_id: str, stage: str, seconds: float) -> None:
        """Observe ``seconds`` in ``frame_processing_duration_seconds{service, camera_id, stage}``."""
        value = float(seconds)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"a duration is a finite, non-negative number of seconds, not {seconds!r}")
        service_frame_processing_duration.labels(
            self.service, _label_value(camera_id), _label_value(stage)
        ).observe(value, _exemplar())

    def timing(self, camera_id: str, stage: str) -> TimingContext:
        """A :class:`TimingContext` that records into this service's metrics."""
        return TimingContext(camera_id, stage, metrics=self)


_services: dict[str, ServiceMetrics] = {}
_default_service: ServiceMetrics | None = None
_services_lock = threading.Lock()


def get_metrics(service: str) -> ServiceMetrics:
    """The :class:`ServiceMetrics` of ``service`` (one object per name and process).

    The first one created in a process becomes the process's default, which a
    :class:`TimingContext` created without ``metrics=`` records into.
    """
    global _default_service
    name = _check_service_name(service)
    with _services_lock:
        found = _services.get(name)
        if found is None:
            found = _services[name] = ServiceMetrics(name)
        if _default_service is None:
            _default_service = found
        return found


def default_metrics() -> ServiceMetrics:
    """The process's default :class:`ServiceMetrics`: the first :func:`get_metrics`
    created, or, before any, that of ``unknown_service`` (which does not become
    the default: the first real :func:`get_metrics` call still does)."""
    with _services_lock:
        if _default_service is not None:
            return _default_service
        found = _services.get(DEFAULT_SERVICE)
        if found is None:
            found = _services[DEFAULT_SERVICE] = ServiceMetrics(DEFAULT_SERVICE)
        return found


class TimingContext:
    """``with TimingContext(camera_id, stage) as timer:`` records the block as one
    stage run of one frame; ``timer.seconds`` holds its duration afterwards.

    It records into ``metrics`` if given, else into the process's default
    :class:`ServiceMetrics` (see :func:`default_metrics`), chosen when the
    context is created. When the block

    - returns: its duration is observed in ``frame_processing_duration_seconds``
      and ``frames_processed_total{status="completed"}`` gets one;
    - raises an :class:`Exception`: its duration is observed too (failed runs
      take time as well), ``frames_processed_total{status="failed"}`` gets one
      and ``frame_errors_total{error_type=<the exception's class name>}`` gets
      one, unless ``increment_errors`` counted that exception for the same
      stage while handling it inside the block (see
      :meth:`ServiceMetrics.increment_errors`); the exception propagates;
    - is abandoned by a :class:`BaseException` that is no :class:`Exception`
      (``asyncio.CancelledError``, ``KeyboardInterrupt``, ``SystemExit``):
      nothing is recorded, the run neither completed nor failed.

    Every record carries the current span as its exemplar (at the block's end).
    """

    def __init__(self, camera_id: str, stage: str, *, metrics: ServiceMetrics | None = None) -> None:
        self.camera_id = _label_value(camera_id)
        self.stage = _label_value(stage)
        self.metrics = metrics if metrics is not None else default_metrics()
        self.seconds: float | None = None
        self._start = 0.0

    def __enter__(self) -> TimingContext:
        self.seconds = None
        self._start = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.seconds = time.perf_counter() - self._start
        if exc is not None and not isinstance(exc, Exception):
            return
        m = self.metrics
        m.observe_processing_duration(self.camera_id, self.stage, self.seconds)
        status = "completed" if exc is None else "failed"
        m.increment_frames_processed({"camera_id": self.camera_id, "stage": self.stage, "status": status})
        if exc is not None and _count_error(exc, "timing", self.stage):
            error_type = type(exc).__name__
            service_frame_errors.labels(m.service, self.camera_id, self.stage, error_type).inc(1, _exemplar())
