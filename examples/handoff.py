"""How the camera hands a frame to the processor: a small message on the
services' own transport (here an ``asyncio.Queue``; in production a queue,
a gRPC call, shared memory...). It carries the frame's identity and the W3C
trace context, so the processor continues the camera's trace: one trace per
frame, across services."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from tracker.domain import Frame
from tracker.telemetry import inject_carrier


@dataclass(frozen=True)
class FrameRef:
    frame_id: str
    camera_id: str
    timestamp: datetime
    trace_context: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, frame: Frame) -> FrameRef:
        """Call inside the camera's span: its context is what the processor continues."""
        return cls(frame.frame_id, frame.camera_id, frame.timestamp, inject_carrier())

    def resume(self) -> Frame:
        """The frame, on the processor's side: queued, with nothing recorded yet."""
        return Frame.resume(self.frame_id, self.camera_id, self.timestamp, trace_context=self.trace_context)
