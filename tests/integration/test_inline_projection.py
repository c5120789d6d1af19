"""The inline projection: the event-store consumer keeps the ``frames``
projection in each append's own transaction (``tracker consume --inline-projection``)."""

from __future__ import annotations

import asyncio
import itertools
import json

import asyncpg

from projections.inline import InlineFrames
from tests.integration.helpers import (
    assert_same_projection,
    consume_until_idle,
    projection_vs_store,
    publish_simulation,
    run_cli,
)
from tracker.config import Settings
from tracker.publisher import FramePublisher
from tracker.simulator import SimulationConfig, simulate
from tracker.store.consumer import EventStoreConsumer


async def _checkpoints(settings: Settings) -> dict[tuple[str, int], int]:
    conn = await asyncpg.connect(settings.database.url.get())
    try:
        rows = await conn.fetch(
            'SELECT topic, "partition", next_offset FROM projection_checkpoints c '
            "JOIN projection_state s USING (projection, generation)"
        )
        return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
    finally:
        await conn.close()


async def _log_ends(settings: Settings) -> dict[tuple[str, int], int]:
    from tracker.adapters.kafka import make_consumer, topic_partitions

    tps = await topic_partitions(settings.kafka, settings.topics.events)
    consumer = make_consumer(settings.kafka, group_id=None, role="test")
    await consumer.start()
    try:
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return {(tp.topic, tp.partition): off for tp, off in ends.items() if off > 0}


async def test_inline_projection_equals_the_fold_of_the_store_and_redelivery_changes_nothing(
    settings: Settings,
) -> None:
    await publish_simulation(
        settings, cameras=4, fps=20, duration_s=4, seed=61, failure_rate=0.1, retry_rate=0.05
    )
    stats = await consume_until_idle(settings, inline=InlineFrames())
    assert stats.stored > 0 and stats.duplicates == 0
    actual, expected = await projection_vs_store(settings)
    assert len(expected["frames"]) == 320
    assert_same_projection(actual, expected)
    # The live generation's checkpoints say how far the projection got: the log ends.
    assert await _checkpoints(settings) == await _log_ends(settings)

    # A second group re-reads everything: every event is a duplicate, folded
    # again, and the projection does not move.
    again = await consume_until_idle(
        settings, inline=InlineFrames(), group_id=f"{settings.groups.prefix}.again"
    )
    assert again.stored == 0 and again.duplicates == stats.stored
    assert_same_projection(*(await projection_vs_store(settings)))


async def test_cli_consume_inline_projection(settings: Settings) -> None:
    published = await publish_simulation(settings, cameras=2, fps=10, duration_s=3, seed=62, failure_rate=0.2)
    out = run_cli(settings, "consume", "--inline-projection", "--until-idle", "--metrics-port", "0", "--json")
    assert json.loads(out.stdout)["stored"] == published.events
    assert_same_projection(*(await projection_vs_store(settings)))


async def test_rebuild_under_inline_load_swaps_without_losing_what_was_applied_meanwhile(
    settings: Settings,
) -> None:
    """The swap catches the new generation up with what the inline writer applied
    after the rebuild's last look (the writer never re-reads: its offsets are committed)."""
    from projections.replay import ProjectionRebuild

    await publish_simulation(settings, cameras=4, fps=25, duration_s=6, seed=63, failure_rate=0.1)
    await consume_until_idle(settings, inline=InlineFrames())

    stop = asyncio.Event()
    seen: list[int] = []
    live = EventStoreConsumer(settings, inline=InlineFrames())
    await live.start()
    live_task = asyncio.create_task(live.run())

    async def reader() -> None:
        conn = await asyncpg.connect(settings.database.url.get())
        try:
            while not stop.is_set():
                seen.append(await conn.fetchval("SELECT count(*) FROM frame_metadata"))
                await asyncio.sleep(0.05)
        finally:
            await conn.close()

    async def publisher() -> None:
        cfg = SimulationConfig(cameras=3, fps=20, duration_s=5, seed=64, realtime=True)
        async with FramePublisher(settings, producer_name="load") as pub:
            await simulate(pub, cfg)

    reader_task = asyncio.create_task(reader())
    load_task = asyncio.create_task(publisher())
    try:
        await asyncio.sleep(0.5)
        # A lag threshold this large swaps as soon as the log ends seen at the
        # start are reached, whatever the inline writer applied since: only the
        # catch-up under the swap's lock keeps those events.
        huge = 10**9
        assert await ProjectionRebuild(settings, source="topics", swap_lag_threshold=huge).run() == 2
        assert await ProjectionRebuild(settings, source="store", swap_lag_threshold=huge).run() == 3
        await load_task
    finally:
        stop.set()
        await reader_task
        live.request_stop()
        await live_task
        await live.stop()
    await consume_until_idle(settings, inline=InlineFrames())
    assert seen and seen[0] > 0
    assert all(b >= a for a, b in itertools.pairwise(seen)), "a reader saw the projection shrink"
    assert_same_projection(*(await projection_vs_store(settings)))
    assert await _checkpoints(settings) == await _log_ends(settings)


async def test_inline_projection_with_a_pool_of_one_connection(settings: Settings) -> None:
    """The append's transaction holds the pool's only connection: new partitions
    are made before it (``before``) or, failing that, inside it, never on a
    second connection the pool cannot give."""
    from datetime import UTC, datetime, timedelta

    import asyncpg

    from projections.fold import BatchFold, ProjEvent
    from tracker.adapters.postgres import connect_pool

    one = settings.with_overrides(database_pool_size=1)
    await publish_simulation(one, cameras=2, fps=10, duration_s=2, seed=65)
    stats = await consume_until_idle(one, inline=InlineFrames())
    assert stats.stored > 0
    assert_same_projection(*(await projection_vs_store(one)))

    # A day no partition exists for yet, applied inside a transaction that holds
    # the only connection (as after a swap between ``before`` and ``apply``).
    day = datetime(2031, 3, 4, 5, 6, tzinfo=UTC)
    event = ProjEvent(
        event_id="00000000-0000-4000-8000-000000000001",
        event_type="FrameCaptured",
        frame_id="frame-on-a-new-day",
        camera_id="cam-x",
        frame_timestamp=day,
        occurred_at=day + timedelta(milliseconds=1),
    )
    pool = await connect_pool(one.database, min_size=1, max_size=1)
    try:
        inline = InlineFrames()
        await inline.open(pool)
        async with pool.acquire() as conn, conn.transaction():
            await asyncio.wait_for(inline.apply(conn, BatchFold().extend([event]), {}), 30)
    finally:
        await pool.close()
    conn = await asyncpg.connect(one.database.url.get())
    try:
        assert (
            await conn.fetchval("SELECT camera_id FROM frame_metadata WHERE frame_id = $1", event.frame_id)
            == "cam-x"
        )
    finally:
        await conn.close()
