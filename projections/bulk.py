"""The first phase of a rebuild from the topics: a bulk load, folded in SQL.

Folding a whole history event by event in Python (fetch, decode, fold, merge
with the stored row) costs tens of microseconds an event. A rebuild into an
empty generation does not need the merges: this phase decodes each record once
(the one cost only Python can pay), COPYs the rows into a scratch table while
the next batch is fetched (:class:`~tracker.runtime.WriteBehind`), and when the
log ends seen at the start are reached, folds the scratch table in SQL
(:func:`projections.recompute.recompute`) and sets the generation's checkpoints
to those ends, in one transaction. The rebuild then goes on event by event
from there (the tail that arrived meanwhile, and the swap).

The scratch table is ``UNLOGGED`` (it is rebuilt, never recovered) and dropped
at the end. A stop during the load leaves no checkpoint: a resumed rebuild
starts the load again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
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


async def _create_scratch(pool: asyncpg.Pool, scratch: str) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            f"DROP TABLE IF EXISTS {scratch}; "
            f"CREATE UNLOGGED TABLE {scratch} (LIKE frame_events INCLUDING DEFAULTS)"
        )
