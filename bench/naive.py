"""The baseline: a straightforward consumer, configured by TRACKER_*.

For each record: decode it with our codec and INSERT its row into frame_events
in a transaction of its own. Offsets are committed the way a tutorial consumer
does it: by aiokafka's auto-commit, on its default interval (``--commit auto``,
the default: ``naive_eps``), or synchronously after every record (``--commit
each``: ``naive_commit_each_eps``, which no tutorial does, but which is the only
one of the two that never loses a record on a crash). No batching, no COPY.
Stops after ``--limit`` records.

    python -m bench.naive --limit 20000 [--commit auto|each]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from tracker.adapters.kafka import client_kwargs
from tracker.codec import FrameEventCodec
from tracker.config import Settings
from tracker.store.postgres import COLUMNS, message_to_row
from tracker.telemetry import header, parse_traceparent

_COLS = ", ".join(f'"{c}"' for c in COLUMNS)
INSERT = (
    f"INSERT INTO frame_events ({_COLS}) "
    f"VALUES ({', '.join(f'${i + 1}' for i in range(len(COLUMNS)))}) ON CONFLICT DO NOTHING"
)


async def run(settings: Settings, limit: int, commit: str = "auto") -> dict[str, float]:
    codec = FrameEventCodec()
    conn = await asyncpg.connect(settings.database.url.get())
    consumer = AIOKafkaConsumer(
        *settings.topics.events,
        **client_kwargs(settings.kafka),
        group_id=settings.groups.event_store,
        enable_auto_commit=commit == "auto",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    n = 0
    t0 = None
    try:
        while n < limit:
            msg = await consumer.getone()
            if t0 is None:
                t0 = time.perf_counter()
            d = codec.decode_record(msg.value)
            tctx = parse_traceparent(header(msg.headers, "traceparent"))
            row = message_to_row(msg, d.record, d.fingerprint, tctx)
            await conn.execute(INSERT, *row)
            if commit == "each":
                await consumer.commit({TopicPartition(msg.topic, msg.partition): msg.offset + 1})
            n += 1
    finally:
        seconds = time.perf_counter() - (t0 or time.perf_counter())
        await consumer.stop()  # with auto-commit, commits what was consumed
        await conn.close()
    return {"records": n, "seconds": seconds, "commit": commit}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.naive")
    ap.add_argument("--limit", type=int, required=True)
    ap.add_argument("--commit", choices=["auto", "each"], default="auto")
    a = ap.parse_args()
    print(json.dumps(asyncio.run(run(Settings.from_env(), a.limit, a.commit))), flush=True)


if __name__ == "__main__":
    main()
