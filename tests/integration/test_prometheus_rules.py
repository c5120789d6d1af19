"""The Prometheus configuration and alert rules, checked with the real ``promtool``.

- ``promtool check config`` on compose/prometheus/prometheus.yml (with the rule
  files it loads), ``promtool check rules`` on each rule file, and ``promtool
  test rules`` on the unit tests in compose/prometheus/rules/tests/, in which
  every alert must fire once and stay quiet once.
- The promtool unit tests hold service series (``frames_processed_total`` and
  friends, with a ``service`` label) beside the tracker's, and tracker serve's
  lag view beside the workers' for the same partitions: a copy of the rules
  that sums the service series in must fail those tests for every frame alert,
  and a copy that adds the two lag views up must fail them for every lag alert.

Each checker returns a list of problems; the ``*_can_fail`` and ``*_catch_*``
tests feed them broken copies of the rules, so none of them passes by accident.
``prom_tools`` (tests/integration/conftest.py) finds Debian's prometheus
package, installing it when it is missing and we are root.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from tests.integration.helpers import ROOT
from tests.integration.prom import PrometheusTools
from tests.integration.shipped_promql import (
    PROMETHEUS_CONFIG,
    RULE_TESTS_DIR,
    RULES_DIR,
    RuleExpr,
    rule_exprs,
    rule_files,
)

pytestmark = pytest.mark.integration


def promtool(tools: PrometheusTools, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tools.promtool, *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd
    )


def checkable_config(tools: PrometheusTools, config: Path, workdir: Path) -> Path:
    """The config promtool can check: the file itself, or, for a Prometheus older
    than 2.49 (Debian 12 ships 2.42), a copy without `scrape_protocols`, which
    only those versions reject (tests/unit/test_compose_files.py checks its values
    against what the compose image, v2.55, accepts). The copy sits beside a link
    to the real rules folder, so the relative `rule_files` globs still resolve
    to the real rule files."""
    if tools.supports_scrape_protocols:
        return config
    cfg = yaml.safe_load(config.read_text(encoding="utf-8"))
    cfg.get("global", {}).pop("scrape_protocols", None)
    for job in cfg.get("scrape_configs") or []:
        job.pop("scrape_protocols", None)
    workdir.mkdir(parents=True, exist_ok=True)
    copy = workdir / config.name
    copy.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    for entry in config.parent.iterdir():
        if entry.is_dir() and not (workdir / entry.name).exists():
            (workdir / entry.name).symlink_to(entry, target_is_directory=True)
    return copy


def check_config(
    tools: PrometheusTools, config: Path, workdir: Path, expect_rule_files: Sequence[str] = ()
) -> list[str]:
    """promtool check config (which checks the rule files it loads as well)."""
    result = promtool(tools, "check", "config", str(checkable_config(tools, config, workdir)))
    output = result.stdout + result.stderr
    if result.returncode != 0:
        return [f"promtool check config {config.name}:\n{output}"]
    return [
        f"promtool check config did not check rule file {n}:\n{output}"
        for n in expect_rule_files
        if n not in output
    ]


def check_unit_tests(tools: PrometheusTools, test_files: Sequence[Path]) -> list[str]:
    problems = []
    for f in test_files:
        result = promtool(tools, "test", "rules", f.name, cwd=f.parent)
        if result.returncode != 0:
            problems.append(f"promtool test rules {f.name}:\n{result.stdout}{result.stderr}")
    return problems


def check_alert_test_coverage(rules: Sequence[RuleExpr], test_files: Sequence[Path]) -> list[str]:
    """Every alert has a unit test where it fires and one where it must not."""
    fires: set[str] = set()
    silent: set[str] = set()
    for f in test_files:
        for case in yaml.safe_load(f.read_text(encoding="utf-8")).get("tests") or []:
            for t in case.get("alert_rule_test") or []:
                (fires if t.get("exp_alerts") else silent).add(t["alertname"])
    problems = []
    for r in rules:
        if not r.is_alert:
            continue
        if r.name not in fires:
            problems.append(f"alert {r.name}: no unit test in which it fires")
        if r.name not in silent:
            problems.append(f"alert {r.name}: no unit test in which it must not fire")
    return problems


def unit_test_files() -> list[Path]:
    return sorted(RULE_TESTS_DIR.glob("*.yml"))


def test_prometheus_config_is_valid(prom_tools: PrometheusTools, tmp_path: Path) -> None:
    assert rule_files(), "prometheus.yml loads no rule files"
    assert not set(rule_files()) & set(unit_test_files()), (
        "prometheus.yml would load a unit-test file as rules"
    )
    assert check_config(prom_tools, PROMETHEUS_CONFIG, tmp_path, [f.name for f in rule_files()]) == []


def test_rule_files_are_valid(prom_tools: PrometheusTools) -> None:
    for f in rule_files():
        result = promtool(prom_tools, "check", "rules", str(f))
        assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_pass(prom_tools: PrometheusTools) -> None:
    files = unit_test_files()
    assert files, f"no promtool unit tests in {RULE_TESTS_DIR.relative_to(ROOT)}"
    # The unit tests must cover the files prometheus.yml really loads.
    covered = {
        (f.parent / r).resolve()
        for f in files
        for r in yaml.safe_load(f.read_text(encoding="utf-8")).get("rule_files") or []
    }
    assert {f.resolve() for f in rule_files()} <= covered
    assert check_unit_tests(prom_tools, files) == []
    assert check_alert_test_coverage(rule_exprs(), files) == []


def _copy_rules(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the rules folder (rule files and unit tests, same layout)."""
    rules = tmp_path / "rules"
    shutil.copytree(RULES_DIR, rules)
    return rules, rules / RULE_TESTS_DIR.relative_to(RULES_DIR)


