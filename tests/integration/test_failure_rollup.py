"""The failure rollup (sql/005, projections.rollups) against the real pipeline:
the failure analysis it answers equals one computed from ``frame_events``
directly, also after events that move failures between its groups; and the
migration fills it for the generations that exist when it runs."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from projections.columns import (
    FAILURE_COLS,
    failure_from_db,
)
from projections.fold import ProjEvent, failure_totals
from projections.store import frame_from_db, stage_from_db
from tests.integration.helpers import (
    assert_same_projection,
    consume_until_idle,
    empty_database,
    migrate_also,
    migrate_until,
    project_until_idle,
    projection_vs_store,
    publish_simulation,
    store_generation,
)
from tests.support.projection_store_contract import comparable_failures, failure_history
from tracker import events as ev
from tracker.config import Settings
from tracker.publisher import FramePublisher
from tracker.queries import FrameTrackingQueries, shaping

# The failure analysis from frame_events alone, by the projection's rules: a
# frame's failure is its earliest ProcessingFailed by (occurred_at, event_id),
# its trace the latest event's that has one; a stage run's failure is its
# earliest StageFailed, at the time of its earliest StageCompleted or
# StageFailed; the sample of a group is its latest failure (ties: the greater
# frame id by code point, then capture time, then attempt).
FRAME_FAILURES_FROM_EVENTS = """
WITH ev AS (SELECT * FROM frame_events WHERE frame_timestamp >= $1),
failed AS (
    SELECT DISTINCT ON (frame_id, frame_timestamp) frame_id, frame_timestamp,
           coalesce(stage, '(none)') AS stage, error_type, occurred_at AS at
    FROM ev WHERE event_type = 'ProcessingFailed'
    ORDER BY frame_id, frame_timestamp, occurred_at, event_id),
frames AS (
    SELECT frame_id, frame_timestamp, min(camera_id COLLATE "C") AS camera_id,
           (array_agg(trace_id ORDER BY occurred_at DESC, event_id DESC)
               FILTER (WHERE trace_id IS NOT NULL))[1] AS trace_id
    FROM ev GROUP BY 1, 2)
SELECT f.stage, f.error_type, fr.camera_id, count(*) AS failures,
       min(f.at) AS first_seen, max(f.at) AS last_seen,
       (array_agg(f.frame_id ORDER BY f.at DESC, f.frame_id COLLATE "C" DESC, f.frame_timestamp DESC))[1]
           AS sample_frame_id,
       (array_agg(fr.trace_id ORDER BY f.at DESC, f.frame_id COLLATE "C" DESC, f.frame_timestamp DESC))[1]
           AS sample_trace_id
FROM failed f JOIN frames fr USING (frame_id, frame_timestamp)
GROUP BY 1, 2, 3
ORDER BY failures DESC, stage, error_type, camera_id
"""
STAGE_FAILURES_FROM_EVENTS = """
WITH runs AS (
    SELECT frame_id, frame_timestamp, stage, attempt,
           (array_agg(error_type ORDER BY occurred_at, event_id)
               FILTER (WHERE event_type = 'StageFailed'))[1] AS error_type,
           bool_or(event_type = 'StageFailed') AS failed,
           (array_agg(occurred_at ORDER BY occurred_at, event_id))[1] AS at
    FROM frame_events
    WHERE frame_timestamp >= $1 AND event_type IN ('StageCompleted', 'StageFailed')
    GROUP BY 1, 2, 3, 4)
SELECT stage, error_type, count(*) AS failures, min(at) AS first_seen, max(at) AS last_seen,
       (array_agg(frame_id ORDER BY at DESC, frame_id COLLATE "C" DESC, frame_timestamp DESC,
                  attempt DESC))[1] AS sample_frame_id
