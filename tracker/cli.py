"""The ``tracker`` command.

Argument errors print one line and exit 2; operational errors (database or
broker unreachable, a failed migration) print one line and exit 1. Nothing
prints a traceback unless ``TRACKER_LOG_LEVEL=DEBUG``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from tracker import __version__
from tracker.config import Settings, mask_url_password
from tracker.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    ConfigError,
    DatabaseUnavailable,
    TrackerError,
    UsageError,
    exit_code,
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be zero or positive")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _rate(text: str) -> float:
    value = _non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1")
    return value


def _duration(text: str) -> float:
    """``30d`` / ``12h`` / ``90m`` → hours."""
    units = {"d": 24.0, "h": 1.0, "m": 1 / 60}
    try:
        value, unit = float(text[:-1]), text[-1]
        factor = units[unit]
    except (ValueError, KeyError, IndexError):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number and a unit (d, h, m)") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value * factor


def _timestamp(text: str) -> datetime:
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 date or time") from None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tracker", description="Frame tracking for the Detektor video pipeline.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("config", help="print the effective settings (secrets masked)")
    m = sub.add_parser("migrate", help="apply the sql/ migrations")
    m.add_argument("--json", action="store_true")

    s = sub.add_parser("simulate", help="simulated camera and processor services")
    s.add_argument("--cameras", type=_positive_int, default=3)
    s.add_argument("--fps", type=_positive_float, default=5.0)
    s.add_argument("--duration", type=_positive_float, default=5.0, help="seconds of video")
    s.add_argument("--failure-rate", type=_rate, default=0.05)
    s.add_argument("--retry-rate", type=_rate, default=0.02)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--fast", action="store_true", help="publish as fast as Kafka takes it")
    s.add_argument("--ids-out", type=Path, help="write every published event id to this file")
    s.add_argument("--json", action="store_true")

    c = sub.add_parser("consume", help="event-store consumer worker")
    c.add_argument("--until-idle", action="store_true", help="exit once caught up")
    c.add_argument("--metrics-port", type=_port, default=9464, help="0 disables /metrics")
    c.add_argument("--json", action="store_true")

    pr = sub.add_parser("project", help="projection worker (frame_metadata, processing_stages, rollups)")
    pr.add_argument("--until-idle", action="store_true", help="exit once caught up")
    pr.add_argument("--metrics-port", type=_port, default=9465, help="0 disables /metrics")
    pr.add_argument("--json", action="store_true")

    rp = sub.add_parser("replay", help="rebuild a projection with no downtime")
    rp.add_argument(
        "--projection",
        default="frames",
        choices=["frames"],
        help="frames = frame_metadata + processing_stages + hourly rollups",
    )
    rp.add_argument("--source", default="topics", choices=["topics", "store"])
    rp.add_argument(
        "--since",
        type=_timestamp,
        metavar="TIME",
        help="with --source store: recompute frames captured since TIME (ISO 8601, UTC "
        "if no offset), copy older ones unchanged",
    )
    rp.add_argument("--json", action="store_true")

    j = sub.add_parser("journey", help="the journey of one frame")
    j.add_argument("frame_id")
    j.add_argument("--json", action="store_true")

    sl = sub.add_parser("slow", help="frames slower than a threshold")
    sl.add_argument("--threshold-ms", type=_non_negative_float, default=1000.0)
    sl.add_argument("--hours", type=_positive_float, default=1.0)
    sl.add_argument("--camera", help="only this camera")
    sl.add_argument("--limit", type=_positive_int, default=20)
    sl.add_argument("--json", action="store_true")

    f = sub.add_parser("failures", help="failure analysis")
    f.add_argument("--hours", type=_positive_float, default=24.0)
    f.add_argument("--json", action="store_true")

    st = sub.add_parser("stats", help="per-camera and per-stage statistics")
    st.add_argument("--hours", type=_positive_float, default=1.0)
    st.add_argument("--json", action="store_true")

    ss = sub.add_parser("status", help="lag, checkpoints, DLQ, rebuilds")
    ss.add_argument("--json", action="store_true")

    rt = sub.add_parser("retention", help="drop whole partitions older than a cut-off")
    rt.add_argument(
        "--older-than",
        type=_duration,
        required=True,
        metavar="AGE",
        help="e.g. 30d or 12h (rounded down to whole UTC days)",
    )
    rt.add_argument("--json", action="store_true")

    sv = sub.add_parser("serve", help="HTTP API, /metrics, /healthz, /readyz")
    sv.add_argument("--host", help="bind address (default TRACKER_API_HOST, 127.0.0.1)")
    sv.add_argument("--port", type=_port, help="default TRACKER_API_PORT, 8080")

    d = sub.add_parser("dlq", help="dead letters")
    dsub = d.add_subparsers(dest="dlq_command", required=True, parser_class=_Parser)
    dl = dsub.add_parser("list", help="list dead letters")
    dl.add_argument("--limit", type=_positive_int, default=100)
    dl.add_argument("--json", action="store_true")
    dr = dsub.add_parser("replay", help="re-publish dead letters to their original topic")
    sel = dr.add_mutually_exclusive_group(required=True)
    sel.add_argument("--all", action="store_true")
    sel.add_argument(
        "--offset",
        action="append",
        metavar="PARTITION:OFFSET",
        help="one dead letter by its DLQ position (repeatable)",
    )
    return p


def _parse_positions(values: Sequence[str]) -> set[tuple[int, int]]:
    out = set()
    for v in values:
        try:
            part, off = v.split(":", 1)
            out.add((int(part), int(off)))
        except ValueError:
            raise UsageError(f"--offset {v!r}: expected PARTITION:OFFSET") from None
    return out


# ---- commands ----------------------------------------------------------------


async def cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    for name, value in settings.dump():
        print(f"{name}={value}")
    return EXIT_OK


async def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.db import connect, migrate

    conn = await connect(settings)
    try:
        report = await migrate(conn)
    finally:
        await conn.close()
    if args.json:
        print(
            json.dumps(
                {
                    "applied": report.applied,
                    "already_applied": report.already,
                    "timescaledb": report.timescaledb,
                }
            )
        )
    else:
        mode = "TimescaleDB" if report.timescaledb else "plain PostgreSQL"
        if report.applied:
            print(f"applied {len(report.applied)} migration(s) ({mode}): {', '.join(report.applied)}")
        else:
            print(f"schema up to date ({report.already} migration(s), {mode})")
    return EXIT_OK


async def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.publisher import FramePublisher
    from tracker.runtime import on_stop_signals
    from tracker.simulator import SimulationConfig, simulate
    from tracker.telemetry import setup_tracing

    setup_tracing("tracker-simulator")
    cfg = SimulationConfig(
        cameras=args.cameras,
        fps=args.fps,
        duration_s=args.duration,
        failure_rate=args.failure_rate,
        retry_rate=args.retry_rate,
        seed=args.seed,
        realtime=not args.fast,
    )
    stop = asyncio.Event()
    on_stop_signals(stop.set)
    async with FramePublisher(settings, producer_name="simulator") as pub:
        result = await simulate(pub, cfg, record_ids=args.ids_out is not None, stop=stop)
    if args.ids_out is not None:
        args.ids_out.write_text("".join(f"{i}\n" for i in result.event_ids))
    eps = result.events / result.seconds if result.seconds else 0.0
    if args.json:
        print(
            json.dumps(
                {
                    "frames": result.frames,
                    "events": result.events,
                    "failed_frames": result.failed_frames,
                    "seconds": round(result.seconds, 3),
                    "events_per_second": round(eps, 1),
                }
            )
        )
    else:
        print(
            f"published {result.events} events for {result.frames} frames "
            f"({result.failed_frames} failed) from {cfg.cameras} cameras in "
            f"{result.seconds:.1f}s ({eps:,.0f} events/s)"
        )
    return EXIT_OK


async def cmd_consume(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.consumer import EventStoreConsumer
    from tracker.metrics import serve_metrics
    from tracker.telemetry import setup_tracing

    setup_tracing("tracker-event-store")
    serve_metrics(args.metrics_port, settings.api_host)
    worker = EventStoreConsumer(settings)
    worker.install_signal_handlers()
    async with worker:
        stats = await worker.run(until_idle=args.until_idle)
    if args.json:
        print(
            json.dumps(
                {
                    "records": stats.records,
                    "stored": stats.stored,
                    "duplicates": stats.duplicates,
                    "dead_lettered": stats.dead_lettered,
                    "flagged": stats.flagged,
                    "batches": stats.batches,
                }
            )
        )
    else:
        print(
            f"consumed {stats.records} records in {stats.batches} batches: stored "
            f"{stats.stored}, duplicates {stats.duplicates}, dead-lettered "
            f"{stats.dead_lettered}, lifecycle-flagged {stats.flagged}"
        )
    return EXIT_OK


async def cmd_project(settings: Settings, args: argparse.Namespace) -> int:
    # projections depends on tracker, never the reverse: imported here, at the edge.
    from projections.worker import ProjectionWorker
    from tracker.metrics import serve_metrics
    from tracker.telemetry import setup_tracing

    setup_tracing("tracker-projections")
    serve_metrics(args.metrics_port, settings.api_host)
    worker = ProjectionWorker(settings)
    worker.install_signal_handlers()
    async with worker:
        stats = await worker.run(until_idle=args.until_idle)
    out = {
        "records": stats.records,
        "batches": stats.batches,
        "skipped_invalid": stats.skipped,
        "checkpoint_conflicts": stats.conflicts,
        "generation": worker.generation,
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"projected {stats.records} records in {stats.batches} batches into generation "
            f"{worker.generation} (skipped {stats.skipped} invalid)"
        )
    return EXIT_OK


async def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from projections.replay import ProjectionRebuild, ReplayProgress
    from tracker.runtime import on_stop_signals

    def show(p: ReplayProgress) -> None:
        eta = f"{p.eta_s:.0f}s" if p.eta_s is not None else "?"
        print(
            f"[{p.phase}] generation {p.generation}: {p.events_applied} events applied, "
            f"{p.events_per_s:,.0f} events/s, lag {p.lag_events}, eta {eta}",
            file=sys.stderr,
            flush=True,
        )

    if args.since is not None and args.source != "store":
        raise UsageError("--since needs --source store")
    rebuild = ProjectionRebuild(settings, source=args.source, on_progress=show, since=args.since)
    on_stop_signals(rebuild.request_stop)
    gen = await rebuild.run()
    if args.json:
        print(json.dumps({"projection": args.projection, "generation": gen, "source": args.source}))
    else:
        print(f"projection {args.projection} rebuilt from {args.source}: generation {gen} is live")
    return EXIT_OK


async def cmd_journey(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.queries import FrameTrackingQueries, check_frame_id

    check_frame_id(args.frame_id)  # InvalidQuery: exit 2, like a UsageError
    async with await FrameTrackingQueries.connect(settings) as q:
        j = await q.get_frame_journey(args.frame_id)
    if args.json:
        print(json.dumps(j))
        return EXIT_OK
    from tracker.render import render_journey

    print(render_journey(j))
    return EXIT_OK


async def cmd_slow(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.queries import FrameTrackingQueries, check_camera_id
    from tracker.render import table

    async with await FrameTrackingQueries.connect(settings) as q:
        if args.camera is not None:
            check_camera_id(args.camera)
            if not await q.camera_exists(args.camera):
                raise UsageError(f"unknown camera {args.camera!r}")
        rows = await q.find_slow_frames(
            args.threshold_ms, args.hours, camera_id=args.camera, limit=min(args.limit, 1000)
        )
    if args.json:
        print(json.dumps(rows))
    elif not rows:
        print(f"no frame slower than {args.threshold_ms:g} ms in the last {args.hours:g} h")
    else:
        print(
            table(
                rows,
                [
                    "frame_id",
                    "camera_id",
                    "state",
                    "total_processing_time_ms",
                    "slowest_stage",
                    "slowest_stage_ms",
                    "trace_url",
                ],
            )
        )
    return EXIT_OK


async def cmd_failures(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.queries import FrameTrackingQueries
    from tracker.render import table

    async with await FrameTrackingQueries.connect(settings) as q:
        a = await q.get_failure_analysis(args.hours)
    if args.json:
        print(json.dumps(a))
        return EXIT_OK
    print(
        f"last {args.hours:g} h (frames captured since {a['since']}): {a['failed_frames']} of "
        f"{a['frames']} frames failed ({a['failure_rate']:.2%})"
    )
    if a["by_stage_error_camera"]:
        print(
            table(
                a["by_stage_error_camera"],
                ["stage", "error_type", "camera_id", "failures", "rate", "last_seen", "sample_frame_id"],
            )
        )
    if a["stage_failures"]:
        print("\nfailed stage runs (including retried ones):")
        print(table(a["stage_failures"], ["stage", "error_type", "failures", "last_seen"]))
    return EXIT_OK


async def cmd_stats(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.queries import FrameTrackingQueries
    from tracker.render import table

    async with await FrameTrackingQueries.connect(settings) as q:
        cams = await q.get_camera_stats(args.hours)
        stages = await q.get_stage_performance(args.hours)
    if args.json:
        print(json.dumps({"cameras": cams, "stages": stages}))
        return EXIT_OK
    print(f"cameras, last {args.hours:g} h (percentiles from histogram buckets):")
    print(
        table(
            cams,
            [
                "camera_id",
                "frames",
                "throughput_fps",
                "failure_rate",
                "processing_time_p50_ms",
                "processing_time_p95_ms",
                "processing_time_p99_ms",
            ],
        )
    )
    print("\nstages:")
    print(
        table(
            stages,
            [
                "stage",
                "runs",
                "failed",
                "failure_rate",
                "duration_p50_ms",
                "duration_p95_ms",
                "duration_p99_ms",
            ],
        )
    )
    return EXIT_OK


async def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.status import collect_status, render

    status = await collect_status(settings)
    print(json.dumps(status.to_json(), default=str) if args.json else render(status))
    return EXIT_OK


async def cmd_retention(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta

    from tracker.db import call_db, connect

    cutoff = datetime.now(UTC) - timedelta(hours=args.older_than)
    conn = await connect(settings)
    try:
        rows = await call_db(
            lambda: conn.fetch(
                "SELECT table_name, dropped FROM tracker_drop_partitions_older_than($1)", cutoff
            )
        )
    finally:
        await conn.close()
    if args.json:
        print(json.dumps({"cutoff": cutoff.isoformat(), "dropped": [dict(r) for r in rows]}))
    else:
        print(f"dropped {len(rows)} partition(s) older than {cutoff:%Y-%m-%d} (UTC days)")
        for r in rows:
            print(f"  {r['table_name']}: {r['dropped']}")
    return EXIT_OK


async def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.api import serve
    from tracker.runtime import on_stop_signals
    from tracker.telemetry import setup_tracing

    setup_tracing("tracker-api")
    stop = asyncio.Event()
    on_stop_signals(stop.set)
    await serve(settings, host=args.host, port=args.port, stop=stop)
    return EXIT_OK


async def cmd_dlq(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.dlq import read_dead_letters, replay_dead_letters

    if args.dlq_command == "list":
        letters = await read_dead_letters(settings, limit=args.limit)
        if args.json:
            print(json.dumps([d.to_json() for d in letters]))
        elif not letters:
            print(f"{settings.dlq_topic} is empty")
        else:
            print(f"{'DLQ POS':<12} {'SOURCE':<36} {'ERROR':<20} MESSAGE")
            for d in letters:
                j = d.to_json()
                print(
                    f"{j['dlq_partition']}:{j['dlq_offset']:<10} {j['source']:<36} "
                    f"{j['error_class']:<20} {j['error_message'][:80]}"
                )
        return EXIT_OK
    positions = None if args.all else _parse_positions(args.offset)
    letters = await read_dead_letters(settings, limit=1_000_000)
    chosen = [d for d in letters if positions is None or (d.partition, d.offset) in positions]
    if positions is not None and len(chosen) != len(positions):
        found = {(d.partition, d.offset) for d in chosen}
        missing = ", ".join(f"{p}:{o}" for p, o in sorted(positions - found))
        raise UsageError(f"no dead letter at {missing}")
    sent = await replay_dead_letters(settings, chosen)
    print(f"re-published {sent} dead letter(s) to their original topics")
    return EXIT_OK


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "config": cmd_config,
    "migrate": cmd_migrate,
    "simulate": cmd_simulate,
    "consume": cmd_consume,
    "dlq": cmd_dlq,
    "project": cmd_project,
    "replay": cmd_replay,
    "journey": cmd_journey,
    "slow": cmd_slow,
    "failures": cmd_failures,
    "stats": cmd_stats,
    "status": cmd_status,
    "retention": cmd_retention,
    "serve": cmd_serve,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as e:
        print(f"tracker: configuration error: {e}", file=sys.stderr)
        return exit_code(e)
    from tracker.logs import setup_logging

    setup_logging(settings.log_level, settings.log_format)
    debug = settings.log_level.upper() == "DEBUG"
    try:
        return asyncio.run(COMMANDS[args.command](settings, args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as e:
        if debug and not isinstance(e, TrackerError):
            raise  # the last resort: a traceback only with DEBUG, else one line
        print(f"tracker: {_message(e, settings)}", file=sys.stderr)
        code = exit_code(e)  # tracker.errors: the HTTP API's statuses come from the same table
        if debug and code == EXIT_FAILURE:
            raise
        return code


def _message(e: Exception, settings: Settings) -> str:
    """The one line printed for an error (after ``tracker: ``)."""
    if exit_code(e) == EXIT_NOT_FOUND:
        return str(e)
    if isinstance(e, DatabaseUnavailable):
        where = mask_url_password(settings.database_url.get())
        return f"error: cannot reach PostgreSQL at {where} ({e}); is the stack up? (make stack-up)"
    if isinstance(e, TrackerError):
        return f"error: {e}"
    return f"error: unexpected {type(e).__name__}: {e} (TRACKER_LOG_LEVEL=DEBUG shows the traceback)"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
