"""What the two backends are compared on: every FrameTrackingQueries query, every
SQL statement of the Grafana dashboards, and the projections against a fresh
fold of the events that are stored."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from projections.events import STORE_COLUMNS, from_store
from projections.fold import (
    failure_totals,
    fold,
    frame_contribution,
    rollup_deltas,
    stage_camera_contribution,
    stage_contribution,
)
from tracker.config import Settings
from tracker.errors import NotFound
from tracker.queries import FrameTrackingQueries

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "compose" / "grafana" / "dashboards"
# Set by the database when a row is written, so different on the two backends.
WRITE_TIME_COLUMNS = frozenset({"recorded_at", "updated_at"})


def _plain(value: Any) -> Any:
    """JSON-comparable form: no write times, datetimes as ISO strings, numbers as floats."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if k not in WRITE_TIME_COLUMNS}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    try:
        return float(value)  # Decimal
    except (TypeError, ValueError):
        return str(value)


async def query_answers(settings: Settings, frame_ids: Sequence[str], hours: float) -> dict[str, Any]:
    """Every query of FrameTrackingQueries, through its own pool (read-only, as
    tracker_read where the migrations created it)."""
    q = await FrameTrackingQueries.connect(settings)
    try:
        out: dict[str, Any] = {}

        async def session() -> dict[str, Any]:
            # How the query pool's session looks (role, read-only); a private
            # method, used here only to observe the session.
            rows = await q._fetch(
                "SELECT current_user::text AS role, current_setting('transaction_read_only') AS read_only"
            )
            return dict(rows[0])

        out["session"] = await session()
        journeys: dict[str, Any] = {}
        for f in frame_ids:
            try:
                journeys[f] = await q.get_frame_journey(f)
            except NotFound:
                journeys[f] = "not found"
        out["journeys"] = journeys
        try:
            await q.get_frame_journey("no-such-frame")
            out["not_found"] = False
        except NotFound:
            out["not_found"] = True
        cameras = sorted({j["camera_id"] for j in journeys.values() if isinstance(j, dict)})
        out["slow"] = {
            "all": await q.find_slow_frames(0, hours, limit=1000),
            "over_150ms": await q.find_slow_frames(150, hours),
            "over_400ms_top5": await q.find_slow_frames(400, hours, limit=5),
            **{f"{c}_over_100ms": await q.find_slow_frames(100, hours, camera_id=c) for c in cameras},
        }
        out["failures"] = await q.get_failure_analysis(hours)
        out["camera_stats"] = await q.get_camera_stats(hours)
        out["stage_performance"] = await q.get_stage_performance(hours)
        out["camera_exists"] = {c: await q.camera_exists(c) for c in [*cameras, "cam-404"]}
        out["baselines"] = {
            f: await q.get_baselines(j["camera_id"], datetime.fromisoformat(j["frame_timestamp"]))
            for f, j in journeys.items()
            if isinstance(j, dict) and j.get("frame_timestamp")
        }
        # The same after the pool's many RESET ALLs (one per release).
        out["session_at_the_end"] = await session()
        return _plain(out)
    finally:
        await q.close()


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


async def dashboard_answers(
    conn: asyncpg.Connection,
    frames: Mapping[str, str],
    time_from: datetime,
    time_to: datetime,
) -> dict[str, Any]:
    """Every SQL statement of every dashboard, macros and variables expanded by
    tests/integration/dashboard_sql.py; the frame-search dashboard once per
    frame of ``frames`` (label -> frame id). Errors are answers too."""
    from tests.integration.dashboard_sql import expand_sql, sql_statements

    out: dict[str, Any] = {}

    async def run(key: str, sql: str) -> list[dict[str, Any]] | str:
        try:
            async with conn.transaction(readonly=True):
                result: list[dict[str, Any]] | str = [dict(r) for r in await conn.fetch(sql)]
        except asyncpg.PostgresError as e:
            result = f"{type(e).__name__}: {e}"
        out[key] = result
        return result

    cameras = [r[0] for r in await conn.fetch("SELECT DISTINCT camera_id FROM frame_events ORDER BY 1")]
    for path in dashboard_files():
        dash = json.loads(path.read_text(encoding="utf-8"))
        statements = sql_statements(path.name, dash)
        names = {v.get("name") for v in (dash.get("templating") or {}).get("list") or []}
        runs: list[tuple[str, dict[str, Any]]] = (
            [(f" [{label}]", {"frame_id": fid}) for label, fid in frames.items()]
            if "frame_id" in names
            else [("", {"camera": cameras})]
        )
        for suffix, variables in runs:
            # Query variables first: their values feed the panels, as in Grafana.
            for st in [s for s in statements if s.name.startswith("variable ")]:
                sql = expand_sql(st.sql, variables, time_from, time_to, st.interval or "1m")
                rows = await run(f"{path.name} / {st.name}{suffix}", sql)
                var = st.name.removeprefix("variable ")
                if var not in variables:
                    variables[var] = (
                        str(next(iter(rows[0].values()))) if isinstance(rows, list) and rows else ""
                    )
            for st in [s for s in statements if not s.name.startswith("variable ")]:
                sql = expand_sql(st.sql, variables, time_from, time_to, st.interval or "1m")
                await run(f"{path.name} / {st.name}{suffix}", sql)
    return _plain(out)


