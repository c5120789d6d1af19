"""The first phase of a rebuild: a bulk load, folded in SQL.

Folding a whole history event by event in Python (fetch, decode, fold, merge
with the stored row) costs tens of microseconds an event. A rebuild into an
empty generation does not need the merges.

From the store (:func:`bulk_load_store`), ``frame_events`` is folded in SQL at
once (:func:`projections.recompute.recompute`), in one snapshot with the
highest stored offsets, which become the checkpoints in the same transaction.

From the topics (:func:`bulk_load_topics`), each record is decoded once
(the one cost only Python can pay) and its row COPYed into a scratch table while
the next batch is fetched (:class:`~tracker.runtime.WriteBehind`); when the log
ends seen at the start are reached, the scratch table is folded in SQL and the
generation's checkpoints set to those ends, in one transaction.

Either way the rebuild then goes on event by event from those checkpoints (the
tail that arrived meanwhile, and the swap).

The scratch table is ``UNLOGGED`` (it is rebuilt, never recovered) and dropped
at the end. A stop during the load leaves no checkpoint: a resumed rebuild
starts the load again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg

from projections.recompute import recompute
from projections.statements import PROJECTION, UPSERT_CHECKPOINT
from projections.store import FramesProjectionStore
from tracker.adapters.kafka import make_consumer, topic_partitions
from tracker.adapters.postgres import call_db, retry_while_unavailable
from tracker.codec import FrameEventCodec
from tracker.config import Settings
from tracker.errors import DecodeError
from tracker.runtime import WriteBehind
from tracker.store.ports import COLUMNS
from tracker.store.postgres import message_to_row
from tracker.telemetry import header, parse_traceparent


async def bulk_load_topics(
    settings: Settings,
    pool: asyncpg.Pool,
    store: FramesProjectionStore,
    generation: int,
    *,
    batch_size: int,
    stopping: asyncio.Event,
    on_batch: Callable[[int, int], Awaitable[None]] | None = None,
) -> int | None:
    """Load every partition up to the log end seen now into ``generation``;
    the records read (``None`` if a stop was requested first). ``on_batch(read,
    left)`` is called about once a second."""
    codec = FrameEventCodec()
    scratch = f"replay_events_g{generation}"
    tps = await topic_partitions(settings.kafka, settings.topics.events)
    consumer = make_consumer(settings.kafka, group_id=None, role="replay", max_poll_records=batch_size)
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        target = await consumer.end_offsets(tps)
        at = dict.fromkeys(tps, 0)
        await call_db(lambda: _create_scratch(pool, scratch))

        async def copy(rows: list[tuple[Any, ...]]) -> None:
            async def run() -> None:
                async with pool.acquire() as conn:
                    await conn.copy_records_to_table(scratch, records=rows, columns=COLUMNS)

            await retry_while_unavailable(run)

        read, last_report = 0, 0.0
        async with WriteBehind[None]() as behind:
            while any(at[tp] < target[tp] for tp in tps):
                if stopping.is_set():
                    return None
                batch = await consumer.getmany(timeout_ms=500, max_records=batch_size)
                rows = []
                for tp, msgs in batch.items():
                    for m in msgs:
                        if m.offset >= target[tp]:
                            break  # the tail: the event-by-event phase takes it
                        try:
                            d = codec.decode_record(m.value)
                        except DecodeError:
                            continue  # dead-lettered by the event store: no projection either
                        trace = parse_traceparent(header(m.headers, "traceparent"))
                        rows.append(message_to_row(m, d.record, d.fingerprint, trace))
                    at[tp] = min(msgs[-1].offset + 1, target[tp])
                    read += sum(1 for m in msgs if m.offset < target[tp])
                await behind.wait()
                if rows:
                    behind.start(copy(rows))
                now = time.monotonic()
                if on_batch is not None and now - last_report >= 1.0:
                    last_report = now
                    await on_batch(read, sum(target[tp] - at[tp] for tp in tps))
    finally:
        await consumer.stop()

    checkpoints = sorted((tp.topic, tp.partition, off) for tp, off in target.items() if off > 0)

    async def fold() -> None:
        async with pool.acquire() as conn, conn.transaction():
            span = await conn.fetchrow(f"SELECT min(frame_timestamp), max(frame_timestamp) FROM {scratch}")
            if span[0] is not None:
                await store.ensure_partitions(generation, [span[0], span[1]], conn=conn)
                await recompute(conn, generation, source=scratch)
            await conn.executemany(
                UPSERT_CHECKPOINT, [(PROJECTION, generation, t, p, off) for t, p, off in checkpoints]
            )
            await conn.execute(f"DROP TABLE {scratch}")

    await call_db(fold)
    return read


async def bulk_load_store(
    settings: Settings,
    pool: asyncpg.Pool,
    store: FramesProjectionStore,
    gen: int,
    since: datetime | None,
) -> int:
    """Fold ``frame_events`` into the new generation in SQL, with its checkpoints;
    the events folded.

    With ``since``, frames captured before it are copied unchanged from the
    live generation instead of being recomputed; their copy and the live
    checkpoints are read in one snapshot, and the new generation's topic
    phase starts no later than those checkpoints, so an event the live
    projection had not applied yet when it was copied is applied after.
    """
    live_cp: dict[tuple[str, int], int] | None = None
    if since is not None:
        live_cp = await copy_older(pool, store, gen, since)
    where, args = ("WHERE frame_timestamp >= $1", [since]) if since is not None else ("", [])

    def positions_after(maxima: list[asyncpg.Record]) -> dict[tuple[str, int], int]:
        """Where the topic phase starts: after the highest stored offset of each
        partition, and no later than the live checkpoints of a partial rebuild."""
        out: dict[tuple[str, int], int] = {}
        for r in maxima:
            key = (r["topic"], r["partition"])
            if r["topic"] in settings.topics.events:
                out[key] = r["o"] + 1 if live_cp is None else min(r["o"] + 1, live_cp.get(key, 0))
        for key, off in (live_cp or {}).items():
            out.setdefault(key, off)
        return out

    async def fold_in_sql() -> int:
        # One snapshot for the highest stored offsets and the fold, so the
        # topic phase starts right after what the fold saw; the rows and the
        # checkpoints commit together (a resumed rebuild with checkpoints
        # skips this phase, one without redoes it from an empty generation).
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            maxima = await conn.fetch(
                'SELECT topic, "partition", max("offset") AS o FROM frame_events GROUP BY 1, 2'
            )
            span = await conn.fetchrow(
                "SELECT count(*) AS n, min(frame_timestamp) AS lo, max(frame_timestamp) AS hi "
                f"FROM frame_events {where}",
                *args,
            )
            if span["n"]:
                await store.ensure_partitions(gen, [span["lo"], span["hi"]], conn=conn)
                await recompute(conn, gen, since)
            await conn.executemany(
                UPSERT_CHECKPOINT,
                [(PROJECTION, gen, t, p, off) for (t, p), off in sorted(positions_after(maxima).items())],
            )
            return int(span["n"])

    return await call_db(fold_in_sql)


async def copy_older(
    pool: asyncpg.Pool, store: FramesProjectionStore, gen: int, since: datetime
) -> dict[tuple[str, int], int]:
    """Copy rows of frames captured before ``since`` from the live generation."""

    async def run() -> dict[tuple[str, int], int]:
        async with pool.acquire() as conn:
            oldest = await conn.fetchval("SELECT min(frame_timestamp) FROM frame_metadata")
            if oldest is not None and oldest < since:
                await store.ensure_partitions(gen, [oldest, since])
            async with conn.transaction(isolation="repeatable_read"):
                live = await conn.fetchval(
                    "SELECT generation FROM projection_state WHERE projection = $1", PROJECTION
                )
                cps = await conn.fetch(
                    'SELECT topic, "partition", next_offset FROM projection_checkpoints '
                    "WHERE projection = $1 AND generation = $2",
                    PROJECTION,
                    live,
                )
                for table, col in (
                    ("frame_metadata", "frame_timestamp"),
                    ("processing_stages", "frame_timestamp"),
                    ("frame_stats_hourly", "hour"),
                    ("performance_stats", "hour"),
                    ("failure_stats", "hour"),
                    ("stage_camera_stats", "hour"),
                ):
                    await conn.execute(
                        f"INSERT INTO {table}_g{gen} SELECT * FROM {table}_g{live} WHERE {col} < $1",
                        since,
                    )
                return {(r["topic"], r["partition"]): r["next_offset"] for r in cps}

    return await call_db(run)


async def _create_scratch(pool: asyncpg.Pool, scratch: str) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            f"DROP TABLE IF EXISTS {scratch}; "
            f"CREATE UNLOGGED TABLE {scratch} (LIKE frame_events INCLUDING DEFAULTS)"
        )