def test_config_check_can_fail(prom_tools: PrometheusTools, tmp_path: Path) -> None:
    rules, _ = _copy_rules(tmp_path)
    config = tmp_path / "prometheus.yml"
    shutil.copy(PROMETHEUS_CONFIG, config)
    for f in rules.glob("*.yml"):
        f.write_text(f.read_text(encoding="utf-8").replace("rate(", "rte(", 1), encoding="utf-8")
    assert check_config(prom_tools, config, tmp_path / "work"), "a rule with a bad function passed"


def test_unit_tests_can_fail(prom_tools: PrometheusTools, tmp_path: Path) -> None:
    rules, tests_dir = _copy_rules(tmp_path)
    alerts = rules / "tracker-alerts.yml"
    text = alerts.read_text(encoding="utf-8")
    # Raise the error-rate threshold: the test that expects cam-bad (20%) to fire must fail.
    assert ") > 0.10" in text
    alerts.write_text(text.replace(") > 0.10", ") > 0.50"), encoding="utf-8")
    problems = check_unit_tests(prom_tools, sorted(tests_dir.glob("*.yml")))
    assert problems and "FrameErrorRateHigh" in problems[0], problems
    # An alert nobody tests is reported.
    extra = [*rule_exprs(), RuleExpr("x.yml", "g", "Untested", "vector(1)", True)]
    assert check_alert_test_coverage(extra, unit_test_files()) == [
        "alert Untested: no unit test in which it fires",
        "alert Untested: no unit test in which it must not fire",
    ]


# What a rule file that summed the services' own series in with the tracker's
# would select instead of each tracker_ family.
_SUMMED_IN = re.compile(
    r"\btracker_(frames_processed_total|frame_errors_total|frame_processing_duration_seconds_bucket)\{"
)
FRAME_ALERTS = ("FrameErrorRateHigh", "FrameLatencyP99High", "CameraSilent")


def test_unit_tests_catch_double_counting(prom_tools: PrometheusTools, tmp_path: Path) -> None:
    """The unit tests hold service series beside the tracker's: a copy of the
    rules that sums them in fails them, for every frame alert."""
    rules, tests_dir = _copy_rules(tmp_path)
    alerts = rules / "tracker-alerts.yml"
    text = alerts.read_text(encoding="utf-8")
    summed, n = _SUMMED_IN.subn(r'{__name__=~"(tracker_)?\1", ', text)
    assert n >= 6, "the frame alerts no longer read the tracker_ families"
    alerts.write_text(summed, encoding="utf-8")
    problems = check_unit_tests(prom_tools, sorted(tests_dir.glob("*.yml")))
    assert len(problems) == 1, problems
    for alert in FRAME_ALERTS:
        assert f"alertname: {alert}" in problems[0], f"{alert} does not notice a service summed in"


# Both lag views added up, where each rule should take one.
_LAG_VIEWS = {
    "tracker_consumer_lag_records": '{__name__=~"tracker_consumer_(committed_)?lag_records"}',
    "tracker_projection_lag_records": '{__name__=~"tracker_projection_(checkpoint_)?lag_records"}',
}
LAG_ALERTS = ("TrackerConsumerLagHigh", "TrackerConsumerLagGrowing", "TrackerProjectionLagHigh")


def test_unit_tests_catch_lag_counted_twice(prom_tools: PrometheusTools, tmp_path: Path) -> None:
    """The unit tests hold tracker serve's lag view beside the workers', for the
    same partitions: a copy of the rules that adds the two fails them, for
    every lag alert."""
    rules, tests_dir = _copy_rules(tmp_path)
    alerts = rules / "tracker-alerts.yml"
    text = alerts.read_text(encoding="utf-8")
    for family, both in _LAG_VIEWS.items():
        assert family in text, f"the lag alerts no longer read {family}"
        text = text.replace(family, both)
    alerts.write_text(text, encoding="utf-8")
    problems = check_unit_tests(prom_tools, sorted(tests_dir.glob("*.yml")))
    assert len(problems) == 1, problems
    for alert in LAG_ALERTS:
        assert f"alertname: {alert}" in problems[0], f"{alert} does not notice lag counted twice"