async def projection_problems(conn: asyncpg.Connection) -> list[str]:
    """The projection tables against a fold, from scratch, of the events stored
    now: the same frames, stage runs and rollup rows (tables read through the
    reader views)."""
    problems: list[str] = []
    events = [from_store(r) for r in await conn.fetch(f"SELECT {STORE_COLUMNS} FROM frame_events")]
    folded = fold(sorted(events, key=lambda e: e.order_key))

    frames = {
        (r["frame_id"], r["frame_timestamp"]): r
        for r in await conn.fetch(
            "SELECT frame_id, frame_timestamp, state, events_applied, total_processing_time_ms "
            "FROM frame_metadata"
        )
    }
    if set(frames) != set(folded.frames):
        problems.append(
            f"frame_metadata has {len(frames)} frames, the stored events make {len(folded.frames)}; "
            f"only in the table: {sorted(set(frames) - set(folded.frames))[:3]}, "
            f"only in the events: {sorted(set(folded.frames) - set(frames))[:3]}"
        )
    for k, row in folded.frames.items():
        t = frames.get(k)
        if t is not None and (t["state"], t["events_applied"]) != (row.state, len(row.event_ids)):
            problems.append(
                f"frame {k[0]}: table {t['state']}/{t['events_applied']}, "
                f"fold {row.state}/{len(row.event_ids)}"
            )

    stages = {
        (r["frame_id"], r["frame_timestamp"], r["stage"], r["attempt"]): r["status"]
        for r in await conn.fetch(
            "SELECT frame_id, frame_timestamp, stage, attempt, status FROM processing_stages"
        )
    }
    want_stages = {k: s.status for k, s in folded.stages.items()}
    if stages != want_stages:
        problems.append(
            f"processing_stages: {len(stages)} rows, the fold {len(want_stages)}; or statuses differ"
        )

    stage_counters = ("runs", "completed", "failed", "conflicted", "running")
    for table, key, counters, contribution, rows in (
        (
            "frame_stats_hourly",
            ("camera_id", "hour"),
            ("frames", "captured", "queued", "processing", "completed", "failed", "conflicted"),
            frame_contribution,
            folded.frames.values(),
        ),
        ("performance_stats", ("stage", "hour"), stage_counters, stage_contribution, folded.stages.values()),
        (
            "stage_camera_stats",
            ("camera_id", "stage", "hour"),
            stage_counters,
            stage_camera_contribution,
            folded.stages.values(),
        ),
    ):
        want: dict[Any, Any] = rollup_deltas([(None, r) for r in rows], contribution)
        have = {
            tuple(r[k] for k in key): r
            for r in await conn.fetch(f"SELECT * FROM {table}")
            if any(r[c] for c in counters)  # a row whose counts all went back to 0 is no row
        }
        if set(have) != set(want):
            problems.append(f"{table}: rows {sorted(have)[:3]}..., the fold {sorted(want)[:3]}...")
            continue
        for k, w in want.items():
            got = {c: have[k][c] for c in counters}
            exp = {c: w.counts.get(c, 0) for c in counters}
            if got != exp:
                problems.append(f"{table} {k}: {got} != fold {exp}")

    # The failure rollup (error types as the view shows them: None for none).
    want_failures = {
        (*k[:4], k[4] or None): (f.failures, f.first_seen, tuple(f.sample) if f.sample else None)
        for k, f in failure_totals(folded.frames.values(), folded.stages.values()).items()
    }
    have_failures = {
        (r["source"], r["hour"], r["camera_id"], r["stage"], r["error_type"]): (
            r["failures"],
            r["first_seen"],
            (
                r["last_seen"],
                r["sample_frame_id"],
                r["sample_frame_timestamp"],
                r["sample_attempt"],
                r["sample_trace_id"],
            ),
        )
        for r in await conn.fetch("SELECT * FROM failure_stats WHERE failures > 0")
    }
    if have_failures != want_failures:
        problems.append(
            f"failure_stats: {len(have_failures)} rows, the fold {len(want_failures)}; or they differ"
        )
    return problems
