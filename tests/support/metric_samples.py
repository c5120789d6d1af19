"""Reading back what tracker.metrics' service-side API recorded, for its tests.

The families live in the process-wide registry, so every test records under a
service name of its own (``new_service()``: one counter for the whole test
session, so that no two tests, in whichever module, share a name) and reads its
samples back by that name: ``value()`` from the registry, ``samples()`` and
``exemplar_of()`` from the OpenMetrics exposition. ``ids_of()`` is a span's
trace and span id as exemplars carry them.

Used by tests/unit/test_service_metrics_api.py and test_timing_context.py.
"""

from __future__ import annotations

import itertools
from typing import Any

from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tracker import metrics
from tracker.metrics import REGISTRY, ServiceMetrics, get_metrics

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


def ids_of(span: Any) -> dict[str, str]:
    ctx = span.get_span_context()
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}
