"""Frame lifecycle events: plain frozen dataclasses, no I/O.

On the wire every event is one Avro record, ``FrameEvent`` (see
``schemas/frame_event.v1.avsc``): the common fields plus the union of every
type's own fields, most of them nullable. One flat envelope keeps decoding to a
single schema lookup per record and lets an unknown ``event_type`` reach
validation (and the dead-letter topic) instead of failing inside Avro.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from tracker.domain import CAMERA_EVENT_TYPES as CAMERA_EVENT_TYPES  # re-exported: its old home
from tracker.domain import EventType, Frame, FrameChange, FrameError, ProcessingStage

CAMERA = "camera"
PROCESSING = "processing"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_micros(ts: datetime) -> int:
    """Microseconds since the epoch, exact (no float rounding)."""
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


@dataclass(frozen=True, kw_only=True)
class FrameEvent:
    """Fields every event carries. ``frame_timestamp`` is the capture time,
    which partitions every table whatever order events arrive in."""

    event_type: ClassVar[str] = ""
    #: Which topic family carries it: derived from the event type, never written twice.
    source: ClassVar[str] = PROCESSING

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.event_type:
            cls.source = CAMERA if EventType(cls.event_type).from_camera else PROCESSING

    frame_id: str
    camera_id: str
    frame_timestamp: datetime
    occurred_at: datetime
    #: The service that emitted it; a repository fills in its own name when empty.
    producer: str = ""
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    attributes: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def for_frame(cls, frame: Frame, *, occurred_at: datetime | None = None, **fields: Any) -> Any:
        """This event for ``frame``, occurring now (by the frame's clock) unless
        ``occurred_at`` says otherwise: ``ProcessingStarted.for_frame(frame)``,
        ``StageCompleted.for_frame(frame, stage="detect", duration_ms=12.5)``."""
        return cls(
            frame_id=frame.frame_id,
            camera_id=frame.camera_id,
            frame_timestamp=frame.timestamp,
            occurred_at=occurred_at or frame.wall_clock(),
            **fields,
        )

    @property
    def fact_key(self) -> tuple[str, str, str | None, int]:
        """What makes this event one fact of its frame's lifecycle: two events
        with the same key record the same thing (see ``FrameRepository``)."""
        return (self.frame_id, self.event_type, getattr(self, "stage", None), getattr(self, "attempt", 1))

    def to_record(self) -> dict[str, Any]:
        """The Avro envelope dict for this event."""
        rec: dict[str, Any] = dict(_EMPTY_RECORD)
        rec.update(
            event_id=self.event_id,
            event_type=self.event_type,
            frame_id=self.frame_id,
            camera_id=self.camera_id,
            frame_timestamp=to_micros(self.frame_timestamp),
            occurred_at=to_micros(self.occurred_at),
            producer=self.producer,
            attributes=dict(self.attributes),
        )
        for f in fields(self):
            if f.name in _ENVELOPE_FIELDS and f.name not in _COMMON:
                rec[f.name] = getattr(self, f.name)
        return rec


@dataclass(frozen=True, kw_only=True)
class FrameCaptured(FrameEvent):
    event_type: ClassVar[str] = EventType.CAPTURED


@dataclass(frozen=True, kw_only=True)
class FrameQueued(FrameEvent):
    event_type: ClassVar[str] = EventType.QUEUED


@dataclass(frozen=True, kw_only=True)
class ProcessingStarted(FrameEvent):
    event_type: ClassVar[str] = EventType.PROCESSING_STARTED


@dataclass(frozen=True, kw_only=True)
class StageStarted(FrameEvent):
    event_type: ClassVar[str] = EventType.STAGE_STARTED
    stage: str
    attempt: int = 1


@dataclass(frozen=True, kw_only=True)
class StageCompleted(FrameEvent):
    event_type: ClassVar[str] = EventType.STAGE_COMPLETED
    stage: str
    attempt: int = 1
    duration_ms: float


@dataclass(frozen=True, kw_only=True)
class StageFailed(FrameEvent):
    event_type: ClassVar[str] = EventType.STAGE_FAILED
    stage: str
    attempt: int = 1
    duration_ms: float
    error_type: str
    error_message: str


@dataclass(frozen=True, kw_only=True)
class ProcessingCompleted(FrameEvent):
    event_type: ClassVar[str] = EventType.COMPLETED
    duration_ms: float | None = None  # total processing time


@dataclass(frozen=True, kw_only=True)
class ProcessingFailed(FrameEvent):
    event_type: ClassVar[str] = EventType.FAILED
    error_type: str
    error_message: str
    stage: str | None = None
    duration_ms: float | None = None  # total processing time until the failure


EVENT_CLASSES: Mapping[str, type[FrameEvent]] = {
    cls.event_type: cls
    for cls in (
        FrameCaptured,
        FrameQueued,
        ProcessingStarted,
        StageStarted,
        StageCompleted,
        StageFailed,
        ProcessingCompleted,
        ProcessingFailed,
    )
}
EVENT_TYPES = frozenset(EVENT_CLASSES)

_COMMON = frozenset(
    {"event_id", "frame_id", "camera_id", "frame_timestamp", "occurred_at", "producer", "attributes"}
)
_ENVELOPE_FIELDS = _COMMON | {"stage", "attempt", "duration_ms", "error_type", "error_message"}
_EMPTY_RECORD: Mapping[str, Any] = {
    "stage": None,
    "attempt": 1,
    "duration_ms": None,
    "error_type": None,
    "error_message": None,
}


def from_record(rec: Mapping[str, Any]) -> FrameEvent:
    """Build the typed event from a decoded (and validated) envelope."""
    cls = EVENT_CLASSES[rec["event_type"]]
    kwargs: dict[str, Any] = {
        "event_id": rec["event_id"],
        "frame_id": rec["frame_id"],
        "camera_id": rec["camera_id"],
        "frame_timestamp": from_micros(rec["frame_timestamp"]),
        "occurred_at": from_micros(rec["occurred_at"]),
        "producer": rec["producer"],
        "attributes": dict(rec.get("attributes") or {}),
    }
    for f in fields(cls):
        if f.name in _ENVELOPE_FIELDS and f.name not in _COMMON and rec.get(f.name) is not None:
            kwargs[f.name] = rec[f.name]
    return cls(**kwargs)


# ---- building events from the domain --------------------------------------


def _common(frame: Frame, producer: str, occurred_at: datetime | None) -> dict[str, Any]:
    return {
        "frame_id": frame.frame_id,
        "camera_id": frame.camera_id,
        "frame_timestamp": frame.timestamp,
        "occurred_at": occurred_at or frame.wall_clock(),
        "producer": producer,
    }


def frame_captured(frame: Frame, producer: str) -> FrameCaptured:
    return FrameCaptured(**_common(frame, producer, frame.timestamp), attributes=dict(frame.metadata))


def frame_queued(frame: Frame, producer: str) -> FrameQueued:
    return FrameQueued(**_common(frame, producer, frame.state_times.get(frame.state)))


def processing_started(frame: Frame, producer: str) -> ProcessingStarted:
    return ProcessingStarted(**_common(frame, producer, frame.state_times.get(frame.state)))


def stage_started(stage: ProcessingStage, producer: str) -> StageStarted:
    return StageStarted(
        **_common(stage.frame, producer, stage.started_at), stage=stage.name, attempt=stage.attempt
    )


def stage_finished(stage: ProcessingStage, producer: str) -> StageCompleted | StageFailed:
    common = _common(stage.frame, producer, stage.finished_at)
    if stage.error is None:
        return StageCompleted(
            **common, stage=stage.name, attempt=stage.attempt, duration_ms=stage.duration_ms or 0.0
        )
    return StageFailed(
        **common,
        stage=stage.name,
        attempt=stage.attempt,
        duration_ms=stage.duration_ms or 0.0,
        error_type=stage.error.error_type,
        error_message=stage.error.message,
    )


def processing_completed(frame: Frame, producer: str) -> ProcessingCompleted:
    return ProcessingCompleted(
        **_common(frame, producer, frame.state_times.get(frame.state)),
        duration_ms=frame.total_processing_time_ms,
    )


def processing_failed(frame: Frame, producer: str, *, stage: str | None = None) -> ProcessingFailed:
    err = frame.error or FrameError("UnknownError", "frame failed")
    return ProcessingFailed(
        **_common(frame, producer, frame.state_times.get(frame.state)),
        error_type=err.error_type,
        error_message=err.message,
        stage=stage,
        duration_ms=frame.total_processing_time_ms,
    )


def event_for_change(frame: Frame, change: FrameChange, producer: str) -> FrameEvent:
    """The event a recorded change of ``frame`` implies, with the change's id and time."""
    common = _common(frame, producer, change.occurred_at)
    common["event_id"] = change.change_id
    kind = change.kind
    stage = change.stage
    if kind is EventType.CAPTURED:
        return FrameCaptured(**common, attributes=dict(frame.metadata))
    if kind is EventType.QUEUED:
        return FrameQueued(**common)
    if kind is EventType.PROCESSING_STARTED:
        return ProcessingStarted(**common)
    if kind is EventType.STAGE_STARTED and stage is not None:
        return StageStarted(**common, stage=stage.name, attempt=stage.attempt)
    if kind is EventType.STAGE_COMPLETED and stage is not None:
        return StageCompleted(
            **common, stage=stage.name, attempt=stage.attempt, duration_ms=stage.duration_ms or 0.0
        )
    if kind is EventType.STAGE_FAILED and stage is not None:
        err = stage.error or FrameError("UnknownError", "stage failed")
        return StageFailed(
            **common,
            stage=stage.name,
            attempt=stage.attempt,
            duration_ms=stage.duration_ms or 0.0,
            error_type=err.error_type,
            error_message=err.message,
        )
    if kind is EventType.COMPLETED:
        return ProcessingCompleted(**common, duration_ms=frame.total_processing_time_ms)
    if kind is EventType.FAILED:
        err = frame.error or FrameError("UnknownError", "frame failed")
        return ProcessingFailed(
            **common,
            error_type=err.error_type,
            error_message=err.message,
            stage=change.stage_name,
            duration_ms=frame.total_processing_time_ms,
        )
    raise ValueError(f"change {kind} of frame {frame.frame_id!r} has no stage")


def pending_events(frame: Frame, producer: str) -> list[tuple[FrameChange, FrameEvent]]:
    """The events of ``frame``'s changes not yet published, oldest first."""
    return [(c, event_for_change(frame, c, producer)) for c in frame.pending_changes]
