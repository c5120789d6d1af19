"""The migrations in TimescaleDB mode, on a real TimescaleDB build (the harness)."""

from __future__ import annotations

import json
from datetime import timedelta

import asyncpg

from tests.timescale.conftest import MigratedServer, run_cli
from tracker.adapters.postgres import load_migrations

TIME_PARTITIONED = {
    "frame_events": "frame_timestamp",
    "frame_metadata_g1": "frame_timestamp",
    "processing_stages_g1": "frame_timestamp",
    "frame_stats_hourly_g1": "hour",
    "performance_stats_g1": "hour",
    "failure_stats_g1": "hour",
    "stage_camera_stats_g1": "hour",
    "anomalies_g1": "started_at",
}


async def test_the_harness_runs_timescaledb_on_postgresql_17(timescale: MigratedServer) -> None:
    conn = await asyncpg.connect(timescale.server.dsn, ssl=False)
    try:
        ext = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
        num = int(await conn.fetchval("SHOW server_version_num"))
        version = await conn.fetchval("SELECT version()")
    finally:
        await conn.close()
    print(f"TimescaleDB {ext} on {version}")
    major, minor = (int(x) for x in ext.split(".")[:2])
    assert (major, minor) >= (2, 17), ext  # what compose/docker-compose.yml runs, or newer
    assert num >= 170000, version


async def test_migrations_run_in_timescaledb_mode_and_twice_is_a_noop(timescale: MigratedServer) -> None:
    first = timescale.first_migration
    assert first.timescaledb
    assert timescale.warnings == []  # e.g. TimescaleDB's advice on compression settings
    assert first.applied == [f"{m.version:03d}_{m.name}" for m in load_migrations()]
    settings = timescale.server.settings()
    # `tracker migrate`, the command, twice more: nothing left to do.
    for _ in range(2):
        out = json.loads(run_cli(settings, "migrate", "--json").stdout)
        assert out == {"applied": [], "already_applied": len(first.applied), "timescaledb": True}


async def test_every_time_partitioned_table_is_a_hypertable(timescale: MigratedServer) -> None:
    conn = await asyncpg.connect(timescale.server.dsn, ssl=False)
    try:
        listed = {
            r[0]: r[1]
            for r in await conn.fetch("SELECT table_name, time_column FROM tracker_partitioned_tables")
        }
        assert listed == TIME_PARTITIONED
        dims = {
            r["hypertable_name"]: (r["column_name"], r["time_interval"])
            for r in await conn.fetch(
                "SELECT hypertable_name, column_name, time_interval FROM timescaledb_information.dimensions "
                "WHERE hypertable_schema = 'public'"
            )
        }
        assert dims == {t: (c, timedelta(days=1)) for t, c in TIME_PARTITIONED.items()}
        # ... and none is natively partitioned; the rollups are tables the
        # worker keeps exact (sql/002), not continuous aggregates.
        assert await conn.fetchval("SELECT count(*) FROM pg_partitioned_table") == 0
        assert await conn.fetchval("SELECT count(*) FROM timescaledb_information.continuous_aggregates") == 0
        for view, table in [
            ("frame_metadata", "frame_metadata_g1"),
            ("processing_stages", "processing_stages_g1"),
            ("frame_stats_hourly", "frame_stats_hourly_g1"),
            ("performance_stats", "performance_stats_g1"),
            ("failure_stats", "failure_stats_g1"),
            ("stage_camera_stats", "stage_camera_stats_g1"),
        ]:
            assert table in await conn.fetchval("SELECT pg_get_viewdef($1::regclass)", view)
        # Partition maintenance is TimescaleDB's: a no-op here.
        assert (
            await conn.fetchval(
                "SELECT tracker_ensure_partitions('frame_events', now(), now() + interval '3 days')"
            )
            == 0
        )

        # A rebuild's generation is made of hypertables too, and goes away whole.
        await conn.execute("SELECT tracker_create_frames_generation(2)")
        hypers = {
            r[0] for r in await conn.fetch("SELECT hypertable_name FROM timescaledb_information.hypertables")
        }
        assert {
            "frame_metadata_g2",
            "processing_stages_g2",
            "frame_stats_hourly_g2",
            "performance_stats_g2",
            "failure_stats_g2",
            "stage_camera_stats_g2",
        } <= hypers
        await conn.execute("SELECT tracker_drop_frames_generation(2)")
        hypers = {
            r[0] for r in await conn.fetch("SELECT hypertable_name FROM timescaledb_information.hypertables")
        }
        assert hypers == set(TIME_PARTITIONED)
        assert {r[0] for r in await conn.fetch("SELECT table_name FROM tracker_partitioned_tables")} == set(
            TIME_PARTITIONED
        )
    finally:
        await conn.close()


