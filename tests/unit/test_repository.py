"""FrameRepository over a stand-in publisher (pure logic: what is sent, when,
and what stays pending). The real broker, stopped and restarted, is in
tests/integration/test_repository.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracker import events as ev
from tracker.domain import STAGE_EVENT_TYPES, Frame, ProcessingState, StageStatus
from tracker.errors import BrokerError, IllegalTransition, PublishError, TrackerError
from tracker.publisher import FramePublisher
from tracker.repository import FrameMetadataRepository, FrameRepository


class StandInPublisher(FramePublisher):
    """Records what it is asked to send. ``outcomes`` says, per send, whether the
    broker takes it ("ok"), refuses it ("refuse": not written), or writes it
    and loses the acknowledgement ("lost_ack": written, reported failed)."""

    def __init__(self, outcomes: Iterator[str] | None = None) -> None:  # no Kafka client at all
        self.producer_name = "stand-in"
        self.log: list[ev.FrameEvent] = []
        self.outcomes = outcomes
        self.held: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        return None

    def hold(self, task: asyncio.Task[Any]) -> None:
        self.held.add(task)

    async def settle(self) -> None:
        """What ``stop()`` does first: wait for the background publishes."""
        await asyncio.gather(*self.held)

    async def send(self, event: ev.FrameEvent, *, context: Any = None) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        outcome = next(self.outcomes, "ok") if self.outcomes is not None else "ok"
        if outcome != "refuse":
            self.log.append(event)
        if outcome == "ok":
            fut.set_result(None)
        else:
            fut.set_exception(BrokerError(f"broker said {outcome}", retriable=True))
        return fut


OPS = ("queue", "process", "stage", "complete_stage", "fail_stage", "complete", "fail", "save", "save")


def apply(frame: Frame, op: str, expected: list[tuple[str, str, int]]) -> None:
    """Apply one domain call; on success append the event it implies to ``expected``.
    An illegal call must raise and record nothing."""
    before = len(frame.changes)
    running = [s for s in frame.stages if s.status is StageStatus.RUNNING]
    try:
        if op == "queue":
            frame.transition_to(ProcessingState.QUEUED)
            expected.append(("FrameQueued", "", 1))
        elif op == "process":
            frame.transition_to(ProcessingState.PROCESSING)
            expected.append(("ProcessingStarted", "", 1))
        elif op == "stage":
            name = ("detect", "analyze")[len(frame.stages) % 2]
            st_ = frame.start_processing_stage(name)
            expected.append(("StageStarted", name, st_.attempt))
        elif op == "complete_stage":
            if not running:
                return
            running[-1].complete()
            expected.append(("StageCompleted", running[-1].name, running[-1].attempt))
        elif op == "fail_stage":
            if not running:
                return
            try:
                raise TimeoutError("slow model")
            except TimeoutError as e:
                running[-1].fail(str(e))
            assert running[-1].error is not None and running[-1].error.error_type == "TimeoutError"
            expected.append(("StageFailed", running[-1].name, running[-1].attempt))
        elif op == "complete":
            frame.mark_as_completed()
            expected.append(("ProcessingCompleted", "", 1))
        elif op == "fail":
            frame.mark_as_failed("gave up")
            for s in running:  # a failed frame fails the stages still running
                expected.append(("StageFailed", s.name, s.attempt))
            expected.append(("ProcessingFailed", "", 1))
    except (IllegalTransition, TrackerError):
        assert len(frame.changes) == before, f"{op} raised but recorded a change"


def key(e: ev.FrameEvent) -> tuple[str, str, int]:
    stage = getattr(e, "stage", None) if e.event_type in STAGE_EVENT_TYPES else None
    return (e.event_type, stage or "", getattr(e, "attempt", 1))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(st.sampled_from(OPS), max_size=25),
    outcomes=st.lists(st.sampled_from(("ok", "ok", "ok", "refuse", "lost_ack")), max_size=40),
)
def test_published_events_are_the_implied_ones_each_once(ops: list[str], outcomes: list[str]) -> None:
    async def scenario() -> None:
        pub = StandInPublisher(iter(outcomes))
        repo = FrameRepository(pub)
        frame = Frame.capture("cam-1", frame_id="f-1", timestamp=datetime(2026, 1, 1, tzinfo=UTC))
        expected: list[tuple[str, str, int]] = [("FrameCaptured", "", 1)]
        for op in ops:
            if op == "save":
                try:
                    await repo.save(frame)
                except PublishError as e:
                    assert e.pending == len(frame.pending_changes) > 0
            else:
                apply(frame, op, expected)
        await pub.settle()
        # The broker is healthy again: saves until nothing is pending.
        pub.outcomes = None
        await repo.save(frame)
        assert frame.pending_changes == []
        assert await repo.save(frame) == 0  # saving again publishes nothing

        # Distinct event ids are exactly the implied events; in their order when
        # no send failed (a failed send is retried after later ones went out, and
        # the projections do not depend on arrival order).
        first: dict[str, ev.FrameEvent] = {}
        for e in pub.log:
            first.setdefault(e.event_id, e)
        assert sorted(key(e) for e in first.values()) == sorted(expected)
        assert len(first) == len(expected)
        if set(outcomes) <= {"ok"}:
            assert [key(e) for e in pub.log] == expected
        # A repeat on the wire only follows a lost acknowledgement, and repeats its id.
        lost_acks = outcomes.count("lost_ack")
        assert len(pub.log) - len(first) <= lost_acks
        # Every event says what the frame says.
        assert {e.frame_id for e in pub.log} == {"f-1"}
        assert {e.producer for e in pub.log} <= {"stand-in"}

    asyncio.run(scenario())


async def test_save_event_of_a_recorded_fact_is_not_published_twice() -> None:
    pub = StandInPublisher()
    repo = FrameMetadataRepository(pub)  # the guide's name
    frame = Frame.resume("f-2", "cam-1", datetime(2026, 1, 1, tzinfo=UTC))
    frame.transition_to(ProcessingState.PROCESSING)
    assert await repo.save(frame) == 1
    assert await repo.save_event(ev.ProcessingStarted.for_frame(frame)) is False
    # And the other way round: the hand-built event first, the transition's skipped.
    stage = frame.start_processing_stage("detect")
    assert await repo.save_event(
        ev.StageStarted.for_frame(frame, stage="detect", attributes={"gpu": "0"})
    ) is True
    stage.complete()
    assert await repo.save(frame) == 1  # StageCompleted only
    assert [e.event_type for e in pub.log] == ["ProcessingStarted", "StageStarted", "StageCompleted"]
    assert pub.log[1].attributes == {"gpu": "0"} and pub.log[1].producer == "stand-in"


async def test_track_saves_a_failed_frame_and_keeps_the_blocks_error() -> None:
    pub = StandInPublisher()
    repo = FrameRepository(pub)
    frame = Frame.resume("f-3", "cam-1", datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(ZeroDivisionError):
        async with repo.track(frame):
            frame.transition_to(ProcessingState.PROCESSING)
            stage = frame.start_processing_stage("detect")
            try:
                1 / 0  # noqa: B018
            except ZeroDivisionError as e:
                stage.fail(str(e))
                frame.mark_as_failed(str(e))
                raise
    failed = [e for e in pub.log if isinstance(e, ev.ProcessingFailed)]
    assert [e.event_type for e in pub.log][-1] == "ProcessingFailed"
    assert failed[0].error_type == "ZeroDivisionError" and failed[0].stage == "detect"


def test_repository_needs_a_publisher() -> None:
    with pytest.raises(TypeError, match="FramePublisher"):
        FrameRepository(object())  # type: ignore[arg-type]


async def test_a_saved_frame_that_fails_and_raises_is_still_published() -> None:
    """The guide's error handling fails the frame and re-raises, with no save after."""
    pub = StandInPublisher()
    repo = FrameRepository(pub)
    frame = Frame.resume("f-4", "cam-1", datetime(2026, 1, 1, tzinfo=UTC))
    frame.transition_to(ProcessingState.PROCESSING)
    await repo.save(frame)
    stage = frame.start_processing_stage("analyze")
    with pytest.raises(LookupError):
        try:
            raise LookupError("no track")
        except Exception as e:
            stage.fail(str(e))
            frame.mark_as_failed(str(e))
            raise
    await pub.settle()  # FramePublisher.stop() does this before closing
    assert [e.event_type for e in pub.log] == [
        "ProcessingStarted", "StageStarted", "StageFailed", "ProcessingFailed",
    ]  # fmt: skip
    assert frame.pending_changes == []
    # A save right after the end waits for the background publish instead of repeating it.
    frame2 = Frame.resume("f-5", "cam-1", datetime(2026, 1, 1, tzinfo=UTC))
    frame2.transition_to(ProcessingState.PROCESSING)
    await repo.save(frame2)
    frame2.mark_as_completed()
    assert await repo.save(frame2) == 1
    assert [e.event_type for e in pub.log].count("ProcessingCompleted") == 1
