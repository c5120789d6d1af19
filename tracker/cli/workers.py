"""The long-running and batch workers: ``simulate``, ``consume``, ``project``,
``replay``. Each imports its worker (Kafka, PostgreSQL) only when it runs."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from tracker.cli.output import emit, progress
from tracker.config import Settings
from tracker.errors import UsageError

if TYPE_CHECKING:
    from tracker.runtime import KafkaWorker
    from tracker.store.consumer import EventStoreConsumer

W = TypeVar("W", bound="KafkaWorker[Any]")


async def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from tracker.publisher import FramePublisher
    from tracker.runtime import on_stop_signals
    from tracker.simulator import Injection, Injections, SimulationConfig, simulate
    from tracker.telemetry import setup_tracing

    injections = Injections(tuple(Injection.parse(spec) for spec in args.inject))
    start = args.start or datetime.now(UTC)
    if args.truth_out is not None:
        injections.write_truth(args.truth_out, start)
    setup_tracing("tracker-simulator")
    cfg = SimulationConfig(
        cameras=args.cameras,
        fps=args.fps,
        duration_s=args.duration,
        failure_rate=args.failure_rate,
        retry_rate=args.retry_rate,
        seed=args.seed,
        realtime=not args.fast,
        start=start,
        injections=injections,
    )
    stop = asyncio.Event()
    on_stop_signals(stop.set)
    async with FramePublisher(settings, producer_name="simulator") as pub:
        result = await simulate(pub, cfg, record_ids=args.ids_out is not None, stop=stop)
    if args.ids_out is not None:
        args.ids_out.write_text("".join(f"{i}\n" for i in result.event_ids))
    eps = result.events / result.seconds if result.seconds else 0.0
    return emit(
        args,
        {
            "frames": result.frames,
            "events": result.events,
            "failed_frames": result.failed_frames,
            "seconds": round(result.seconds, 3),
            "events_per_second": round(eps, 1),
        },
        f"published {result.events} events for {result.frames} frames "
        f"({result.failed_frames} failed) from {cfg.cameras} cameras in "
        f"{result.seconds:.1f}s ({eps:,.0f} events/s)",
    )


async def _run_worker(
    settings: Settings, args: argparse.Namespace, service: str, make: Callable[[Settings], W]
) -> tuple[W, Any]:
    """Tracing, ``/metrics`` and stop signals, then the worker's run loop until
    stopped (or caught up, with ``--until-idle``); the worker and its stats."""
    from tracker.metrics import serve_metrics
    from tracker.telemetry import setup_tracing

    setup_tracing(service)
    serve_metrics(args.metrics_port, settings.api.host)
    worker = make(settings)
    worker.install_signal_handlers()
    async with worker:
        stats = await worker.run(until_idle=args.until_idle)
    return worker, stats


async def cmd_consume(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.store.consumer import EventStoreConsumer

    def make(s: Settings) -> EventStoreConsumer:
        if not args.inline_projection:
            return EventStoreConsumer(s)
        from projections.inline import InlineFrames

        return EventStoreConsumer(s, inline=InlineFrames.from_settings(s))

    _, stats = await _run_worker(settings, args, "tracker-event-store", make)
    counts = ("records", "stored", "duplicates", "dead_lettered", "flagged", "batches")
    return emit(
        args,
        {name: getattr(stats, name) for name in counts},
        f"consumed {stats.records} records in {stats.batches} batches: stored "
        f"{stats.stored}, duplicates {stats.duplicates}, dead-lettered "
        f"{stats.dead_lettered}, lifecycle-flagged {stats.flagged}",
    )


async def cmd_project(settings: Settings, args: argparse.Namespace) -> int:
    # projections depends on tracker, never the reverse: imported here, at the edge.
    from projections.worker import ProjectionWorker

    worker, stats = await _run_worker(settings, args, "tracker-projections", ProjectionWorker)
    return emit(
        args,
        {
            "records": stats.records,
            "batches": stats.batches,
            "skipped_invalid": stats.skipped,
            "checkpoint_conflicts": stats.conflicts,
            "generation": worker.generation,
        },
        f"projected {stats.records} records in {stats.batches} batches into generation "
        f"{worker.generation} (skipped {stats.skipped} invalid)",
    )


async def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from projections.replay import ProjectionRebuild, ReplayProgress
    from tracker.runtime import on_stop_signals

    def show(p: ReplayProgress) -> None:
        eta = f"{p.eta_s:.0f}s" if p.eta_s is not None else "?"
        progress(
            f"[{p.phase}] generation {p.generation}: {p.events_applied} events applied, "
            f"{p.events_per_s:,.0f} events/s, lag {p.lag_events}, eta {eta}"
        )

    if args.since is not None and args.source != "store":
        raise UsageError("--since needs --source store")
    rebuild = ProjectionRebuild(settings, source=args.source, on_progress=show, since=args.since)
    on_stop_signals(rebuild.request_stop)
    gen = await rebuild.run()
    return emit(
        args,
        {"projection": args.projection, "generation": gen, "source": args.source},
        f"projection {args.projection} rebuilt from {args.source}: generation {gen} is live",
    )
