"""The frame lifecycle, with no I/O.

A frame moves ``captured → queued → processing → completed | failed``; it may
also fail before processing starts (dropped from a full queue, say). Durations
are measured with an injectable monotonic clock so that real services get true
elapsed times and the simulator can drive the same objects on virtual time.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from time import monotonic

from tracker.errors import IllegalTransition, TrackerError


class ProcessingState(StrEnum):
    CAPTURED = "captured"
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    #: Only in the projections: the frame was reported both completed and
    #: failed. No transition leads here; the fold finds it in the events.
    CONFLICTED = "conflicted"

    @property
    def rank(self) -> int:
        """Position in the lifecycle; terminal states share the top rank."""
        return _RANK[self]

    @property
    def terminal(self) -> bool:
        return self in (ProcessingState.COMPLETED, ProcessingState.FAILED, ProcessingState.CONFLICTED)


_RANK = {
    ProcessingState.CAPTURED: 0,
    ProcessingState.QUEUED: 1,
    ProcessingState.PROCESSING: 2,
    ProcessingState.COMPLETED: 3,
    ProcessingState.FAILED: 3,
    ProcessingState.CONFLICTED: 3,
}

ALLOWED_TRANSITIONS: Mapping[ProcessingState, frozenset[ProcessingState]] = {
    ProcessingState.CAPTURED: frozenset({ProcessingState.QUEUED, ProcessingState.FAILED}),
    ProcessingState.QUEUED: frozenset({ProcessingState.PROCESSING, ProcessingState.FAILED}),
    ProcessingState.PROCESSING: frozenset({ProcessingState.COMPLETED, ProcessingState.FAILED}),
    ProcessingState.COMPLETED: frozenset(),
    ProcessingState.FAILED: frozenset(),
    ProcessingState.CONFLICTED: frozenset(),
}


class StageStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


#: The error type recorded for a failure given only as a message, outside any
#: ``except`` block and without ``error_type=``.
DEFAULT_ERROR_TYPE = "ProcessingError"


@dataclass(frozen=True)
class FrameError:
    error_type: str
    message: str

    @classmethod
    def from_exception(cls, exc: BaseException) -> FrameError:
        return cls(type(exc).__name__, str(exc) or type(exc).__name__)

    @classmethod
    def coerce(
        cls, error: BaseException | FrameError | str | None, error_type: str | None = None
    ) -> FrameError:
        """The error a failure records, whatever form the caller gave it in.

        Services write ``stage.fail(str(e))`` inside ``except``: a bare message
        must not be grouped under the name of Python's ``str``. So the type is,
        in order: ``error_type=`` if given, else the class of the exception
        given, else the class of the exception being handled right now (the
        caller is inside ``except``), else :data:`DEFAULT_ERROR_TYPE`.
        """
        if isinstance(error, FrameError):
            return cls(error_type, error.message) if error_type else error
        if isinstance(error, BaseException):
            err = cls.from_exception(error)
            return cls(error_type, err.message) if error_type else err
        if error is not None and not isinstance(error, str):
            raise TypeError(f"an error is an exception, a FrameError or a message, not {type(error)}")
        handled = sys.exc_info()[1]
        message = error or (str(handled) if handled is not None else "") or ""
        if error_type:
            kind = error_type
        elif handled is not None:
            kind = type(handled).__name__
        else:
            kind = DEFAULT_ERROR_TYPE
        return cls(kind, message or kind)


class EventType(StrEnum):
    """Every kind of frame event: the project's one list of them. A transition
    of the aggregate records one of these; on the wire it is ``event_type``.
    The sets below (stage, terminal, failure, finishing) are the predicates the
    hot paths use: a decoded record's plain ``event_type`` string is looked up
    in them directly."""

    CAPTURED = "FrameCaptured"
    QUEUED = "FrameQueued"
    PROCESSING_STARTED = "ProcessingStarted"
    STAGE_STARTED = "StageStarted"
    STAGE_COMPLETED = "StageCompleted"
    STAGE_FAILED = "StageFailed"
    COMPLETED = "ProcessingCompleted"
    FAILED = "ProcessingFailed"

    @property
    def from_camera(self) -> bool:
        """Published by camera services (to the camera topic), not by processors."""
        return self in CAMERA_EVENT_TYPES


CAMERA_EVENT_TYPES = frozenset({EventType.CAPTURED, EventType.QUEUED})
STAGE_EVENT_TYPES = frozenset({EventType.STAGE_STARTED, EventType.STAGE_COMPLETED, EventType.STAGE_FAILED})
TERMINAL_EVENT_TYPES = frozenset({EventType.COMPLETED, EventType.FAILED})
FAILURE_EVENT_TYPES = frozenset({EventType.STAGE_FAILED, EventType.FAILED})
FINISHING_EVENT_TYPES = frozenset(
    {EventType.STAGE_COMPLETED, EventType.STAGE_FAILED, EventType.COMPLETED, EventType.FAILED}
)


_STATE_EVENT = {
    ProcessingState.QUEUED: EventType.QUEUED,
    ProcessingState.PROCESSING: EventType.PROCESSING_STARTED,
    ProcessingState.COMPLETED: EventType.COMPLETED,
    ProcessingState.FAILED: EventType.FAILED,
}


@dataclass(frozen=True)
class FrameChange:
    """One recorded change of a frame. ``change_id`` is drawn once, when the
    change happens, and becomes the event id: publishing the change again
    (a retried save) sends the same id, which the event store keeps once."""

    kind: EventType
    occurred_at: datetime
    change_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    stage: ProcessingStage | None = None
    stage_name: str | None = None  # ProcessingFailed: the stage that failed, if any


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class ProcessingStage:
    """One run of one stage of one frame; ``attempt`` counts retries of the stage."""

    frame: Frame
    name: str
    attempt: int
    started_at: datetime
    _started_mono: float
    status: StageStatus = StageStatus.RUNNING
    finished_at: datetime | None = None
    duration_ms: float | None = None
    error: FrameError | None = None

    def _finish(self, status: StageStatus, error: FrameError | None) -> None:
        if self.status is not StageStatus.RUNNING:
            raise TrackerError(f"stage {self.name!r} of frame {self.frame.frame_id!r} already {self.status}")
        self.duration_ms = max(0.0, (self.frame.clock() - self._started_mono) * 1000.0)
        self.finished_at = self.frame.wall_clock()
        self.status = status
        self.error = error

    def complete(self) -> ProcessingStage:
        self._finish(StageStatus.COMPLETED, None)
        self.frame._record(EventType.STAGE_COMPLETED, self.finished_at, stage=self)
        return self

    def fail(
        self, error: BaseException | FrameError | str | None = None, *, error_type: str | None = None
    ) -> ProcessingStage:
        """Fail this stage. ``error`` may be a message: see :meth:`FrameError.coerce`
        for the error type it then records."""
        self._finish(StageStatus.FAILED, FrameError.coerce(error, error_type))
        self.frame._record(EventType.STAGE_FAILED, self.finished_at, stage=self)
        return self

    @property
    def finished(self) -> bool:
        return self.status is not StageStatus.RUNNING


@dataclass
class Frame:
    frame_id: str
    camera_id: str
    timestamp: datetime
    metadata: dict[str, str] = field(default_factory=dict)
    state: ProcessingState = ProcessingState.CAPTURED
    error: FrameError | None = None
    stages: list[ProcessingStage] = field(default_factory=list)
    state_times: dict[ProcessingState, datetime] = field(default_factory=dict)
    clock: Callable[[], float] = field(default=monotonic, repr=False)
    wall_clock: Callable[[], datetime] = field(default=utcnow, repr=False)
    _processing_started_mono: float | None = field(default=None, repr=False)
    _processing_ended_mono: float | None = field(default=None, repr=False)
    #: Every change recorded by this object, in order; what a repository publishes.
    changes: list[FrameChange] = field(default_factory=list, repr=False)
    #: W3C trace headers the frame arrived with from the service that handed it
    #: over (see ``Frame.resume``); ``@traced`` continues that trace.
    trace_context: dict[str, str] = field(default_factory=dict, repr=False)
    _published: set[str] = field(default_factory=set, repr=False)
    #: Called when the frame reaches its end (completed or failed); a repository
    #: that saved the frame sets it so that the end is published without
    #: waiting for another save (see ``FrameRepository``).
    on_terminal: Callable[[Frame], None] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def capture(
        cls,
        camera_id: str,
        *,
        frame_id: str | None = None,
        timestamp: datetime | None = None,
        metadata: Mapping[str, str] | None = None,
        clock: Callable[[], float] = monotonic,
        wall_clock: Callable[[], datetime] = utcnow,
    ) -> Frame:
        ts = timestamp or wall_clock()
        if ts.tzinfo is None:
            raise TrackerError("frame timestamp must be timezone-aware")
        fid = frame_id or f"{camera_id}-{ts.strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}"
        frame = cls(
            frame_id=fid,
            camera_id=camera_id,
            timestamp=ts,
            metadata=dict(metadata or {}),
            clock=clock,
            wall_clock=wall_clock,
        )
        frame.state_times[ProcessingState.CAPTURED] = ts
        frame._record(EventType.CAPTURED, ts)
        return frame

    @classmethod
    def resume(
        cls,
        frame_id: str,
        camera_id: str,
        timestamp: datetime,
        *,
        state: ProcessingState = ProcessingState.QUEUED,
        metadata: Mapping[str, str] | None = None,
        trace_context: Mapping[str, str] | None = None,
        clock: Callable[[], float] = monotonic,
        wall_clock: Callable[[], datetime] = utcnow,
    ) -> Frame:
        """A frame another service captured (and queued), picked up here.

        Nothing is recorded for what happened before: those events are the
        other service's to publish. Typical in a processor that receives frame
        references from a camera service over its own queue.
        """
        if timestamp.tzinfo is None:
            raise TrackerError("frame timestamp must be timezone-aware")
        if state.terminal:
            raise TrackerError(f"frame {frame_id!r} is already {state}: nothing left to process")
        frame = cls(
            frame_id=frame_id,
            camera_id=camera_id,
            timestamp=timestamp,
            metadata=dict(metadata or {}),
            state=state,
            trace_context=dict(trace_context or {}),
            clock=clock,
            wall_clock=wall_clock,
        )
        frame.state_times[ProcessingState.CAPTURED] = timestamp
        return frame

    def _record(
        self,
        kind: EventType,
        occurred_at: datetime | None,
        *,
        stage: ProcessingStage | None = None,
        stage_name: str | None = None,
    ) -> None:
        self.changes.append(
            FrameChange(kind, occurred_at or self.wall_clock(), stage=stage, stage_name=stage_name)
        )

    def transition_to(self, target: ProcessingState) -> None:
        if target not in ALLOWED_TRANSITIONS[self.state]:
            raise IllegalTransition(self.frame_id, self.state.value, target.value)
        self.state = target
        now = self.wall_clock()
        self.state_times[target] = now
        if target is ProcessingState.PROCESSING:
            self._processing_started_mono = self.clock()
        elif target.terminal:
            self._processing_ended_mono = self.clock()
        failed_stage = None
        if target is ProcessingState.FAILED:
            failed = [s for s in self.stages if s.status is StageStatus.FAILED]
            failed_stage = failed[-1].name if failed else None
        self._record(_STATE_EVENT[target], now, stage_name=failed_stage)
        if target.terminal and self.on_terminal is not None:
            self.on_terminal(self)

    # ---- what a repository publishes ----------------------------------------
    @property
    def pending_changes(self) -> list[FrameChange]:
        """Changes recorded here and not yet marked published, oldest first."""
        return [c for c in self.changes if c.change_id not in self._published]

    def mark_published(self, change: FrameChange) -> None:
        self._published.add(change.change_id)

    def start_processing_stage(self, name: str) -> ProcessingStage:
        if self.state is not ProcessingState.PROCESSING:
            raise IllegalTransition(self.frame_id, self.state.value, f"stage:{name}")
        attempt = 1 + sum(1 for s in self.stages if s.name == name)
        stage = ProcessingStage(
            frame=self,
            name=name,
            attempt=attempt,
            started_at=self.wall_clock(),
            _started_mono=self.clock(),
        )
        self.stages.append(stage)
        self._record(EventType.STAGE_STARTED, stage.started_at, stage=stage)
        return stage

    def mark_as_completed(self) -> None:
        running = [s.name for s in self.stages if s.status is StageStatus.RUNNING]
        if running:
            raise TrackerError(f"frame {self.frame_id!r}: stages still running: {running}")
        self.transition_to(ProcessingState.COMPLETED)

    def mark_as_failed(
        self, error: BaseException | FrameError | str | None = None, *, error_type: str | None = None
    ) -> None:
        """Fail the frame. ``error`` may be a message (see :meth:`FrameError.coerce`).

        A stage still running fails with it: a failed frame has no stage left
        running. ``ProcessingFailed`` names the last failed stage, if any.
        """
        if self.state.terminal:
            raise IllegalTransition(self.frame_id, self.state.value, ProcessingState.FAILED.value)
        err = FrameError.coerce(error, error_type)
        for stage in self.stages:
            if stage.status is StageStatus.RUNNING:
                stage.fail(err)
        self.error = err
        self.transition_to(ProcessingState.FAILED)

    @property
    def id(self) -> str:
        """The frame id (the guide writes ``frame.id``)."""
        return self.frame_id

    @property
    def total_processing_time_ms(self) -> float | None:
        """From ``processing`` to the terminal state; ``None`` until both happened."""
        if self._processing_started_mono is None or self._processing_ended_mono is None:
            return None
        return max(0.0, (self._processing_ended_mono - self._processing_started_mono) * 1000.0)
