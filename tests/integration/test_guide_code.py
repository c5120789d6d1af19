"""The Frame Tracking guide's own code, run against the real stack.

The blocks below are the guide's ("Example: Complete Frame Processing",
"Record All State Transitions", "Handle Errors Gracefully", "Use Structured
Logging", "Setting Frame Context", "Recording Metrics with Exemplars",
"Querying Frame History"), quoted with only their import lines changed (and
the guide's elided ``...`` arguments written out), to prove that what the
guide shows service authors works with this package as written.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import pytest
from opentelemetry import trace

from tests.integration.helpers import consume_until_idle, project_until_idle, span_exporter
from tracker.config import Settings
from tracker.domain import Frame, ProcessingState
from tracker.events import ProcessingStarted
from tracker.logs import get_logger
from tracker.metrics import TimingContext, get_metrics
from tracker.publisher import FramePublisher
from tracker.queries import FrameTrackingQueries
from tracker.repository import FrameMetadataRepository
from tracker.telemetry import set_frame_context, traced

# Names the guide's blocks take from their surroundings.
pool: FramePublisher  # what FrameMetadataRepository writes through (set by the test)
tracer = trace.get_tracer(__name__)
logger = get_logger(__name__)


# ---- "Example: Complete Frame Processing" (verbatim) ----------------------------
class FrameProcessor:
    def __init__(self):
        self.metrics = get_metrics("processor")
        self.repo = FrameMetadataRepository(pool)

    @traced(span_name="process_frame")
    async def process(self, frame: Frame):
        # Set context
        set_frame_context(frame)

        # Record received
        self.metrics.increment_frames_processed(
            attributes={"camera_id": frame.camera_id}
        )

        # State transition
        frame.transition_to(ProcessingState.PROCESSING)
        await self.repo.save(frame)

        # Process stages
        for stage_name in ["detect", "analyze", "notify"]:
            stage = frame.start_processing_stage(stage_name)

            try:
                # Stage processing
                await self._process_stage(stage_name, frame)
                stage.complete()

            except Exception as e:
                stage.fail(str(e))
                frame.mark_as_failed(str(e))
                raise

        # Complete
        frame.mark_as_completed()
        await self.repo.save(frame)

        # Record metrics
        self.metrics.observe_processing_duration(
            frame.camera_id,
            "total",
            frame.total_processing_time_ms / 1000
        )
# ---- end of the guide's example ----------------------------------------------------


class ModelUnavailable(Exception):
    pass


class GuideProcessor(FrameProcessor):
    """The guide leaves ``_process_stage`` to the reader."""

    def __init__(self, fail: set[str], slow: set[str]) -> None:
        super().__init__()
        self.fail, self.slow = fail, slow

    async def _process_stage(self, stage_name: str, frame: Frame) -> None:
        # ---- "Use Structured Logging" (verbatim) ----
        logger.info("Processing frame",
            frame_id=str(frame.id),
            camera_id=frame.camera_id,
            stage="face_detection"
        )  # fmt: skip
        # ---- "Recording Metrics with Exemplars": the duration part (verbatim) ----
        with TimingContext(frame.camera_id, "face_detection") as timer:
            # Process...
            pass  # Duration recorded with trace_id
        assert timer.seconds is not None
        if stage_name == "analyze" and frame.frame_id in self.fail:
            raise ModelUnavailable("analysis model is not loaded")
        if stage_name == "analyze" and frame.frame_id in self.slow:
            await asyncio.sleep(1.05)


async def record_all_state_transitions(repo, frame: Frame) -> None:
    # ---- "Record All State Transitions" (verbatim; the guide elides the event's arguments) ----
    # Always transition through state machine
    frame.transition_to(ProcessingState.PROCESSING)
    await repo.save(frame)
    await repo.save_event(ProcessingStarted(
        frame_id=frame.frame_id, camera_id=frame.camera_id,
        frame_timestamp=frame.timestamp, occurred_at=frame.state_times[ProcessingState.PROCESSING],
    ))  # fmt: skip


def handle_errors_gracefully(frame: Frame, metrics, current_stage: str) -> None:
    try:
        raise ConnectionResetError("camera stream reset")
    # ---- "Handle Errors Gracefully" (verbatim) ----
    except Exception as e:
        frame.mark_as_failed(str(e))
        metrics.increment_errors(
            type(e).__name__,
            attributes={"stage": current_stage}
        )
        raise  # fmt: skip


# ---- "Setting Frame Context" (verbatim, as a method of a service) ----
class Service:
    async def process_frame(self, frame: Frame):
        # Set context for automatic propagation
        set_frame_context(frame)

        # All subsequent spans will include frame_id and camera_id
        with tracer.start_as_current_span("process"):
            # Your processing logic
            pass


def queued(camera_id: str) -> Frame:
    frame = Frame.capture(camera_id)
    frame.transition_to(ProcessingState.QUEUED)
    return frame


async def test_the_guides_code_runs_as_written(settings: Settings) -> None:
    global pool
    exporter = span_exporter()
    exporter.clear()
    frames = [queued(f"cam-guide-{i % 2}") for i in range(6)]
    failing, slow = frames[1].frame_id, frames[2].frame_id
    async with FramePublisher(settings, producer_name="processor") as pool:
        processor = GuideProcessor(fail={failing}, slow={slow})
        for frame in frames:  # the camera's side is not the guide's: record what it queued
            await processor.repo.save(frame)
        for frame in frames:
            if frame.frame_id == failing:
                with pytest.raises(ModelUnavailable):
                    await processor.process(frame)  # nothing saves it after: the repository must
            else:
                await processor.process(frame)

        other = queued("cam-guide-9")
        await processor.repo.save(other)
        await record_all_state_transitions(processor.repo, other)
        with pytest.raises(ConnectionResetError):
            handle_errors_gracefully(other, processor.metrics, "detect")

        for frame in frames[:2]:
            await Service().process_frame(frame)

    await consume_until_idle(settings)
    await project_until_idle(settings)

    conn = await asyncpg.connect(settings.database.url.get())
    try:
        rows = await conn.fetch(
            "SELECT frame_id, event_type, stage, attempt, min(error_type) AS error_type, count(*) AS n "
            "FROM frame_events GROUP BY 1, 2, 3, 4 ORDER BY 1, 2"
        )
    finally:
        await conn.close()
    by_frame: dict[str, dict[str, int]] = {}
    for r in rows:
        assert r["n"] == 1, f"{r['frame_id']}: {r['event_type']} {r['stage']} stored {r['n']} times"
        counts = by_frame.setdefault(r["frame_id"], {})
        counts[r["event_type"]] = counts.get(r["event_type"], 0) + 1
    # The failure, raised and never saved by the guide's code, is recorded, typed by its class.
    assert {r["error_type"] for r in rows if r["frame_id"] == failing} == {None, "ModelUnavailable"}
    assert "ProcessingFailed" in by_frame[failing] and "StageFailed" in by_frame[failing]
    # save(frame) then save_event(ProcessingStarted(...)): one ProcessingStarted.
    assert by_frame[other.frame_id] == {
        "FrameCaptured": 1, "FrameQueued": 1, "ProcessingStarted": 1, "ProcessingFailed": 1,
    }  # fmt: skip
    other_types = {r["error_type"] for r in rows if r["frame_id"] == other.frame_id}
    assert other_types == {None, "ConnectionResetError"}

    # Spans: the outer span of each frame carries that frame's id, never the previous one's.
    outer = [s for s in exporter.get_finished_spans() if s.name == "process_frame"]
    assert [s.attributes["frame.id"] for s in outer] == [f.frame_id for f in frames]
    inner = [s for s in exporter.get_finished_spans() if s.name == "process"]
    assert [s.attributes["frame.id"] for s in inner] == [f.frame_id for f in frames[:2]]

    # ---- "Querying Frame History" (the guide's three calls) ----
    async with FrameTrackingQueries.connect(settings) as queries:
        # Get complete frame journey
        journey = await queries.get_frame_journey(frames[0].frame_id)
        # Find slow frames
        slow_frames = await queries.find_slow_frames(
            threshold_ms=1000,
            hours=1
        )  # fmt: skip
        # Analyze failures
        failures = await queries.get_failure_analysis(hours=24)
    assert journey["state"] == "completed" and len(journey["stages"]) == 3
    # The camera's events (saved above, outside any span) have traces of their
    # own; the processing is one trace, the outer span's, and the latest one.
    processing_trace = format(outer[0].context.trace_id, "032x")
    assert processing_trace in [t["trace_id"] for t in journey["traces"]]
    assert journey["trace"]["trace_id"] == processing_trace
    assert [f["frame_id"] for f in slow_frames] == [slow]
    types = {(g["stage"], g["error_type"]) for g in failures["by_stage_error_camera"]}
    assert types == {("analyze", "ModelUnavailable"), ("(none)", "ConnectionResetError")}
    assert frames[0].total_processing_time_ms is not None
    assert timedelta(milliseconds=frames[2].total_processing_time_ms or 0) >= timedelta(seconds=1)
