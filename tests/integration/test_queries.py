"""FrameTrackingQueries and the query CLI against a real, filled database."""

from __future__ import annotations

import json
import re

import asyncpg
import pytest
import pytest_asyncio

from tests.integration.helpers import consume_until_idle, project_until_idle, publish_simulation, run_cli
from tracker.config import Settings
from tracker.errors import InvalidQuery, NotFound
from tracker.queries import FrameTrackingQueries


@pytest_asyncio.fixture
async def filled(settings: Settings):  # type: ignore[no-untyped-def]
    await publish_simulation(
        settings, cameras=3, fps=20, duration_s=4, seed=51, failure_rate=0.15, slow_rate=0.05
    )
    await consume_until_idle(settings)
    await project_until_idle(settings)
    q = await FrameTrackingQueries.connect(settings)
    yield q
    await q.close()


async def _frame(db: asyncpg.Connection, state: str) -> str:
    return await db.fetchval(
        "SELECT frame_id FROM frame_metadata WHERE state = $1 ORDER BY frame_id LIMIT 1", state
    )


async def test_journey_of_a_completed_and_a_failed_frame(filled: FrameTrackingQueries, db) -> None:  # type: ignore[no-untyped-def]
    done = await filled.get_frame_journey(await _frame(db, "completed"))
    assert done["state"] == "completed" and done["error"] is None
    types = [e["event_type"] for e in done["events"]]
    assert types[0] == "FrameCaptured" and types[-1] == "ProcessingCompleted"
    assert done["events"][0]["since_previous_ms"] is None
    assert all(e["since_previous_ms"] >= 0 for e in done["events"][1:])
    assert {s["stage"] for s in done["stages"]} == {"detect", "analyze", "notify"}
    assert done["trace"]["url"] == f"http://localhost:16686/trace/{done['trace']['trace_id']}"
    assert len(done["traces"]) == len({e["trace_id"] for e in done["events"]})
    failed = await filled.get_frame_journey(await _frame(db, "failed"))
    assert failed["state"] == "failed" and failed["error"]["type"] and failed["error"]["stage"]
    assert any(s["status"] == "failed" for s in failed["stages"])
    assert failed["events"][-1]["event_type"] == "ProcessingFailed"


async def test_not_found_is_distinct_from_errors(filled: FrameTrackingQueries) -> None:
    with pytest.raises(NotFound):
        await filled.get_frame_journey("no-such-frame")
    with pytest.raises(NotFound):
        await filled.get_frame_journey("x' OR '1'='1")  # parameterised: just a strange id
    for bad in ("", "a\nb", "x" * 300):
        with pytest.raises(InvalidQuery):
            await filled.get_frame_journey(bad)


async def test_slow_failures_and_stats_agree_with_the_tables(filled: FrameTrackingQueries, db) -> None:  # type: ignore[no-untyped-def]
    slow = await filled.find_slow_frames(200, 1)
    expected = await db.fetchval("SELECT count(*) FROM frame_metadata WHERE total_processing_time_ms >= 200")
    assert len(slow) == min(expected, 100) and expected > 0
    times = [r["total_processing_time_ms"] for r in slow]
    assert times == sorted(times, reverse=True)
    cam = slow[0]["camera_id"]
    assert all(r["camera_id"] == cam for r in await filled.find_slow_frames(200, 1, camera_id=cam))
    assert len(await filled.find_slow_frames(0, 1, limit=5)) == 5

    fa = await filled.get_failure_analysis(24)
    n_failed = await db.fetchval("SELECT count(*) FROM frame_metadata WHERE state = 'failed'")
    assert fa["failed_frames"] == n_failed > 0 and fa["frames"] == 240
    per_camera = dict(await db.fetch("SELECT camera_id, count(*) FROM frame_metadata GROUP BY 1"))
    for row in fa["by_stage_error_camera"]:
        assert row["sample_frame_id"] and 0 < row["rate"] <= 1
        # The rollup's frame counts are the tables' own.
        assert row["rate"] == round(row["failures"] / per_camera[row["camera_id"]], 6)
        assert row["first_seen"] <= row["last_seen"]
    assert fa["since"].endswith(":00:00Z")
    assert sum(r["failures"] for r in fa["by_stage_error_camera"]) == n_failed

    cams = await filled.get_camera_stats(1)
    assert {c["camera_id"] for c in cams} == {"cam-001", "cam-002", "cam-003"}
    assert sum(c["frames"] for c in cams) == 240
    for c in cams:
        assert c["processing_time_p50_ms"] <= c["processing_time_p95_ms"] <= c["processing_time_p99_ms"]
        true_p50 = await db.fetchval(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY total_processing_time_ms) "
            "FROM frame_metadata WHERE camera_id = $1 AND total_processing_time_ms IS NOT NULL",
            c["camera_id"],
        )
        # Bucket error: the estimate lies in the true value's bucket or a neighbour.
        assert abs(c["processing_time_p50_ms"] - true_p50) <= max(50.0, true_p50 * 0.5)
    stages = await filled.get_stage_performance(1)
    assert {s["stage"] for s in stages} == {"detect", "analyze", "notify"}
    runs = await db.fetchval("SELECT count(*) FROM processing_stages")
    assert sum(s["runs"] for s in stages) == runs


