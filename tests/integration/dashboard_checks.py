"""What the Grafana dashboards are, and the static checks the dashboard tests run.

The dashboards' names and the provisioned datasource uids, and checks that
each return a list of problems (empty when all is well):

- ``check_datasources``: every panel, target and variable names a provisioned
  datasource (uid and type);
- ``check_promql_coverage`` and ``check_rule_coverage``: every PromQL
  expression of the dashboards and of the rule files is one that
  tests/integration/test_prometheus_live.py runs against a real Prometheus;
- ``check_no_service_families``: no shipped PromQL reads the families camera
  and processor services record themselves;
- ``check_structure``: what the two dashboards must offer, and what Grafana
  needs to load them.

The tests that run them on the shipped files, and feed them broken copies, are
tests/integration/test_dashboard_structure.py and test_dashboard_promql.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.integration.shipped_promql import dashboard_promql, datasource_uid, iter_panels, rule_exprs

ROOT = Path(__file__).resolve().parents[2]
DATASOURCES_FILE = ROOT / "compose" / "grafana" / "provisioning" / "datasources" / "datasources.yml"
PIPELINE = "frame-pipeline.json"
SEARCH = "frame-search.json"
PG_UID, PROM_UID, JAEGER_UID = "tracker-pg", "tracker-prom", "tracker-jaeger"
# Panel types without queries.
NO_QUERY_PANELS = {"row", "text", "news", "dashlist"}

Problems = list[str]


def provisioned_datasources() -> dict[str, str]:
    """uid -> type, from the Grafana provisioning file."""
    doc = yaml.safe_load(DATASOURCES_FILE.read_text(encoding="utf-8"))
    return {d["uid"]: d["type"] for d in doc["datasources"]}


def first_panel(d: dict[str, Any], pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The first panel of dashboard ``d`` (inside rows too) that ``pred`` accepts."""
    return next(p for p in iter_panels(d["panels"]) if pred(p))


def check_datasources(name: str, dash: Mapping[str, Any], provisioned: Mapping[str, str]) -> Problems:
    """Every panel, target and variable names a provisioned datasource (uid and type)."""
    problems: Problems = []

    def check(where: str, obj: Mapping[str, Any]) -> None:
        ds = obj.get("datasource")
        if not isinstance(ds, Mapping):
            problems.append(f"{name} / {where}: datasource {ds!r} is not a {{type, uid}} reference")
            return
        uid, kind = ds.get("uid"), ds.get("type")
        if uid not in provisioned:
            problems.append(f"{name} / {where}: datasource uid {uid!r} is not provisioned")
        elif kind != provisioned[uid]:
            problems.append(f"{name} / {where}: datasource {uid} has type {kind!r}, not {provisioned[uid]!r}")

    for panel in iter_panels(dash.get("panels") or []):
        title = str(panel.get("title"))
        if panel.get("type") in NO_QUERY_PANELS:
            continue
        check(title, panel)
        targets = panel.get("targets") or []
        if not targets:
            problems.append(f"{name} / {title}: no targets")
        for t in targets:
            check(f"{title} / {t.get('refId')}", t)
            uid = datasource_uid(t)
            if uid != datasource_uid(panel):
                problems.append(
                    f"{name} / {title}: target {t.get('refId')} and panel use different datasources"
                )
            field = {PG_UID: "rawSql", PROM_UID: "expr", JAEGER_UID: "query"}.get(str(uid))
            if field and not str(t.get(field) or "").strip():
                problems.append(f"{name} / {title} / {t.get('refId')}: empty {field}")
    for var in (dash.get("templating") or {}).get("list") or []:
        if var.get("type") == "query":
            check(f"variable {var.get('name')}", var)
    return problems


def walk(obj: Any) -> Iterator[Mapping[str, Any]]:
    if isinstance(obj, Mapping):
        yield obj
        for v in obj.values():
            yield from walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from walk(v)


