"""How the fold's rows are stored: the columns of ``frame_metadata_g<N>`` and
``processing_stages_g<N>`` that the projection writes, and the conversions of
:class:`FrameRow` and :class:`StageRow` to and from them; the same for a row of
the failure rollup ``failure_stats_g<N>``.

Besides what readers see, a row keeps the fold's state (which event won each
choice, the applied event ids), so that a stored row merges with a new batch
exactly as the in-memory row would.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from projections.rollups import FailureKey, FailureSample, FailureStat
from projections.rows import Capture, Completion, Failure, FrameRow, StageOutcome, StageRow, TraceMark

FRAME_COLS = (
    "frame_id",
    "frame_timestamp",
    "camera_id",
    "state",
    "captured_at",
    "queued_at",
    "processing_started_at",
    "completed_at",
    "failed_at",
    "total_processing_time_ms",
    "error_type",
    "error_message",
    "error_stage",
    "metadata",
    "last_trace_id",
    "events_applied",
    "last_event_at",
    "completed_event_id",
    "completed_duration_ms",
    "failed_event_id",
    "failed_duration_ms",
    "captured_event_id",
    "trace_event_at",
    "trace_event_id",
    "stage_seen_at",
    "event_ids",
)
STAGE_COLS = (
    "frame_id",
    "frame_timestamp",
    "stage",
    "attempt",
    "camera_id",
    "status",
    "started_at",
    "finished_at",
    "duration_ms",
    "error_type",
    "error_message",
    "completed_event_at",
    "completed_event_id",
    "completed_duration_ms",
    "failed_event_at",
    "failed_event_id",
    "failed_duration_ms",
)


def frame_to_db(r: FrameRow) -> tuple[Any, ...]:
    return (
        r.frame_id,
        r.frame_timestamp,
        r.camera_id,
        r.state,
        r.captured_at,
        r.queued_at,
        r.processing_started_at,
        r.completed_at,
        r.failed_at,
        r.total_processing_time_ms,
        r.error_type,
        r.error_message,
        r.error_stage,
        json.dumps(r.metadata, sort_keys=True),
        r.last_trace_id,
        r.events_applied,
        r.last_event_at,
        r.completed_ev.event_id if r.completed_ev else None,
        r.completed_ev.duration_ms if r.completed_ev else None,
        r.failed_ev.event_id if r.failed_ev else None,
        r.failed_ev.duration_ms if r.failed_ev else None,
        r.captured_ev.event_id if r.captured_ev else None,
        r.trace_ev.occurred_at if r.trace_ev else None,
        r.trace_ev.event_id if r.trace_ev else None,
        r.stage_seen_at,
        sorted(r.event_ids),
    )


def frame_from_db(rec: Mapping[str, Any]) -> FrameRow:
    meta = json.loads(rec["metadata"]) if isinstance(rec["metadata"], str) else rec["metadata"]
    return FrameRow(
        frame_id=rec["frame_id"],
        frame_timestamp=rec["frame_timestamp"],
        camera_id=rec["camera_id"],
        captured_at=rec["captured_at"],
        queued_at=rec["queued_at"],
        processing_started_at=rec["processing_started_at"],
        completed_at=rec["completed_at"],
        failed_at=rec["failed_at"],
        completed_ev=Completion(rec["completed_at"], rec["completed_event_id"], rec["completed_duration_ms"])
        if rec["completed_event_id"] is not None
        else None,
        failed_ev=Failure(
            rec["failed_at"],
            rec["failed_event_id"],
            rec["failed_duration_ms"],
            rec["error_type"],
            rec["error_message"],
            rec["error_stage"],
        )
        if rec["failed_event_id"] is not None
        else None,
        captured_ev=Capture(rec["captured_at"], rec["captured_event_id"], tuple(sorted((meta or {}).items())))
        if rec["captured_event_id"] is not None
        else None,
        trace_ev=TraceMark(rec["trace_event_at"], rec["trace_event_id"], rec["last_trace_id"])
        if rec["trace_event_id"] is not None
        else None,
        last_event_at=rec["last_event_at"],
        stage_seen_at=rec["stage_seen_at"],
        event_ids=frozenset(rec["event_ids"]),
    )


def stage_to_db(r: StageRow) -> tuple[Any, ...]:
    c, f = r.completed_ev, r.failed_ev
    return (
        r.frame_id,
        r.frame_timestamp,
        r.stage,
        r.attempt,
        r.camera_id,
        r.status,
        r.started_at,
        r.finished_at,
        r.duration_ms,
        r.error_type,
        r.error_message,
        c.occurred_at if c else None,
        c.event_id if c else None,
        c.duration_ms if c else None,
        f.occurred_at if f else None,
        f.event_id if f else None,
        f.duration_ms if f else None,
    )


def stage_from_db(rec: Mapping[str, Any]) -> StageRow:
    c = (
        StageOutcome(rec["completed_event_at"], rec["completed_event_id"], rec["completed_duration_ms"])
        if rec["completed_event_id"] is not None
        else None
    )
    f = (
        StageOutcome(
            rec["failed_event_at"],
            rec["failed_event_id"],
            rec["failed_duration_ms"],
            rec["error_type"],
            rec["error_message"],
        )
        if rec["failed_event_id"] is not None
        else None
    )
    return StageRow(
        frame_id=rec["frame_id"],
        frame_timestamp=rec["frame_timestamp"],
        stage=rec["stage"],
        attempt=rec["attempt"],
        camera_id=rec["camera_id"],
        started_at=rec["started_at"],
        completed_ev=c,
        failed_ev=f,
    )


#: ``failure_stats_g<N>``: the key, then the values.
FAILURE_KEY_COLS = ("source", "hour", "camera_id", "stage", "error_type")
FAILURE_COLS = (
    *FAILURE_KEY_COLS,
    "failures",
    "first_seen",
    "last_seen",
    "sample_frame_id",
    "sample_frame_timestamp",
    "sample_attempt",
    "sample_trace_id",
)


def failure_to_db(key: FailureKey, stat: FailureStat) -> tuple[Any, ...]:
    s = stat.sample
    return (
        *key,
        stat.failures,
        stat.first_seen,
        s.at if s else None,
        s.frame_id if s else None,
        s.frame_timestamp if s else None,
        s.attempt if s else None,
        s.trace_id if s else None,
    )


def failure_from_db(rec: Mapping[str, Any]) -> tuple[FailureKey, FailureStat]:
    key: FailureKey = (rec["source"], rec["hour"], rec["camera_id"], rec["stage"], rec["error_type"])
    sample = (
        FailureSample(
            rec["last_seen"],
            rec["sample_frame_id"],
            rec["sample_frame_timestamp"],
            rec["sample_attempt"],
            rec["sample_trace_id"],
        )
        if rec["sample_frame_id"] is not None
        else None
    )
    return key, FailureStat(rec["failures"], rec["first_seen"], sample)
