"""Rollups: additive counters per (camera, hour) and (stage, hour).

A rollup row is a sum of per-row *contributions*; a batch adds
``contribution(new) - contribution(old)`` for each row it changed, which keeps
the rollups exact whatever the order of the events. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from projections.rows import STAGE_RUNNING, STATES, FrameRow, StageRow
from tracker.buckets import N_BUCKETS, bucket_index


def hour_of(ts: datetime) -> datetime:
    return ts.replace(minute=0, second=0, microsecond=0)


@dataclass
class Rollup:
    """Additive counters of one rollup row (a delta, or a whole row)."""

    counts: dict[str, int] = field(default_factory=dict)
    latency_count: int = 0
    latency_sum_ms: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * N_BUCKETS)

    def add(self, other: Rollup, sign: int = 1) -> None:
        for k, v in other.counts.items():
            self.counts[k] = self.counts.get(k, 0) + sign * v
        self.latency_count += sign * other.latency_count
        self.latency_sum_ms += sign * other.latency_sum_ms
        for i, v in enumerate(other.buckets):
            self.buckets[i] += sign * v

    def as_row(self, counters: Iterable[str]) -> tuple[Any, ...]:
        """The rollup columns in table order: ``counters`` (``FRAME_COUNTERS`` or
        ``STAGE_COUNTERS``), then latency count, latency sum and buckets."""
        return (
            *(self.counts.get(c, 0) for c in counters),
            self.latency_count,
            self.latency_sum_ms,
            self.buckets,
        )

    def is_zero(self) -> bool:
        return (
            not any(self.counts.values())
            and self.latency_count == 0
            and not any(self.buckets)
            and abs(self.latency_sum_ms) < 1e-9
        )


FRAME_COUNTERS = ("frames", *STATES)
STAGE_COUNTERS = ("runs", "completed", "failed", "conflicted", "running")


def frame_contribution(row: FrameRow) -> tuple[tuple[str, datetime], Rollup]:
    r = Rollup(counts={"frames": 1, row.state: 1})
    ms = row.total_processing_time_ms
    if ms is not None:
        r.latency_count = 1
        r.latency_sum_ms = ms
        r.buckets[bucket_index(ms)] += 1
    return (row.camera_id, hour_of(row.frame_timestamp)), r


def stage_contribution(row: StageRow) -> tuple[tuple[str, datetime], Rollup]:
    status = row.status
    r = Rollup(counts={"runs": 1, status: 1})
    ms = row.duration_ms
    if ms is not None and status != STAGE_RUNNING:
        r.latency_count = 1
        r.latency_sum_ms = float(ms)
        r.buckets[bucket_index(ms)] += 1
    return (row.stage, hour_of(row.frame_timestamp)), r


def rollup_totals(
    rows: Iterable[Any], contribution: Callable[[Any], tuple[tuple[str, datetime], Rollup]]
) -> dict[tuple[str, datetime], Rollup]:
    """Sum of ``contribution(row)`` over ``rows``: the rollups a store holds once
    every batch of those rows is applied."""
    out: dict[tuple[str, datetime], Rollup] = {}
    for row in rows:
        k, r = contribution(row)
        out.setdefault(k, Rollup()).add(r)
    return out


def rollup_deltas(pairs: Iterable[tuple[Any, Any]], contribution: Any) -> dict[tuple[str, datetime], Rollup]:
    """Sum of ``contribution(new) - contribution(old)`` over ``(old, new)`` pairs."""
    out: dict[tuple[str, datetime], Rollup] = {}
    for old, new in pairs:
        if old == new:
            continue
        if old is not None:
            k, r = contribution(old)
            out.setdefault(k, Rollup()).add(r, -1)
        k, r = contribution(new)
        out.setdefault(k, Rollup()).add(r, +1)
    return {k: v for k, v in out.items() if not v.is_zero()}
