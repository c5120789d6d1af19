"""What the live Prometheus test expects of each query, and its checkers.

tests/integration/test_prometheus_live.py runs every dashboard and rule
expression against a real Prometheus scraping real workers. Here:

- ``dashboard_queries()`` and ``rule_queries()`` turn the shipped PromQL into
  :class:`Query` objects that say what each must return in that run
  (``ONLY_AFTER_AN_OUTAGE``, ``LIVE_ALERT_EXPECTATIONS``: a new alert needs an
  entry there);
- the checkers, each returning a list of problems: ``check_queries``,
  ``check_exemplars``, ``check_rule_health``, ``check_one_exporter`` (no
  series from two jobs) and ``compare_results`` (same results without a
  service's series).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tests.integration.prom import PrometheusServer, PromQLError
from tests.integration.shipped_promql import PromTarget, RuleExpr, grafana_to_promql

# Dashboard expressions over these metrics may return nothing in the live run:
# the series only exist once the event has happened.
ONLY_AFTER_AN_OUTAGE = {
    "tracker_worker_paused": "set only when a worker pauses fetching (database outage)",
    "tracker_db_retries_total": "incremented only when a database operation is retried",
}
# ... and these once the anomaly detector has found something (the live run's
# few seconds of traffic are far shorter than a baseline's warm-up).
ONLY_AFTER_AN_ANOMALY = {
    "tracker_anomaly_score": "set when a window is found abnormal",
    "tracker_anomalies_total": "incremented when an anomaly is found",
    "tracker_anomalous_windows_total": "incremented when a window is found abnormal",
}

# What each alert's expression must return in the live run: True = data (the
# condition holds), False = nothing, None = either (depends on the simulated
# failure and latency draws). A new alert needs an entry here.
LIVE_ALERT_EXPECTATIONS: dict[str, bool | None] = {
    "TrackerDLQGrowing": True,  # the run dead-letters one undecodable record
    "FrameErrorRateHigh": None,  # a few dozen frames at a 20% failure rate
    "FrameLatencyP99High": None,  # simulated latencies are far below 2 s, but a few frames take the slow path
    "CameraSilent": False,  # needs traffic older than 10 minutes
    "TrackerConsumerLagHigh": False,
    "TrackerConsumerLagGrowing": False,
    "TrackerProjectionLagHigh": False,
    "TrackerWorkerDown": False,  # both workers are up
    "TrackerWorkerPaused": False,
    "FrameAnomalyDetected": False,  # clean traffic, and shorter than a baseline's warm-up
}


def check_one_exporter(series: Iterable[dict[str, str]]) -> list[str]:
    """Each series, by its name and labels (``job`` and ``instance`` aside),
    comes from one job: summed over the scrape set, nothing counts twice."""
    jobs: dict[tuple[tuple[str, str], ...], set[str]] = {}
    for s in series:
        key = tuple(sorted((k, v) for k, v in s.items() if k not in ("job", "instance")))
        jobs.setdefault(key, set()).add(s.get("job", ""))
    return [
        f"{dict(key)} is exported by {len(js)} jobs: {sorted(js)}"
        for key, js in sorted(jobs.items())
        if len(js) > 1
    ]


@dataclass(frozen=True)
class Query:
    name: str
    expr: str  # ready to run (Grafana variables replaced)
    must_have_data: bool
    must_be_empty: bool = False
    finite: bool = False  # at least one finite value (quantiles: not all NaN)


def dashboard_queries(targets: Iterable[PromTarget], cameras: Sequence[str]) -> list[Query]:
    out = []
    for t in targets:
        expr = grafana_to_promql(t.expr, {"camera": cameras}, interval=t.interval)
        optional = any(metric in t.expr for metric in (*ONLY_AFTER_AN_OUTAGE, *ONLY_AFTER_AN_ANOMALY))
        out.append(Query(t.name, expr, not optional, finite="histogram_quantile" in expr and not optional))
    return out


def rule_queries(rules: Iterable[RuleExpr]) -> list[Query]:
    out = []
    for r in rules:
        if r.is_alert and r.name not in LIVE_ALERT_EXPECTATIONS:
            raise AssertionError(f"alert {r.name}: add its expected live outcome to LIVE_ALERT_EXPECTATIONS")
        want = LIVE_ALERT_EXPECTATIONS.get(r.name)
        out.append(Query(f"{r.file} / {r.group} / {r.name}", r.expr, want is True, want is False))
    return out


def _finite(sample: dict[str, Any]) -> bool:
    value = sample.get("value")
    if not isinstance(value, list) or len(value) != 2:
        return False
    try:
        return math.isfinite(float(value[1]))
    except (TypeError, ValueError):
        return False


def check_queries(prom: PrometheusServer, queries: Iterable[Query]) -> list[str]:
    problems = []
    for q in queries:
        try:
            result = prom.query(q.expr)
        except PromQLError as e:
            problems.append(f"{q.name}: {e}\n    {q.expr}")
            continue
        if q.must_have_data and not result:
            problems.append(f"{q.name}: no data\n    {q.expr}")
        elif q.must_be_empty and result:
            problems.append(f"{q.name}: returned data, expected none: {result[:3]}\n    {q.expr}")
        elif q.finite and result and not any(_finite(s) for s in result):
            problems.append(f"{q.name}: only NaN/Inf values {result[:3]}\n    {q.expr}")
    return problems


def exemplar_trace_ids(prom: PrometheusServer, expr: str, start: float, end: float) -> list[str]:
    return [
        ex["labels"].get("trace_id", "")
        for series in prom.query_exemplars(expr, start, end)
        for ex in series.get("exemplars") or []
    ]


def check_exemplars(trace_ids: Sequence[str], stored: set[str], what: str) -> list[str]:
    if not trace_ids:
        return [f"{what}: no exemplars"]
    unknown = sorted(set(trace_ids) - stored)
    if unknown:
        return [f"{what}: {len(unknown)} exemplar trace ids not in frame_events.trace_id, e.g. {unknown[:3]}"]
    return []


Results = dict[str, list[tuple[tuple[tuple[str, str], ...], str]]]


def evaluate(prom: PrometheusServer, queries: Iterable[Query], at: float) -> Results:
    """Each query's result at ``at``: (labels, value) pairs in a stable order."""
    out: Results = {}
    for q in queries:
        result = prom.query(q.expr, at)
        out[q.name] = sorted(
            (tuple(sorted((s.get("metric") or {}).items())), str(s["value"][1])) for s in result
        )
    return out


def compare_results(with_service: Results, without: Results) -> list[str]:
    return [
        f"{name}: {with_service[name][:3]} with the service's series, {without.get(name, [])[:3]} without"
        for name in with_service
        if with_service[name] != without.get(name)
    ]


def check_rule_health(groups: Sequence[dict[str, Any]], expected: Iterable[str]) -> list[str]:
    seen = {r["name"]: r for g in groups for r in g.get("rules") or []}
    problems = [f"rule {n}: not loaded by Prometheus" for n in expected if n not in seen]
    for name, r in seen.items():
        if r.get("health") != "ok":
            problems.append(f"rule {name}: health {r.get('health')!r} {r.get('lastError', '')}")
    return problems
