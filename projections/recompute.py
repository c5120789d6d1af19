"""The ``frames`` projection recomputed from ``frame_events`` in SQL: the set-based fold.

A rebuild from the store folds every stored event into an empty generation.
Done one event at a time in Python that costs tens of microseconds an event;
here PostgreSQL does the per-event work in one ``INSERT ... SELECT ... GROUP
BY`` per table, and Python only adds up the rollups (the per-camera-and-stage and
the failure rollups too) over the rows it made (a frame has about ten events, so that is a tenth of the
work, streamed).

Each column is the SQL form of the same semilattice the Python fold
(:mod:`projections.fold`) keeps, so the rows are the ones it would make:

- a per-state timestamp is the earliest occurrence: ``min(occurred_at) FILTER``;
  the camera id the least (by code point, as Python compares: ``COLLATE "C"``);
- a choice among events (the completion, the failure, the capture, a stage's
  outcome) goes to the first event in the order ``(occurred_at, event_id)``,
  the latest trace mark to the last: ``(array_agg(x ORDER BY occurred_at,
  event_id))[1]``. ``event_id`` is a ``uuid``, whose order is that of its
  canonical lower-case text, which the Python fold compares;
- the applied event ids are a set: ``array_agg(DISTINCT ...)``;
- the derived columns (state, total time, error) follow the row's properties.

``tests/integration/test_recompute.py`` holds hypothesis to it: on generated
histories (shuffled, duplicated, with re-sent and conflicting reports) the
recomputed generation equals the reference fold, rows and rollups.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from projections.columns import FRAME_COLS, STAGE_COLS, failure_to_db, frame_from_db, stage_from_db
from projections.fold import (
    FRAME_COUNTERS,
    STAGE_COUNTERS,
    FailureKey,
    FailureStat,
    Rollup,
    StageCameraKey,
    by_stage,
    frame_contribution,
    frame_failure,
    stage_camera_contribution,
    stage_failure,
)
from projections.rows import (
    CAPTURED,
    COMPLETED,
    CONFLICTED,
    FAILED,
    PROCESSING,
    QUEUED,
    STAGE_COMPLETED,
    STAGE_CONFLICTED,
    STAGE_FAILED,
    STAGE_RUNNING,
)
from projections.statements import GenerationStatements
from tracker.domain import STAGE_EVENT_TYPES, EventType

_ORDER = "ORDER BY occurred_at, event_id"
_STAGE_TYPES = ", ".join(f"'{t}'" for t in sorted(STAGE_EVENT_TYPES))


def _first(expr: str, event_type: str) -> str:
    """``expr`` of the first event of ``event_type`` in the order ``(occurred_at, event_id)``."""
    return f"(array_agg({expr} {_ORDER}) FILTER (WHERE event_type = '{event_type}'))[1]"


def _frames_select(source: str, where: str) -> str:
    """One row per frame, in :data:`FRAME_COLS` order (the fold's state, then the derived columns)."""
    c, f = EventType.COMPLETED.value, EventType.FAILED.value
    per_frame = f"""
        SELECT frame_id, frame_timestamp,
            min(camera_id COLLATE "C") AS camera_id,
            min(occurred_at) FILTER (WHERE event_type = '{EventType.CAPTURED}') AS captured_at,
            min(occurred_at) FILTER (WHERE event_type = '{EventType.QUEUED}') AS queued_at,
            min(occurred_at) FILTER (WHERE event_type = '{EventType.PROCESSING_STARTED}')
                AS processing_started_at,
            min(occurred_at) FILTER (WHERE event_type = '{c}') AS completed_at,
            min(occurred_at) FILTER (WHERE event_type = '{f}') AS failed_at,
            {_first("event_id::text", c)} AS completed_event_id,
            {_first("duration_ms", c)} AS completed_duration_ms,
            {_first("event_id::text", f)} AS failed_event_id,
            {_first("duration_ms", f)} AS failed_duration_ms,
            {_first("error_type", f)} AS error_type,
            {_first("error_message", f)} AS error_message,
            {_first("stage", f)} AS error_stage,
            {_first("event_id::text", EventType.CAPTURED)} AS captured_event_id,
            {_first("data", EventType.CAPTURED)} AS captured_data,
            (array_agg(occurred_at ORDER BY occurred_at DESC, event_id DESC)
                FILTER (WHERE trace_id <> ''))[1] AS trace_event_at,
            (array_agg(event_id::text ORDER BY occurred_at DESC, event_id DESC)
                FILTER (WHERE trace_id <> ''))[1] AS trace_event_id,
            (array_agg(trace_id ORDER BY occurred_at DESC, event_id DESC)
                FILTER (WHERE trace_id <> ''))[1] AS last_trace_id,
            max(occurred_at) AS last_event_at,
            min(occurred_at) FILTER (WHERE event_type IN ({_STAGE_TYPES})) AS stage_seen_at,
            array_agg(DISTINCT event_id::text) AS event_ids
        FROM {source} {where}
        GROUP BY frame_id, frame_timestamp"""
    state = f"""CASE
            WHEN completed_at IS NOT NULL AND failed_at IS NOT NULL THEN '{CONFLICTED}'
            WHEN completed_at IS NOT NULL THEN '{COMPLETED}'
            WHEN failed_at IS NOT NULL THEN '{FAILED}'
            WHEN processing_started_at IS NOT NULL OR stage_seen_at IS NOT NULL THEN '{PROCESSING}'
            WHEN queued_at IS NOT NULL THEN '{QUEUED}'
            ELSE '{CAPTURED}' END"""

    def since_start(end: str) -> str:
        # greatest() skips NULLs: without a start the time is unknown, not 0.
        return (
            f"CASE WHEN processing_started_at IS NOT NULL THEN "
            f"greatest(0, extract(epoch FROM {end} - processing_started_at)::float8 * 1000.0) END"
        )

    # FrameRow.total_processing_time_ms: the terminal event's own duration, else
    # the time since processing started (never negative); none unless the
    # frame is completed or failed (not conflicted).
    total = f"""CASE
            WHEN state = '{COMPLETED}' THEN coalesce(completed_duration_ms,
                {since_start("completed_at")})
            WHEN state = '{FAILED}' THEN coalesce(failed_duration_ms,
                {since_start("failed_at")})
            END"""
    columns = {
        "state": "state",
        "total_processing_time_ms": total,
        "metadata": "CASE WHEN captured_event_id IS NULL THEN '{}'::jsonb ELSE captured_data END",
        "events_applied": "cardinality(event_ids)",
    }
    select = ", ".join(columns.get(col, col) for col in FRAME_COLS)
    return f"SELECT {select} FROM (SELECT r.*, {state} AS state FROM ({per_frame}) r) s"


def _stages_select(source: str, where: str) -> str:
    """One row per stage run, in :data:`STAGE_COLS` order."""
    c, f = EventType.STAGE_COMPLETED.value, EventType.STAGE_FAILED.value
    cond = f"event_type IN ({_STAGE_TYPES}) AND stage IS NOT NULL"
    where = f"{where} AND {cond}" if where else f"WHERE {cond}"
    per_run = f"""
        SELECT frame_id, frame_timestamp, stage, attempt,
            min(camera_id COLLATE "C") AS camera_id,
            min(occurred_at) FILTER (WHERE event_type = '{EventType.STAGE_STARTED}') AS started_at,
            {_first("occurred_at", c)} AS completed_event_at,
            {_first("event_id::text", c)} AS completed_event_id,
            {_first("duration_ms", c)} AS completed_duration_ms,
            {_first("occurred_at", f)} AS failed_event_at,
            {_first("event_id::text", f)} AS failed_event_id,
            {_first("duration_ms", f)} AS failed_duration_ms,
            {_first("error_type", f)} AS error_type,
            {_first("error_message", f)} AS error_message
        FROM {source} {where}
        GROUP BY frame_id, frame_timestamp, stage, attempt"""
    # The outcome is the first of the completion and the failure (StageRow._outcome).
    completion_first = (
        "failed_event_id IS NULL OR (completed_event_id IS NOT NULL AND "
        "(completed_event_at, completed_event_id::uuid) <= (failed_event_at, failed_event_id::uuid))"
    )
    columns = {
        "status": f"""CASE
            WHEN completed_event_id IS NOT NULL AND failed_event_id IS NOT NULL THEN '{STAGE_CONFLICTED}'
            WHEN completed_event_id IS NOT NULL THEN '{STAGE_COMPLETED}'
            WHEN failed_event_id IS NOT NULL THEN '{STAGE_FAILED}'
            ELSE '{STAGE_RUNNING}' END""",
        "finished_at": f"CASE WHEN {completion_first} THEN completed_event_at ELSE failed_event_at END",
        "duration_ms": f"CASE WHEN {completion_first} THEN completed_duration_ms ELSE failed_duration_ms END",
    }
    select = ", ".join(columns.get(col, col) for col in STAGE_COLS)
    return f"SELECT {select} FROM ({per_run}) r"


async def recompute(
    conn: asyncpg.Connection,
    generation: int,
    since: datetime | None = None,
    *,
    source: str = "frame_events",
) -> tuple[int, int]:
    """Fold the events of ``source`` (``frame_events``, or a table like it)
    captured at or after ``since`` into the empty ``generation`` in the caller's
    transaction, rows and rollups; the frame and stage rows made. The
    generation's partitions must exist for those days."""
    s = GenerationStatements(generation)
    where, args = ("WHERE frame_timestamp >= $1", [since]) if since is not None else ("", [])
    fcols, scols = ", ".join(FRAME_COLS), ", ".join(STAGE_COLS)
    frames = await conn.execute(
        f"INSERT INTO {s.frame_table} ({fcols}) {_frames_select(source, where)}", *args
    )
    stages = await conn.execute(
        f"INSERT INTO {s.stage_table} ({scols}) {_stages_select(source, where)}", *args
    )
    frame_totals: dict[tuple[str, datetime], Rollup] = {}
    failures: dict[FailureKey, FailureStat] = {}
    async for rec in conn.cursor(f"SELECT {fcols} FROM {s.frame_table} {where}", *args, prefetch=10_000):
        row = frame_from_db(rec)
        key, r = frame_contribution(row)
        frame_totals.setdefault(key, Rollup()).add(r)
        if (failed := frame_failure(row)) is not None:
            failures.setdefault(failed[0], FailureStat()).add(failed[1])
    stage_camera_totals: dict[StageCameraKey, Rollup] = {}
    async for rec in conn.cursor(f"SELECT {scols} FROM {s.stage_table} {where}", *args, prefetch=10_000):
        srow = stage_from_db(rec)
        skey, r = stage_camera_contribution(srow)
        stage_camera_totals.setdefault(skey, Rollup()).add(r)
        if (failed_run := stage_failure(srow)) is not None:
            failures.setdefault(failed_run[0], FailureStat()).add(failed_run[1])
    totals_to_write: list[tuple[dict[Any, Rollup], tuple[str, ...], str]] = [
        (frame_totals, FRAME_COUNTERS, s.upsert_frame_stats),
        (by_stage(stage_camera_totals), STAGE_COUNTERS, s.upsert_stage_stats),
        (stage_camera_totals, STAGE_COUNTERS, s.upsert_stage_camera_stats),
    ]
    for totals, counters, upsert in totals_to_write:
        rows: list[Any] = [(*key, *r.as_row(counters)) for key, r in sorted(totals.items())]
        if rows:
            await conn.executemany(upsert, rows)
    if failures:
        await conn.executemany(
            s.upsert_failure_stats, [failure_to_db(k, f) for k, f in sorted(failures.items())]
        )
    return int(frames.split()[-1]), int(stages.split()[-1])