def check_promql_coverage(paths: Sequence[Path]) -> Problems:
    """Every `expr` anywhere in the dashboards is one test_prometheus_live.py runs
    (it runs exactly shipped_promql.dashboard_promql()); LogQL targets of the Loki
    datasource aside (tests/unit/test_compose_logs.py reads those)."""
    tested = [t.expr for t in dashboard_promql(paths)]
    problems = []
    for path in paths:
        for obj in walk(json.loads(path.read_text(encoding="utf-8"))):
            ds = obj.get("datasource")
            if isinstance(ds, dict) and ds.get("type") == "loki":
                continue
            if "expr" in obj and obj["expr"] not in tested:
                problems.append(f"{path.name}: PromQL not run by test_prometheus_live.py: {obj['expr']!r}")
    return problems


def check_rule_coverage(files: Sequence[Path]) -> Problems:
    """Every rule expression in the rules folder is one test_prometheus_live.py runs
    (it runs exactly shipped_promql.rule_exprs(), the files prometheus.yml loads)."""
    tested = {r.expr for r in rule_exprs()}
    problems = []
    for f in files:
        for obj in walk(yaml.safe_load(f.read_text(encoding="utf-8"))):
            if "expr" in obj and ("alert" in obj or "record" in obj) and str(obj["expr"]) not in tested:
                problems.append(
                    f"{f.name}: rule {obj.get('alert') or obj.get('record')}"
                    " not run by test_prometheus_live.py"
                )
    return problems


# The families services record themselves (tracker.metrics.ServiceMetrics), not
# preceded by a metric-name character (so tracker_frames_processed_total is
# fine), and selecting metrics by a __name__ matcher, which could catch them.
_SERVICE_FAMILY = re.compile(
    r"(?<![\w:])(frames_processed_total|frame_errors_total|frame_processing_duration_seconds\w*)\b"
    r"|__name__"
)


def check_no_service_families(exprs: Sequence[tuple[str, str]]) -> Problems:
    """(where, PromQL) pairs that read what services count themselves: summed with
    the tracker's families, every frame would count twice."""
    return [
        f"{where}: reads a service-recorded family ({m.group(0)}); use its tracker_ family: {expr!r}"
        for where, expr in exprs
        if (m := _SERVICE_FAMILY.search(expr))
    ]


def shipped_promql() -> list[tuple[str, str]]:
    return [(t.name, t.expr) for t in dashboard_promql()] + [
        (f"{r.file} / {r.name}", r.expr) for r in rule_exprs()
    ]


