"""The frame fold: events → ``frame_metadata``, ``processing_stages`` and rollups.

Everything here is pure (no I/O) and order-independent **by construction**:
each row is a join-semilattice state, whose every field merges with an
associative, commutative and idempotent operation —

* per-state timestamps take the *earliest* occurrence (``min``);
* values chosen among several events (error, attributes, trace id) are taken
  from the event that wins a total order on ``(occurred_at, event_id)``, so
  the choice never depends on arrival order;
* the set of applied event ids is a set union, which also makes
  ``events_applied`` exact under duplicates.

Merging a batch into a stored row therefore gives the same row whatever the
order and multiplicity of the events. Rollups are sums of per-row
*contributions*; a batch adds ``contribution(new) - contribution(old)`` for each
row it changed, which keeps them exact too (the per-stage rollup's deltas are
the per-camera-and-stage ones summed over cameras). The failure rollup's first and last
times and its sample merge monotonically as failures are added, and a group a
batch retracts a failure from is set again from its rows
(:mod:`projections.rollups`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, Self, TypeVar

# The row types, the rollups and the histogram buckets are re-exported: the
# fold's users import them from here.
from projections.rollups import (
    FRAME_COUNTERS,
    FRAME_FAILURE,
    NO_ERROR_TYPE,
    NO_STAGE,
    STAGE_COUNTERS,
    STAGE_FAILURE,
    FailureKey,
    FailureSample,
    FailureStat,
    Rollup,
    StageCameraKey,
    StageHourKey,
    by_stage,
    failure_deltas,
    failure_totals,
    frame_contribution,
    frame_failure,
    hour_of,
    rollup_deltas,
    rollup_totals,
    stage_camera_contribution,
    stage_contribution,
    stage_failure,
)
from projections.rows import (
    CAPTURED,
    COMPLETED,
    CONFLICTED,
    FAILED,
    PROCESSING,
    QUEUED,
    STAGE_COMPLETED,
    STAGE_CONFLICTED,
    STAGE_FAILED,
    STAGE_RUNNING,
    STATES,
    Capture,
    Completion,
    Failure,
    FrameRow,
    ProjEvent,
    StageOutcome,
    StageRow,
    TraceMark,
)
from tracker.buckets import BUCKET_BOUNDS_MS, N_BUCKETS, bucket_index, percentile_from_buckets
from tracker.domain import STAGE_EVENT_TYPES, EventType

__all__ = [
    "BUCKET_BOUNDS_MS",
    "CAPTURED",
    "COMPLETED",
    "CONFLICTED",
    "FAILED",
    "FRAME_COUNTERS",
    "FRAME_FAILURE",
    "NO_ERROR_TYPE",
    "NO_STAGE",
    "N_BUCKETS",
    "PROCESSING",
    "QUEUED",
    "STAGE_COMPLETED",
    "STAGE_CONFLICTED",
    "STAGE_COUNTERS",
    "STAGE_FAILED",
    "STAGE_FAILURE",
    "STAGE_RUNNING",
    "STATES",
    "BatchFold",
    "Capture",
    "Completion",
    "Failure",
    "FailureKey",
    "FailureSample",
    "FailureStat",
    "FrameKey",
    "FrameRow",
    "Merged",
    "ProjEvent",
    "Rollup",
    "StageCameraKey",
    "StageHourKey",
    "StageKey",
    "StageOutcome",
    "StageRow",
    "TraceMark",
    "bucket_index",
    "by_stage",
    "failure_deltas",
    "failure_totals",
    "fold",
    "frame_contribution",
    "frame_failure",
    "frame_row_of",
    "hour_of",
    "merge_batch",
    "percentile_from_buckets",
    "rollup_deltas",
    "rollup_totals",
    "stage_camera_contribution",
    "stage_contribution",
    "stage_failure",
    "stage_row_of",
]

# The named tuples a row keeps are built with ``tuple.__new__``, values in field
# order: calling ``Capture(...)`` runs a generated ``__new__``, twice the cost
# (the fold builds one or two per event).
_new = tuple.__new__


def frame_row_of(e: ProjEvent) -> FrameRow:
    """The row that the single event ``e`` gives."""
    t, eid = e.occurred_at, e.event_id
    kw: dict[str, Any] = {}
    et = e.event_type
    if et == EventType.CAPTURED:
        kw["captured_at"] = t
        kw["captured_ev"] = _new(Capture, (t, eid, tuple(sorted(e.attributes.items()))))
    elif et == EventType.QUEUED:
        kw["queued_at"] = t
    elif et == EventType.PROCESSING_STARTED:
        kw["processing_started_at"] = t
    elif et in STAGE_EVENT_TYPES:
        kw["stage_seen_at"] = t
    elif et == EventType.COMPLETED:
        kw["completed_at"] = t
        kw["completed_ev"] = _new(Completion, (t, eid, e.duration_ms))
    elif et == EventType.FAILED:
        kw["failed_at"] = t
        kw["failed_ev"] = _new(Failure, (t, eid, e.duration_ms, e.error_type, e.error_message, e.stage))
    if e.trace_id:
        kw["trace_ev"] = _new(TraceMark, (t, eid, e.trace_id))
    return FrameRow(
        frame_id=e.frame_id,
        frame_timestamp=e.frame_timestamp,
        camera_id=e.camera_id,
        last_event_at=t,
        event_ids=frozenset((eid,)),
        **kw,
    )


def stage_row_of(e: ProjEvent) -> StageRow | None:
    if e.event_type not in STAGE_EVENT_TYPES or e.stage is None:
        return None
    t, eid = e.occurred_at, e.event_id
    kw: dict[str, Any] = {}
    if e.event_type == EventType.STAGE_STARTED:
        kw["started_at"] = t
    elif e.event_type == EventType.STAGE_COMPLETED:
        kw["completed_ev"] = _new(StageOutcome, (t, eid, e.duration_ms, None, None))
    elif e.event_type == EventType.STAGE_FAILED:
        kw["failed_ev"] = _new(StageOutcome, (t, eid, e.duration_ms, e.error_type, e.error_message))
    return StageRow(
        frame_id=e.frame_id,
        frame_timestamp=e.frame_timestamp,
        stage=e.stage,
        attempt=e.attempt,
        camera_id=e.camera_id,
        **kw,
    )


#: A frame row's key: ``(frame_id, frame_timestamp)``.
FrameKey = tuple[str, datetime]
#: A stage row's key: ``(frame_id, frame_timestamp, stage, attempt)``.
StageKey = tuple[str, datetime, str, int]


@dataclass
class BatchFold:
    """A batch folded in memory per frame: one row per frame and per stage run."""

    frames: dict[FrameKey, FrameRow] = field(default_factory=dict)
    stages: dict[StageKey, StageRow] = field(default_factory=dict)

    def add(self, e: ProjEvent) -> None:
        fk = (e.frame_id, e.frame_timestamp)
        row = frame_row_of(e)
        cur = self.frames.get(fk)
        self.frames[fk] = row if cur is None else cur.merge(row)
        srow = stage_row_of(e)
        if srow is not None:
            sk = (e.frame_id, e.frame_timestamp, srow.stage, srow.attempt)
            scur = self.stages.get(sk)
            self.stages[sk] = srow if scur is None else scur.merge(srow)

    def extend(self, events: Iterable[ProjEvent]) -> BatchFold:
        for e in events:
            self.add(e)
        return self


def fold(events: Iterable[ProjEvent]) -> BatchFold:
    """Reference fold: apply events one at a time (callers pass occurrence order)."""
    return BatchFold().extend(events)


@dataclass(frozen=True)
class Merged:
    """A batch merged into the stored rows it touches: the new versions of the
    rows that changed (in key order) and what the rollups gain from them
    (``stage_deltas`` are ``stage_camera_deltas`` summed over cameras).

    ``failure_deltas`` are added with :meth:`FailureStat.merge`; a group marked
    ``recompute`` is then set from the rows (:func:`failure_totals`) once the
    batch's rows are written (see :mod:`projections.rollups`)."""

    frames: list[FrameRow]
    stages: list[StageRow]
    frame_deltas: dict[tuple[str, datetime], Rollup]
    stage_deltas: dict[StageHourKey, Rollup]
    stage_camera_deltas: dict[StageCameraKey, Rollup]
    failure_deltas: dict[FailureKey, FailureStat]


