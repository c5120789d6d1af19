"""The one Prometheus registry of a process, and what its families share.

Every family of the tracker (``tracker.metrics``) and of the services
(``tracker.service_metrics``) registers here; ``tracker.metrics.exposition``
renders it in the OpenMetrics format, which keeps exemplars.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from tracker.telemetry import current_trace_ids

REGISTRY = CollectorRegistry(auto_describe=True)
_joined: set[int] = set()
_join_lock = threading.Lock()


def _join(metric: Any) -> None:
    """Register ``metric`` in REGISTRY, once (its owner has recorded into it)."""
    if id(metric) in _joined:
        return
    with _join_lock:
        if id(metric) not in _joined:
            REGISTRY.register(metric)
            _joined.add(id(metric))


class OwnedCounter(Counter):
    """An unlabelled counter exported only by the process that counts into it."""

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        _join(self)
        super().inc(amount, exemplar)


class OwnedGauge(Gauge):
    """An unlabelled gauge exported only by the process that sets it."""

    def set(self, value: float) -> None:
        _join(self)
        super().set(value)


DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _exemplar() -> dict[str, str] | None:
    """The current span as an exemplar; ``None`` outside a valid span."""
    ids = current_trace_ids()
    return {"trace_id": ids[0], "span_id": ids[1]} if ids else None
