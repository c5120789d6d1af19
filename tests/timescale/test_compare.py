"""The same event history on TimescaleDB (the harness) and on plain PostgreSQL:
every query of FrameTrackingQueries and every SQL statement of the Grafana
dashboards answers the same, also once the events are in compressed chunks.

The history (300 frames, 3 cameras, about 3000 events, failures, retries,
slow stages and lifecycle anomalies) lies within one UTC day, yesterday, and
is written on both through the project's own write path:
PostgresEventStore.append (COPY into a temporary staging table, INSERT ..
SELECT) and FramesProjectionStore.apply (COPY into temporary staging tables,
upserts, executemany), batch by batch with checkpoints. Nothing is written row
by row: the harness takes COPY (see server.mjs on how).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import pytest_asyncio

from tests.timescale.compare import dashboard_answers, dashboard_files, query_answers
from tests.timescale.conftest import MigratedServer
from tests.timescale.history import (
    History,
    WriteStats,
    build_history,
    late_history,
    sample_frames,
    write_events,
    write_history,
    write_projections,
)
from tracker.adapters.postgres import connect_pool
from tracker.config import Settings

pytestmark = pytest.mark.integration  # also needs the local PostgreSQL

HOURS = 48.0  # query window: covers yesterday whenever today the test runs
TABLES = (
    "frame_events",
    "frame_metadata",
    "processing_stages",
    "frame_stats_hourly",
    "performance_stats",
    "failure_stats",
    "stage_camera_stats",
)


@dataclass
class Filled:
    history: History
    harness: Settings
    plain: Settings
    stats: dict[str, WriteStats]


def yesterday_at(hour: int) -> datetime:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=1) + timedelta(hours=hour)


@pytest_asyncio.fixture(scope="module")
async def filled(timescale: MigratedServer, plain_postgres: Settings) -> Filled:
    history = build_history(start=yesterday_at(8), cameras=3, frames_per_camera=100, interval_s=120)
    assert len(history.days) == 1
    harness = timescale.server.settings()
    stats = {}
    for name, settings in (("timescaledb", harness), ("postgresql", plain_postgres)):
        pool = await connect_pool(settings.database, min_size=1, max_size=1)
        try:
            stats[name] = await write_history(pool, history)
        finally:
            await pool.close()
    return Filled(history, harness, plain_postgres, stats)


async def _counts(settings: Settings) -> dict[str, int]:
    conn = await asyncpg.connect(settings.database.url.get(), ssl=False)
    try:
        return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}
    finally:
        await conn.close()


async def test_the_history_is_written_the_same_through_the_write_path(filled: Filled) -> None:
    h, ts, pg = filled.history, filled.stats["timescaledb"], filled.stats["postgresql"]
    assert ts == pg
    assert ts.stored == h.events and ts.duplicates == len(h.batches[0]) and ts.flagged > 0
    assert len(h.frame_ids) == 300 and h.failed_frame_ids
    assert await _counts(filled.harness) == await _counts(filled.plain)
    conn = await asyncpg.connect(filled.harness.database.url.get(), ssl=False)
    try:
        chunks = {
            r[0]: r[1]
            for r in await conn.fetch(
                "SELECT hypertable_name, count(*) FROM timescaledb_information.chunks GROUP BY 1"
            )
        }
    finally:
        await conn.close()
    # One UTC day: one chunk in each hypertable.
    assert chunks == dict.fromkeys(
        [
            "frame_events",
            "frame_metadata_g1",
            "processing_stages_g1",
            "frame_stats_hourly_g1",
            "performance_stats_g1",
            "failure_stats_g1",
            "stage_camera_stats_g1",
        ],
        1,
    )


async def test_every_query_answers_the_same(filled: Filled) -> None:
    frames = sample_frames(filled.history)
    ts = await query_answers(filled.harness, frames, HOURS)
    pg = await query_answers(filled.plain, frames, HOURS)
    print("query session on TimescaleDB:", ts["session"], "on PostgreSQL:", pg["session"])
    # The query pool reads as tracker_read, read-only, on the harness as well
    # (SET SESSION ROLE in the pool's init works there).
    assert ts["session"] == ts["session_at_the_end"] == {"role": "tracker_read", "read_only": "on"}
    assert ts == pg
    assert ts["not_found"] and ts["failures"]["frames"] == 300 and ts["failures"]["failed_frames"] > 0
    assert len(ts["journeys"]) == len(frames) and any(j["anomalies"] for j in ts["journeys"].values())


async def _dashboards(settings: Settings, frames: dict[str, str]) -> dict[str, object]:
    now = datetime.now(UTC)
    conn = await asyncpg.connect(settings.database.url.get(), ssl=False)
    try:
        return await dashboard_answers(conn, frames, now - timedelta(hours=HOURS), now + timedelta(hours=1))
    finally:
        await conn.close()


async def _frames_by_state(settings: Settings) -> dict[str, str]:
    conn = await asyncpg.connect(settings.database.url.get())
    try:
        return {
            state: await conn.fetchval(
                "SELECT frame_id FROM frame_metadata WHERE state = $1 ORDER BY frame_id LIMIT 1", state
            )
            for state in ("completed", "failed", "conflicted")
        }
    finally:
        await conn.close()


async def test_every_dashboard_statement_answers_the_same(filled: Filled) -> None:
    assert dashboard_files(), "no Grafana dashboards in compose/grafana/dashboards"
    frames = await _frames_by_state(filled.plain)
    assert all(frames.values()), frames
    ts = await _dashboards(filled.harness, frames)
    pg = await _dashboards(filled.plain, frames)
    assert set(ts) == set(pg)
    errors = {k: v for k, v in pg.items() if isinstance(v, str)}
    assert not errors, errors  # the dashboards' own test would say so too
    for key in sorted(pg):
        assert ts[key] == pg[key], key
    assert sum(1 for v in pg.values() if v) >= len(pg) - 2, "most statements should return rows"


async def test_compressed_chunks_answer_the_same(filled: Filled) -> None:
    """The compression policy's job (run by hand: no background workers in the
    harness) compresses the day; a redelivered batch and a late event still go
    in (the event store's INSERT .. ON CONFLICT DO NOTHING on a compressed
    chunk), and every answer is still the plain PostgreSQL one."""
    conn = await asyncpg.connect(filled.harness.database.url.get(), ssl=False)
    try:
        job = await conn.fetchval(
            "SELECT job_id FROM timescaledb_information.jobs "
            "WHERE proc_name = 'policy_compression' AND hypertable_name = 'frame_events'"
        )
        set_after = (
            "SELECT alter_job(job_id, config => jsonb_set(config, '{compress_after}', to_jsonb($2::text))) "
            "FROM timescaledb_information.jobs WHERE job_id = $1"
        )
        await conn.execute(set_after, job, "1 second")
        try:
            await conn.execute(f"CALL run_job({int(job)})")
        finally:
            await conn.execute(set_after, job, "7 days")
        compressed = await conn.fetch(
            "SELECT chunk_name, is_compressed FROM timescaledb_information.chunks "
            "WHERE hypertable_name = 'frame_events'"
        )
    finally:
        await conn.close()
    assert compressed and all(r["is_compressed"] for r in compressed), compressed

    late = late_history(filled.history)
    for settings in (filled.harness, filled.plain):
        pool = await connect_pool(settings.database, min_size=1, max_size=1)
        try:
            # The first batch once more (write_events then redelivers it again).
            redelivery = History([filled.history.batches[0]], [], [], [])
            again = WriteStats()
            await write_events(pool, redelivery, again)
            assert again.stored == 0 and again.duplicates == 2 * len(filled.history.batches[0])
            stats = WriteStats()
            await write_events(pool, late, stats)
            await write_projections(pool, late, stats, checkpoints=False)
            assert stats.stored == 1 and stats.flagged >= 1
        finally:
            await pool.close()

    frames = sorted({*sample_frames(filled.history, every=25), *late.frame_ids})
    ts = await query_answers(filled.harness, frames, HOURS)
    pg = await query_answers(filled.plain, frames, HOURS)
    assert ts == pg
    journey = ts["journeys"][late.frame_ids[0]]
    assert journey["events"][-1]["lifecycle_flag"] == "after_terminal"
    by_state = await _frames_by_state(filled.plain)
    assert await _dashboards(filled.harness, by_state) == await _dashboards(filled.plain, by_state)


async def test_004_does_nothing_on_plain_postgresql(plain_postgres: Settings) -> None:
    conn = await asyncpg.connect(plain_postgres.database.url.get())
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations WHERE version = 4") == 1
        assert await conn.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'") == 0
        assert await conn.fetchval("SELECT to_regprocedure('tracker_retention_job(integer, jsonb)')") is None
    finally:
        await conn.close()


@pytest.fixture(autouse=True)
def _harness_alive(request: pytest.FixtureRequest) -> None:
    """A harness that died (a WebAssembly trap) says so, with its stderr."""
    if "filled" in request.fixturenames:
        request.getfixturevalue("timescale").server.check_alive()
