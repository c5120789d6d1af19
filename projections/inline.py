"""The ``frames`` projection kept inline: in the event store's own transaction.

With ``tracker consume --inline-projection`` the event-store consumer folds
each decoded batch and writes the fold, with the projection's checkpoints, in
the transaction that appends the batch to ``frame_events``: one fetch, one
decode and one commit per event for both, instead of a second consumer group
that fetches and decodes everything again. A batch is appended and projected
together or not at all.

- The fold goes into whatever generation is live when the batch commits
  (read ``FOR SHARE``: a rebuild's swap waits for the batch, and the next batch
  sees the swap). A rebuild's swap catches its new generation up to the live
  checkpoints under that lock, so nothing committed before the swap is missed.
- Checkpoints only move forward (``greatest``): they say how far the live
  generation has got, which is what a rebuild compares itself with.
- A redelivered batch is folded again; the fold is idempotent on event ids,
  so it changes nothing.

Run either the inline projection or ``tracker project`` for the live
generation, not both: the projection worker's checkpoint guard would see the
inline writer as a second owner of its partitions and keep re-seeking.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from projections.anomalies import AnomalyDetection
from projections.detector import DetectorConfig
from projections.fold import BatchFold, ProjEvent
from projections.statements import PROJECTION, SELECT_LIVE_GENERATION_FOR_SHARE
from projections.store import FramesProjectionStore
from tracker.config import Settings
from tracker.errors import TrackerError
from tracker.store.ports import EventRow, InlineProjection

# The live generation's checkpoints, moved forward only.
ADVANCE_CHECKPOINTS = (
    'INSERT INTO projection_checkpoints AS c (projection, generation, topic, "partition", next_offset) '
    "SELECT $1, $2, t, p, o FROM unnest($3::text[], $4::int[], $5::bigint[]) AS k(t, p, o) "
    'ON CONFLICT (projection, generation, topic, "partition") '
    "DO UPDATE SET next_offset = greatest(c.next_offset, EXCLUDED.next_offset), updated_at = now()"
)


def events_of(records: Sequence[dict[str, Any]], rows: Sequence[EventRow]) -> list[ProjEvent]:
    """The fold's events from decoded records and their ``frame_events`` rows
    (whose timestamps are already converted and whose trace id is parsed)."""
    out = []
    for rec, row in zip(records, rows, strict=True):
        out.append(
            ProjEvent(
                event_id=row[0],
                event_type=row[1],
                frame_id=row[2],
                camera_id=row[3],
                frame_timestamp=row[4],
                occurred_at=row[5],
                stage=row[7],
                attempt=row[8],
                duration_ms=row[9],
                error_type=row[10],
                error_message=row[11],
                attributes=rec.get("attributes") or {},
                trace_id=row[13],
            )
        )
    return out


@dataclass(frozen=True)
class _Prepared:
    fold: BatchFold
    # The latest capture time of each (topic, partition) of the batch: its watermark.
    marks: dict[tuple[str, int], datetime]


def _fold_of(prepared: Any) -> BatchFold:
    """What :meth:`InlineFrames.prepare` made, or a fold given as it is (no watermarks)."""
    return prepared if isinstance(prepared, BatchFold) else prepared.fold


class InlineFrames(InlineProjection):
    """:class:`InlineProjection` of the ``frames`` projection on PostgreSQL
    (and, with ``detection``, the anomaly detector in the same transaction)."""

    def __init__(self, detection: AnomalyDetection | None = None, *, stage_topic: str = "") -> None:
        self._store: FramesProjectionStore | None = None
        self.detection = detection
        # The topic of the stage events: its partitions make the detector's watermark.
        self.stage_topic = stage_topic

    @classmethod
    def from_settings(cls, settings: Settings) -> InlineFrames:
        an = settings.anomaly
        config = DetectorConfig(window_s=an.window_s, lateness_s=an.lateness_s)
        detection = AnomalyDetection(config) if an.enabled else None
        return cls(detection, stage_topic=settings.topics.processing)

    async def open(self, pool: asyncpg.Pool) -> None:
        self._store = FramesProjectionStore(pool)

    def prepare(self, records: Sequence[dict[str, Any]], rows: Sequence[EventRow]) -> _Prepared:
        marks: dict[tuple[str, int], datetime] = {}
        if self.detection is not None:
            topic = self.stage_topic
            for row in rows:
                if row[15] != topic:
                    continue
                key, ts = (row[15], row[16]), row[4]
                seen = marks.get(key)
                if seen is None or ts > seen:
                    marks[key] = ts
        return _Prepared(BatchFold().extend(events_of(records, rows)), marks)

    async def before(self, prepared: Any) -> None:
        fold = _fold_of(prepared)
        if fold.frames:
            store = self._opened()
            generation = await store.live_generation()
            await store.ensure_partitions(generation, [r.frame_timestamp for r in fold.frames.values()])

    def _opened(self) -> FramesProjectionStore:
        if self._store is None:
            raise TrackerError("InlineFrames is not open: the consumer opens it when it starts")
        return self._store

    async def apply(
        self,
        conn: Any,
        prepared: Any,
        positions: dict[tuple[str, int], int],
        partitions: Collection[tuple[str, int]] = (),
    ) -> None:
        fold = _fold_of(prepared)
        generation = int(await conn.fetchval(SELECT_LIVE_GENERATION_FOR_SHARE, PROJECTION))
        if fold.frames:
            await self._opened().write_fold(conn, generation, fold)
        if self.detection is not None:
            # Only partitions still ours count (as for the checkpoints below).
            marks = {k: v for k, v in getattr(prepared, "marks", {}).items() if k in positions}
            stage_partitions = [k for k in partitions if k[0] == self.stage_topic]
            await self.detection.advance(conn, generation, marks, partitions=stage_partitions)
        if positions:
            keys = sorted(positions)
            await conn.execute(
                ADVANCE_CHECKPOINTS,
                PROJECTION,
                generation,
                [t for t, _ in keys],
                [p for _, p in keys],
                [positions[k] for k in keys],
            )
