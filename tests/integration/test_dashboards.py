"""The Grafana dashboards in compose/grafana/dashboards/, checked without Grafana.

- Every SQL statement (panel targets and variable queries) has its Grafana
  macros and variables expanded the way Grafana's PostgreSQL datasource does
  (``$__timeFilter``, ``$__timeGroupAlias``, ``${camera:sqlstring}``, ...) and
  runs, read-only, against a database filled by a simulated run (publish ->
  consume -> project); each must return at least one row. The frame-search
  dashboard runs for a completed and for a failed frame.
- Every panel, target and variable uses one of the provisioned datasource uids,
  with the matching type.
- Every PromQL target is one that tests/integration/test_prometheus.py runs
  against a real Prometheus (both collect them with prom.dashboard_promql(),
  which is checked here against an independent walk of the JSON), and so is
  every expression of the rule files prometheus.yml loads.
- No PromQL reads the frame families that camera and processor services record
  themselves (``frames_processed_total``, ``frame_errors_total``,
  ``frame_processing_duration_seconds`` with a ``service`` label): frames are
  counted from the tracker_ families the event-store consumer fills, once.

Each check returns a list of problems; the ``*_can_fail`` tests feed it broken
copies, so none passes by accident.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from tests.integration.helpers import consume_until_idle, project_until_idle, publish_simulation
from tests.integration.prom import (
    PROMETHEUS_CONFIG,
    RULES_DIR,
    dashboard_files,
    dashboard_promql,
    datasource_uid,
    iter_panels,
    load_dashboard,
    rule_exprs,
    rule_files,
)
from tracker.config import Settings

pytestmark = pytest.mark.integration

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


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: load_dashboard(p) for p in dashboard_files()}


# ---- SQL: Grafana macros and variables ----------------------------------------------


@dataclass(frozen=True)
class SqlStatement:
    dashboard: str
    name: str  # panel title / refId, or "variable <name>"
    sql: str
    interval: str | None  # the panel's minimum interval


def sql_statements(name: str, dash: Mapping[str, Any]) -> list[SqlStatement]:
    out = []
    for panel in iter_panels(dash.get("panels") or []):
        panel_uid = datasource_uid(panel)
        for t in panel.get("targets") or []:
            if datasource_uid(t, panel_uid) == PG_UID:
                out.append(
                    SqlStatement(
                        name,
                        f"{panel.get('title')} / {t.get('refId')}",
                        str(t.get("rawSql", "")),
                        panel.get("interval"),
                    )
                )
    for var in (dash.get("templating") or {}).get("list") or []:
        if datasource_uid(var) == PG_UID:
            q = var.get("query")
            sql = q.get("rawSql") if isinstance(q, Mapping) else q
            out.append(SqlStatement(name, f"variable {var.get('name')}", str(sql), None))
    return out


def _pg_interval(grafana: str) -> str:
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d|w)", grafana.strip().strip("'\""))
    if not m:
        raise ValueError(f"interval {grafana!r} not understood")
    unit = {"ms": "milliseconds", "s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    return f"{m.group(1)} {unit[m.group(2)]}"


def _macro_calls(sql: str) -> Iterator[tuple[int, int, str, list[str]]]:
    """(start, end, name, args) of every $__macro(...) call, parentheses balanced."""
    for m in re.finditer(r"\$__(\w+)\(", sql):
        depth, i = 1, m.end()
        while i < len(sql) and depth:
            depth += {"(": 1, ")": -1}.get(sql[i], 0)
            i += 1
        if depth:
            raise ValueError(f"unbalanced parentheses after $__{m.group(1)}")
        inner = sql[m.end() : i - 1]
        args, depth, cur = [], 0, ""
        for ch in inner:
            if ch == "," and depth == 0:
                args.append(cur.strip())
                cur = ""
                continue
            depth += {"(": 1, ")": -1}.get(ch, 0)
            cur += ch
        if cur.strip():
            args.append(cur.strip())
        yield m.start(), i, m.group(1), args


def expand_sql(
    sql: str,
    variables: Mapping[str, Sequence[str] | str],
    time_from: datetime,
    time_to: datetime,
    interval: str = "1m",
) -> str:
    """Expand Grafana's SQL macros and variables (as its PostgreSQL datasource does;
    ``$__timeGroup*`` with date_bin where Grafana uses floor(epoch)/time_bucket)."""
    f = f"'{time_from.astimezone(UTC).isoformat().replace('+00:00', 'Z')}'"
    t = f"'{time_to.astimezone(UTC).isoformat().replace('+00:00', 'Z')}'"

    def interval_of(arg: str) -> str:
        return _pg_interval(interval if arg in ("$__interval", "${__interval}") else arg)

    def macro(name: str, args: list[str]) -> str:
        if name == "timeFilter" and len(args) == 1:
            return f"{args[0]} BETWEEN {f} AND {t}"
        if name in ("timeGroup", "timeGroupAlias") and len(args) >= 2:
            origin = "TIMESTAMPTZ '1970-01-01 00:00:00+00'"
            expr = f"date_bin('{interval_of(args[1])}'::interval, {args[0]}, {origin})"
            return expr + (' AS "time"' if name == "timeGroupAlias" else "")
        if name == "timeFrom" and not args:
            return f"{f}::timestamptz"
        if name == "timeTo" and not args:
            return f"{t}::timestamptz"
        if name == "timeEpoch" and len(args) == 1:
            return f'extract(epoch from {args[0]}) AS "time"'
        raise ValueError(f"macro $__{name}({', '.join(args)}) not supported by this test")

    out, pos = [], 0
    for start, end, name, args in list(_macro_calls(sql)):
        out.append(sql[pos:start])
        out.append(macro(name, args))
        pos = end
    out.append(sql[pos:])
    sql = "".join(out)

    builtins = {
        "__interval": interval,
        "__interval_ms": str(int(_seconds(interval) * 1000)),
        "__from": str(int(time_from.timestamp() * 1000)),
        "__to": str(int(time_to.timestamp() * 1000)),
    }

    def quote(v: str) -> str:
        return "'" + v.replace("'", "''") + "'"

    def render(m: re.Match[str]) -> str:
        name, fmt = m.group("n1") or m.group("n2"), m.group("fmt")
        if name in builtins:
            return builtins[name]
        if name not in variables:
            raise KeyError(f"unknown variable ${name}")
        value = variables[name]
        many = not isinstance(value, str)
        values = list(value) if many else [str(value)]
        if fmt == "sqlstring" or (fmt is None and many):
            return ",".join(quote(v) for v in values)
        if fmt in (None, "raw"):
            return ",".join(values)
        if fmt == "csv":
            return ",".join(values)
        raise ValueError(f"format :{fmt} of ${name} not supported by this test")

    return re.sub(r"\$\{(?P<n1>\w+)(?::(?P<fmt>\w+))?\}|\$(?P<n2>[A-Za-z_]\w*)", render, sql)


def _seconds(interval: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d|w)", interval)
    if not m:
        raise ValueError(f"interval {interval!r} not understood")
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]


async def run_statements(
    conn: asyncpg.Connection,
    statements: Sequence[SqlStatement],
    variables: Mapping[str, Sequence[str] | str],
    time_from: datetime,
    time_to: datetime,
    label: str = "",
) -> tuple[Problems, dict[str, list[asyncpg.Record]]]:
    """Run each statement read-only; a problem for each error and each empty result."""
    problems: Problems = []
    results: dict[str, list[asyncpg.Record]] = {}
    for st in statements:
        where = f"{st.dashboard} / {st.name}{label}"
        try:
            sql = expand_sql(st.sql, variables, time_from, time_to, st.interval or "1m")
        except (KeyError, ValueError) as e:
            problems.append(f"{where}: {e}")
            continue
        try:
            async with conn.transaction(readonly=True):
                rows = await conn.fetch(sql)
        except asyncpg.PostgresError as e:
            problems.append(f"{where}: {type(e).__name__}: {e}\n{sql}")
            continue
        if not rows:
            problems.append(f"{where}: no rows\n{sql}")
        results[st.name] = rows
    return problems, results


# ---- static checks --------------------------------------------------------------------


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
    """Every `expr` anywhere in the dashboards is one test_prometheus.py runs
    (it runs exactly prom.dashboard_promql())."""
    tested = [t.expr for t in dashboard_promql(paths)]
    problems = []
    for path in paths:
        for obj in walk(json.loads(path.read_text(encoding="utf-8"))):
            if "expr" in obj and obj["expr"] not in tested:
                problems.append(f"{path.name}: PromQL not run by test_prometheus.py: {obj['expr']!r}")
    return problems


def check_rule_coverage(files: Sequence[Path]) -> Problems:
    """Every rule expression in the rules folder is one test_prometheus.py runs
    (it runs exactly prom.rule_exprs(), the files prometheus.yml loads)."""
    tested = {r.expr for r in rule_exprs()}
    problems = []
    for f in files:
        for obj in walk(yaml.safe_load(f.read_text(encoding="utf-8"))):
            if "expr" in obj and ("alert" in obj or "record" in obj) and str(obj["expr"]) not in tested:
                problems.append(
                    f"{f.name}: rule {obj.get('alert') or obj.get('record')} not run by test_prometheus.py"
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


def check_search_results(
    state: str, results: Mapping[str, Sequence[Mapping[str, Any]]], n_events: int
) -> Problems:
    """What the frame-search panels must show for one frame."""
    problems: Problems = []
    where = f"{SEARCH} ({state})"
    events = results.get("Events / A") or []
    if len(events) != n_events:
        problems.append(f"{where} / Events: {len(events)} rows for the frame's {n_events} events")
    gaps = [e.get("since previous ms") for e in events]
    if events and (gaps[0] is not None or any(g is None or g < 0 for g in gaps[1:])):
        problems.append(f"{where} / Events: 'since previous ms' is not the gap to the previous event: {gaps}")
    times = [e.get("occurred_at") for e in events]
    if None in times or times != sorted(times):  # type: ignore[type-var]
        problems.append(f"{where} / Events: not in occurrence order")
    stages = results.get("Stages / A") or []
    if state == "failed" and not any(s.get("status") == "failed" for s in stages):
        problems.append(f"{where} / Stages: the failed frame shows no failed stage")
    frame = results.get("Frame / A") or []
    if not frame or frame[0].get("state") != state:
        problems.append(f"{where} / Frame: not the {state} frame's row")
    return problems


# ---- tests -------------------------------------------------------------------------------


def test_dashboards_exist_and_parse(dashboards: dict[str, dict[str, Any]]) -> None:
    assert {PIPELINE, SEARCH} <= set(dashboards)


def test_dashboard_structure(dashboards: dict[str, dict[str, Any]]) -> None:
    assert check_structure(dashboards) == []


def test_datasources_are_provisioned(dashboards: dict[str, dict[str, Any]]) -> None:
    provisioned = provisioned_datasources()
    assert set(provisioned) == {PG_UID, PROM_UID, JAEGER_UID}
    problems = [p for name, d in dashboards.items() for p in check_datasources(name, d, provisioned)]
    assert problems == []


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


async def test_every_sql_statement_runs_and_returns_rows(
    settings: Settings, dashboards: dict[str, dict[str, Any]]
) -> None:
    sim = await publish_simulation(settings, cameras=3, fps=5, duration_s=4, failure_rate=0.15, seed=5)
    assert sim.failed_frames > 0
    await consume_until_idle(settings)
    await project_until_idle(settings)
    now = datetime.now(UTC)
    time_from, time_to = now - timedelta(hours=6), now + timedelta(hours=1)

    conn = await asyncpg.connect(settings.database_url.get())
    try:
        problems: Problems = []
        # frame-pipeline: the camera variable first, with all its values (Grafana's "All").
        pipe = sql_statements(PIPELINE, dashboards[PIPELINE])
        var_stmts = [s for s in pipe if s.name.startswith("variable ")]
        found, rows = await run_statements(conn, var_stmts, {}, time_from, time_to)
        problems += found
        cameras = [r[0] for r in rows.get("variable camera", [])]
        known = sorted(r[0] for r in await conn.fetch("SELECT DISTINCT camera_id FROM frame_events"))
        if sorted(cameras) != known:
            problems.append(f"{PIPELINE} / variable camera: {cameras}, expected {known}")
        panels = [s for s in pipe if not s.name.startswith("variable ")]
        search = sql_statements(SEARCH, dashboards[SEARCH])
        assert len(panels) >= 8 and len(search) >= 5, "SQL targets not found"
        found, _ = await run_statements(conn, panels, {"camera": cameras}, time_from, time_to)
        problems += found

        # frame-search, for a completed and for a failed frame.
        for state in ("completed", "failed"):
            frame_id = await conn.fetchval(
                "SELECT frame_id FROM frame_metadata WHERE state = $1 ORDER BY frame_id LIMIT 1", state
            )
            assert frame_id, f"the simulation produced no {state} frame"
            svars: dict[str, Sequence[str] | str] = {"frame_id": frame_id}
            found, rows = await run_statements(
                conn,
                [s for s in search if s.name == "variable trace_id"],
                svars,
                time_from,
                time_to,
                f" ({state})",
            )
            problems += found
            trace = rows["variable trace_id"][0][0] if rows.get("variable trace_id") else None
            if trace is not None and not await conn.fetchval(
                "SELECT count(*) FROM frame_events WHERE frame_id = $1 AND trace_id = $2", frame_id, trace
            ):
                problems.append(f"{SEARCH} / variable trace_id ({state}): {trace} is no trace of the frame")
            svars["trace_id"] = trace or ""
            found, results = await run_statements(
                conn,
                [s for s in search if s.name != "variable trace_id"],
                svars,
                time_from,
                time_to,
                f" ({state})",
            )
            problems += found
            n_events = await conn.fetchval("SELECT count(*) FROM frame_events WHERE frame_id = $1", frame_id)
            problems += check_search_results(state, results, n_events)

        assert problems == [], "\n\n".join(problems)

        # The checks can fail: a wrong column, a query without rows, an unknown variable.
        broken = [
            SqlStatement("x", "wrong column", "SELECT no_such_column FROM frame_metadata", None),
            SqlStatement(
                "x", "no rows", "SELECT * FROM frame_metadata WHERE $__timeFilter(frame_timestamp)", None
            ),
            SqlStatement(
                "x", "unknown variable", "SELECT * FROM frame_metadata WHERE camera_id = $cam", None
            ),
            SqlStatement("x", "write", "CREATE TABLE dashboards_must_not_write (x int)", None),
        ]
        long_ago = time_from - timedelta(days=400)
        found, _ = await run_statements(conn, broken, {}, long_ago, long_ago + timedelta(hours=1))
        assert [p.split(":")[0] for p in found] == [
            "x / wrong column",
            "x / no rows",
            "x / unknown variable",
            "x / write",
        ], found
    finally:
        await conn.close()


def test_macro_expansion() -> None:
    f = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    t = f + timedelta(hours=1)
    sql = (
        "SELECT $__timeGroupAlias(s.hour, $__interval), x FROM t s WHERE $__timeFilter(s.hour) "
        "AND c IN (${camera:sqlstring}) AND d IN ($camera) AND f = ${frame:sqlstring} AND g = '$frame' "
        "AND h > $__timeFrom() AND h < $__timeTo()"
    )
    out = expand_sql(sql, {"camera": ["a", "b'c"], "frame": "f-1"}, f, t, "1h")
    assert out == (
        "SELECT date_bin('1 hours'::interval, s.hour, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS \"time\", x "
        "FROM t s WHERE s.hour BETWEEN '2025-01-02T03:04:05Z' AND '2025-01-02T04:04:05Z' "
        "AND c IN ('a','b''c') AND d IN ('a','b''c') AND f = 'f-1' AND g = 'f-1' "
        "AND h > '2025-01-02T03:04:05Z'::timestamptz AND h < '2025-01-02T04:04:05Z'::timestamptz"
    )
    with pytest.raises(ValueError, match="not supported"):
        expand_sql("SELECT $__unixEpochFilter(x)", {}, f, t)
    with pytest.raises(KeyError):
        expand_sql("SELECT $nope", {}, f, t)


# ---- the static checks can fail ------------------------------------------------------------


def _break(
    dashboards: dict[str, dict[str, Any]], fn: Callable[[dict[str, dict[str, Any]]], None]
) -> dict[str, Any]:
    broken = copy.deepcopy(dashboards)
    fn(broken)
    return broken


def _first(d: dict[str, Any], pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    return next(p for p in iter_panels(d["panels"]) if pred(p))


def _set_ds(uid: str, kind: str) -> Callable[[dict[str, dict[str, Any]]], None]:
    def apply(ds: dict[str, dict[str, Any]]) -> None:
        p = _first(ds[PIPELINE], lambda p: p.get("type") == "timeseries")
        p["targets"][0]["datasource"] = {"type": kind, "uid": uid}

    return apply


DATASOURCE_BREAKAGES = {
    "unknown uid": _set_ds("prometheus", "prometheus"),
    "wrong type": _set_ds(PG_UID, "prometheus"),
    "string datasource": lambda ds: _first(ds[PIPELINE], lambda p: p.get("type") == "table").__setitem__(
        "datasource", "TimescaleDB"
    ),
    "variable on unknown datasource": lambda ds: ds[PIPELINE]["templating"]["list"][0].__setitem__(
        "datasource", {"type": "postgres", "uid": "pg"}
    ),
    "empty query": lambda ds: _first(ds[SEARCH], lambda p: p.get("type") == "table")["targets"][
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


def test_coverage_checks_can_fail(dashboards: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    # A PromQL target on a datasource that is not tracker-prom is not collected
    # (so test_prometheus.py would never run it): the independent walk sees it.
    broken = copy.deepcopy(dashboards[PIPELINE])
    panel = _first(broken, lambda p: any("expr" in t for t in p.get("targets") or []))
    panel["targets"].append(
        {"refId": "Z", "datasource": {"type": "prometheus", "uid": "other"}, "expr": "up"}
    )
    path = tmp_path / PIPELINE
    path.write_text(json.dumps(broken), encoding="utf-8")
    assert check_promql_coverage([path]) == [f"{PIPELINE}: PromQL not run by test_prometheus.py: 'up'"]
    # A rule file the Prometheus config would not load (so it is not tested).
    extra = tmp_path / "extra.yml"
    extra.write_text(
        yaml.safe_dump({"groups": [{"name": "g", "rules": [{"alert": "Extra", "expr": "vector(1)"}]}]}),
        encoding="utf-8",
    )
    assert check_rule_coverage([*rule_files(), extra]) == [
        "extra.yml: rule Extra not run by test_prometheus.py"
    ]


def test_search_result_check_can_fail() -> None:
    t = [datetime(2025, 1, 1, tzinfo=UTC) + timedelta(milliseconds=i) for i in range(3)]
    good = {
        "Frame / A": [{"state": "failed"}],
        "Events / A": [
            {"occurred_at": t[0], "since previous ms": None},
            {"occurred_at": t[1], "since previous ms": 1},
            {"occurred_at": t[2], "since previous ms": 1},
        ],
        "Stages / A": [{"status": "completed"}, {"status": "failed"}],
    }
    assert check_search_results("failed", good, 3) == []
    assert check_search_results("failed", good, 4)  # an event missing
    assert check_search_results("completed", good, 3)  # the wrong frame
    unordered = {**good, "Events / A": list(reversed(good["Events / A"]))}
    assert check_search_results("failed", unordered, 3)
    no_gap = {**good, "Events / A": [{**e, "since previous ms": None} for e in good["Events / A"]]}
    assert check_search_results("failed", no_gap, 3)
    no_failed_stage = {**good, "Stages / A": [{"status": "completed"}]}
    assert check_search_results("failed", no_failed_stage, 3)
