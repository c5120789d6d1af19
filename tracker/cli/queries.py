"""The read side: ``journey``, ``slow``, ``failures``, ``anomalies``, ``stats``, ``status``.

An argument the queries refuse (``InvalidQuery``) exits 2, like a bad argument.
"""

from __future__ import annotations

import argparse

from tracker.cli.output import emit
from tracker.config import Settings
from tracker.errors import UsageError


async def cmd_journey(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.queries import FrameTrackingQueries, check_frame_id

    check_frame_id(args.frame_id)
    async with await FrameTrackingQueries.connect(settings) as q:
        j = await q.get_frame_journey(args.frame_id)

    def text() -> str:
        from tracker.cli.render import render_journey

        return render_journey(j)

    return emit(args, j, text)


async def cmd_slow(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.cli.render import table
    from tracker.queries import FrameTrackingQueries, check_camera_id

    async with await FrameTrackingQueries.connect(settings) as q:
        if args.camera is not None:
            check_camera_id(args.camera)
            if not await q.camera_exists(args.camera):
                raise UsageError(f"unknown camera {args.camera!r}")
        rows = await q.find_slow_frames(
            args.threshold_ms, args.hours, camera_id=args.camera, limit=min(args.limit, 1000)
        )
    if not rows:
        return emit(args, rows, f"no frame slower than {args.threshold_ms:g} ms in the last {args.hours:g} h")
    columns = [
        "frame_id",
        "camera_id",
        "state",
        "total_processing_time_ms",
        "slowest_stage",
        "slowest_stage_ms",
        "trace_url",
    ]
    return emit(args, rows, lambda: table(rows, columns))


async def cmd_failures(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.cli.render import table
    from tracker.queries import FrameTrackingQueries

    async with await FrameTrackingQueries.connect(settings) as q:
        a = await q.get_failure_analysis(args.hours)

    def text() -> str:
        lines = [
            f"last {args.hours:g} h (frames captured since {a['since']}): {a['failed_frames']} of "
            f"{a['frames']} frames failed ({a['failure_rate']:.2%})"
        ]
        if a["by_stage_error_camera"]:
            columns = ["stage", "error_type", "camera_id", "failures", "rate", "last_seen", "sample_frame_id"]
            lines.append(table(a["by_stage_error_camera"], columns))
        if a["stage_failures"]:
            lines.append("\nfailed stage runs (including retried ones):")
            lines.append(table(a["stage_failures"], ["stage", "error_type", "failures", "last_seen"]))
        return "\n".join(lines)

    return emit(args, a, text)


async def cmd_anomalies(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.queries import FrameTrackingQueries
    from tracker.queries.shaping import describe_anomaly

    async with await FrameTrackingQueries.connect(settings) as q:
        a = await q.find_anomalies(args.hours, limit=min(args.limit, 1000))

    def text() -> str:
        if not a["anomalies"]:
            return f"no anomaly in the last {args.hours:g} h"
        lines = [f"last {args.hours:g} h: {len(a['anomalies'])} anomalies"]
        for x in a["anomalies"]:
            line = f"  {describe_anomaly(x)}"
            if x["frames"]:
                line += f"; {x['frames']} slow frames, e.g. {x['sample_frame_id']}"
            lines.append(line)
        return "\n".join(lines)

    return emit(args, a, text)


async def cmd_stats(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.cli.render import table
    from tracker.queries import FrameTrackingQueries

    async with await FrameTrackingQueries.connect(settings) as q:
        cams = await q.get_camera_stats(args.hours)
        stages = await q.get_stage_performance(args.hours)

    def text() -> str:
        camera_columns = [
            "camera_id",
            "frames",
            "throughput_fps",
            "failure_rate",
            "processing_time_p50_ms",
            "processing_time_p95_ms",
            "processing_time_p99_ms",
        ]
        stage_columns = [
            "stage",
            "runs",
            "failed",
            "failure_rate",
            "duration_p50_ms",
            "duration_p95_ms",
            "duration_p99_ms",
        ]
        return "\n".join(
            [
                f"cameras, last {args.hours:g} h (percentiles from histogram buckets):",
                table(cams, camera_columns),
                "\nstages:",
                table(stages, stage_columns),
            ]
        )

    return emit(args, {"cameras": cams, "stages": stages}, text)


async def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.queries.status import collect_status, render

    status = await collect_status(settings)
    return emit(args, status.to_json(), lambda: render(status), default=str)
