"""Contract test of :class:`projections.ports.ProjectionStore`: one abstract suite,
subclassed once per implementation.

A subclass provides the fixtures the suite takes (pytest names any it lacks):

- ``store``: a fresh :class:`ProjectionStore` whose live generation is empty;
- ``read_back``: what a generation of that store holds now (:class:`Snapshot`);
- ``new_generation``: creates an empty generation, not live (a rebuild's first step);
- ``swap_in``: makes a generation the live one (a rebuild's swap).

The in-memory store runs it in ``tests/unit``, the PostgreSQL store in
``tests/integration`` and on TimescaleDB in ``tests/timescale``;
both through :class:`PostgresProjectionStoreContract`, which needs only a ``pool``.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from projections.columns import FAILURE_COLS, failure_from_db
from projections.fold import (
    FRAME_COUNTERS,
    STAGE_COUNTERS,
    FailureKey,
    FailureStat,
    FrameKey,
    FrameRow,
    ProjEvent,
    Rollup,
    StageCameraKey,
    StageKey,
    StageRow,
    failure_totals,
    fold,
    frame_contribution,
    rollup_totals,
    stage_camera_contribution,
    stage_contribution,
)
from projections.ports import ApplyResult, ProjectionStore
from projections.statements import GenerationStatements
from projections.store import FRAME_COLS, STAGE_COLS, FramesProjectionStore, frame_from_db, stage_from_db
from tracker.errors import CheckpointConflict, GenerationChanged

# A fixed capture time; the history spans two hours of one day and one frame of the next.
T0 = datetime(2024, 6, 1, 22, 30, tzinfo=UTC)
TOPIC = "t.frames.processing"
#: A rollup row's key: ``(camera_id or stage, hour)``.
HourKey = tuple[str, datetime]


def comparable_failures(stats: Mapping[FailureKey, FailureStat]) -> dict[FailureKey, tuple[Any, ...]]:
    """A failure rollup as comparable tuples: ``(failures, first_seen, sample)``
    by key; a row of no failures is left out only if it holds nothing else."""
    return {
        k: (f.failures, f.first_seen, f.sample)
        for k, f in stats.items()
        if f.failures or f.first_seen is not None or f.sample is not None
    }


@dataclass(frozen=True)
class Snapshot:
    """A generation's rows, and its rollups as comparable tuples (rows that sum to zero left out)."""

    frames: dict[FrameKey, FrameRow]
    stages: dict[StageKey, StageRow]
    frame_stats: dict[HourKey, tuple[Any, ...]]
    stage_stats: dict[HourKey, tuple[Any, ...]]
    failure_stats: dict[FailureKey, tuple[Any, ...]]
    stage_camera_stats: dict[StageCameraKey, tuple[Any, ...]]

    @classmethod
    def of(
        cls,
        frames: Iterable[FrameRow],
        stages: Iterable[StageRow],
        frame_stats: Mapping[HourKey, Rollup],
        stage_stats: Mapping[HourKey, Rollup],
        failure_stats: Mapping[FailureKey, FailureStat] | None = None,
        stage_camera_stats: Mapping[StageCameraKey, Rollup] | None = None,
    ) -> Snapshot:
        def comparable(stats: Mapping[Any, Rollup], counters: tuple[str, ...]) -> dict[Any, tuple[Any, ...]]:
            out = {}
            for k, r in stats.items():
                if not r.is_zero():
                    *counts, n, total_ms, buckets = r.as_row(counters)
                    out[k] = (*counts, n, round(total_ms, 6), tuple(buckets))
            return out

        return cls(
            {(f.frame_id, f.frame_timestamp): f for f in frames},
            {(s.frame_id, s.frame_timestamp, s.stage, s.attempt): s for s in stages},
            comparable(frame_stats, FRAME_COUNTERS),
            comparable(stage_stats, STAGE_COUNTERS),
            comparable_failures(failure_stats or {}),
            comparable(stage_camera_stats or {}, STAGE_COUNTERS),
        )


ReadBack = Callable[[int], Awaitable[Snapshot]]
NewGeneration = Callable[[], Awaitable[int]]
SwapIn = Callable[[int], Awaitable[None]]