async def test_plans_use_indexes_or_rollups_never_a_scan_of_frame_events(filled, db) -> None:  # type: ignore[no-untyped-def]
    from tracker.queries import statements as qm

    await db.execute("SET enable_seqscan = off")  # any remaining Seq Scan has no index to use
    from datetime import UTC, datetime, timedelta

    since = datetime.now(UTC) - timedelta(hours=1)
    plans = {}
    for name, sql, args in [
        ("journey_events", qm.JOURNEY_EVENTS, ["f"]),
        ("journey_frame", qm.JOURNEY_FRAME, ["f"]),
        ("journey_stages", qm.JOURNEY_STAGES, ["f"]),
        ("slow", qm.SLOW, [since, 100.0, None, 10]),
        ("failures", qm.FAILURES, [since]),
        ("failure_frames", qm.FRAMES_PER_CAMERA, [since]),
        ("stage_failures", qm.STAGE_FAILURES, [since]),
        ("camera_stats", qm.CAMERA_STATS, [since]),
        ("stage_stats", qm.STAGE_STATS, [since]),
        ("search_prefix", qm.SEARCH_PREFIX, ["cam-001-2", "cam-001-3", 50]),
        ("neighbour_ids", qm.NEIGHBOUR_IDS, ["cam-001-2", 5]),
        ("search_camera", qm.SEARCH_CAMERA, ["cam-001", since, since + timedelta(hours=1), 50]),
        ("recent_failed", qm.RECENT_FAILED, [since, 50]),
        ("baseline_camera", qm.BASELINE_CAMERA, ["cam-001", since]),
        ("baseline_camera_stages", qm.BASELINE_CAMERA_STAGES, ["cam-001", since]),
        ("baseline_stages", qm.BASELINE_STAGES, [since]),
    ]:
        rows = await db.fetch("EXPLAIN " + sql, *args)
        plans[name] = "\n".join(r[0] for r in rows)
    assert "Index" in plans["journey_events"] and "Seq Scan" not in plans["journey_events"]
    for name, plan in plans.items():
        assert "Seq Scan on frame_events" not in plan, (name, plan)
        if name != "journey_events":
            assert "frame_events" not in plan, (name, plan)
    assert "frame_stats_hourly" in plans["camera_stats"] and "performance_stats" in plans["stage_stats"]
    assert "stage_camera_stats" in plans["baseline_camera_stages"]
    assert "Index" in plans["baseline_camera_stages"], plans["baseline_camera_stages"]
    # Prefix search and close ids: one range of the byte-ordered index of sql/006.
    # (Partitions name their copies of it themselves: the condition shows it is the one.)
    for name in ("search_prefix", "neighbour_ids"):
        assert re.search(r"Index Cond: \(+frame_id ~", plans[name]), (name, plans[name])


