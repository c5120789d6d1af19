"""The Grafana dashboards' structure and datasources, checked without Grafana.

- Both dashboards (compose/grafana/dashboards/) exist and parse, and offer what
  they must: the frame-pipeline panels (rates, errors, latency with exemplars,
  lag, DLQ, throughput, the per-camera SQL panels) and the frame-search panels
  (the frame, its events and stages, a link to its trace in Jaeger); uids,
  panel ids, grid positions and schema versions are what Grafana needs.
- Every panel, target and variable uses one of the provisioned datasource uids,
  with the matching type.

The checks live in tests/integration/dashboard_checks.py and return a list of
problems; the ``*_can_fail`` tests feed them broken copies, so none passes by
accident.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.dashboard_checks import (
    JAEGER_UID,
    PG_UID,
    PIPELINE,
    PROM_UID,
    SEARCH,
    check_datasources,
    check_structure,
    first_panel,
    provisioned_datasources,
)
from tests.integration.shipped_promql import iter_panels

pytestmark = pytest.mark.integration


def test_dashboards_exist_and_parse(dashboards: dict[str, dict[str, Any]]) -> None:
    assert {PIPELINE, SEARCH} <= set(dashboards)


def test_dashboard_structure(dashboards: dict[str, dict[str, Any]]) -> None:
    assert check_structure(dashboards) == []


def test_datasources_are_provisioned(dashboards: dict[str, dict[str, Any]]) -> None:
    provisioned = provisioned_datasources()
    assert set(provisioned) == {PG_UID, PROM_UID, JAEGER_UID, "tracker-loki"}  # Loki: test_compose_logs.py
    problems = [p for name, d in dashboards.items() for p in check_datasources(name, d, provisioned)]
    assert problems == []


# ---- the checks can fail ------------------------------------------------------------------


def _break(
    dashboards: dict[str, dict[str, Any]], fn: Callable[[dict[str, dict[str, Any]]], None]
) -> dict[str, Any]:
    broken = copy.deepcopy(dashboards)
    fn(broken)
    return broken


def _set_ds(uid: str, kind: str) -> Callable[[dict[str, dict[str, Any]]], None]:
    def apply(ds: dict[str, dict[str, Any]]) -> None:
        p = first_panel(ds[PIPELINE], lambda p: p.get("type") == "timeseries")
        p["targets"][0]["datasource"] = {"type": kind, "uid": uid}

    return apply


DATASOURCE_BREAKAGES = {
    "unknown uid": _set_ds("prometheus", "prometheus"),
    "wrong type": _set_ds(PG_UID, "prometheus"),
    "string datasource": lambda ds: first_panel(ds[PIPELINE], lambda p: p.get("type") == "table").__setitem__(
        "datasource", "TimescaleDB"
    ),
    "variable on unknown datasource": lambda ds: ds[PIPELINE]["templating"]["list"][0].__setitem__(
        "datasource", {"type": "postgres", "uid": "pg"}
    ),
    "empty query": lambda ds: first_panel(ds[SEARCH], lambda p: p.get("type") == "table")["targets"][
        0
    ].__setitem__("rawSql", ""),
}


@pytest.mark.parametrize("label", sorted(DATASOURCE_BREAKAGES))
def test_datasource_check_can_fail(dashboards: dict[str, dict[str, Any]], label: str) -> None:
    broken = _break(dashboards, DATASOURCE_BREAKAGES[label])
    provisioned = provisioned_datasources()
    assert [p for name, d in broken.items() for p in check_datasources(name, d, provisioned)], label


def _no_exemplars(ds: dict[str, dict[str, Any]]) -> None:
    for p in iter_panels(ds[PIPELINE]["panels"]):
        for t in p.get("targets") or []:
            t.pop("exemplar", None)


def _drop_trace_links(ds: dict[str, dict[str, Any]]) -> None:
    for p in iter_panels(ds[SEARCH]["panels"]):
        (p.get("fieldConfig") or {})["overrides"] = []


def _replace_in_promql(old: str, new: str) -> Callable[[dict[str, dict[str, Any]]], None]:
    def apply(ds: dict[str, dict[str, Any]]) -> None:
        for p in iter_panels(ds[PIPELINE]["panels"]):
            for t in p.get("targets") or []:
                if "expr" in t:
                    t["expr"] = str(t["expr"]).replace(old, new)

    return apply


STRUCTURE_BREAKAGES = {
    "no exemplars": _no_exemplars,
    "consumer lag added up": _replace_in_promql("\nor\nsum by (group, topic)", " + sum by (group, topic)"),
    "no serve view of projection lag": _replace_in_promql(
        "tracker_projection_checkpoint_lag", "tracker_projection_lag"
    ),
    "throughput as a gauge": _replace_in_promql(
        "rate(tracker_worker_records_total[$__rate_interval])", "tracker_worker_events_per_second"
    ),
    "no trace link": _drop_trace_links,
    "frame_id not a textbox": lambda ds: ds[SEARCH]["templating"]["list"][0].__setitem__("type", "custom"),
    "duplicate uid": lambda ds: ds[SEARCH].__setitem__("uid", ds[PIPELINE]["uid"]),
    "duplicate panel id": lambda ds: ds[SEARCH]["panels"][1].__setitem__("id", ds[SEARCH]["panels"][0]["id"]),
    "too wide": lambda ds: ds[PIPELINE]["panels"][1]["gridPos"].__setitem__("w", 30),
    "old schema": lambda ds: ds[PIPELINE].__setitem__("schemaVersion", 16),
    "no events window": lambda ds: [
        t.__setitem__("rawSql", str(t.get("rawSql", "")).replace("lag(", "min("))
        for p in iter_panels(ds[SEARCH]["panels"])
        for t in p.get("targets") or []
    ],
}


@pytest.mark.parametrize("label", sorted(STRUCTURE_BREAKAGES))
def test_structure_check_can_fail(dashboards: dict[str, dict[str, Any]], label: str) -> None:
    assert check_structure(_break(dashboards, STRUCTURE_BREAKAGES[label])), label