def expected(events: Iterable[ProjEvent]) -> Snapshot:
    """What a store holds after any delivery of ``events``: the fold of each event
    once, in occurrence order, and the sums of its rows' contributions."""
    ref = fold(sorted({e.event_id: e for e in events}.values(), key=lambda e: e.order_key))
    return Snapshot.of(
        ref.frames.values(),
        ref.stages.values(),
        rollup_totals(ref.frames.values(), frame_contribution),
        rollup_totals(ref.stages.values(), stage_contribution),
        failure_totals(ref.frames.values(), ref.stages.values()),
        rollup_totals(ref.stages.values(), stage_camera_contribution),
    )


#: ``(event type, milliseconds after capture, other fields)`` of one event of a frame.
Step = tuple[str, float, dict[str, Any]]


def history() -> list[ProjEvent]:
    """Frames in every state, stage runs retried, trace ids and attributes, two cameras, two days."""
    n = 0

    def frame(fid: str, cam: str, captured: datetime, *steps: Step) -> list[ProjEvent]:
        nonlocal n
        out = []
        for etype, after_ms, kw in steps:
            n += 1
            out.append(
                ProjEvent(
                    event_id=str(uuid.UUID(int=n)),
                    event_type=etype,
                    frame_id=fid,
                    camera_id=cam,
                    frame_timestamp=captured,
                    occurred_at=captured + timedelta(milliseconds=after_ms),
                    trace_id=f"{n:032x}" if n % 3 else None,
                    **kw,
                )
            )
        return out

    captured: Step = ("FrameCaptured", 0.0, {"attributes": {"lens": "wide", "fps": "25"}})
    queued: Step = ("FrameQueued", 1.0, {})
    started: Step = ("ProcessingStarted", 2.5, {})

    def stage(etype: str, after_ms: float, name: str, attempt: int = 1, **kw: Any) -> Step:
        return (etype, after_ms, {"stage": name, "attempt": attempt, **kw})

    hour = timedelta(hours=1)
    return [
        *frame(
            "completed",
            "cam-a",
            T0,
            captured,
            queued,
            started,
            stage("StageStarted", 3, "detect"),
            stage("StageCompleted", 40, "detect", duration_ms=37.0),
            ("ProcessingCompleted", 55, {"duration_ms": 52.5}),
        ),
        *frame(
            "retried-then-failed",
            "cam-a",
            T0 + timedelta(minutes=10),
            captured,
            queued,
            started,
            stage("StageStarted", 3, "detect"),
            stage("StageFailed", 20, "detect", duration_ms=17.0, error_type="Timeout", error_message="slow"),
            stage("StageStarted", 21, "detect", attempt=2),
            stage("StageCompleted", 60, "detect", attempt=2, duration_ms=39.0),
            stage("StageStarted", 61, "analyze"),
            ("ProcessingFailed", 90, {"error_type": "Boom", "error_message": "it broke", "stage": "analyze"}),
        ),
        *frame("queued", "cam-b", T0 + hour, captured, queued),
        *frame(
            "conflicted",
            "cam-b",
            T0 + hour + timedelta(minutes=5),
            captured,
            started,
            ("ProcessingCompleted", 30, {}),
            ("ProcessingFailed", 31, {"error_type": "E", "error_message": "m"}),
        ),
        *frame(
            "processing-next-day",
            "cam-a",
            T0 + 2 * hour,
            captured,
            queued,
            stage("StageStarted", 4, "analyze"),
            stage("StageCompleted", 9, "analyze", duration_ms=5.0),
        ),
    ]


