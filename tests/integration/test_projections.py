"""Projections equal a fold of frame_events: after a normal run, after SIGKILLs,
and across a zero-downtime rebuild under load."""

from __future__ import annotations

import asyncio
import itertools
import random
import signal
import subprocess
import sys

import asyncpg

from tests.integration.helpers import (
    ROOT,
    assert_same_projection,
    consume_until_idle,
    env_for,
    project_until_idle,
    projection_vs_store,
    publish_simulation,
    run_cli,
)
from tracker.config import Settings
from tracker.publisher import FramePublisher
from tracker.simulator import SimulationConfig, simulate


async def test_projection_equals_fold_of_the_event_store(settings: Settings, db: asyncpg.Connection) -> None:
    await publish_simulation(
        settings, cameras=4, fps=20, duration_s=4, seed=21, failure_rate=0.1, retry_rate=0.05
    )
    await consume_until_idle(settings)
    stats = await project_until_idle(settings)
    assert stats.records > 0 and stats.conflicts == 0
    actual, expected = await projection_vs_store(settings)
    assert len(expected["frames"]) == 320
    assert_same_projection(actual, expected)
    # The reader views serve the same rows, with readable states.
    states = dict(await db.fetch("SELECT state, count(*) FROM frame_metadata GROUP BY 1"))
    assert set(states) <= {"completed", "failed"} and states["failed"] > 0
    # Running the worker again changes nothing (checkpoints hold).
    again = await project_until_idle(settings)
    assert again.records == 0
    assert_same_projection(*(await projection_vs_store(settings)))


async def test_sigkilled_worker_ends_with_the_same_projection(settings: Settings) -> None:
    """Kill -9 the worker at random moments while events keep arriving."""
    await publish_simulation(settings, cameras=4, fps=30, duration_s=4, seed=33, failure_rate=0.1)

    async def live_load() -> None:
        cfg = SimulationConfig(cameras=4, fps=15, duration_s=14, seed=34, realtime=True, failure_rate=0.1)
        async with FramePublisher(settings, producer_name="load") as pub:
            await simulate(pub, cfg)

    load = asyncio.create_task(live_load())
    rng = random.Random(7)
    kills = 0
    # A stable instance id: the restarted worker takes the partitions back at once.
    env = {**env_for(settings), "TRACKER_BATCH_MAX_RECORDS": "100", "TRACKER_INSTANCE_ID": "projector-1"}
    progress = []
    try:
        for _ in range(6):
            proc = subprocess.Popen(
                [sys.executable, "-m", "tracker.cli", "project", "--metrics-port", "0"],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            await asyncio.sleep(rng.uniform(1.5, 3.0))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            await asyncio.to_thread(proc.wait)
            progress.append(await _checkpointed(settings))
    finally:
        await load
    assert kills >= 5
    # The worker was killed while it had work to do, not only when idle.
    assert len(set(progress)) >= 4, progress
    await consume_until_idle(settings)
    run_cli(settings, "project", "--until-idle", "--metrics-port", "0")
    assert_same_projection(*(await projection_vs_store(settings)))


async def _checkpointed(settings: Settings) -> int:
    conn = await asyncpg.connect(settings.database.url.get())
    try:
        return int(await conn.fetchval("SELECT coalesce(sum(next_offset), 0) FROM projection_checkpoints"))
    finally:
        await conn.close()


async def test_replay_under_load_swaps_without_downtime(settings: Settings) -> None:
    from projections.replay import ProjectionRebuild
    from projections.worker import ProjectionWorker

    await publish_simulation(settings, cameras=4, fps=25, duration_s=6, seed=41, failure_rate=0.1)
    await consume_until_idle(settings)
    await project_until_idle(settings)

    stop = asyncio.Event()
    live = ProjectionWorker(settings)
    await live.start()
    live_task = asyncio.create_task(live.run())
    seen_counts: list[int] = []

    async def reader() -> None:
        conn = await asyncpg.connect(settings.database.url.get())
        try:
            while not stop.is_set():
                n, incomplete = await conn.fetchrow(
                    "SELECT count(*), count(*) FILTER (WHERE state IS NULL OR camera_id IS NULL) "
                    "FROM frame_metadata"
                )
                assert incomplete == 0
                seen_counts.append(n)
                await asyncio.sleep(0.05)
        finally:
            await conn.close()

    async def publisher() -> None:
        cfg = SimulationConfig(cameras=3, fps=10, duration_s=4, seed=42, realtime=True)
        async with FramePublisher(settings, producer_name="load") as pub:
            await simulate(pub, cfg)

    reader_task = asyncio.create_task(reader())
    load_task = asyncio.create_task(publisher())
    try:
        await asyncio.sleep(0.5)
        gen = await ProjectionRebuild(settings, source="topics").run()
        assert gen == 2
        await load_task
        # A second rebuild, this time from the event store.
        await consume_until_idle(settings)
        gen = await ProjectionRebuild(settings, source="store").run()
        assert gen == 3
    finally:
        stop.set()
        await reader_task
        live.request_stop()
        await live_task
        await live.stop()
    await consume_until_idle(settings)
    await project_until_idle(settings)
    # Readers never saw the table shrink (never empty, never half-built).
    assert seen_counts and seen_counts[0] > 0
    assert all(b >= a for a, b in itertools.pairwise(seen_counts)), seen_counts
    assert live.stats.generation_switches >= 1
    assert_same_projection(*(await projection_vs_store(settings)))
    conn = await asyncpg.connect(settings.database.url.get())
    try:
        tables = {
            r["tablename"]
            for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE tablename ~ '^frame_metadata_g[0-9]+$'"
            )
        }
        statuses = [
            r["status"] for r in await conn.fetch("SELECT status FROM projection_replays ORDER BY id")
        ]
    finally:
        await conn.close()
    assert tables == {"frame_metadata_g3"} and statuses == ["swapped", "swapped"]


async def test_replay_from_store_since_recomputes_recent_frames_and_copies_older_ones(
    settings: Settings, db: asyncpg.Connection
) -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    await publish_simulation(
        settings, cameras=2, fps=10, duration_s=3, seed=81, start=now - timedelta(days=2)
    )
    await publish_simulation(settings, cameras=2, fps=10, duration_s=3, seed=82)
    await consume_until_idle(settings)
    await project_until_idle(settings)
    started = await db.fetchval("SELECT now()")
    since = (now - timedelta(days=1)).isoformat()
    bad = run_cli(settings, "replay", "--since", since, check=False)
    assert bad.returncode == 2 and "--source store" in bad.stderr
    run_cli(settings, "replay", "--source", "store", "--since", since)
    await project_until_idle(settings)
    assert_same_projection(*(await projection_vs_store(settings)))
    rows = await db.fetch(
        "SELECT frame_timestamp < $1 AS old, max(updated_at) AS last, min(updated_at) AS first "
        "FROM frame_metadata GROUP BY 1",
        now - timedelta(days=1),
    )
    by_age = {r["old"]: r for r in rows}
    assert by_age[True]["last"] < started  # copied unchanged
    assert by_age[False]["first"] >= started  # recomputed from the event store
    assert await db.fetchval("SELECT generation FROM projection_state") == 2
