"""Rollups: additive counters per (camera, hour), per (camera, stage, hour) and
per (stage, hour), and the failure rollup per (source, hour, camera, stage,
error type).

A rollup row is a sum of per-row *contributions*; a batch adds
``contribution(new) - contribution(old)`` for each row it changed, which keeps
the rollups exact whatever the order of the events. A stage run contributes to
its (camera, stage, hour) row; the (stage, hour) rollup is that one summed over
cameras (:func:`by_stage`), so the two always agree. The failure rollup's times
and sample are not sums: see the section on it below. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

from projections.rows import STAGE_RUNNING, STATES, FrameRow, StageRow
from tracker.buckets import N_BUCKETS, bucket_index


def hour_of(ts: datetime) -> datetime:
    return ts.replace(minute=0, second=0, microsecond=0)


@dataclass
class Rollup:
    """Additive counters of one rollup row (a delta, or a whole row)."""

    counts: dict[str, int] = field(default_factory=dict)
    latency_count: int = 0
    latency_sum_ms: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * N_BUCKETS)

    def add(self, other: Rollup, sign: int = 1) -> None:
        for k, v in other.counts.items():
            self.counts[k] = self.counts.get(k, 0) + sign * v
        self.latency_count += sign * other.latency_count
        self.latency_sum_ms += sign * other.latency_sum_ms
        for i, v in enumerate(other.buckets):
            self.buckets[i] += sign * v

    def as_row(self, counters: Iterable[str]) -> tuple[Any, ...]:
        """The rollup columns in table order: ``counters`` (``FRAME_COUNTERS`` or
        ``STAGE_COUNTERS``), then latency count, latency sum and buckets."""
        return (
            *(self.counts.get(c, 0) for c in counters),
            self.latency_count,
            self.latency_sum_ms,
            self.buckets,
        )

    def is_zero(self) -> bool:
        return (
            not any(self.counts.values())
            and self.latency_count == 0
            and not any(self.buckets)
            and abs(self.latency_sum_ms) < 1e-9
        )


FRAME_COUNTERS = ("frames", *STATES)
STAGE_COUNTERS = ("runs", "completed", "failed", "conflicted", "running")


def frame_contribution(row: FrameRow) -> tuple[tuple[str, datetime], Rollup]:
    r = Rollup(counts={"frames": 1, row.state: 1})
    ms = row.total_processing_time_ms
    if ms is not None:
        r.latency_count = 1
        r.latency_sum_ms = ms
        r.buckets[bucket_index(ms)] += 1
    return (row.camera_id, hour_of(row.frame_timestamp)), r


#: A key of the (stage, hour) rollup (``performance_stats``).
StageHourKey = tuple[str, datetime]
#: A key of the per-camera-and-stage rollup (``stage_camera_stats``): ``(camera_id, stage, hour)``.
StageCameraKey = tuple[str, str, datetime]
_Key = TypeVar("_Key", bound=tuple[Any, ...])


def stage_contribution(row: StageRow) -> tuple[StageHourKey, Rollup]:
    """A stage run's contribution to its (stage, hour) row: that to its (camera,
    stage, hour) row (:func:`stage_camera_contribution`) without the camera."""
    (_, stage, hour), r = stage_camera_contribution(row)
    return (stage, hour), r


def stage_camera_contribution(row: StageRow) -> tuple[StageCameraKey, Rollup]:
    status = row.status
    r = Rollup(counts={"runs": 1, status: 1})
    ms = row.duration_ms
    if ms is not None and status != STAGE_RUNNING:
        r.latency_count = 1
        r.latency_sum_ms = float(ms)
        r.buckets[bucket_index(ms)] += 1
    return (row.camera_id, row.stage, hour_of(row.frame_timestamp)), r


def rollup_totals(
    rows: Iterable[Any], contribution: Callable[[Any], tuple[_Key, Rollup]]
) -> dict[_Key, Rollup]:
    """Sum of ``contribution(row)`` over ``rows``: the rollups a store holds once
    every batch of those rows is applied."""
    out: dict[_Key, Rollup] = {}
    for row in rows:
        k, r = contribution(row)
        out.setdefault(k, Rollup()).add(r)
    return out


def rollup_deltas(
    pairs: Iterable[tuple[Any, Any]], contribution: Callable[[Any], tuple[_Key, Rollup]]
) -> dict[_Key, Rollup]:
    """Sum of ``contribution(new) - contribution(old)`` over ``(old, new)`` pairs."""
    out: dict[_Key, Rollup] = {}
    for old, new in pairs:
        if old == new:
            continue
        if old is not None:
            k, r = contribution(old)
            out.setdefault(k, Rollup()).add(r, -1)
        k, r = contribution(new)
        out.setdefault(k, Rollup()).add(r, +1)
    return {k: v for k, v in out.items() if not v.is_zero()}


def by_stage(stage_camera: Mapping[StageCameraKey, Rollup]) -> dict[StageHourKey, Rollup]:
    """The (stage, hour) rollup of per-camera-and-stage rows or deltas: their sum over
    cameras (rows that sum to zero left out, as :func:`rollup_deltas` leaves
    them). Of ``rollup_deltas(pairs, stage_camera_contribution)`` it is
    ``rollup_deltas(pairs, stage_contribution)`` (the latency sums added in
    another order): each contribution is the same without the camera."""
    out: dict[StageHourKey, Rollup] = {}
    for (_, stage, hour), r in stage_camera.items():
        out.setdefault((stage, hour), Rollup()).add(r)
    return {k: v for k, v in out.items() if not v.is_zero()}


# ---- the failure rollup ----------------------------------------------------------
#
# Per (source, hour, camera, stage, error type): how many rows failed, the first
# and the last time one did, and a sample (the latest failure). ``source`` is
# ``"frame"`` for a frame's ``ProcessingFailed`` (``frame_metadata``: its
# error's stage and type, at ``failed_at``) and ``"stage"`` for a failed or
# conflicted stage run (``processing_stages``: its stage and error type, at
# ``finished_at``): the two halves of the failure analysis.
#
# The count is a sum of contributions like the other rollups. The times and the
# sample are not, and a row's failure can move: an earlier ``ProcessingFailed``
# arriving late moves the frame to another error type or stage, or to an earlier
# ``failed_at``; a completion makes a failed stage run conflicted and its
# ``finished_at`` earlier; a later event changes the frame's trace id. So:
#
# * a contribution a batch *adds* merges monotonically (count + 1, ``min`` of
#   the first, the latest by ``(at, frame_id, frame_timestamp, attempt)`` as the
#   sample and its time as the last), which commutes with every other addition;
# * a contribution a batch *retracts* (a row whose contribution changed) marks
#   its group ``recompute``: the store then sets that group from the rows
#   themselves (:func:`failure_totals` over the group's rows), after writing the
#   batch's rows. Retractions are rare (the pipeline's events of a frame never
#   cause one); every other batch only adds.
#
# Either way the rollup is exactly :func:`failure_totals` of the rows, whatever
# the order, duplication and batching of the events.

FRAME_FAILURE, STAGE_FAILURE = "frame", "stage"
#: The stage of a frame's failure that names none (the failure analysis's word for it).
NO_STAGE = "(none)"
#: What a failure without an error type is stored under (a key column is never
#: NULL; a failure event's ``error_type`` is never empty, the codec refuses it).
NO_ERROR_TYPE = ""
#: A failure rollup row's key: ``(source, hour, camera_id, stage, error_type)``.
FailureKey = tuple[str, datetime, str, str, str]


class FailureSample(NamedTuple):
    """One failure: when, and which row. The first four fields are the order the
    sample is chosen on (the latest wins); the trace id is the frame's
    (``last_trace_id``; ``None`` for a stage run)."""

    at: datetime
    frame_id: str
    frame_timestamp: datetime
    attempt: int  # a stage run's; 0 for a frame
    trace_id: str | None


def _later(a: FailureSample | None, b: FailureSample | None) -> FailureSample | None:
    """Of two samples, the later by ``(at, frame_id, frame_timestamp, attempt)``."""
    if a is None:
        return b
    if b is None:
        return a
    return b if b[:4] > a[:4] else a


@dataclass
class FailureStat:
    """One failure rollup row (a whole row, or what a batch adds to one)."""

    failures: int = 0
    first_seen: datetime | None = None
    #: The latest failure; its time is the row's ``last_seen``.
    sample: FailureSample | None = None
    #: A delta only: the batch retracted a failure from this group, which the
    #: store must therefore set from the rows.
    recompute: bool = False

    @property
    def last_seen(self) -> datetime | None:
        return self.sample.at if self.sample else None

    def add(self, failure: FailureSample) -> None:
        self.failures += 1
        if self.first_seen is None or failure.at < self.first_seen:
            self.first_seen = failure.at
        self.sample = _later(self.sample, failure)

    def merge(self, other: FailureStat) -> None:
        """Add a delta (or another row's failures): the monotone merge."""
        self.failures += other.failures
        if other.first_seen is not None and (self.first_seen is None or other.first_seen < self.first_seen):
            self.first_seen = other.first_seen
        self.sample = _later(self.sample, other.sample)
        self.recompute = self.recompute or other.recompute


def _error_type(error_type: str | None) -> str:
    return NO_ERROR_TYPE if error_type is None else error_type


def frame_failure(row: FrameRow) -> tuple[FailureKey, FailureSample] | None:
    """A frame's failure (its earliest ``ProcessingFailed``), or ``None`` if it has none."""
    f = row.failed_ev
    if f is None:
        return None
    key = (
        FRAME_FAILURE,
        hour_of(row.frame_timestamp),
        row.camera_id,
        NO_STAGE if f.stage is None else f.stage,
        _error_type(f.error_type),
    )
    return key, FailureSample(f.occurred_at, row.frame_id, row.frame_timestamp, 0, row.last_trace_id)


def stage_failure(row: StageRow) -> tuple[FailureKey, FailureSample] | None:
    """A failed or conflicted stage run's failure, at its ``finished_at``; ``None`` otherwise."""
    f = row.failed_ev
    if f is None:
        return None
    key = (STAGE_FAILURE, hour_of(row.frame_timestamp), row.camera_id, row.stage, _error_type(f.error_type))
    at = row.finished_at
    assert at is not None  # a run with a failure has finished
    return key, FailureSample(at, row.frame_id, row.frame_timestamp, row.attempt, None)


def failure_totals(
    frames: Iterable[FrameRow], stages: Iterable[StageRow], keys: Container[FailureKey] | None = None
) -> dict[FailureKey, FailureStat]:
    """The failure rollup of whole rows (only the groups in ``keys``, if given):
    what a store holds once every batch of those rows is applied."""
    out: dict[FailureKey, FailureStat] = {}
    found = [frame_failure(f) for f in frames] + [stage_failure(s) for s in stages]
    for c in found:
        if c is not None and (keys is None or c[0] in keys):
            out.setdefault(c[0], FailureStat()).add(c[1])
    return out


def failure_deltas(
    frame_pairs: Iterable[tuple[FrameRow | None, FrameRow]],
    stage_pairs: Iterable[tuple[StageRow | None, StageRow]],
) -> dict[FailureKey, FailureStat]:
    """What the failure rollup gains from ``(old, new)`` row pairs: each new
    failure added, each group a changed failure leaves marked ``recompute``."""
    out: dict[FailureKey, FailureStat] = {}

    def change(
        old: tuple[FailureKey, FailureSample] | None, new: tuple[FailureKey, FailureSample] | None
    ) -> None:
        if old == new:
            return
        if old is not None:
            d = out.setdefault(old[0], FailureStat())
            d.failures -= 1
            d.recompute = True
        if new is not None:
            out.setdefault(new[0], FailureStat()).add(new[1])

    for fold, fnew in frame_pairs:
        change(None if fold is None else frame_failure(fold), frame_failure(fnew))
    for sold, snew in stage_pairs:
        change(None if sold is None else stage_failure(sold), stage_failure(snew))
    return out