def batches(events: list[ProjEvent], n: int, *, seed: int) -> list[list[ProjEvent]]:
    """``events`` shuffled, with some sent twice, cut into ``n`` batches."""
    rng = random.Random(seed)
    sent = events + rng.sample(events, len(events) // 4)
    rng.shuffle(sent)
    return [sent[i::n] for i in range(n)]


def failure_history(tag: str = "") -> tuple[list[ProjEvent], list[ProjEvent]]:
    """Failures, then later reports that move them in the failure rollup:
    ``(first, then)``. Applied after ``first``, ``then`` retracts failures from
    their groups (an earlier ``ProcessingFailed`` with another stage or error
    type, or the same one earlier; a completion that makes a failed stage run
    conflicted and finished earlier; a re-sent stage failure with another
    type; a later event with another trace id), empties a group, and leaves
    samples to be chosen among ties (the same time: frame ids that sort
    differently by code point and by a natural-language collation, one frame id
    at two capture times, two attempts). ``tag`` prefixes the frame ids."""
    n = 0
    hour = timedelta(hours=1)

    def ev(
        fid: str, etype: str, after_ms: float, *, captured: datetime = T0, cam: str = "cam-a", **kw: Any
    ) -> ProjEvent:
        nonlocal n
        n += 1
        kw.setdefault("trace_id", f"{fid}-trace")
        return ProjEvent(
            event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tag}/{n}")),
            event_type=etype,
            frame_id=tag + fid,
            camera_id=cam,
            frame_timestamp=captured,
            occurred_at=captured + timedelta(milliseconds=after_ms),
            **kw,
        )

    def failed(fid: str, after_ms: float, error: str | None, stage: str | None, **kw: Any) -> ProjEvent:
        return ev(fid, "ProcessingFailed", after_ms, error_type=error, error_message="m", stage=stage, **kw)

    def stage(fid: str, etype: str, after_ms: float, name: str, attempt: int = 1, **kw: Any) -> ProjEvent:
        return ev(fid, etype, after_ms, stage=name, attempt=attempt, duration_ms=5.0, **kw)

    later = T0 + timedelta(minutes=1)
    first = [
        *(ev(f, "FrameCaptured", 0) for f in ("moves", "latest", "trace", "ties-1", "twin", "alone")),
        failed("moves", 90, "Boom", "analyze"),
        failed("latest", 100, "Boom", "analyze"),
        failed("trace", 95, "Boom", "analyze", trace_id="trace-x"),
        stage("conflicts", "StageFailed", 20, "detect", error_type="Timeout"),
        stage("retyped", "StageFailed", 30, "detect", error_type="Timeout"),
        # The same time in one group: the sample is the greatest frame id by code
        # point ("f1", then "f.1"), not by a natural-language collation ("f-2").
        *(failed(f, 40, "Boom", "notify") for f in ("F1", "f-2", "f.1", "f1")),
        # One frame id captured twice in one hour, failing at the same moment.
        failed("twin", 70_000, "Twin", "notify", captured=T0),
        failed("twin", 10_000, "Twin", "notify", captured=later),
        # Two attempts of a stage failing at the same moment.
        stage("attempts", "StageFailed", 50, "analyze", 1, error_type="Crash"),
        stage("attempts", "StageFailed", 50, "analyze", 2, error_type="Crash"),
        # No stage, no error type.
        failed("untyped", 60, None, None),
        # Alone in its group: the group is left empty below.
        failed("alone", 10, "Boom", "analyze", captured=T0 + hour, cam="cam-b"),
    ]
    then = [
        failed("moves", 80, "Timeout", "detect"),
        failed("latest", 50, "Boom", "analyze"),
        ev("trace", "StageStarted", 500, stage="notify", trace_id="trace-y"),
        stage("conflicts", "StageCompleted", 15, "detect"),
        stage("retyped", "StageFailed", 25, "detect", error_type="Crash"),
        failed("f1", 39, "Boom", "notify"),
        failed("alone", 5, "Other", "analyze", captured=T0 + hour, cam="cam-b"),
        failed("untyped", 55, None, None, trace_id=None),
    ]
    return first, then