async def test_cli_queries_tables_json_and_errors(filled, settings: Settings, db) -> None:  # type: ignore[no-untyped-def]
    fid = await _frame(db, "failed")
    out = run_cli(settings, "journey", fid)
    assert "timeline:" in out.stdout and "ProcessingFailed" in out.stdout and "trace:" in out.stdout
    j = json.loads(run_cli(settings, "journey", fid, "--json").stdout)
    assert j["frame_id"] == fid and j["state"] == "failed"
    assert json.loads(run_cli(settings, "slow", "--threshold-ms", "200", "--json").stdout)
    assert "failed" in run_cli(settings, "failures", "--hours", "24").stdout
    stats = json.loads(run_cli(settings, "stats", "--json").stdout)
    assert len(stats["cameras"]) == 3 and len(stats["stages"]) == 3
    status = json.loads(run_cli(settings, "status", "--json").stdout)
    assert status["projection"]["lag"] == 0 and status["event_store"]["lag"] == 0
    assert status["dlq_records"] == 0 and status["projection_generation"] == 1
    before = await db.fetchval("SELECT count(*) FROM frame_events")
    for args, code in [
        (["journey", "no-such-frame"], 3),
        (["journey", "bad\nid"], 2),
        (["journey", "x" * 300], 2),
        (["slow", "--hours", "-1"], 2),
        (["slow", "--hours", "abc"], 2),
        (["slow", "--camera", "cam-404"], 2),
        (["slow", "--threshold-ms", "-5"], 2),
        (["failures", "--hours", "0"], 2),
        (["stats", "--hours", "nan"], 2),
        (["journey", "'; DROP TABLE frame_events; --"], 3),
        (["retention", "--older-than", "soon"], 2),
        (["simulate", "--failure-rate", "2"], 2),
        (["nonsense"], 2),
    ]:
        p = run_cli(settings, *args, check=False)
        assert p.returncode == code, (args, p.returncode, p.stderr)
        assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, (args, p.stderr)
    assert await db.fetchval("SELECT count(*) FROM frame_events") == before


async def test_retention_drops_whole_days_everywhere(settings: Settings, db) -> None:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime, timedelta

    old = datetime.now(UTC) - timedelta(days=10)
    await publish_simulation(settings, cameras=2, fps=10, duration_s=2, seed=61, start=old)
    await publish_simulation(settings, cameras=2, fps=10, duration_s=2, seed=62)
    await consume_until_idle(settings)
    await project_until_idle(settings)
    assert await db.fetchval("SELECT count(DISTINCT frame_timestamp::date) FROM frame_metadata") == 2
    out = json.loads(run_cli(settings, "retention", "--older-than", "5d", "--json").stdout)
    tables = {d["table_name"] for d in out["dropped"]}
    assert {
        "frame_events",
        "frame_metadata_g1",
        "processing_stages_g1",
        "frame_stats_hourly_g1",
        "performance_stats_g1",
        "failure_stats_g1",
        "stage_camera_stats_g1",
    } <= tables
    cutoff = datetime.now(UTC) - timedelta(days=5)
    for t, col in [
        ("frame_events", "frame_timestamp"),
        ("frame_metadata", "frame_timestamp"),
        ("processing_stages", "frame_timestamp"),
        ("frame_stats_hourly", "hour"),
        ("performance_stats", "hour"),
        ("stage_camera_stats", "hour"),
    ]:
        assert await db.fetchval(f"SELECT count(*) FROM {t} WHERE {col} < $1", cutoff) == 0, t
        assert await db.fetchval(f"SELECT count(*) FROM {t}") > 0, t
    assert await db.fetchval("SELECT count(*) FROM failure_stats WHERE hour < $1", cutoff) == 0
    # What is left is still a consistent projection of what is left.
    from tests.integration.helpers import assert_same_projection, projection_vs_store

    assert_same_projection(*(await projection_vs_store(settings)))
