"""Retention in TimescaleDB mode: `tracker retention --older-than AGE` drops
whole days as chunks (drop_chunks) of every time-partitioned table, and the
projections stay consistent with the events that are left; the same on plain
PostgreSQL, where it drops partitions. Then the retention job of sql/004 drops
the rest, all tables in one go.

The history spans two UTC days (the day before yesterday 20:00 to yesterday
04:00): two chunks per hypertable, written through the project's write path,
in batches whose rows span both chunks.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest
import pytest_asyncio

from tests.timescale.compare import dashboard_answers, projection_problems, query_answers
from tests.timescale.conftest import MigratedServer, run_cli
from tests.timescale.history import History, build_history, sample_frames, write_history
from tracker.adapters.postgres import connect_pool
from tracker.config import Settings

pytestmark = pytest.mark.integration  # also needs the local PostgreSQL

TABLES = {
    "frame_events": "frame_timestamp",
    "frame_metadata": "frame_timestamp",
    "processing_stages": "frame_timestamp",
    "frame_stats_hourly": "hour",
    "performance_stats": "hour",
    "failure_stats": "hour",
    "stage_camera_stats": "hour",
}
HOURS = 96.0


@dataclass
class TwoDays:
    history: History
    harness: Settings
    plain: Settings
    first_day: date
    second_day: date


def _midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


@pytest_asyncio.fixture(scope="module")
async def two_days(fresh_timescale: MigratedServer, plain_postgres: Settings) -> TwoDays:
    today = datetime.now(UTC).date()
    start = _midnight(today) - timedelta(days=2) + timedelta(hours=20)
    history = build_history(start=start, cameras=3, frames_per_camera=40, interval_s=720, seed=21)
    first, second = today - timedelta(days=2), today - timedelta(days=1)
    assert history.days == {first, second}
    harness = fresh_timescale.server.settings()
    for settings in (harness, plain_postgres):
        pool = await connect_pool(settings.database, min_size=1, max_size=1)
        try:
            await write_history(pool, history)
        finally:
            await pool.close()
    return TwoDays(history, harness, plain_postgres, first, second)


async def _per_day(conn: asyncpg.Connection) -> dict[str, dict[str, int]]:
    out = {}
    for table, col in TABLES.items():
        rows = await conn.fetch(
            f"SELECT ({col} AT TIME ZONE 'UTC')::date AS day, count(*) AS n "
            f"FROM {table} GROUP BY 1 ORDER BY 1"
        )
        out[table] = {r["day"].isoformat(): r["n"] for r in rows}
    return out


async def test_retention_drops_whole_days_and_the_projections_stay_consistent(two_days: TwoDays) -> None:
    first, second = two_days.first_day.isoformat(), two_days.second_day.isoformat()
    before = {}
    for name, settings in (("timescaledb", two_days.harness), ("postgresql", two_days.plain)):
        conn = await asyncpg.connect(settings.database.url.get(), ssl=False)
        try:
            before[name] = await _per_day(conn)
            assert await projection_problems(conn) == []
        finally:
            await conn.close()
    assert before["timescaledb"] == before["postgresql"]
    assert all(set(days) == {first, second} for days in before["timescaledb"].values())

    # A cut-off inside the second day: rounded down to its midnight, so the
    # first day goes, whole, and the second stays, whole.
    now = datetime.now(UTC)
    hours = math.ceil((now - (_midnight(two_days.second_day) + timedelta(hours=12))).total_seconds() / 3600)
    dropped = {}
    for name, settings in (("timescaledb", two_days.harness), ("postgresql", two_days.plain)):
        out = json.loads(run_cli(settings, "retention", "--older-than", f"{hours}h", "--json").stdout)
        dropped[name] = out["dropped"]
    print("dropped:", json.dumps(dropped, indent=1))
    ts_tables = sorted(d["table_name"] for d in dropped["timescaledb"])
    assert ts_tables == sorted(
        [
            "frame_events",
            "frame_metadata_g1",
            "processing_stages_g1",
            "frame_stats_hourly_g1",
            "performance_stats_g1",
            "failure_stats_g1",
            "stage_camera_stats_g1",
        ]
    ), dropped
    assert all(d["dropped"].startswith("_timescaledb_internal.") for d in dropped["timescaledb"])  # chunks
    # Partitions (plain PostgreSQL's are made ahead, one per day, empty or not; a
    # hypertable has chunks only where it has rows: the anomalies found nothing here).
    assert sorted(d["table_name"] for d in dropped["postgresql"]) == sorted([*ts_tables, "anomalies_g1"])

    after = {}
    for name, settings in (("timescaledb", two_days.harness), ("postgresql", two_days.plain)):
        conn = await asyncpg.connect(settings.database.url.get(), ssl=False)
        try:
            after[name] = await _per_day(conn)
            assert await projection_problems(conn) == [], name
        finally:
            await conn.close()
    assert after["timescaledb"] == after["postgresql"]
    assert after["timescaledb"] == {t: {second: days[second]} for t, days in before["timescaledb"].items()}

    # What is left answers the same on both; the dropped frames are gone from both.
    frames = sample_frames(two_days.history, every=5)
    ts = await query_answers(two_days.harness, frames, HOURS)
    pg = await query_answers(two_days.plain, frames, HOURS)
    assert ts == pg
    assert {f for f, j in ts["journeys"].items() if j == "not found"} == {
        f for f in frames if first.replace("-", "") in f
    }
    now = datetime.now(UTC)
    window = (now - timedelta(hours=HOURS), now + timedelta(hours=1))
    answers = []
    for settings in (two_days.harness, two_days.plain):
        conn = await asyncpg.connect(settings.database.url.get(), ssl=False)
        try:
            frame = await conn.fetchval("SELECT frame_id FROM frame_metadata ORDER BY frame_id LIMIT 1")
            answers.append(await dashboard_answers(conn, {"first": frame}, *window))
        finally:
            await conn.close()
    assert answers[0] == answers[1]


async def test_the_retention_job_drops_every_table_in_one_go(two_days: TwoDays) -> None:
    """sql/004's job, run by hand (no background workers in the harness), with
    a drop_after that reaches today's midnight: nothing older is left anywhere."""
    conn = await asyncpg.connect(two_days.harness.database.url.get(), ssl=False)
    try:
        job = await conn.fetchval(
            "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = 'tracker_retention_job'"
        )
        await conn.execute('SELECT alter_job($1, config => \'{"drop_after": "1 second"}\'::jsonb)', job)
        await conn.execute(f"CALL run_job({int(job)})")
        assert await _per_day(conn) == {t: {} for t in TABLES}
        assert await conn.fetchval("SELECT count(*) FROM timescaledb_information.chunks") == 0
        assert await projection_problems(conn) == []
        await conn.execute('SELECT alter_job($1, config => \'{"drop_after": "90 days"}\'::jsonb)', job)
    finally:
        await conn.close()