class ProjectionStoreContract:
    """What every :class:`~projections.ports.ProjectionStore` does (fixtures:
    ``store``, ``read_back``, ``new_generation``, ``swap_in``)."""

    async def test_a_fresh_store_has_no_rows_and_no_checkpoints(
        self, store: ProjectionStore, read_back: ReadBack
    ) -> None:
        live = await store.live_generation()
        assert await store.checkpoints(live) == {}
        assert await read_back(live) == Snapshot.of([], [], {}, {})

    async def test_rows_applied_in_any_order_and_batches_equal_the_fold(
        self, store: ProjectionStore, read_back: ReadBack
    ) -> None:
        events = history()
        live = await store.live_generation()
        for batch in batches(events, 3, seed=1):
            result = await store.apply(batch, generation=live)
            assert result.events == len(batch)
        assert await read_back(live) == expected(events)
        assert await store.checkpoints(live) == {}  # no positions, no checkpoints

    async def test_checkpoints_are_written_with_the_rows(
        self, store: ProjectionStore, read_back: ReadBack
    ) -> None:
        first, second = batches(history(), 2, seed=2)
        live = await store.live_generation()
        two = {(TOPIC, 0): (None, 3), (TOPIC, 1): (None, 2)}
        result = await store.apply(first, generation=live, positions=two)
        assert result.events == len(first) and result.frames == len({e.frame_id for e in first})
        assert await store.checkpoints(live) == {(TOPIC, 0): 3, (TOPIC, 1): 2}
        await store.apply(second, generation=live, positions={(TOPIC, 0): (3, 7)})
        assert await store.checkpoints(live) == {(TOPIC, 0): 7, (TOPIC, 1): 2}
        assert await read_back(live) == expected(first + second)
        # Checkpoints alone (a rebuild, after folding the event store).
        result = await store.apply([], generation=live, positions={(TOPIC, 2): (None, 10)})
        assert result == ApplyResult(0, 0, 0)
        assert await store.checkpoints(live) == {(TOPIC, 0): 7, (TOPIC, 1): 2, (TOPIC, 2): 10}

    @pytest.mark.parametrize(
        "positions",
        [
            {(TOPIC, 0): (None, 9)},  # expects none stored
            {(TOPIC, 0): (4, 9)},  # expects an older one
            {(TOPIC, 0): (5, 9), (TOPIC, 1): (3, 4)},  # one partition right, one wrong
        ],
        ids=["none-expected", "older-expected", "one-of-two-wrong"],
    )
    async def test_a_stale_expected_checkpoint_conflicts_and_writes_nothing(
        self,
        store: ProjectionStore,
        read_back: ReadBack,
        positions: dict[tuple[str, int], tuple[int | None, int]],
    ) -> None:
        first, second = batches(history(), 2, seed=3)
        live = await store.live_generation()
        await store.apply(first, generation=live, positions={(TOPIC, 0): (None, 5)})
        before = await read_back(live)
        with pytest.raises(CheckpointConflict):
            await store.apply(second, generation=live, positions=positions, check_live=True)
        assert await read_back(live) == before
        assert await store.checkpoints(live) == {(TOPIC, 0): 5}

    async def test_a_checked_batch_for_a_generation_swapped_out_changes_nothing(
        self,
        store: ProjectionStore,
        read_back: ReadBack,
        new_generation: NewGeneration,
        swap_in: SwapIn,
    ) -> None:
        first, second = batches(history(), 2, seed=4)
        old = await store.live_generation()
        await store.apply(first, generation=old, positions={(TOPIC, 0): (None, 5)}, check_live=True)
        before = await read_back(old)
        new = await new_generation()
        assert new != old and await store.live_generation() == old
        await swap_in(new)
        assert await store.live_generation() == new
        with pytest.raises(GenerationChanged):
            await store.apply(second, generation=old, positions={(TOPIC, 0): (5, 9)}, check_live=True)
        assert await read_back(old) == before
        assert await store.checkpoints(old) == {(TOPIC, 0): 5}
        # The live worker continues on the new generation, from its checkpoints.
        await store.apply(second, generation=new, positions={(TOPIC, 0): (None, 9)}, check_live=True)
        assert await read_back(new) == expected(second)

    async def test_a_generation_is_written_apart_from_the_live_one(
        self, store: ProjectionStore, read_back: ReadBack, new_generation: NewGeneration
    ) -> None:
        events = history()
        live = await store.live_generation()
        await store.apply(events[:5], generation=live, positions={(TOPIC, 0): (None, 5)})
        new = await new_generation()
        for batch in batches(events, 2, seed=5):
            await store.apply(batch, generation=new)  # a rebuild writes without check_live
        await store.apply([], generation=new, positions={(TOPIC, 0): (None, 40)})
        assert await read_back(new) == expected(events)
        assert await read_back(live) == expected(events[:5])
        assert await store.checkpoints(live) == {(TOPIC, 0): 5}
        assert await store.checkpoints(new) == {(TOPIC, 0): 40}

    async def test_a_redelivered_batch_changes_nothing(
        self, store: ProjectionStore, read_back: ReadBack
    ) -> None:
        events = history()
        live = await store.live_generation()
        await store.apply(events, generation=live, positions={(TOPIC, 0): (None, len(events))})
        after = await read_back(live)
        for again in (events, events[::-1], events[3:9]):
            result = await store.apply(again, generation=live)
            assert (result.frames, result.stages, result.events) == (0, 0, len(again))
        # Redelivered with its checkpoint (a worker that re-read it): the same.
        n = len(events)
        await store.apply(events, generation=live, positions={(TOPIC, 0): (n, n)}, check_live=True)
        assert await read_back(live) == after == expected(events)
        assert await store.checkpoints(live) == {(TOPIC, 0): n}

    async def test_the_failure_rollup_equals_one_recomputed_from_the_rows(
        self, store: ProjectionStore, read_back: ReadBack
    ) -> None:
        """Failures added, then moved, made earlier or conflicted, re-traced, and a
        group emptied, in any order and batching: the failure rollup is always the
        one computed from scratch from the final rows."""
        live = await store.live_generation()
        applied: list[ProjEvent] = []
        for seed in range(4):
            first, then = failure_history(f"s{seed}/")
            # Failures first, what moves them after (retractions), then everything again in any order.
            for part in (first, then):
                for batch in batches(part, 2, seed=seed):
                    await store.apply(batch, generation=live)
                applied += part
                assert await read_back(live) == expected(applied)
            for batch in batches(first + then, 3, seed=seed + 10):
                await store.apply(batch, generation=live)
            assert await read_back(live) == expected(applied)
        # The other way round: what moves them first.
        first, then = failure_history("rev/")
        for part in (then, first):
            await store.apply(part, generation=live)
            applied += part
            assert await read_back(live) == expected(applied)
        failures = (await read_back(live)).failure_stats
        hour = T0.replace(minute=0)
        assert ("frame", hour + timedelta(hours=1), "cam-b", "analyze", "Boom") not in failures  # emptied
        count, _, sample = failures[("frame", hour, "cam-a", "notify", "Boom")]
        assert count == 4 * 5 and sample.frame_id == "s3/f.1"

    async def test_concurrent_batches_keep_the_failure_rollup_exact(
        self, store: ProjectionStore, read_back: ReadBack
    ) -> None:
        """Two writers at once (other frames, the same failure groups), each
        retracting failures the other's group holds: nothing is lost."""
        live = await store.live_generation()
        applied: list[ProjEvent] = []
        for round_ in range(3):
            lanes = [failure_history(f"r{round_}-lane{lane}/") for lane in range(2)]
            for part in (0, 1):
                await asyncio.gather(*(store.apply(lane[part], generation=live) for lane in lanes))
                applied += [e for lane in lanes for e in lane[part]]
        assert await read_back(live) == expected(applied)

    async def test_two_writers_retracting_from_one_group_at_once(
        self, store: ProjectionStore, read_back: ReadBack
    ) -> None:
        """Two batches of other frames at once, each retracting one of the two
        latest failures of a group (by an earlier report), and nothing else (no
        other rollup row in common, which would serialise them): each must see
        the other's change, or the group keeps a last time no row has."""
        live = await store.live_generation()

        def failed(fid: str, after_ms: float) -> ProjEvent:
            return ProjEvent(
                event_id=str(uuid.uuid4()),
                event_type="ProcessingFailed",
                frame_id=fid,
                camera_id="cam-a",
                frame_timestamp=T0,
                occurred_at=T0 + timedelta(milliseconds=after_ms),
                stage="analyze",
                error_type="Boom",
                trace_id=f"{fid}-trace",
            )

        applied: list[ProjEvent] = []
        for round_ in range(3):
            a, b, c = (f"r{round_}-{x}" for x in "abc")
            first = [failed(a, 101 + round_), failed(b, 100 + round_), failed(c, 50 - round_)]
            await store.apply(first, generation=live)
            moves = [[failed(a, 55)], [failed(b, 56)]]
            await asyncio.gather(*(store.apply(m, generation=live) for m in moves))
            applied += first + moves[0] + moves[1]
            assert await read_back(live) == expected(applied)

    async def test_a_stage_run_moves_to_the_row_of_its_camera(
        self, store: ProjectionStore, read_back: ReadBack
    ) -> None:
        """A stage run's camera is the least camera id its events name: a report
        naming another one, in any order, moves the run (its status and its
        duration) from one camera's row of the per-camera-and-stage rollup to
        the other's. Summed over cameras it is the per-stage rollup."""

        def ev(tag: str, fid: str, etype: str, after_ms: float, cam: str, **kw: Any) -> ProjEvent:
            return ProjEvent(
                event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tag}/{fid}/{etype}/{cam}")),
                event_type=etype,
                frame_id=f"{tag}/{fid}",
                camera_id=cam,
                frame_timestamp=T0,
                occurred_at=T0 + timedelta(milliseconds=after_ms),
                stage="detect",
                **kw,
            )

        live = await store.live_generation()
        applied: list[ProjEvent] = []
        for tag in ("in-order", "reversed"):
            first = [
                ev(tag, "moves", "StageStarted", 1, "cam-b"),
                ev(tag, "moves", "StageCompleted", 30, "cam-b", duration_ms=29.0),
                ev(tag, "stays", "StageStarted", 1, "cam-b"),
                ev(tag, "stays", "StageFailed", 800, "cam-b", duration_ms=799.0, error_type="Timeout"),
            ]
            # The same completion reported again under another camera id.
            then = [ev(tag, "moves", "StageCompleted", 31, "cam-a", duration_ms=30.0)]
            for part in (first, then) if tag == "in-order" else (then, first):
                await store.apply(part, generation=live)
                applied += part
                assert await read_back(live) == expected(applied)
        snapshot = await read_back(live)
        hour = T0.replace(minute=0)
        runs = {k: v[0] for k, v in snapshot.stage_camera_stats.items()}
        assert runs == {("cam-a", "detect", hour): 2, ("cam-b", "detect", hour): 2}
        # Summed over cameras: the per-stage rollup, counters, time and histogram.
        rows = list(snapshot.stage_camera_stats.values())
        summed = [sum(x) for x in zip(*(v[:-1] for v in rows), strict=True)]
        buckets = tuple(sum(b) for b in zip(*(v[-1] for v in rows), strict=True))
        assert snapshot.stage_stats == {("detect", hour): (*summed[:-1], round(summed[-1], 6), buckets)}


