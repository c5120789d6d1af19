"""Order independence of the projection fold, proved on random histories.

Any permutation of a frame's events, with any duplicates, split into any
batches and merged into stored rows, must give exactly the rows (and rollups)
that applying each event once in occurrence order gives. The failure rollup,
kept as the stores keep it (deltas merged, groups a batch retracts a failure
from set again from the rows), must equal the one computed from scratch from
the final rows; so must the per-camera-and-stage rollup, and the per-stage rollup
kept, as the stores keep it, from its deltas summed over cameras.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from projections.fold import (
    COMPLETED,
    CONFLICTED,
    FAILED,
    BatchFold,
    FailureStat,
    FrameRow,
    ProjEvent,
    Rollup,
    by_stage,
    failure_deltas,
    failure_totals,
    fold,
    frame_contribution,
    percentile_from_buckets,
    rollup_deltas,
    rollup_totals,
    stage_camera_contribution,
    stage_contribution,
)

T0 = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
STAGES = ("detect", "analyze", "notify")


@st.composite
def frame_history(draw: st.DrawFn, frame_no: int) -> list[ProjEvent]:
    """A plausible (sometimes contradictory, sometimes partial) history of one frame."""
    fid = f"f{frame_no}"
    cam = f"cam-{draw(st.integers(1, 3))}"
    fts = T0 + timedelta(minutes=draw(st.integers(0, 180)))
    t = fts
    base = (frame_no << 80) + draw(st.integers(0, 2**40)) * 1000
    ids = iter(uuid.UUID(int=base + i) for i in range(1000))

    def ev(etype: str, dt_ms: float, **kw: object) -> ProjEvent:
        nonlocal t
        t = t + timedelta(milliseconds=dt_ms)
        return ProjEvent(
            event_id=str(next(ids)),
            event_type=etype,
            frame_id=fid,
            camera_id=cam,
            frame_timestamp=fts,
            occurred_at=t,
            trace_id=draw(st.sampled_from([None, f"{frame_no:032x}"])),
            **kw,
        )  # type: ignore[arg-type]

    out = [ev("FrameCaptured", 0, attributes={"w": "1920"}), ev("FrameQueued", 1)]
    out.append(ev("ProcessingStarted", draw(st.floats(0, 50))))
    outcome = draw(st.sampled_from(["complete", "fail", "both", "open"]))
    for name in STAGES[: draw(st.integers(0, 3))]:
        for attempt in range(1, draw(st.integers(1, 2)) + 1):
            out.append(ev("StageStarted", 0.1, stage=name, attempt=attempt))
            d = draw(st.floats(0.5, 3000))
            if draw(st.booleans()):
                out.append(ev("StageCompleted", d, stage=name, attempt=attempt, duration_ms=d))
            else:
                out.append(
                    ev(
                        "StageFailed",
                        d,
                        stage=name,
                        attempt=attempt,
                        duration_ms=d,
                        error_type="E",
                        error_message="m",
                    )
                )
    total = draw(st.one_of(st.none(), st.floats(0, 20000)))
    if outcome in ("complete", "both"):
        out.append(ev("ProcessingCompleted", 1, duration_ms=total))
    if outcome in ("fail", "both"):
        out.append(
            ev(
                "ProcessingFailed",
                1,
                duration_ms=total,
                error_type="Boom",
                error_message="it broke",
                stage="analyze",
            )
        )
    # Drop a random subset of the tail: histories can be incomplete.
    keep = draw(st.integers(1, len(out)))
    out = out[:keep] if outcome == "open" else out
    # Re-emitted events: the same fact sent again with a new id, another time and
    # other details (a service retrying its report). These compete in the fold.
    for _ in range(draw(st.integers(0, 3))):
        orig = draw(st.sampled_from(out))
        shift = timedelta(milliseconds=draw(st.sampled_from([-5, 0, 0, 7])))
        out.append(
            replace(
                orig,
                event_id=str(next(ids)),
                occurred_at=orig.occurred_at + shift,
                duration_ms=None if orig.duration_ms is None else orig.duration_ms + 1,
                error_message=None if orig.error_message is None else "re-sent",
                # A re-sent failure may name another error type or stage: the
                # failure rollup then moves the frame or stage run to another group.
                error_type=orig.error_type
                if orig.error_type is None
                else draw(st.sampled_from([orig.error_type, "Other", None])),
                stage=orig.stage
                if orig.event_type != "ProcessingFailed"
                else draw(st.sampled_from([orig.stage, "detect", None])),
                attributes={"w": "1280"} if orig.attributes else {},
                trace_id=draw(st.sampled_from([None, f"{frame_no + 1:032x}"])),
                # Another camera id (the least wins): a frame's and its stage
                # runs' rollup rows move to that camera's.
                camera_id=draw(st.sampled_from([orig.camera_id, orig.camera_id, "cam-0"])),
            )
        )
    return out


@st.composite
def histories(draw: st.DrawFn) -> list[ProjEvent]:
    n = draw(st.integers(1, 6))
    events: list[ProjEvent] = []
    for i in range(n):
        events.extend(draw(frame_history(i)))
    return events


@st.composite
def delivery(draw: st.DrawFn, events: list[ProjEvent]) -> list[list[ProjEvent]]:
    """Shuffled, duplicated, split into batches."""
    dup = events + draw(st.lists(st.sampled_from(events), max_size=len(events)))
    shuffled = draw(st.permutations(dup))
    cuts = sorted(draw(st.lists(st.integers(0, len(shuffled)), max_size=5)))
    batches, prev = [], 0
    for c in [*cuts, len(shuffled)]:
        batches.append(list(shuffled[prev:c]))
        prev = c
    return batches


def apply_batches(batches: list[list[ProjEvent]]):  # type: ignore[no-untyped-def]
    """What the worker does: fold each batch, merge into stored rows, add rollup
    deltas (the per-stage ones: the per-camera-and-stage ones summed over cameras);
    merge the failure deltas and set each group marked ``recompute`` from the
    rows."""
    frames: dict = {}
    stages: dict = {}
    frame_rollup: dict = {}
    stage_rollup: dict = {}
    stage_camera_rollup: dict = {}
    failure_rollup: dict = {}
    for batch in batches:
        bf = BatchFold().extend(batch)
        fpairs, spairs = [], []
        for k, row in bf.frames.items():
            old = frames.get(k)
            new = row if old is None else old.merge(row)
            frames[k] = new
            fpairs.append((old, new))
        for k, row in bf.stages.items():
            old = stages.get(k)
            new = row if old is None else old.merge(row)
            stages[k] = new
            spairs.append((old, new))
        stage_camera_deltas = rollup_deltas(spairs, stage_camera_contribution)
        for target, deltas in (
            (frame_rollup, rollup_deltas(fpairs, frame_contribution)),
            (stage_rollup, by_stage(stage_camera_deltas)),
            (stage_camera_rollup, stage_camera_deltas),
        ):
            for k, d in deltas.items():
                target.setdefault(k, Rollup()).add(d)
        changed = failure_deltas(fpairs, spairs)
        for k, fd in changed.items():
            failure_rollup.setdefault(k, FailureStat()).merge(fd)
        recompute = {k for k, fd in changed.items() if fd.recompute}
        fresh = failure_totals(frames.values(), stages.values(), recompute)
        for k in recompute:
            failure_rollup[k] = fresh.get(k) or FailureStat()
    return (
        frames,
        stages,
        _clean(frame_rollup),
        _clean(stage_rollup),
        _clean(stage_camera_rollup),
        _clean_failures(failure_rollup),
    )


def _clean_failures(rollup: dict) -> dict:
    """The failure rollup without its empty rows, which must hold nothing else."""
    for f in rollup.values():
        assert f.failures >= 0 and not f.recompute
        if not f.failures:
            assert f.first_seen is None and f.sample is None
    return {k: (f.failures, f.first_seen, f.sample) for k, f in rollup.items() if f.failures}


def _clean(rollups: dict) -> dict:
    out = {}
    for k, r in rollups.items():
        if r.is_zero():
            continue
        out[k] = (
            {c: n for c, n in r.counts.items() if n},
            r.latency_count,
            round(r.latency_sum_ms, 6),
            tuple(r.buckets),
        )
    return out


def reference(events: list[ProjEvent]):  # type: ignore[no-untyped-def]
    ordered = sorted({e.event_id: e for e in events}.values(), key=lambda e: e.order_key)
    ref = fold(ordered)
    fr, sr = {}, {}
    for row in ref.frames.values():
        k, r = frame_contribution(row)
        fr.setdefault(k, Rollup()).add(r)
    for row in ref.stages.values():
        k, r = stage_contribution(row)
        sr.setdefault(k, Rollup()).add(r)
    scr = rollup_totals(ref.stages.values(), stage_camera_contribution)
    failures = _clean_failures(failure_totals(ref.frames.values(), ref.stages.values()))
    return ref.frames, ref.stages, _clean(fr), _clean(sr), _clean(scr), failures


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_delivery_gives_the_reference_rows_and_rollups(data: st.DataObject) -> None:
    events = data.draw(histories())
    batches = data.draw(delivery(events))
    assert apply_batches(batches) == reference(events)


@settings(max_examples=100, deadline=None)
@given(histories())
def test_events_applied_counts_distinct_events(events: list[ProjEvent]) -> None:
    frames, *_ = apply_batches([events, events[::-1]])
    for row in frames.values():
        assert row.events_applied == len({e.event_id for e in events if e.frame_id == row.frame_id})


def _ev(etype: str, ms: int, **kw: object) -> ProjEvent:
    return ProjEvent(
        event_id=str(uuid.UUID(int=ms)),
        event_type=etype,
        frame_id="f",
        camera_id="c",
        frame_timestamp=T0,
        occurred_at=T0 + timedelta(milliseconds=ms),
        **kw,
    )  # type: ignore[arg-type]


def test_contradiction_is_marked_not_resolved_by_arrival() -> None:
    done = _ev("ProcessingCompleted", 10, duration_ms=5.0)
    fail = _ev("ProcessingFailed", 20, error_type="E", error_message="m")
    for order in ([done, fail], [fail, done]):
        row = next(iter(fold(order).frames.values()))
        assert row.state == CONFLICTED and row.total_processing_time_ms is None
    assert next(iter(fold([done]).frames.values())).state == COMPLETED
    assert next(iter(fold([fail]).frames.values())).state == FAILED


def test_total_processing_time_falls_back_to_timestamps() -> None:
    rows = fold([_ev("ProcessingStarted", 100), _ev("ProcessingCompleted", 350)]).frames
    assert next(iter(rows.values())).total_processing_time_ms == 250.0


def test_percentile_error_is_within_the_bucket() -> None:
    from projections.fold import N_BUCKETS, bucket_index

    values = [12.0] * 50 + [80.0] * 45 + [900.0] * 5
    buckets = [0] * N_BUCKETS
    for v in values:
        buckets[bucket_index(v)] += 1
    p50 = percentile_from_buckets(buckets, 0.50)
    p99 = percentile_from_buckets(buckets, 0.99)
    assert p50 is not None and 10 <= p50 <= 20  # true p50 is 12, bucket (10, 20]
    assert p99 is not None and 750 <= p99 <= 1000  # true p99 is 900, bucket (750, 1000]
    assert percentile_from_buckets([0] * N_BUCKETS, 0.5) is None


def test_rows_built_by_the_fast_init_are_frozen_dataclasses() -> None:
    import dataclasses

    import pytest

    t = datetime(2026, 1, 1, tzinfo=UTC)
    e = ProjEvent("e1", "FrameCaptured", "f1", "cam", t, t)
    assert (e.stage, e.attempt, e.attributes) == (None, 1, {})
    assert ProjEvent("e2", "FrameCaptured", "f1", "cam", t, t).attributes is not e.attributes
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.frame_id = "other"  # type: ignore[misc]
    row = FrameRow(frame_id="f1", frame_timestamp=t, camera_id="cam")
    assert row == FrameRow("f1", t, "cam") and hash(row) == hash(FrameRow("f1", t, "cam"))
    assert replace(row, camera_id="b").camera_id == "b"
    assert row.merge(replace(row, last_event_at=t)).last_event_at == t
    assert replace(row, last_event_at=t).merge(row).last_event_at == t
