"""The PostgreSQL event store: append batches to ``frame_events``, idempotently.

A batch is COPYed into a per-connection temporary staging table and moved
with ``INSERT ... ON CONFLICT DO NOTHING``: COPY is the fastest way in, and the
conflict clause makes a redelivered event a no-op instead of an error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from tracker.adapters.postgres import call_db
from tracker.events import from_micros
from tracker.store.lifecycle import TERMINAL
from tracker.store.ports import (
    COLUMNS,
    INSERTED_FIELDS,
    AppendResult,
    EventRow,
    EventStore,
    InlineStep,
    StoredTerminals,
)

_COLS = ", ".join(f'"{c}"' for c in COLUMNS)

# Built once: statements are constants, not formatted per call.
_CREATE_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS frame_events_staging "
    "(LIKE frame_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
_MOVE_STAGED = (
    f"INSERT INTO frame_events ({_COLS}) SELECT {_COLS} FROM frame_events_staging "
    "ON CONFLICT DO NOTHING "
    f"RETURNING {', '.join(INSERTED_FIELDS)}"
)
# Bounded by the batch's capture times: partition (or chunk) pruning keeps this
# to the days the batch touches instead of every partition's index.
_STORED_TERMINALS = (
    "SELECT frame_id, event_id::text AS event_id, event_type, occurred_at FROM frame_events "
    "WHERE frame_id = ANY($1::text[]) AND event_type = ANY($2::text[]) "
    "AND frame_timestamp BETWEEN $3 AND $4"
)


def record_to_row(
    rec: dict[str, Any],
    *,
    topic: str,
    partition: int,
    offset: int,
    fingerprint: bytes,
    trace_id: str | None,
    span_id: str | None,
) -> EventRow:
    """One ``frame_events`` row, in ``COLUMNS`` order, from a validated record."""
    attrs = rec.get("attributes")
    return (
        rec["event_id"],
        rec["event_type"],
        rec["frame_id"],
        rec["camera_id"],
        from_micros(rec["frame_timestamp"]),
        from_micros(rec["occurred_at"]),
        rec.get("producer") or "",
        rec.get("stage"),
        rec.get("attempt") or 1,
        rec.get("duration_ms"),
        rec.get("error_type"),
        rec.get("error_message"),
        json.dumps(attrs) if attrs else "{}",
        trace_id,
        span_id,
        topic,
        partition,
        offset,
        fingerprint,
        rec.get("lifecycle_flag"),
    )


def message_to_row(
    msg: Any, record: dict[str, Any], fingerprint: bytes, trace: tuple[str, str, int] | None
) -> EventRow:
    """:func:`record_to_row` for a decoded Kafka record: its coordinates, and
    the ids of its ``traceparent`` (as :func:`tracker.telemetry.parse_traceparent` gives them)."""
    return record_to_row(
        record,
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        fingerprint=fingerprint,
        trace_id=trace[0] if trace else None,
        span_id=trace[1] if trace else None,
    )


class PostgresEventStore(EventStore):
    """The event store on ``frame_events`` (daily partitions, or a TimescaleDB hypertable)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._known_days: set[date] = set()

    async def ensure_partitions(self, days: set[date]) -> None:
        """Create the daily partitions for ``days`` that this process has not seen yet."""
        missing = days - self._known_days
        if not missing:
            return
        lo, hi = min(missing), max(missing)
        start = datetime(lo.year, lo.month, lo.day, tzinfo=UTC)
        end = datetime(hi.year, hi.month, hi.day, tzinfo=UTC)

        async def run() -> None:
            async with self._pool.acquire() as conn:
                for table in await conn.fetch("SELECT table_name FROM tracker_partitioned_tables"):
                    await conn.execute(
                        "SELECT tracker_ensure_partitions($1, $2, $3)", table["table_name"], start, end
                    )

        await call_db(run)
        self._known_days |= {lo + timedelta(days=i) for i in range((hi - lo).days + 1)}

    async def stored_terminals(
        self, frame_ids: Sequence[str], first: datetime, last: datetime
    ) -> StoredTerminals:
        """Terminal events already stored for these frames (captured in [first, last])."""
        from tracker.events import to_micros

        async def run() -> list[asyncpg.Record]:
            async with self._pool.acquire() as conn:
                return await conn.fetch(_STORED_TERMINALS, list(frame_ids), list(TERMINAL), first, last)

        out: StoredTerminals = {}
        for r in await call_db(run):
            out.setdefault(r["frame_id"], []).append(
                (r["event_id"], r["event_type"], to_micros(r["occurred_at"]))
            )
        return out

    async def append(self, rows: Sequence[EventRow], *, inline: InlineStep | None = None) -> AppendResult:
        """Append rows in one transaction; already-stored event ids are skipped.
        ``inline`` runs in that transaction after the rows are in."""
        if not rows:
            return AppendResult([], 0)

        async def run() -> list[asyncpg.Record]:
            async with self._pool.acquire() as conn:
                async with conn.transaction():
                    # One round trip, and right after a reconnect too (a new
                    # session has no temporary table yet).
                    await conn.execute(_CREATE_STAGING)
                    await conn.copy_records_to_table("frame_events_staging", records=rows, columns=COLUMNS)
                    inserted = await conn.fetch(_MOVE_STAGED)
                    if inline is not None:
                        await inline(conn)
                    return inserted

        inserted = await call_db(run)
        return AppendResult(inserted, len(rows) - len(inserted))
