"""A processor service: takes queued frames and runs them through three stages."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from examples.handoff import FrameRef
from tracker.domain import Frame, ProcessingState
from tracker.events import ProcessingStarted
from tracker.logs import get_logger
from tracker.metrics import TimingContext, get_metrics
from tracker.repository import FrameRepository
from tracker.telemetry import set_frame_context, traced

log = get_logger(__name__)

STAGES = ("detect", "analyze", "notify")


class AnalysisTimeout(Exception):
    """The analysis model did not answer in time (injected by ``fail_every``)."""


StageWork = Callable[[str, Frame], Awaitable[None]]


class FrameProcessor:
    def __init__(
        self,
        repo: FrameRepository,
        *,
        fail_every: int = 0,
        work: StageWork | None = None,
        seed: int = 7,
    ) -> None:
        self.repo = repo
        self.metrics = get_metrics("processor")
        self.fail_every = fail_every
        self._work = work or self._simulated_work
        self._rng = random.Random(seed)
        self._seen = 0
        self._doomed: set[str] = set()  # frames whose analysis will time out (fail_every)
        self.failed: list[str] = []

    @traced(span_name="process_frame")
    async def process(self, frame: Frame) -> None:
        set_frame_context(frame)
        self._seen += 1
        if self.fail_every and self._seen % self.fail_every == 0:
            self._doomed.add(frame.frame_id)
        self.metrics.increment_frames_processed(attributes={"camera_id": frame.camera_id})
        log.info("processing frame", stages=len(STAGES))

        # track(): whatever happens below, the frame's events are published on exit.
        async with self.repo.track(frame):
            frame.transition_to(ProcessingState.PROCESSING)
            await self.repo.save(frame)
            # The guide's pattern: an explicit event after the transition. It
            # records the same fact as the transition, so it is not sent twice.
            await self.repo.save_event(ProcessingStarted.for_frame(frame))

            for name in STAGES:
                stage = frame.start_processing_stage(name)
                try:
                    with TimingContext(frame.camera_id, name):
                        await self._work(name, frame)
                    stage.complete()
                except Exception as e:
                    stage.fail(str(e))  # error type: the exception's class
                    frame.mark_as_failed(str(e))
                    self.metrics.increment_errors(
                        type(e).__name__, attributes={"camera_id": frame.camera_id, "stage": name}
                    )
                    log.warning("stage failed", stage=name, error=str(e))
                    raise
            frame.mark_as_completed()

        total_ms = frame.total_processing_time_ms or 0.0
        self.metrics.observe_processing_duration(frame.camera_id, "total", total_ms / 1000)
        log.info("frame processed", total_ms=round(total_ms, 3))

    async def _simulated_work(self, stage: str, frame: Frame) -> None:
        await asyncio.sleep(self._rng.uniform(0.001, 0.004))
        if stage == "analyze" and frame.frame_id in self._doomed:
            self._doomed.discard(frame.frame_id)
            raise AnalysisTimeout(f"analysis of {frame.frame_id} exceeded 250 ms")

    async def serve(self, inbox: asyncio.Queue[FrameRef]) -> None:
        """Process frames from ``inbox`` until cancelled; a failed frame is
        recorded as failed and the next one is taken."""
        while True:
            ref = await inbox.get()
            try:
                await self.process(ref.resume())
            except Exception:
                self.failed.append(ref.frame_id)  # recorded: its events say why it failed
            finally:
                inbox.task_done()
