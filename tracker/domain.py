"""The frame lifecycle, with no I/O.

A frame moves ``captured → queued → processing → completed | failed``; it may
also fail before processing starts (dropped from a full queue, say). Durations
are measured with an injectable monotonic clock so that real services get true
elapsed times and the simulator can drive the same objects on virtual time.
"""

from __future__ import annotations

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

    @property
    def rank(self) -> int:
        """Position in the lifecycle; terminal states share the top rank."""
        return _RANK[self]

    @property
    def terminal(self) -> bool:
        return self in (ProcessingState.COMPLETED, ProcessingState.FAILED)


_RANK = {
    ProcessingState.CAPTURED: 0,
    ProcessingState.QUEUED: 1,
    ProcessingState.PROCESSING: 2,
    ProcessingState.COMPLETED: 3,
    ProcessingState.FAILED: 3,
}

ALLOWED_TRANSITIONS: Mapping[ProcessingState, frozenset[ProcessingState]] = {
    ProcessingState.CAPTURED: frozenset({ProcessingState.QUEUED, ProcessingState.FAILED}),
    ProcessingState.QUEUED: frozenset({ProcessingState.PROCESSING, ProcessingState.FAILED}),
    ProcessingState.PROCESSING: frozenset({ProcessingState.COMPLETED, ProcessingState.FAILED}),
    ProcessingState.COMPLETED: frozenset(),
    ProcessingState.FAILED: frozenset(),
}


class StageStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True)
class FrameError:
    error_type: str
    message: str

    @classmethod
    def from_exception(cls, exc: BaseException) -> FrameError:
        return cls(type(exc).__name__, str(exc) or type(exc).__name__)


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
        return self

    def fail(self, error: BaseException | FrameError) -> ProcessingStage:
        err = error if isinstance(error, FrameError) else FrameError.from_exception(error)
        self._finish(StageStatus.FAILED, err)
        return self


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
        return frame

    def transition_to(self, target: ProcessingState) -> None:
        if target not in ALLOWED_TRANSITIONS[self.state]:
            raise IllegalTransition(self.frame_id, self.state.value, target.value)
        self.state = target
        self.state_times[target] = self.wall_clock()
        if target is ProcessingState.PROCESSING:
            self._processing_started_mono = self.clock()
        elif target.terminal:
            self._processing_ended_mono = self.clock()

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
        return stage

    def mark_as_completed(self) -> None:
        running = [s.name for s in self.stages if s.status is StageStatus.RUNNING]
        if running:
            raise TrackerError(f"frame {self.frame_id!r}: stages still running: {running}")
        self.transition_to(ProcessingState.COMPLETED)

    def mark_as_failed(self, error: BaseException | FrameError) -> None:
        self.error = error if isinstance(error, FrameError) else FrameError.from_exception(error)
        self.transition_to(ProcessingState.FAILED)

    @property
    def total_processing_time_ms(self) -> float | None:
        """From ``processing`` to the terminal state; ``None`` until both happened."""
        if self._processing_started_mono is None or self._processing_ended_mono is None:
            return None
        return max(0.0, (self._processing_ended_mono - self._processing_started_mono) * 1000.0)
