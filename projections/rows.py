"""The fold's rows: what it reads of an event, and the rows it makes.

``FrameRow`` and ``StageRow`` are join-semilattice states: every field merges
with an associative, commutative and idempotent operation (``merge``), which is
what makes the fold order-independent (see :mod:`projections.fold`). Pure: no
I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime
from typing import Any, NamedTuple, Protocol, TypeVar

from tracker.domain import ProcessingState

CAPTURED, QUEUED, PROCESSING, COMPLETED, FAILED, CONFLICTED = (
    ProcessingState.CAPTURED.value,
    ProcessingState.QUEUED.value,
    ProcessingState.PROCESSING.value,
    ProcessingState.COMPLETED.value,
    ProcessingState.FAILED.value,
    ProcessingState.CONFLICTED.value,
)
STATES = (CAPTURED, QUEUED, PROCESSING, COMPLETED, FAILED, CONFLICTED)
STAGE_RUNNING, STAGE_COMPLETED, STAGE_FAILED, STAGE_CONFLICTED = (
    "running",
    "completed",
    "failed",
    "conflicted",
)


_SENTINEL = object()


def _fast_init(cls: type) -> type:
    """Give a frozen dataclass an ``__init__`` that fills the instance dict at once.

    A frozen dataclass's generated ``__init__`` sets every field through
    ``object.__setattr__``, several times slower than a plain class's; the fold
    builds a few rows per event, so that was a tenth of the projection worker's
    CPU. Only construction changes: instances stay frozen (assignment still
    raises), and eq, hash and repr are the dataclass's own.
    """
    names, params, prologue = [], [], []
    env: dict[str, Any] = {"_SENTINEL": _SENTINEL}
    for f in fields(cls):
        names.append(f.name)
        if f.default is not MISSING:
            env[f"_d_{f.name}"] = f.default
            params.append(f"{f.name}=_d_{f.name}")
        elif f.default_factory is not MISSING:
            env[f"_f_{f.name}"] = f.default_factory
            params.append(f"{f.name}=_SENTINEL")
            prologue.append(f"    if {f.name} is _SENTINEL: {f.name} = _f_{f.name}()")
        else:
            params.append(f.name)
    src = (
        f"def __init__(self, {', '.join(params)}):\n"
        + "".join(line + "\n" for line in prologue)
        + f"    self.__dict__.update({', '.join(f'{n}={n}' for n in names)})\n"
    )
    ns: dict[str, Any] = {}
    exec(src, env, ns)  # the technique dataclasses itself uses to build __init__
    ns["__init__"].__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = ns["__init__"]  # type: ignore[misc]
    return cls


@_fast_init
@dataclass(frozen=True)
class ProjEvent:
    """What the fold needs of one event, from a Kafka record or a ``frame_events`` row."""

    event_id: str
    event_type: str
    frame_id: str
    camera_id: str
    frame_timestamp: datetime
    occurred_at: datetime
    stage: str | None = None
    attempt: int = 1
    duration_ms: float | None = None
    error_type: str | None = None
    error_message: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    trace_id: str | None = None

    @property
    def order_key(self) -> tuple[datetime, str]:
        return (self.occurred_at, self.event_id)


# ---- what a row keeps of the events that won a choice ---------------------------
# Named tuples: built on the fold's hot path, compared and hashed as tuples.


class Completion(NamedTuple):
    """The earliest ``ProcessingCompleted`` of a frame."""

    occurred_at: datetime
    event_id: str
    duration_ms: float | None


class Failure(NamedTuple):
    """The earliest ``ProcessingFailed`` of a frame."""

    occurred_at: datetime
    event_id: str
    duration_ms: float | None
    error_type: str | None
    error_message: str | None
    stage: str | None


class Capture(NamedTuple):
    """The earliest ``FrameCaptured`` of a frame; its attributes as sorted pairs (hashable)."""

    occurred_at: datetime
    event_id: str
    attributes: tuple[tuple[str, str], ...]


class TraceMark(NamedTuple):
    """The latest event of a frame that carried a trace id."""

    occurred_at: datetime
    event_id: str
    trace_id: str


class StageOutcome(NamedTuple):
    """The earliest completion, or the earliest failure, of one stage run."""

    occurred_at: datetime
    event_id: str
    duration_ms: float | None
    error_type: str | None = None
    error_message: str | None = None


class _Won(Protocol):
    """What the choices are made on: the total order ``(occurred_at, event_id)``."""

    @property
    def occurred_at(self) -> datetime: ...
    @property
    def event_id(self) -> str: ...


_W = TypeVar("_W", bound=_Won)


def _min(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if a <= b else b


def _first(a: _W | None, b: _W | None) -> _W | None:
    """Of two, the earliest by ``(occurred_at, event_id)``."""
    if a is None:
        return b
    if b is None:
        return a
    at, bt = a.occurred_at, b.occurred_at
    return a if at < bt or (at == bt and a.event_id <= b.event_id) else b


def _last(a: _W | None, b: _W | None) -> _W | None:
    """Of two, the latest by ``(occurred_at, event_id)``."""
    if a is None:
        return b
    if b is None:
        return a
    at, bt = a.occurred_at, b.occurred_at
    return a if at > bt or (at == bt and a.event_id >= b.event_id) else b


@_fast_init
@dataclass(frozen=True)
class FrameRow:
    frame_id: str
    frame_timestamp: datetime
    camera_id: str
    captured_at: datetime | None = None
    queued_at: datetime | None = None
    processing_started_at: datetime | None = None
    completed_at: datetime | None = None
    failed_at: datetime | None = None
    completed_ev: Completion | None = None
    failed_ev: Failure | None = None
    captured_ev: Capture | None = None
    trace_ev: TraceMark | None = None
    last_event_at: datetime | None = None
    # first stage event time (a processing frame whose ProcessingStarted is late)
    stage_seen_at: datetime | None = None
    event_ids: frozenset[str] = frozenset()

    # ---- derived (what users read) ----------------------------------------
    @property
    def state(self) -> str:
        if self.completed_at is not None and self.failed_at is not None:
            return CONFLICTED
        if self.completed_at is not None:
            return COMPLETED
        if self.failed_at is not None:
            return FAILED
        if self.processing_started_at is not None or self.stage_seen_at is not None:
            return PROCESSING
        if self.queued_at is not None:
            return QUEUED
        return CAPTURED

    @property
    def total_processing_time_ms(self) -> float | None:
        terminal: Completion | Failure | None = (
            self.completed_ev
            if self.state == COMPLETED
            else (self.failed_ev if self.state == FAILED else None)
        )
        if terminal is None:
            return None
        if terminal.duration_ms is not None:
            return float(terminal.duration_ms)
        start = self.processing_started_at
        if start is None:
            return None
        return max(0.0, (terminal.occurred_at - start).total_seconds() * 1000.0)

    @property
    def error_type(self) -> str | None:
        return self.failed_ev.error_type if self.failed_ev else None

    @property
    def error_message(self) -> str | None:
        return self.failed_ev.error_message if self.failed_ev else None

    @property
    def error_stage(self) -> str | None:
        return self.failed_ev.stage if self.failed_ev else None

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.captured_ev.attributes) if self.captured_ev else {}

    @property
    def last_trace_id(self) -> str | None:
        return self.trace_ev.trace_id if self.trace_ev else None

    @property
    def events_applied(self) -> int:
        return len(self.event_ids)

    def merge(self, other: FrameRow) -> FrameRow:
        last = other.last_event_at if self.last_event_at is None else self.last_event_at
        if other.last_event_at is not None and other.last_event_at > last:  # type: ignore[operator]
            last = other.last_event_at
        return FrameRow(
            frame_id=self.frame_id,
            frame_timestamp=self.frame_timestamp,
            camera_id=min(self.camera_id, other.camera_id),
            captured_at=_min(self.captured_at, other.captured_at),
            queued_at=_min(self.queued_at, other.queued_at),
            processing_started_at=_min(self.processing_started_at, other.processing_started_at),
            completed_at=_min(self.completed_at, other.completed_at),
            failed_at=_min(self.failed_at, other.failed_at),
            completed_ev=_first(self.completed_ev, other.completed_ev),
            failed_ev=_first(self.failed_ev, other.failed_ev),
            captured_ev=_first(self.captured_ev, other.captured_ev),
            trace_ev=_last(self.trace_ev, other.trace_ev),
            last_event_at=last,
            stage_seen_at=_min(self.stage_seen_at, other.stage_seen_at),
            event_ids=self.event_ids | other.event_ids,
        )


@_fast_init
@dataclass(frozen=True)
class StageRow:
    frame_id: str
    frame_timestamp: datetime
    stage: str
    attempt: int
    camera_id: str
    started_at: datetime | None = None
    completed_ev: StageOutcome | None = None
    failed_ev: StageOutcome | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.frame_id, self.stage, self.attempt)

    @property
    def status(self) -> str:
        if self.completed_ev is not None and self.failed_ev is not None:
            return STAGE_CONFLICTED
        if self.completed_ev is not None:
            return STAGE_COMPLETED
        if self.failed_ev is not None:
            return STAGE_FAILED
        return STAGE_RUNNING

    @property
    def _outcome(self) -> StageOutcome | None:
        return _first(self.completed_ev, self.failed_ev)

    @property
    def finished_at(self) -> datetime | None:
        o = self._outcome
        return o.occurred_at if o else None

    @property
    def duration_ms(self) -> float | None:
        o = self._outcome
        return None if o is None else o.duration_ms

    @property
    def error_type(self) -> str | None:
        return self.failed_ev.error_type if self.failed_ev else None

    @property
    def error_message(self) -> str | None:
        return self.failed_ev.error_message if self.failed_ev else None

    def merge(self, other: StageRow) -> StageRow:
        return StageRow(
            frame_id=self.frame_id,
            frame_timestamp=self.frame_timestamp,
            stage=self.stage,
            attempt=self.attempt,
            camera_id=min(self.camera_id, other.camera_id),
            started_at=_min(self.started_at, other.started_at),
            completed_ev=_first(self.completed_ev, other.completed_ev),
            failed_ev=_first(self.failed_ev, other.failed_ev),
        )
