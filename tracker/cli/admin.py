"""Running the system: ``config``, ``migrate``, ``topics``, ``retention``, ``dlq``, ``serve``."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from tracker.cli.output import emit
from tracker.config import Settings
from tracker.errors import EXIT_OK, UsageError


async def cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    return emit(args, None, "\n".join(f"{name}={value}" for name, value in settings.dump()))


async def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.adapters.postgres import connect, migrate

    conn = await connect(settings.database)
    try:
        report = await migrate(conn)
    finally:
        await conn.close()
    mode = "TimescaleDB" if report.timescaledb else "plain PostgreSQL"
    if report.applied:
        text = f"applied {len(report.applied)} migration(s) ({mode}): {', '.join(report.applied)}"
    else:
        text = f"schema up to date ({report.already} migration(s), {mode})"
    return emit(
        args,
        {"applied": report.applied, "already_applied": report.already, "timescaledb": report.timescaledb},
        text,
    )


async def cmd_topics(settings: Settings, args: argparse.Namespace) -> int:
    """Create the tracker's topics if missing. Workers and publishers create
    them too, but where they may not (a secure cluster's ACLs give topic
    creation to an admin principal only), this is the step that does."""
    from tracker.adapters.kafka import ensure_topics

    topics = settings.topics
    names = [*topics.events, topics.dlq]
    created = await ensure_topics(settings.kafka, topics, names)
    there = [n for n in names if n not in created]
    how = f"{topics.partitions} partitions, replication factor {topics.replication_factor}"
    how += (
        f", min.insync.replicas {topics.min_insync_replicas}"
        if topics.min_insync_replicas
        else ", the broker's min.insync.replicas"
    )
    lines = [f"created {', '.join(created)} ({how})"] if created else []
    lines += [f"already there: {', '.join(there)}"] if there else []
    return emit(args, {"created": created, "existing": there}, "\n".join(lines))


async def cmd_retention(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.adapters.postgres import call_db, connect

    cutoff = datetime.now(UTC) - timedelta(hours=args.older_than)
    conn = await connect(settings.database)
    try:
        rows = await call_db(
            lambda: conn.fetch(
                "SELECT table_name, dropped FROM tracker_drop_partitions_older_than($1)", cutoff
            )
        )
    finally:
        await conn.close()
    lines = [f"dropped {len(rows)} partition(s) older than {cutoff:%Y-%m-%d} (UTC days)"]
    lines += [f"  {r['table_name']}: {r['dropped']}" for r in rows]
    return emit(args, {"cutoff": cutoff.isoformat(), "dropped": [dict(r) for r in rows]}, "\n".join(lines))


async def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.api.app import serve
    from tracker.api.ui import UiConfig
    from tracker.runtime import on_stop_signals
    from tracker.telemetry import setup_tracing

    setup_tracing("tracker-api")
    stop = asyncio.Event()
    on_stop_signals(stop.set)
    await serve(settings, host=args.host, port=args.port, stop=stop, ui_config=UiConfig(args.grafana_url))
    return EXIT_OK


def _parse_positions(values: Sequence[str]) -> set[tuple[int, int]]:
    out = set()
    for v in values:
        try:
            part, off = v.split(":", 1)
            out.add((int(part), int(off)))
        except ValueError:
            raise UsageError(f"--offset {v!r}: expected PARTITION:OFFSET") from None
    return out


async def cmd_dlq(settings: Settings, args: argparse.Namespace) -> int:
    from tracker.adapters.dead_letters import read_dead_letters, replay_dead_letters

    if args.dlq_command == "list":
        letters = await read_dead_letters(settings.kafka, settings.topics, limit=args.limit)
        rows = [d.to_json() for d in letters]
        if not rows:
            return emit(args, rows, f"{settings.topics.dlq} is empty")
        lines = [f"{'DLQ POS':<12} {'SOURCE':<36} {'ERROR':<20} MESSAGE"]
        lines += [
            f"{j['dlq_partition']}:{j['dlq_offset']:<10} {j['source']:<36} "
            f"{j['error_class']:<20} {j['error_message'][:80]}"
            for j in rows
        ]
        return emit(args, rows, "\n".join(lines))
    positions = None if args.all else _parse_positions(args.offset)
    letters = await read_dead_letters(settings.kafka, settings.topics, limit=1_000_000)
    chosen = [d for d in letters if positions is None or (d.partition, d.offset) in positions]
    if positions is not None and len(chosen) != len(positions):
        found = {(d.partition, d.offset) for d in chosen}
        missing = ", ".join(f"{p}:{o}" for p, o in sorted(positions - found))
        raise UsageError(f"no dead letter at {missing}")
    sent = await replay_dead_letters(settings.kafka, settings.topics, chosen)
    return emit(args, None, f"re-published {sent} dead letter(s) to their original topics")