class _Row(Protocol):
    def merge(self, other: Self) -> Self: ...


_K = TypeVar("_K", FrameKey, StageKey)
_R = TypeVar("_R", bound=_Row)


def _changed(batch: dict[_K, _R], stored: Mapping[_K, _R]) -> list[tuple[_R | None, _R]]:
    """``(stored row or None, merged row)`` of each row the batch changes, in key order."""
    pairs: list[tuple[_R | None, _R]] = []
    for k in sorted(batch):
        old = stored.get(k)
        new = batch[k] if old is None else old.merge(batch[k])
        if new != old:
            pairs.append((old, new))
    return pairs


def merge_batch(
    batch: BatchFold, stored_frames: Mapping[FrameKey, FrameRow], stored_stages: Mapping[StageKey, StageRow]
) -> Merged:
    """Merge ``batch`` into the stored rows of its frames (any the store has;
    rows it lacks are new). A row the batch leaves as it was (a redelivery) is
    not among the changes."""
    fpairs = _changed(batch.frames, stored_frames)
    spairs = _changed(batch.stages, stored_stages)
    stage_camera_deltas = rollup_deltas(spairs, stage_camera_contribution)
    return Merged(
        frames=[new for _, new in fpairs],
        stages=[new for _, new in spairs],
        frame_deltas=rollup_deltas(fpairs, frame_contribution),
        stage_deltas=by_stage(stage_camera_deltas),
        stage_camera_deltas=stage_camera_deltas,
        failure_deltas=failure_deltas(fpairs, spairs),
    )
