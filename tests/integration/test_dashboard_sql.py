"""The dashboards' SQL, run against a database a simulated run has filled.

Every SQL statement of the Grafana dashboards (panel targets and variable
queries) has its Grafana macros and variables expanded the way Grafana's
PostgreSQL datasource does (``$__timeFilter``, ``$__timeGroupAlias``,
``${camera:sqlstring}``, ...) and runs, read-only, against a database filled
by a simulated run (publish -> consume -> project); each must return at least
one row. The frame-search dashboard runs for a completed and for a failed
frame, and its panels must show that frame.

The expansion and the checks live in tests/integration/dashboard_sql.py; the
tests here also feed them broken statements and results, so none passes by
accident.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from tests.integration.dashboard_checks import PIPELINE, SEARCH, Problems
from tests.integration.dashboard_sql import (
    SqlStatement,
    check_search_results,
    expand_sql,
    run_statements,
    sql_statements,
)
from tests.integration.helpers import consume_until_idle, project_until_idle, publish_simulation
from tracker.config import Settings

pytestmark = pytest.mark.integration


async def test_every_sql_statement_runs_and_returns_rows(
    settings: Settings, dashboards: dict[str, dict[str, Any]]
) -> None:
    sim = await publish_simulation(settings, cameras=3, fps=5, duration_s=4, failure_rate=0.15, seed=5)
    assert sim.failed_frames > 0
    await consume_until_idle(settings)
    await project_until_idle(settings)
    now = datetime.now(UTC)
    time_from, time_to = now - timedelta(hours=6), now + timedelta(hours=1)

    conn = await asyncpg.connect(settings.database.url.get())
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
