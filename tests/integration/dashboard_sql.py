"""The SQL of the Grafana dashboards, run as Grafana's PostgreSQL datasource would.

``sql_statements()`` collects every SQL statement of a dashboard (panel targets
and variable queries); ``expand_sql()`` expands Grafana's macros and variables
the way its PostgreSQL datasource does (``$__timeFilter``,
``$__timeGroupAlias``, ``${camera:sqlstring}``, ...); ``run_statements()`` runs
them read-only and reports each error and each empty result;
``check_search_results()`` checks what the frame-search panels show for one
frame.

Used by tests/integration/test_dashboard_sql.py and by the TimescaleDB
comparison in tests/timescale/compare.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from tests.integration.dashboard_checks import PG_UID, SEARCH, Problems
from tests.integration.shipped_promql import datasource_uid, iter_panels


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
