"""Measurement probes that run as their own processes (configured by TRACKER_*).

    python -m bench.probes limits --reps 3     # consume / decode / COPY ceilings
    python -m bench.probes load-store          # COPY the topics' rows into frame_events (untimed set-up)

Each prints one JSON line with its results.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from tracker.adapters.kafka import make_consumer, topic_partitions
from tracker.codec import FrameEventCodec
from tracker.config import Settings
from tracker.store.postgres import COLUMNS, PostgresEventStore, record_to_row
from tracker.telemetry import header, parse_traceparent


async def read_all(settings: Settings, *, keep: bool) -> tuple[int, float, list[Any]]:
    """Read every record of the event topics once (no group), as the consumer
    would fetch them. Returns (records, seconds from the first fetch to the last
    record, kept (value, topic, partition, offset, traceparent) tuples)."""
    tps = await topic_partitions(settings.kafka, settings.topics.events)
    consumer = make_consumer(settings.kafka, group_id=None, max_poll_records=settings.batch.max_records)
    await consumer.start()
    kept: list[Any] = []
    n = 0
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        total = sum(ends.values())
        t0 = time.perf_counter()
        while n < total:
            batch = await consumer.getmany(timeout_ms=500, max_records=settings.batch.max_records)
            for msgs in batch.values():
                n += len(msgs)
                if keep:
                    kept.extend(
                        (m.value, m.topic, m.partition, m.offset, header(m.headers, "traceparent"))
                        for m in msgs
                    )
        seconds = time.perf_counter() - t0
    finally:
        await consumer.stop()
    return n, seconds, kept


def build_rows(codec: FrameEventCodec, kept: list[Any]) -> list[tuple[Any, ...]]:
    """The rows the event-store consumer writes for these records."""
    rows = []
    for value, topic, partition, offset, tp_header in kept:
        d = codec.decode_record(value)
        tctx = parse_traceparent(tp_header)
        rows.append(
            record_to_row(
                d.record,
                topic=topic,
                partition=partition,
                offset=offset,
                fingerprint=d.fingerprint,
                trace_id=tctx[0] if tctx else None,
                span_id=tctx[1] if tctx else None,
            )
        )
    return rows


async def ensure_days(settings: Settings, rows: list[tuple[Any, ...]]) -> None:
    days = {r[4].date() for r in rows}
    pool = await asyncpg.create_pool(settings.database.url.get(), min_size=1, max_size=1)
    try:
        store = PostgresEventStore(pool)
        await store.ensure_partitions({d + timedelta(days=i) for d in days for i in (-1, 0, 1)})
    finally:
        await pool.close()


async def copy_rows(settings: Settings, rows: list[tuple[Any, ...]], chunk: int) -> float:
    """COPY rows into frame_events, ``chunk`` rows per COPY (each its own transaction)."""
    conn = await asyncpg.connect(settings.database.url.get())
    try:
        t0 = time.perf_counter()
        for i in range(0, len(rows), chunk):
            await conn.copy_records_to_table("frame_events", records=rows[i : i + chunk], columns=COLUMNS)
        return time.perf_counter() - t0
    finally:
        await conn.close()


async def limits(settings: Settings, reps: int) -> dict[str, Any]:
    out: dict[str, Any] = {"consume": [], "decode": [], "copy": []}
    for _ in range(reps):
        n, secs, _ = await read_all(settings, keep=False)
        out["consume"].append({"records": n, "seconds": secs})
    n, _, kept = await read_all(settings, keep=True)
    codec = FrameEventCodec()
    values = [k[0] for k in kept]
    for _ in range(reps):
        gc.collect()
        t0 = time.perf_counter()
        for v in values:
            codec.decode_record(v)
        out["decode"].append({"records": len(values), "seconds": time.perf_counter() - t0})
    del values
    rows = build_rows(codec, kept)
    del kept
    await ensure_days(settings, rows)
    conn = await asyncpg.connect(settings.database.url.get())
    try:
        for _ in range(reps):
            await conn.execute("TRUNCATE frame_events")
            gc.collect()
            secs = await copy_rows(settings, rows, settings.batch.max_records)
            out["copy"].append({"records": len(rows), "seconds": secs})
    finally:
        await conn.close()
    out["copy_chunk_rows"] = settings.batch.max_records
    return out


async def load_store(settings: Settings) -> dict[str, Any]:
    t0 = time.perf_counter()
    n, _, kept = await read_all(settings, keep=True)
    rows = build_rows(FrameEventCodec(), kept)
    del kept
    await ensure_days(settings, rows)
    secs = await copy_rows(settings, rows, 50_000)
    conn = await asyncpg.connect(settings.database.url.get())
    try:
        await conn.execute("VACUUM ANALYZE frame_events")
    finally:
        await conn.close()
    return {"records": n, "copy_seconds": secs, "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.probes")
    sub = ap.add_subparsers(dest="cmd", required=True)
    lp = sub.add_parser("limits")
    lp.add_argument("--reps", type=int, default=3)
    sub.add_parser("load-store")
    a = ap.parse_args()
    settings = Settings.from_env()
    if a.cmd == "limits":
        out = asyncio.run(limits(settings, a.reps))
    else:
        out = asyncio.run(load_store(settings))
    out["at"] = datetime.now(UTC).isoformat()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
