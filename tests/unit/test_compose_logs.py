"""The log side of the container stack (Loki, promtail, the Loki datasource and
frame-search's logs panel): the checks of tests/support/compose_logs.py on the
shipped files, each shown able to fail on a broken copy, and the LogQL reader
on good and bad queries."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

from tests.support.compose_logs import (  # noqa: E402
    FRAME_SEARCH_FILE,
    LOKI_FILE,
    PROMTAIL_FILE,
    check_log_shipping,
    check_logs_panel,
    log_fields,
    parse_logql,
)
from tests.support.compose_stack import COMPOSE_FILE, DATASOURCES_FILE, load_yaml  # noqa: E402


@pytest.fixture(scope="module")
def files() -> dict[str, Any]:
    return {
        "compose": load_yaml(COMPOSE_FILE),
        "loki": load_yaml(LOKI_FILE),
        "promtail": load_yaml(PROMTAIL_FILE),
        "datasources": load_yaml(DATASOURCES_FILE),
        "dashboard": json.loads(FRAME_SEARCH_FILE.read_text()),
    }


def test_the_lines_carry_frame_id_and_trace_id() -> None:
    assert {"frame_id", "camera_id", "trace_id", "span_id"} <= log_fields()


def test_shipped_files_pass(files: dict[str, Any]) -> None:
    assert check_log_shipping(files["compose"], files["loki"], files["promtail"]) == []
    assert check_logs_panel(files["datasources"], files["dashboard"]) == []


def _logs_target(f: dict[str, Any]) -> dict[str, Any]:
    panel = next(p for p in f["dashboard"]["panels"] if p.get("type") == "logs")
    return panel["targets"][0]


def _svc(f: dict[str, Any], name: str) -> dict[str, Any]:
    return f["compose"]["services"][name]


SHIPPING: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("no loki", lambda f: f["compose"]["services"].pop("loki")),
    ("loki unpinned", lambda f: _svc(f, "loki").__setitem__("image", "grafana/loki")),
    ("config not mounted", lambda f: _svc(f, "promtail").__setitem__("volumes", [])),
    ("wrong config flag", lambda f: _svc(f, "loki").__setitem__("command", ["-config.file=/etc/other.yml"])),
    (
        "push elsewhere",
        lambda f: f["promtail"]["clients"][0].__setitem__("url", "http://grafana:3100/loki/api/v1/push"),
    ),
    (
        "push wrong port",
        lambda f: f["promtail"]["clients"][0].__setitem__("url", "http://loki:3101/loki/api/v1/push"),
    ),
    ("port not exposed", lambda f: _svc(f, "loki").__setitem__("expose", ["9999"])),
    (
        "frame_id a label",
        lambda f: f["promtail"]["scrape_configs"][0]["pipeline_stages"].append(
            {"labels": {"frame_id": None}}
        ),
    ),
    ("other project", lambda f: f["compose"].__setitem__("name", "someone-else")),
    ("no depends", lambda f: _svc(f, "promtail").pop("depends_on")),
]


@pytest.mark.parametrize(("label", "breakage"), SHIPPING, ids=[lbl for lbl, _ in SHIPPING])
def test_each_shipping_check_can_fail(files: dict[str, Any], label: str, breakage: Any) -> None:
    broken = copy.deepcopy(files)
    breakage(broken)
    assert check_log_shipping(broken["compose"], broken["loki"], broken["promtail"]), label


PANEL: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    (
        "no loki datasource",
        lambda f: f["datasources"].__setitem__(
            "datasources", [d for d in f["datasources"]["datasources"] if d["uid"] != "tracker-loki"]
        ),
    ),
    (
        "no logs panel",
        lambda f: f["dashboard"].__setitem__(
            "panels", [p for p in f["dashboard"]["panels"] if p.get("type") != "logs"]
        ),
    ),
    (
        "camelCase field",
        lambda f: _logs_target(f).__setitem__("expr", '{service=~".+"} | json | frameId = `${frame_id}`'),
    ),
    (
        "no json stage",
        lambda f: _logs_target(f).__setitem__("expr", '{service=~".+"} | frame_id = `${frame_id}`'),
    ),
    (
        "fixed id",
        lambda f: _logs_target(f).__setitem__("expr", '{service=~".+"} | json | frame_id = "cam-1"'),
    ),
    (
        "unbalanced",
        lambda f: _logs_target(f).__setitem__("expr", '{service=~".+" | json | frame_id = `${frame_id}`'),
    ),
    (
        "empty-matching selector",
        lambda f: _logs_target(f).__setitem__("expr", '{service=~".*"} | json | frame_id = `${frame_id}`'),
    ),
]


@pytest.mark.parametrize(("label", "breakage"), PANEL, ids=[lbl for lbl, _ in PANEL])
def test_each_panel_check_can_fail(files: dict[str, Any], label: str, breakage: Any) -> None:
    broken = copy.deepcopy(files)
    breakage(broken)
    assert check_logs_panel(broken["datasources"], broken["dashboard"]), label


def test_a_frame_id_field_the_logs_lack_fails() -> None:
    f = {"datasources": load_yaml(DATASOURCES_FILE), "dashboard": json.loads(FRAME_SEARCH_FILE.read_text())}
    assert check_logs_panel(f["datasources"], f["dashboard"], fields={"frameId"})


@pytest.mark.parametrize(
    "expr",
    [
        '{service="tracker-api"}',
        '{service=~"tracker-.+", level!="debug"} |= "frame" | json | frame_id = `x` | line_format "{{.msg}}"',
        '{job="a"} | logfmt | duration_ms > 20 |~ `fail(ed)?`',
        '{job="a"} | json frame="frame_id", t="trace_id" | frame == "x"',
    ],
)
def test_logql_reader_accepts(expr: str) -> None:
    parse_logql(expr)


@pytest.mark.parametrize(
    "expr",
    [
        'service="x"',
        '{service=~".*"}',
        "{}",
        '{service="x" | json',
        '{service="x"} json',
        '{service="x"} | json | frame_id = "unterminated',
        '{service="x"} | frobnicate',
        '{service="x"} | json | frame_id ~ "x"',
        '{service="x"} || json',
    ],
)
def test_logql_reader_refuses(expr: str) -> None:
    with pytest.raises(ValueError):
        parse_logql(expr)
