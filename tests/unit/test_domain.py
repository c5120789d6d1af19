from datetime import UTC, datetime

import pytest

from tracker.domain import Frame, FrameError, ProcessingState, StageStatus
from tracker.errors import IllegalTransition, TrackerError


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make_frame(clock: FakeClock | None = None) -> Frame:
    return Frame.capture("cam-1", frame_id="f-1", clock=clock or FakeClock())


def test_happy_path_and_total_time() -> None:
    clock = FakeClock()
    f = make_frame(clock)
    assert f.state is ProcessingState.CAPTURED
    f.transition_to(ProcessingState.QUEUED)
    f.transition_to(ProcessingState.PROCESSING)
    stage = f.start_processing_stage("detect")
    clock.t += 0.040
    stage.complete()
    assert stage.status is StageStatus.COMPLETED
    assert stage.duration_ms == pytest.approx(40.0)
    clock.t += 0.010
    f.mark_as_completed()
    assert f.state is ProcessingState.COMPLETED
    assert f.total_processing_time_ms == pytest.approx(50.0)
    # every state of the happy path, none of the failure ones (conflicted exists only in projections)
    assert set(f.state_times) == set(ProcessingState) - {ProcessingState.FAILED, ProcessingState.CONFLICTED}


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ([], ProcessingState.PROCESSING),
        ([], ProcessingState.COMPLETED),
        ([ProcessingState.QUEUED], ProcessingState.CAPTURED),
        (
            [ProcessingState.QUEUED, ProcessingState.PROCESSING, ProcessingState.COMPLETED],
            ProcessingState.FAILED,
        ),
        ([ProcessingState.FAILED], ProcessingState.QUEUED),
    ],
)
def test_illegal_transitions_are_rejected_with_a_clear_error(path, target) -> None:
    f = make_frame()
    for s in path:
        f.transition_to(s)
    with pytest.raises(IllegalTransition, match=f"f-1.*-> {target.value}"):
        f.transition_to(target)


def test_failure_records_error_and_stage_attempts_count() -> None:
    f = make_frame()
    f.transition_to(ProcessingState.QUEUED)
    f.transition_to(ProcessingState.PROCESSING)
    first = f.start_processing_stage("detect").fail(TimeoutError("slow model"))
    assert first.error == FrameError("TimeoutError", "slow model")
    second = f.start_processing_stage("detect")
    assert second.attempt == 2
    with pytest.raises(TrackerError, match="still running"):
        f.mark_as_completed()
    second.fail(FrameError("ModelTimeout", "again"))
    with pytest.raises(TrackerError, match="already failed"):
        second.complete()
    f.mark_as_failed(FrameError("ModelTimeout", "again"))
    assert f.state is ProcessingState.FAILED and f.error and f.error.error_type == "ModelTimeout"


def test_stage_needs_processing_state_and_aware_timestamp() -> None:
    with pytest.raises(IllegalTransition):
        make_frame().start_processing_stage("detect")
    with pytest.raises(TrackerError, match="timezone"):
        Frame.capture("cam", timestamp=datetime(2026, 1, 1))
    assert Frame.capture("cam", timestamp=datetime(2026, 1, 1, tzinfo=UTC)).frame_id.startswith("cam-")


# ---- failures given as messages (the guide's ``fail(str(e))``) -------------------


def _processing_frame() -> Frame:
    from tracker.domain import ProcessingState

    frame = Frame.capture("cam-1")
    frame.transition_to(ProcessingState.QUEUED)
    frame.transition_to(ProcessingState.PROCESSING)
    return frame


def test_message_inside_except_records_the_handled_exception_class() -> None:
    frame = _processing_frame()
    stage = frame.start_processing_stage("detect")
    try:
        raise TimeoutError("model took 3 s")
    except Exception as e:
        stage.fail(str(e))
        frame.mark_as_failed(str(e))
    assert stage.error is not None and stage.error.error_type == "TimeoutError"
    assert stage.error.message == "model took 3 s"
    assert frame.error is not None and frame.error.error_type == "TimeoutError"
    assert frame.changes[-1].stage_name == "detect"  # ProcessingFailed names the failed stage


def test_message_outside_except_gets_the_documented_default_and_explicit_type_wins() -> None:
    from tracker.domain import DEFAULT_ERROR_TYPE

    frame = _processing_frame()
    a = frame.start_processing_stage("detect").fail("camera feed lost")
    assert a.error is not None
    assert (a.error.error_type, a.error.message) == (DEFAULT_ERROR_TYPE, "camera feed lost")
    try:
        raise KeyError("x")
    except KeyError:
        b = frame.start_processing_stage("detect").fail("bad input", error_type="InputRejected")
    assert b.error is not None and b.error.error_type == "InputRejected"
    assert "str" not in {a.error.error_type, b.error.error_type}


def test_failing_a_frame_fails_its_running_stages() -> None:
    frame = _processing_frame()
    running = frame.start_processing_stage("analyze")
    frame.mark_as_failed("shutdown", error_type="Shutdown")
    assert running.status.value == "failed" and running.error is not None
    assert running.error.error_type == "Shutdown"
    assert [c.kind.value for c in frame.changes][-2:] == ["StageFailed", "ProcessingFailed"]


def test_an_error_that_is_not_an_error_is_refused() -> None:
    frame = _processing_frame()
    with pytest.raises(TypeError):
        frame.start_processing_stage("detect").fail(42)  # type: ignore[arg-type]