def check_structure(dashboards: Mapping[str, Mapping[str, Any]]) -> Problems:
    """What the two dashboards must offer, and what Grafana needs to load them."""
    problems: Problems = []
    uids = [d.get("uid") for d in dashboards.values()]
    if len(set(uids)) != len(uids) or None in uids:
        problems.append(f"dashboard uids missing or not unique: {uids}")
    for name, d in dashboards.items():
        if not 36 <= int(d.get("schemaVersion") or 0) <= 41:
            problems.append(f"{name}: schemaVersion {d.get('schemaVersion')} is not Grafana 11's")
        ids = [p.get("id") for p in iter_panels(d.get("panels") or [])]
        if len(set(ids)) != len(ids) or None in ids:
            problems.append(f"{name}: panel ids missing or not unique")
        for p in iter_panels(d.get("panels") or []):
            gp = p.get("gridPos") or {}
            if not all(isinstance(gp.get(k), int) for k in ("h", "w", "x", "y")) or gp["x"] + gp["w"] > 24:
                problems.append(f"{name} / {p.get('title')}: bad gridPos {gp}")

    pipe = dashboards.get(PIPELINE)
    if pipe is None:
        return [*problems, f"{PIPELINE} missing"]
    variables = {v.get("name"): v for v in pipe.get("templating", {}).get("list", [])}
    cam = variables.get("camera") or {}
    if datasource_uid(cam) != PG_UID or "frame_stats_hourly" not in str(cam.get("query")):
        problems.append(f"{PIPELINE}: no `camera` variable over frame_stats_hourly")
    targets = [t for p in iter_panels(pipe.get("panels") or []) for t in p.get("targets") or []]
    prom_exprs = [str(t.get("expr")) for t in targets if datasource_uid(t) == PROM_UID]
    wanted = {
        "processing rate": r"rate\(tracker_frames_processed_total",
        "error rate": r"tracker_frame_errors_total|status=\"failed\"",
        "latency percentile": (
            r"histogram_quantile\([^,]+,\s*sum by \([^)]*\ble\b[^)]*\) "
            r"\(rate\(tracker_frame_processing_duration_seconds_bucket"
        ),
        # lag: the workers' view, else tracker serve's (never the two added up)
        "consumer lag": (
            r"sum by \(group, topic\) \(tracker_consumer_lag_records\)\s+or\s+"
            r"sum by \(group, topic\) \(tracker_consumer_committed_lag_records\)"
        ),
        "projection lag": (
            r"sum by \(projection, topic\) \(tracker_projection_lag_records\)\s+or\s+"
            r"sum by \(projection, topic\) \(tracker_projection_checkpoint_lag_records\)"
        ),
        "DLQ growth": r"increase\(tracker_dlq_records_total",
        "worker throughput": r"rate\(tracker_worker_records_total",
        "anomaly score": r"tracker_anomaly_score",
        "anomalies found": r"rate\(tracker_anomalies_total",
    }
    for what, pattern in wanted.items():
        if not any(re.search(pattern, e) for e in prom_exprs):
            problems.append(f"{PIPELINE}: no PromQL panel for {what}")
    if not any(
        t.get("exemplar") and "tracker_frame_processing_duration_seconds_bucket" in str(t.get("expr"))
        for t in targets
    ):
        problems.append(f"{PIPELINE}: exemplars are not enabled on the latency panel")
    sqls = [str(t.get("rawSql")) for t in targets if t.get("rawSql")]
    for what, pattern in {
        "per-camera statistics": r"FROM frame_stats_hourly",
        "state distribution": r"FROM frame_metadata[\s\S]*GROUP BY state",
        "stage percentiles": (
            r"tracker_bucket_percentile[\s\S]*FROM performance_stats"
            r"|FROM performance_stats[\s\S]*tracker_bucket_percentile"
        ),
        "a time-grouped series": r"\$__timeGroupAlias\(",
        "the time filter": r"\$__timeFilter\(",
        "the camera variable": r"\$\{camera",
    }.items():
        if not any(re.search(pattern, s) for s in sqls):
            problems.append(f"{PIPELINE}: no SQL panel with {what}")

    search = dashboards.get(SEARCH)
    if search is None:
        return [*problems, f"{SEARCH} missing"]
    svars = {v.get("name"): v for v in search.get("templating", {}).get("list", [])}
    if (svars.get("frame_id") or {}).get("type") != "textbox":
        problems.append(f"{SEARCH}: no textbox variable frame_id")
    stargets = [(p, t) for p in iter_panels(search.get("panels") or []) for t in p.get("targets") or []]
    for what, pattern in {
        "the frame's row": r"FROM frame_metadata\s+WHERE frame_id =",
        "its events": r"FROM frame_events\s+WHERE frame_id =",
        "time since the previous event": r"lag\(occurred_at\) OVER",
        "its stages": r"FROM processing_stages\s+WHERE frame_id =",
    }.items():
        if not any(re.search(pattern, str(t.get("rawSql") or "")) for _, t in stargets):
            problems.append(f"{SEARCH}: no panel with {what}")
    trace_links = [
        link
        for p, _ in stargets
        for o in (p.get("fieldConfig") or {}).get("overrides") or []
        if (o.get("matcher") or {}).get("options") == "last_trace_id"
        for prop in o.get("properties") or []
        if prop.get("id") == "links"
        for link in prop.get("value") or []
    ]
    if not any(
        JAEGER_UID in str(link.get("url")) and "${__value.raw}" in str(link.get("url"))
        for link in trace_links
    ):
        problems.append(f"{SEARCH}: no data link from last_trace_id to the Jaeger datasource")
    if not any(datasource_uid(t) == JAEGER_UID for _, t in stargets):
        problems.append(f"{SEARCH}: no panel querying the Jaeger datasource")
    return problems
