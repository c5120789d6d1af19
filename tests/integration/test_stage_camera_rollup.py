"""The per-camera-and-stage rollup (sql/007, stage_camera_stats): the migration
fills it for the generations that exist when it runs, by the fold's rule, and
it is created, pointed at, listed for retention and dropped with its
generation. (The projection keeping it is the store contract's and the
projection-vs-event-store helper's; the rebuild's, test_recompute's.)"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from projections.fold import (
    STAGE_COUNTERS,
    ProjEvent,
    Rollup,
    rollup_totals,
    stage_camera_contribution,
)
from projections.store import stage_from_db
from tests.integration.helpers import empty_database, migrate_also, migrate_until, store_generation
from tracker.buckets import BUCKET_BOUNDS_MS

T0 = datetime(2024, 6, 1, 22, 30, tzinfo=UTC)
MIGRATION = "007_stage_camera_rollup"


def _events(tag: str) -> list[ProjEvent]:
    """Stage runs of two cameras and two stages over two hours of two days, in
    every status, with durations on, just above and between the histogram's
    bounds and past the last one, and runs whose camera changes (a report under
    a lesser camera id)."""
    out: list[ProjEvent] = []
    durations = [0.0, 0.5, *BUCKET_BOUNDS_MS, *(b + 0.001 for b in BUCKET_BOUNDS_MS), 7.25, 60_000.0]

    def ev(fid: str, etype: str, at: datetime, cam: str, **kw: Any) -> ProjEvent:
        return ProjEvent(
            event_id=str(uuid.uuid4()),
            event_type=etype,
            frame_id=f"{tag}{fid}",
            camera_id=cam,
            frame_timestamp=at,
            occurred_at=at + timedelta(milliseconds=len(out) % 7),
            **kw,
        )

    for i, ms in enumerate(durations):
        cam = ("cam-a", "cam-b")[i % 2]
        at = T0 + timedelta(minutes=17 * i)  # 22:30 to the next day
        fid = f"f{i}"
        out.append(ev(fid, "FrameCaptured", at, cam))
        for stage in ("detect", "analyze"):
            run = {"stage": stage, "attempt": 1}
            out.append(ev(fid, "StageStarted", at, cam, **run))
            kind = (i + len(stage)) % 4
            if kind in (0, 2):  # completed (or conflicted, below)
                out.append(ev(fid, "StageCompleted", at, cam, duration_ms=ms, **run))
            if kind in (1, 2):  # failed (or conflicted)
                out.append(ev(fid, "StageFailed", at, cam, duration_ms=ms, error_type="E", **run))
            # kind 3: still running
        if i % 5 == 0:  # reported again by a lesser camera id: the runs move to it
            out.append(ev(fid, "StageStarted", at, "cam-0", stage="detect", attempt=1))
    return out


def _comparable(stats: dict[Any, Rollup]) -> dict[Any, tuple[Any, ...]]:
    out = {}
    for k, r in stats.items():
        *counts, n, total, buckets = r.as_row(STAGE_COUNTERS)
        out[k] = (*counts, n, round(total, 6), tuple(buckets))
    return out


async def test_the_migration_fills_the_rollup_of_existing_generations(tmp_path: Path) -> None:
    async with empty_database() as url:
        conn = await asyncpg.connect(url)
        try:
            await migrate_until(conn, tmp_path, MIGRATION)
            assert await conn.fetchval("SELECT to_regclass('stage_camera_stats')") is None
            # The live generation, and a second one a rebuild is filling.
            await conn.execute("SELECT tracker_create_frames_generation(2)")
            for g, tag in ((1, "live/"), (2, "rebuild/")):
                await store_generation(conn, g, _events(tag))

            report = await migrate_also(conn, tmp_path, MIGRATION)
            assert report.applied == [MIGRATION]
            for g in (1, 2):
                # What the projection's own rule gives for the rows stored.
                stages = [stage_from_db(r) for r in await conn.fetch(f"SELECT * FROM processing_stages_g{g}")]
                want = rollup_totals(stages, stage_camera_contribution)
                have = {
                    (r["camera_id"], r["stage"], r["hour"]): Rollup(
                        counts={c: r[c] for c in STAGE_COUNTERS},
                        latency_count=r["duration_count"],
                        latency_sum_ms=r["duration_sum_ms"],
                        buckets=list(r["duration_buckets"]),
                    )
                    for r in await conn.fetch(f"SELECT * FROM stage_camera_stats_g{g}")
                }
                assert _comparable(have) == _comparable(want)
                assert {k[0] for k in want} == {"cam-0", "cam-a", "cam-b"} and len(want) > 12
                assert {k[2].date() for k in want} == {T0.date(), T0.date() + timedelta(days=1)}
                statuses = {c for r in want.values() for c, n in r.counts.items() if n}
                assert statuses == {"runs", "completed", "failed", "conflicted", "running"}
                assert sum(r.latency_count for r in want.values()) > 30
            listed = {
                r[0]: r[1]
                for r in await conn.fetch(
                    "SELECT table_name, time_column FROM tracker_partitioned_tables "
                    "WHERE table_name LIKE 'stage_camera_stats%'"
                )
            }
            assert listed == {"stage_camera_stats_g1": "hour", "stage_camera_stats_g2": "hour"}
            # Partitioned by day on hour, like the other rollups.
            parts = await conn.fetchval(
                "SELECT count(*) FROM pg_inherits WHERE inhparent = 'stage_camera_stats_g1'::regclass"
            )
            assert parts == 2
            # The view is the live generation's.
            assert "stage_camera_stats_g1" in await conn.fetchval(
                "SELECT pg_get_viewdef('stage_camera_stats'::regclass)"
            )
            # Swapped in and dropped with its generation.
            await conn.execute("SELECT tracker_point_frames_views(2)")
            for view in ("stage_camera_stats", "performance_stats", "failure_stats"):
                assert "_g2" in await conn.fetchval("SELECT pg_get_viewdef($1::regclass)", view)
            await conn.execute("SELECT tracker_drop_frames_generation(1)")
            for table in ("stage_camera_stats_g1", "failure_stats_g1", "performance_stats_g1"):
                assert await conn.fetchval("SELECT to_regclass($1)", table) is None
            assert not await conn.fetchval(
                "SELECT count(*) FROM tracker_partitioned_tables WHERE table_name LIKE '%\\_g1'"
            )
            # A new generation has the table from the start, and the prefix index of 006.
            await conn.execute("SELECT tracker_create_frames_generation(3)")
            assert await conn.fetchval("SELECT to_regclass('stage_camera_stats_g3')") is not None
            assert await conn.fetchval("SELECT to_regclass('failure_stats_g3')") is not None
            assert await conn.fetchval("SELECT to_regclass('frame_metadata_g3_frame_prefix_idx')") is not None
            # The read role may read the view.
            if await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = 'tracker_read'"):
                assert await conn.fetchval(
                    "SELECT has_table_privilege('tracker_read', 'stage_camera_stats', 'SELECT')"
                )
        finally:
            await conn.close()