class PostgresProjectionStoreContract(ProjectionStoreContract):
    """The contract for the PostgreSQL store (:class:`FramesProjectionStore`) on
    the pool a subclass provides (fixture ``pool``, fresh and migrated)."""

    @pytest.fixture
    def store(self, pool: asyncpg.Pool) -> FramesProjectionStore:
        return FramesProjectionStore(pool)

    @pytest.fixture
    def read_back(self, pool: asyncpg.Pool) -> ReadBack:
        return PostgresGenerations(pool).read_back

    @pytest.fixture
    def new_generation(self, pool: asyncpg.Pool) -> NewGeneration:
        return PostgresGenerations(pool).new_generation

    @pytest.fixture
    def swap_in(self, pool: asyncpg.Pool) -> SwapIn:
        return PostgresGenerations(pool).swap_in


@dataclass(frozen=True)
class PostgresGenerations:
    """``read_back``, ``new_generation`` and ``swap_in`` for a PostgreSQL store on
    ``pool`` (each holds one connection at a time, as the TimescaleDB harness needs)."""

    pool: asyncpg.Pool

    async def read_back(self, generation: int) -> Snapshot:
        s = GenerationStatements(generation)
        async with self.pool.acquire() as conn:
            frames = await conn.fetch(f"SELECT {', '.join(FRAME_COLS)} FROM {s.frame_table}")
            stages = await conn.fetch(f"SELECT {', '.join(STAGE_COLS)} FROM {s.stage_table}")
            frame_stats = await conn.fetch(f"SELECT * FROM {s.frame_stats_table}")
            stage_stats = await conn.fetch(f"SELECT * FROM {s.stage_stats_table}")
            failure_stats = await conn.fetch(f"SELECT {', '.join(FAILURE_COLS)} FROM {s.failure_stats_table}")
            stage_camera_stats = await conn.fetch(f"SELECT * FROM {s.stage_camera_stats_table}")

        def rollups(
            rows: list[asyncpg.Record], key: tuple[str, ...], counters: tuple[str, ...], latency: str
        ) -> dict[Any, Rollup]:
            return {
                tuple(r[k] for k in key): Rollup(
                    counts={c: r[c] for c in counters},
                    latency_count=r[f"{latency}_count"],
                    latency_sum_ms=r[f"{latency}_sum_ms"],
                    buckets=list(r[f"{latency}_buckets"]),
                )
                for r in rows
            }

        return Snapshot.of(
            [frame_from_db(r) for r in frames],
            [stage_from_db(r) for r in stages],
            rollups(frame_stats, ("camera_id", "hour"), FRAME_COUNTERS, "processing_time"),
            rollups(stage_stats, ("stage", "hour"), STAGE_COUNTERS, "duration"),
            dict(failure_from_db(r) for r in failure_stats),
            rollups(stage_camera_stats, ("camera_id", "stage", "hour"), STAGE_COUNTERS, "duration"),
        )

    async def new_generation(self) -> int:
        async with self.pool.acquire() as conn:
            generation = await conn.fetchval(
                "SELECT coalesce(max(substring(relname FROM '^frame_metadata_g([0-9]+)$')::int), 0) + 1 "
                "FROM pg_class WHERE relname ~ '^frame_metadata_g[0-9]+$'"
            )
            await conn.execute("SELECT tracker_create_frames_generation($1)", generation)
        return int(generation)

    async def swap_in(self, generation: int) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute("SELECT tracker_point_frames_views($1)", generation)
