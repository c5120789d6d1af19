"""A camera service: captures frames, records them, queues them for processing."""

from __future__ import annotations

import asyncio

from examples.handoff import FrameRef
from tracker.domain import Frame, ProcessingState
from tracker.events import FrameQueued
from tracker.logs import get_logger
from tracker.metrics import get_metrics
from tracker.repository import FrameRepository
from tracker.telemetry import set_frame_context, traced

log = get_logger(__name__)


class CameraService:
    def __init__(self, camera_id: str, repo: FrameRepository, outbox: asyncio.Queue[FrameRef]) -> None:
        self.camera_id = camera_id
        self.repo = repo
        self.outbox = outbox
        self.metrics = get_metrics("camera")

    @traced(span_name="capture_frame")
    async def capture(self, sequence: int) -> Frame:
        frame = Frame.capture(self.camera_id, metadata={"sequence": str(sequence), "resolution": "1280x720"})
        # From here on, spans, logs and published records carry this frame's ids
        # (the capture_frame span too, although it started before the frame existed).
        set_frame_context(frame)
        self.metrics.increment_frames_processed(attributes={"camera_id": self.camera_id, "stage": "capture"})
        log.info("frame captured", sequence=sequence)
        await self.repo.save(frame)  # FrameCaptured

        frame.transition_to(ProcessingState.QUEUED)
        # An event built by hand, to carry what the aggregate does not know (the
        # queue's depth). The transition above implies the same fact: the
        # repository publishes it once, this richer event winning.
        depth = self.outbox.qsize()
        await self.repo.save_event(FrameQueued.for_frame(frame, attributes={"queue_depth": str(depth)}))
        await self.repo.save(frame)  # nothing left: FrameQueued is already out
        await self.outbox.put(FrameRef.of(frame))
        log.info("frame queued", queue_depth=depth)
        return frame

    async def run(self, frames: int, *, fps: float = 0.0) -> list[str]:
        """Capture ``frames`` frames (``fps`` 0: as fast as they are taken)."""
        ids = []
        for sequence in range(frames):
            frame = await self.capture(sequence)
            ids.append(frame.frame_id)
            if fps:
                await asyncio.sleep(1.0 / fps)
        return ids
