"""The PromQL this repository ships, collected for the integration tests.

``dashboard_promql()`` and ``rule_exprs()`` collect every PromQL expression of
the Grafana dashboards (compose/grafana/dashboards/) and of the alert rules
prometheus.yml loads; ``grafana_to_promql()`` replaces the Grafana variables in
a dashboard expression with concrete values. The dashboard walkers
(``iter_panels()``, ``datasource_uid()``) serve the dashboard tests as well.

A real Prometheus to run them against is in tests/integration/prom.py.
"""

from __future__ import annotations

import glob
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = ROOT / "compose" / "grafana" / "dashboards"
PROMETHEUS_DIR = ROOT / "compose" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES_DIR = PROMETHEUS_DIR / "rules"
# promtool unit tests for the rules. They live in a sub-folder on purpose:
# prometheus.yml loads "rules/*.yml" as rule files, and a unit-test file is not
# a valid rule file (Prometheus parses both strictly).
RULE_TESTS_DIR = RULES_DIR / "tests"

PROM_DATASOURCE_UID = "tracker-prom"


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARD_DIR.glob("*.json"))


def load_dashboard(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        return dict(json.load(f))


def iter_panels(panels: Sequence[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside (collapsed) rows."""
    for p in panels:
        yield p
        yield from iter_panels(p.get("panels") or [])


def datasource_uid(obj: Mapping[str, Any], default: str | None = None) -> str | None:
    ds = obj.get("datasource")
    if isinstance(ds, Mapping):
        return str(ds.get("uid")) if ds.get("uid") is not None else default
    if isinstance(ds, str):
        return ds
    return default


@dataclass(frozen=True)
class PromTarget:
    dashboard: str
    panel: str
    ref_id: str
    expr: str
    exemplar: bool
    interval: str | None  # the panel's minimum interval, if set

    @property
    def name(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref_id}"


def dashboard_promql(paths: Sequence[Path] | None = None) -> list[PromTarget]:
    """Every Prometheus target of every panel, and every Prometheus variable query."""
    out: list[PromTarget] = []
    for path in paths if paths is not None else dashboard_files():
        dash = load_dashboard(path)
        for panel in iter_panels(dash.get("panels") or []):
            panel_uid = datasource_uid(panel)
            for t in panel.get("targets") or []:
                if datasource_uid(t, panel_uid) != PROM_DATASOURCE_UID:
                    continue
                out.append(
                    PromTarget(
                        path.name,
                        str(panel.get("title")),
                        str(t.get("refId")),
                        str(t.get("expr", "")),
                        bool(t.get("exemplar")),
                        panel.get("interval"),
                    )
                )
        for var in (dash.get("templating") or {}).get("list") or []:
            if datasource_uid(var) == PROM_DATASOURCE_UID:
                q = var.get("query")
                expr = q.get("query") if isinstance(q, Mapping) else q
                out.append(PromTarget(path.name, f"variable {var.get('name')}", "-", str(expr), False, None))
    return out


def rule_files() -> list[Path]:
    """The rule files prometheus.yml loads (its `rule_files` globs, relative to it)."""
    cfg = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    files: set[Path] = set()
    for pattern in cfg.get("rule_files") or []:
        files.update(Path(p) for p in glob.glob(str(PROMETHEUS_CONFIG.parent / pattern)))
    return sorted(files)


@dataclass(frozen=True)
class RuleExpr:
    file: str
    group: str
    name: str  # alert or record name
    expr: str
    is_alert: bool


def rule_exprs(paths: Sequence[Path] | None = None) -> list[RuleExpr]:
    out: list[RuleExpr] = []
    for path in paths if paths is not None else rule_files():
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for group in doc.get("groups") or []:
            for rule in group.get("rules") or []:
                name = rule.get("alert") or rule.get("record")
                out.append(RuleExpr(path.name, group["name"], str(name), str(rule["expr"]), "alert" in rule))
    return out


# ---- Grafana variables in PromQL --------------------------------------------------


def grafana_to_promql(
    expr: str,
    variables: Mapping[str, Sequence[str]],
    *,
    interval: str | None = None,
    rate_interval: str = "1m",
    range_: str = "1h",
) -> str:
    """Replace Grafana's built-in and template variables with concrete values.

    Multi-valued template variables render as Grafana renders them for
    Prometheus: plain ``$v`` as ``(a|b)`` with regex metacharacters escaped for
    a PromQL string (the Prometheus datasource's own interpolation),
    ``${v:regex}`` as Grafana's generic regex format (one backslash, which a
    PromQL string rejects: prefer ``$v``), ``${v:pipe}`` as ``a|b``.
    """
    builtins = {
        "__rate_interval": rate_interval,
        "__interval": interval or "15s",
        "__range": range_,
        "__range_s": str(_seconds(range_)),
        "__interval_ms": str(int(_seconds(interval or "15s") * 1000)),
    }

    def render(name: str, fmt: str | None) -> str:
        if name in builtins:
            return builtins[name]
        if name not in variables:
            raise KeyError(f"unknown Grafana variable ${name} in {expr!r}")
        values = list(variables[name])
        if fmt == "pipe":
            return "|".join(values)
        if fmt is None:  # prometheusSpecialRegexEscape
            escaped = [re.sub(r"([$^*{}\[\]'+?.()|])", r"\\\\\1", v.replace("\\", "\\" * 4)) for v in values]
            return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
        if fmt == "regex":
            escaped = [re.sub(r"([\\^$*+?.()|\[\]{}/])", r"\\\1", v) for v in values]
            return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
        if fmt == "raw":
            return ",".join(values)
        raise ValueError(f"format :{fmt} not handled for ${name}")

    def sub(m: re.Match[str]) -> str:
        return render(m.group("n1") or m.group("n2"), m.group("fmt"))

    return re.sub(r"\$\{(?P<n1>\w+)(?::(?P<fmt>\w+))?\}|\$(?P<n2>\w+)", sub, expr)


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", duration)
    if not m:
        raise ValueError(f"not a duration: {duration!r}")
    return int(m.group(1)) * units[m.group(2)]
