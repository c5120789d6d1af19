"""The set-based fold (projections/recompute.py) against the reference fold.

Hypothesis draws histories of a few frames (contradictory, partial, with
re-sent reports that tie on time, mixed cameras, traces present and absent),
stores them in ``frame_events`` and recomputes an empty generation in SQL; the
rows and rollups (the per-camera-and-stage and the failure rollups too) must be
exactly those the Python fold makes of the same events.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from projections.columns import (
    FAILURE_COLS,
    FRAME_COLS,
    STAGE_COLS,
    failure_from_db,
    frame_from_db,
    stage_from_db,
)
from projections.fold import (
    FRAME_COUNTERS,
    STAGE_COUNTERS,
    ProjEvent,
    failure_totals,
    fold,
    frame_contribution,
    rollup_totals,
    stage_camera_contribution,
    stage_contribution,
)
from projections.recompute import recompute
from projections.store import FramesProjectionStore
from tracker.config import Settings
from tracker.events import to_micros
from tracker.store.postgres import PostgresEventStore, record_to_row

T0 = datetime(2026, 6, 1, 22, 30, tzinfo=UTC)  # hours on both sides of midnight
STAGES = ("detect", "analyze")


@st.composite
def histories(draw: st.DrawFn) -> list[ProjEvent]:
    events: list[ProjEvent] = []
    n = 0

    def new_id() -> str:
        """Unique (an id is one event), in an order hypothesis chooses (ties on time break on it)."""
        nonlocal n
        n += 1
        return str(uuid.UUID(int=(draw(st.integers(0, 2**64 - 1)) << 64) | n))

    for frame_no in range(draw(st.integers(1, 4))):
        fid = f"f{frame_no}"
        cameras = [f"cam-{draw(st.integers(1, 3))}"]
        if draw(st.integers(0, 4)) == 0:
            cameras.append(f"Cam-{draw(st.integers(1, 3))}")  # a report naming another camera
        fts = T0 + timedelta(minutes=draw(st.integers(0, 180)))
        t = fts

        traces = [None, "", f"{frame_no:032x}", f"{frame_no + 7:032x}"]

        def ev(
            etype: str,
            dt_ms: float,
            fid: str = fid,
            fts: datetime = fts,
            cams: list[str] = cameras,
            traces: list[str | None] = traces,
            **kw: object,
        ) -> ProjEvent:
            nonlocal t
            t = t + timedelta(milliseconds=dt_ms)
            return ProjEvent(
                event_id=new_id(),
                event_type=etype,
                frame_id=fid,
                camera_id=draw(st.sampled_from(cams)),
                frame_timestamp=fts,
                occurred_at=t,
                trace_id=draw(st.sampled_from(traces)),
                **kw,
            )  # type: ignore[arg-type]  # fmt: skip

        out = [ev("FrameCaptured", 0, attributes=draw(st.sampled_from([{}, {"w": "1920", "lens": "wide"}])))]
        if draw(st.booleans()):
            out.append(ev("FrameQueued", 1))
        if draw(st.booleans()):
            out.append(ev("ProcessingStarted", draw(st.floats(0, 50))))
        for name in STAGES[: draw(st.integers(0, 2))]:
            for attempt in range(1, draw(st.integers(1, 2)) + 1):
                if draw(st.booleans()):
                    out.append(ev("StageStarted", 0.1, stage=name, attempt=attempt))
                d = draw(st.floats(0.5, 3000))
                kind = draw(st.sampled_from(["completed", "failed", "both", "open"]))
                if kind in ("completed", "both"):
                    out.append(ev("StageCompleted", d, stage=name, attempt=attempt, duration_ms=d))
                if kind in ("failed", "both"):
                    fail_dt = draw(st.sampled_from([0.0, d, 1.0]))  # 0: ties the completion's time
                    out.append(
                        ev("StageFailed", fail_dt, stage=name, attempt=attempt, duration_ms=d, error_type="E",
                           error_message=draw(st.sampled_from(["m", "n"])))
                    )  # fmt: skip
        outcome = draw(st.sampled_from(["complete", "fail", "both", "open"]))
        total = draw(st.one_of(st.none(), st.floats(0, 20000)))
        if outcome in ("complete", "both"):
            out.append(ev("ProcessingCompleted", draw(st.floats(-5, 50)), duration_ms=total))
        if outcome in ("fail", "both"):
            out.append(
                ev("ProcessingFailed", draw(st.sampled_from([0.0, 1.0])), duration_ms=total,
                   error_type="Boom", error_message="it broke",
                   stage=draw(st.sampled_from([None, "analyze"])))
            )  # fmt: skip
        # Re-sent reports: the same fact again with a new id, at the same or another time.
        for _ in range(draw(st.integers(0, 2))):
            orig = draw(st.sampled_from(out))
            shift = timedelta(milliseconds=draw(st.sampled_from([-3, 0, 0, 4])))
            out.append(replace(orig, event_id=new_id(), occurred_at=orig.occurred_at + shift))
        # Redelivered: the very same event twice (the store keeps one, the fold applies it once).
        if draw(st.booleans()):
            out.append(draw(st.sampled_from(out)))
        events.extend(out)
    return events


def _rounded(values: tuple[object, ...]) -> tuple[object, ...]:
    """A rollup row with its latency sum rounded (sums of floats in another order)
    and its buckets as a list."""
    *counts, n, total, buckets = values
    return (*counts, n, round(float(total), 6), list(buckets))  # type: ignore[arg-type, call-overload]


def _row(e: ProjEvent) -> tuple[object, ...]:
    rec = {
        "event_id": e.event_id,
        "event_type": e.event_type,
        "frame_id": e.frame_id,
        "camera_id": e.camera_id,
        "frame_timestamp": to_micros(e.frame_timestamp),
        "occurred_at": to_micros(e.occurred_at),
        "producer": "test",
        "stage": e.stage,
        "attempt": e.attempt,
        "duration_ms": e.duration_ms,
        "error_type": e.error_type,
        "error_message": e.error_message,
        "attributes": dict(e.attributes),
    }
    return record_to_row(
        rec, topic="t", partition=0, offset=0, fingerprint=b"\0" * 8, trace_id=e.trace_id, span_id=None
    )


async def _check(dsn: str, events: list[ProjEvent], generation: int) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await conn.execute("TRUNCATE frame_events")
            await conn.execute("SELECT tracker_create_frames_generation($1)", generation)
        events_store = PostgresEventStore(pool)
        await events_store.ensure_partitions({e.frame_timestamp.date() for e in events})
        await events_store.append([_row(e) for e in events])
        store = FramesProjectionStore(pool)
        async with pool.acquire() as conn, conn.transaction():
            await store.ensure_partitions(generation, [e.frame_timestamp for e in events], conn=conn)
            await recompute(conn, generation)
        async with pool.acquire() as conn:
            frames = {
                (r["frame_id"], r["frame_timestamp"]): r
                for r in await conn.fetch(f"SELECT {', '.join(FRAME_COLS)} FROM frame_metadata_g{generation}")
            }
            stages = {
                (r["frame_id"], r["frame_timestamp"], r["stage"], r["attempt"]): r
                for r in await conn.fetch(
                    f"SELECT {', '.join(STAGE_COLS)} FROM processing_stages_g{generation}"
                )
            }
            frame_stats = {
                (r["camera_id"], r["hour"]): _rounded(tuple(r)[2:])
                for r in await conn.fetch(
                    "SELECT camera_id, hour, " + ", ".join(FRAME_COUNTERS)
                    + ", processing_time_count, processing_time_sum_ms, processing_time_buckets "
                    f"FROM frame_stats_hourly_g{generation}"
                )
            }  # fmt: skip
            stage_stats = {
                (r["stage"], r["hour"]): _rounded(tuple(r)[2:])
                for r in await conn.fetch(
                    "SELECT stage, hour, " + ", ".join(STAGE_COUNTERS)
                    + ", duration_count, duration_sum_ms, duration_buckets "
                    f"FROM performance_stats_g{generation}"
                )
            }  # fmt: skip
            stage_camera_stats = {
                (r["camera_id"], r["stage"], r["hour"]): _rounded(tuple(r)[3:])
                for r in await conn.fetch(
                    "SELECT camera_id, stage, hour, " + ", ".join(STAGE_COUNTERS)
                    + ", duration_count, duration_sum_ms, duration_buckets "
                    f"FROM stage_camera_stats_g{generation}"
                )
            }  # fmt: skip
            failure_stats = dict(
                failure_from_db(r)
                for r in await conn.fetch(
                    f"SELECT {', '.join(FAILURE_COLS)} FROM failure_stats_g{generation}"
                )
            )
            await conn.execute("SELECT tracker_drop_frames_generation($1)", generation)
    finally:
        await pool.close()

    expected = fold(sorted(events, key=lambda e: e.order_key))
    assert set(frames) == set(expected.frames)
    for key, row in expected.frames.items():
        got = frames[key]
        assert frame_from_db(got) == row, key
        derived = (got["state"], got["total_processing_time_ms"], got["events_applied"], got["error_stage"])
        assert derived == (row.state, row.total_processing_time_ms, row.events_applied, row.error_stage), key
    assert set(stages) == set(expected.stages)
    for key, srow in expected.stages.items():
        got = stages[key]
        assert stage_from_db(got) == srow, key
        derived = (got["status"], got["finished_at"], got["duration_ms"])
        assert derived == (srow.status, srow.finished_at, srow.duration_ms), key

    def as_rows(totals: dict, counters: tuple[str, ...]) -> dict:  # type: ignore[type-arg]
        return {k: _rounded(v.as_row(counters)) for k, v in totals.items()}

    assert frame_stats == as_rows(rollup_totals(expected.frames.values(), frame_contribution), FRAME_COUNTERS)
    assert stage_stats == as_rows(rollup_totals(expected.stages.values(), stage_contribution), STAGE_COUNTERS)
    assert stage_camera_stats == as_rows(
        rollup_totals(expected.stages.values(), stage_camera_contribution), STAGE_COUNTERS
    )
    assert failure_stats == failure_totals(expected.frames.values(), expected.stages.values())


def test_the_set_based_fold_equals_the_reference_fold(settings: Settings) -> None:
    dsn = settings.database.url.get()
    generations = iter(range(100, 10_000))

    @hsettings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(histories())
    def check(events: list[ProjEvent]) -> None:
        asyncio.run(_check(dsn, events, next(generations)))

    check()


async def test_rebuild_from_the_topics_in_bulk_skips_bad_records_and_resumes_after_a_stop(
    settings: Settings,
) -> None:
    from aiokafka import AIOKafkaProducer

    from projections.replay import ProjectionRebuild
    from tests.integration.helpers import (
        assert_same_projection,
        consume_until_idle,
        project_until_idle,
        projection_vs_store,
        publish_simulation,
    )
    from tracker.adapters.kafka import client_kwargs

    await publish_simulation(
        settings, cameras=3, fps=20, duration_s=3, seed=71, failure_rate=0.2, retry_rate=0.1
    )
    producer = AIOKafkaProducer(**client_kwargs(settings.kafka))
    await producer.start()
    try:  # a record nobody can decode: dead-lettered by the store, skipped by the rebuild
        await producer.send_and_wait(settings.topics.processing, b"not avro at all", key=b"f-bad")
    finally:
        await producer.stop()
    await consume_until_idle(settings)
    await project_until_idle(settings)

    stopped = ProjectionRebuild(settings, source="topics")
    stopped.request_stop()
    assert await stopped.run() == 1, "a rebuild stopped during its load keeps the live generation"
    resumed = ProjectionRebuild(settings, source="topics")
    assert await resumed.run() == 2
    assert_same_projection(*(await projection_vs_store(settings)))
    conn = await asyncpg.connect(settings.database.url.get())
    try:
        statuses = [
            r["status"] for r in await conn.fetch("SELECT status FROM projection_replays ORDER BY id")
        ]
        scratch = await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'replay_events_g%'"
        )
    finally:
        await conn.close()
    assert statuses == ["swapped"] and scratch == 0