async def test_compression_and_retention_policies(timescale: MigratedServer) -> None:
    conn = await asyncpg.connect(timescale.server.dsn, ssl=False)
    try:
        compressed = {
            r[0]
            for r in await conn.fetch(
                "SELECT hypertable_name FROM timescaledb_information.hypertables WHERE compression_enabled"
            )
        }
        assert compressed == {"frame_events"}
        settings = {
            r["attname"]: (r["segmentby_column_index"], r["orderby_column_index"], r["orderby_asc"])
            for r in await conn.fetch(
                "SELECT attname, segmentby_column_index, orderby_column_index, orderby_asc "
                "FROM timescaledb_information.compression_settings WHERE hypertable_name = 'frame_events'"
            )
        }
        assert settings == {
            "camera_id": (1, None, None),
            "frame_timestamp": (None, 1, True),
            "event_id": (None, 2, True),
        }

        jobs = {
            r["proc_name"]: r
            for r in await conn.fetch(
                "SELECT job_id, proc_name, hypertable_name, schedule_interval, "
                "config::text AS config, scheduled "
                "FROM timescaledb_information.jobs WHERE proc_name IN "
                "('policy_compression', 'policy_retention', 'tracker_retention_job')"
            )
        }
        assert set(jobs) == {"policy_compression", "tracker_retention_job"}
        comp = jobs["policy_compression"]
        assert comp["hypertable_name"] == "frame_events" and comp["scheduled"]
        assert json.loads(comp["config"])["compress_after"] == "7 days"
        ret = jobs["tracker_retention_job"]
        assert json.loads(ret["config"]) == {"drop_after": "90 days"}
        assert ret["schedule_interval"] == timedelta(days=1) and ret["scheduled"]

        # Background workers do not run in the harness: run each job by hand.
        # Nothing is old enough yet, so both succeed doing nothing (the
        # retention test runs the retention job on data).
        for job in jobs.values():
            await conn.execute(f"CALL run_job({int(job['job_id'])})")
    finally:
        await conn.close()


async def test_the_query_role_exists_and_reads(timescale: MigratedServer) -> None:
    conn = await asyncpg.connect(timescale.server.dsn, ssl=False)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = 'tracker_read'") == 1
        granted = await conn.fetchval(
            "SELECT has_table_privilege('tracker_read', 'frame_events', 'SELECT') "
            "AND has_table_privilege('tracker_read', 'frame_metadata', 'SELECT') "
            "AND NOT has_table_privilege('tracker_read', 'frame_events', 'INSERT')"
        )
        assert granted
        assert await conn.fetchval(
            "SELECT has_database_privilege('tracker_read', current_database(), 'CONNECT')"
        )
    finally:
        await conn.close()


async def test_catalog_privileges_are_as_on_postgresql(timescale: MigratedServer) -> None:
    """The harness's own check of a PGlite quirk it works around (server.mjs):
    every catalog whose ACL lets PUBLIC read it is readable by tracker_read."""
    conn = await asyncpg.connect(timescale.server.dsn, ssl=False)
    try:
        refused = await conn.fetch(
            "SELECT c.relname FROM pg_class c "
            "WHERE c.relnamespace IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace) "
            "AND c.relkind IN ('r', 'v') AND aclcontains(c.relacl, makeaclitem(0, 10, 'SELECT', false)) "
            "AND NOT has_table_privilege('tracker_read', c.oid, 'SELECT')"
        )
    finally:
        await conn.close()
    assert [r[0] for r in refused] == []