FROM runs WHERE failed
GROUP BY 1, 2 ORDER BY failures DESC, stage, error_type
"""
FRAMES_FROM_EVENTS = """
SELECT camera_id, count(DISTINCT (frame_id, frame_timestamp)) AS frames
FROM frame_events WHERE frame_timestamp >= $1 GROUP BY 1
"""


async def _from_events(settings: Settings, q: FrameTrackingQueries, hours: float) -> dict[str, Any]:
    since = shaping.hour_floor(datetime.now(UTC) - timedelta(hours=hours))
    conn = await asyncpg.connect(settings.database.url.get())
    try:
        rows = await conn.fetch(FRAME_FAILURES_FROM_EVENTS, since)
        stage_rows = await conn.fetch(STAGE_FAILURES_FROM_EVENTS, since)
        per_camera = {r["camera_id"]: int(r["frames"]) for r in await conn.fetch(FRAMES_FROM_EVENTS, since)}
    finally:
        await conn.close()
    return shaping.failure_analysis(hours, since, rows, stage_rows, per_camera, q.trace_link)


async def _rereport(settings: Settings) -> int:
    """Publish what moves failures in the rollup: for failed frames, an earlier
    ProcessingFailed (another stage and error type, or the same ones), a stage
    event after the failure (another trace); for failed stage runs, an earlier
    completion (conflicted) or an earlier failure of another type."""
    conn = await asyncpg.connect(settings.database.url.get())
    try:
        frames = await conn.fetch(
            "SELECT frame_id, camera_id, frame_timestamp, occurred_at, stage FROM frame_events "
            "WHERE event_type = 'ProcessingFailed' ORDER BY frame_id"
        )
        runs = await conn.fetch(
            "SELECT frame_id, camera_id, frame_timestamp, occurred_at, stage, attempt, duration_ms "
            "FROM frame_events WHERE event_type = 'StageFailed' ORDER BY frame_id, stage, attempt"
        )
    finally:
        await conn.close()
    ms = timedelta(milliseconds=1)
    out: list[ev.FrameEvent] = []
    for i, r in enumerate(frames):
        common = {
            "frame_id": r["frame_id"],
            "camera_id": r["camera_id"],
            "frame_timestamp": r["frame_timestamp"],
            "producer": "rereport",
        }
        if i % 3 == 0:
            out.append(
                ev.ProcessingFailed(
                    **common, occurred_at=r["occurred_at"] - ms, error_type="ReReported", error_message="m"
                )
            )
        elif i % 3 == 1:
            out.append(
                ev.ProcessingFailed(
                    **common,
                    occurred_at=r["occurred_at"] - ms,
                    error_type="ReReported",
                    error_message="m",
                    stage="detect",
                )
            )
        else:
            out.append(ev.StageStarted(**common, occurred_at=r["occurred_at"] + ms, stage="late"))
    for i, r in enumerate(runs):
        common = {
            "frame_id": r["frame_id"],
            "camera_id": r["camera_id"],
            "frame_timestamp": r["frame_timestamp"],
            "producer": "rereport",
            "stage": r["stage"],
            "attempt": r["attempt"],
            "duration_ms": r["duration_ms"],
            "occurred_at": r["occurred_at"] - ms,
        }
        if i % 2 == 0:
            out.append(ev.StageCompleted(**common))
        else:
            out.append(ev.StageFailed(**common, error_type="Retyped", error_message="m"))
    async with FramePublisher(settings, producer_name="rereport") as pub:
        for e in out:
            await pub.send(e)
        await pub.flush()
    return len(out)


async def test_failure_analysis_equals_one_computed_from_frame_events(settings: Settings) -> None:
    await publish_simulation(
        settings, cameras=3, fps=20, duration_s=4, seed=91, failure_rate=0.2, retry_rate=0.1
    )
    await consume_until_idle(settings)
    await project_until_idle(settings)
    async with FrameTrackingQueries.connect(settings) as q:
        first = await q.get_failure_analysis(24)
        expected = await _from_events(settings, q, 24)
        assert first == expected
        assert first["failed_frames"] > 0 and first["stage_failures"]
        # Events that retract failures from their groups, folded by the worker
        # in batches of their own: the rollup follows.
        assert await _rereport(settings) > 0
        await consume_until_idle(settings)
        await project_until_idle(settings)
        again = await q.get_failure_analysis(24)
        assert again == await _from_events(settings, q, 24)
    assert again != first
    assert {r["error_type"] for r in again["by_stage_error_camera"]} >= {"ReReported"}
    assert {r["error_type"] for r in again["stage_failures"]} >= {"Retyped"}
    assert_same_projection(*(await projection_vs_store(settings)))


def _events(tag: str) -> list[ProjEvent]:
    first, then = failure_history(tag)
    # Captured a day apart too, so that the rollup spans two days' partitions.
    d = timedelta(days=1)
    day = [
        replace(
            e,
            event_id=str(uuid.uuid4()),
            frame_timestamp=e.frame_timestamp + d,
            occurred_at=e.occurred_at + d,
        )
        for e in first
    ]
    return first + then + day


async def test_the_migration_fills_the_failure_rollup_of_existing_generations(tmp_path: Path) -> None:
    async with empty_database() as url:
        conn = await asyncpg.connect(url)
        try:
            await migrate_until(conn, tmp_path, "005_failure_rollup")
            assert await conn.fetchval("SELECT to_regclass('failure_stats')") is None
            # The live generation, and a second one a rebuild is filling.
            await conn.execute("SELECT tracker_create_frames_generation(2)")
            for g, tag in ((1, "live/"), (2, "rebuild/")):
                await store_generation(conn, g, _events(tag))

            report = await migrate_also(conn, tmp_path, "005_failure_rollup")
            assert report.applied == ["005_failure_rollup"]
            for g in (1, 2):
                # What the projection's own rule gives for the rows stored.
                frames = [frame_from_db(r) for r in await conn.fetch(f"SELECT * FROM frame_metadata_g{g}")]
                stages = [stage_from_db(r) for r in await conn.fetch(f"SELECT * FROM processing_stages_g{g}")]
                want = comparable_failures(failure_totals(frames, stages))
                have = comparable_failures(
                    dict(
                        failure_from_db(r)
                        for r in await conn.fetch(f"SELECT {', '.join(FAILURE_COLS)} FROM failure_stats_g{g}")
                    )
                )
                assert have == want and len(want) > 8
            listed = {
                r[0]: r[1]
                for r in await conn.fetch(
                    "SELECT table_name, time_column FROM tracker_partitioned_tables "
                    "WHERE table_name LIKE 'failure_stats%'"
                )
            }
            assert listed == {"failure_stats_g1": "hour", "failure_stats_g2": "hour"}
            # The view is the live generation's, with error types as the events had them.
            assert "failure_stats_g1" in await conn.fetchval(
                "SELECT pg_get_viewdef('failure_stats'::regclass)"
            )
            none = await conn.fetchval(
                "SELECT count(*) FROM failure_stats WHERE stage = '(none)' AND error_type IS NULL"
            )
            assert none > 0
            # Swapped in and dropped with its generation.
            await conn.execute("SELECT tracker_point_frames_views(2)")
            assert "failure_stats_g2" in await conn.fetchval(
                "SELECT pg_get_viewdef('failure_stats'::regclass)"
            )
            await conn.execute("SELECT tracker_drop_frames_generation(1)")
            assert await conn.fetchval("SELECT to_regclass('failure_stats_g1')") is None
            assert not await conn.fetchval(
                "SELECT count(*) FROM tracker_partitioned_tables WHERE table_name = 'failure_stats_g1'"
            )
            # A new generation has the table from the start.
            await conn.execute("SELECT tracker_create_frames_generation(3)")
            assert await conn.fetchval("SELECT to_regclass('failure_stats_g3')") is not None
            # The read role may read the view.
            if await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = 'tracker_read'"):
                assert await conn.fetchval(
                    "SELECT has_table_privilege('tracker_read', 'failure_stats', 'SELECT')"
                )
        finally:
            await conn.close()
