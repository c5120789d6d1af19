"""The PromQL of the dashboards and alert rules: what runs it, and what it may read.

- Every PromQL target of the dashboards is one that
  tests/integration/test_prometheus_live.py runs against a real Prometheus
  (both collect them with shipped_promql.dashboard_promql(), which is checked
  here against an independent walk of the JSON), and so is every expression of
  the rule files prometheus.yml loads.
- No PromQL reads the frame families that camera and processor services record
  themselves (``frames_processed_total``, ``frame_errors_total``,
  ``frame_processing_duration_seconds`` with a ``service`` label): frames are
  counted from the tracker_ families the event-store consumer fills, once.

The checks live in tests/integration/dashboard_checks.py and return a list of
problems; each test here also feeds its check broken input, so none passes by
accident.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.dashboard_checks import (
    PIPELINE,
    check_no_service_families,
    check_promql_coverage,
    check_rule_coverage,
    first_panel,
    shipped_promql,
)
from tests.integration.shipped_promql import (
    PROMETHEUS_CONFIG,
    RULES_DIR,
    dashboard_files,
    dashboard_promql,
    rule_exprs,
    rule_files,
)

pytestmark = pytest.mark.integration


def test_every_promql_is_run_by_test_prometheus() -> None:
    assert dashboard_promql(), "no PromQL targets found"
    assert check_promql_coverage(dashboard_files()) == []
    files = sorted(RULES_DIR.glob("*.yml"))
    # the rule files in the folder are exactly those prometheus.yml loads
    assert files == rule_files(), f"{PROMETHEUS_CONFIG.name} does not load every rule file: {files}"
    assert rule_exprs(), "no rule expressions found"
    assert check_rule_coverage(files) == []


def test_no_promql_reads_service_recorded_families() -> None:
    assert check_no_service_families(shipped_promql()) == []
    # and the check can fail
    broken = [
        ("a", 'sum(rate(frames_processed_total{stage="total"}[5m]))'),
        ("b", "rate(frame_errors_total[5m])"),
        ("c", "histogram_quantile(0.9, rate(frame_processing_duration_seconds_bucket[5m]))"),
        ("d", '{__name__=~".*frames_processed_total"}'),
        ("ok", "rate(tracker_frames_processed_total[5m]) + rate(tracker_frame_errors_total[5m])"),
    ]
    assert [p.split(":")[0] for p in check_no_service_families(broken)] == ["a", "b", "c", "d"]


def test_coverage_checks_can_fail(dashboards: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    # A PromQL target on a datasource that is not tracker-prom is not collected
    # (so test_prometheus_live.py would never run it): the independent walk sees it.
    broken = copy.deepcopy(dashboards[PIPELINE])
    panel = first_panel(broken, lambda p: any("expr" in t for t in p.get("targets") or []))
    panel["targets"].append(
        {"refId": "Z", "datasource": {"type": "prometheus", "uid": "other"}, "expr": "up"}
    )
    path = tmp_path / PIPELINE
    path.write_text(json.dumps(broken), encoding="utf-8")
    assert check_promql_coverage([path]) == [f"{PIPELINE}: PromQL not run by test_prometheus_live.py: 'up'"]
    # A rule file the Prometheus config would not load (so it is not tested).
    extra = tmp_path / "extra.yml"
    extra.write_text(
        yaml.safe_dump({"groups": [{"name": "g", "rules": [{"alert": "Extra", "expr": "vector(1)"}]}]}),
        encoding="utf-8",
    )
    assert check_rule_coverage([*rule_files(), extra]) == [
        "extra.yml: rule Extra not run by test_prometheus_live.py"
    ]
