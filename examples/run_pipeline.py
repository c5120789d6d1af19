"""Run the example camera and processor services against the configured stack.

    python -m examples.run_pipeline --cameras 2 --frames 10 --fail-every 7

Events go to the tracker's topics (``TRACKER_*`` settings, the local stack by
default); run ``tracker consume`` and ``tracker project`` (or ``make demo``) to
store and project them, then ``tracker journey <frame id>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from examples.camera_service import CameraService
from examples.handoff import FrameRef
from examples.processor_service import FrameProcessor
from tracker.config import Settings
from tracker.logs import setup_logging
from tracker.metrics import serve_metrics
from tracker.publisher import FramePublisher
from tracker.repository import FrameRepository
from tracker.telemetry import setup_tracing, shutdown_tracing


@dataclass
class RunResult:
    frame_ids: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


async def run(
    settings: Settings, *, cameras: int = 2, frames: int = 10, fail_every: int = 0, processors: int = 2
) -> RunResult:
    """Cameras capture ``frames`` frames each; ``processors`` workers process them."""
    queue: asyncio.Queue[FrameRef] = asyncio.Queue(maxsize=64)
    result = RunResult()
    async with (
        FramePublisher(settings, producer_name="camera-service") as camera_pub,
        FramePublisher(settings, producer_name="processor-service") as processor_pub,
    ):
        camera_repo = FrameRepository(camera_pub)
        processor = FrameProcessor(FrameRepository(processor_pub), fail_every=fail_every)
        workers = [asyncio.create_task(processor.serve(queue)) for _ in range(processors)]
        try:
            services = [CameraService(f"cam-{i + 1:02d}", camera_repo, queue) for i in range(cameras)]
            for ids in await asyncio.gather(*(s.run(frames) for s in services)):
                result.frame_ids.extend(ids)
            await queue.join()
            result.failed = list(processor.failed)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.run_pipeline", description=__doc__.split("\n")[0])
    p.add_argument("--cameras", type=int, default=2)
    p.add_argument("--frames", type=int, default=10, help="frames per camera")
    p.add_argument("--fail-every", type=int, default=7, help="every Nth processed frame fails (0: none)")
    p.add_argument("--metrics-port", type=int, default=0, help="serve /metrics on this port (0: off)")
    args = p.parse_args(argv)
    if min(args.cameras, args.frames) < 1 or args.fail_every < 0:
        p.error("--cameras and --frames must be at least 1, --fail-every at least 0")
    settings = Settings.from_env()
    setup_logging(settings.log.level, settings.log.format)
    setup_tracing("detektor-example")
    serve_metrics(args.metrics_port)
    try:
        result = asyncio.run(
            run(settings, cameras=args.cameras, frames=args.frames, fail_every=args.fail_every)
        )
    finally:
        shutdown_tracing()
    summary = {"frames": len(result.frame_ids), "failed": result.failed, "frame_ids": result.frame_ids}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
