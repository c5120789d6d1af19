"""The ``tracker`` command.

Argument errors print one line and exit 2; operational errors (database or
broker unreachable, a failed migration) print one line and exit 1. Nothing
prints a traceback unless ``TRACKER_LOG_LEVEL=DEBUG``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import NoReturn

from tracker.config import Settings, mask_url_password
from tracker.errors import ConfigError, DatabaseUnavailable, TrackerError

log = logging.getLogger("tracker.cli")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A bad argument found after parsing (exit 2)."""


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
    rp.add_argument("--json", action="store_true")

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
    _on_signals(stop.set)
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

    def show(p: ReplayProgress) -> None:
        eta = f"{p.eta_s:.0f}s" if p.eta_s is not None else "?"
        print(
            f"[{p.phase}] generation {p.generation}: {p.events_applied} events applied, "
            f"{p.events_per_s:,.0f} events/s, lag {p.lag_events}, eta {eta}",
            file=sys.stderr,
            flush=True,
        )

    rebuild = ProjectionRebuild(settings, source=args.source, on_progress=show)
    _on_signals(rebuild.request_stop)
    gen = await rebuild.run()
    if args.json:
        print(json.dumps({"projection": args.projection, "generation": gen, "source": args.source}))
    else:
        print(f"projection {args.projection} rebuilt from {args.source}: generation {gen} is live")
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


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], Awaitable[int]]] = {
    "config": cmd_config,
    "migrate": cmd_migrate,
    "simulate": cmd_simulate,
    "consume": cmd_consume,
    "dlq": cmd_dlq,
    "project": cmd_project,
    "replay": cmd_replay,
}


def _on_signals(callback: Callable[[], None]) -> None:
    import signal

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, callback)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as e:
        print(f"tracker: configuration error: {e}", file=sys.stderr)
        return EXIT_USAGE
    from tracker.telemetry import setup_logging

    setup_logging(settings.log_level, settings.log_format)
    debug = settings.log_level.upper() == "DEBUG"
    try:
        return asyncio.run(COMMANDS[args.command](settings, args))
    except UsageError as e:
        print(f"tracker: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except DatabaseUnavailable as e:
        where = mask_url_password(settings.database_url.get())
        print(
            f"tracker: error: cannot reach PostgreSQL at {where} ({e}); is the stack up? (make stack-up)",
            file=sys.stderr,
        )
        if debug:
            raise
        return EXIT_FAILURE
    except TrackerError as e:
        print(f"tracker: error: {e}", file=sys.stderr)
        if debug:
            raise
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # last resort: one line, not a traceback
        if debug:
            raise
        print(
            f"tracker: error: unexpected {type(e).__name__}: {e} "
            "(TRACKER_LOG_LEVEL=DEBUG shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
