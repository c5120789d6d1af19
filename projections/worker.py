"""``ProjectionWorker``: consumer group ``<prefix>.projections``.

Offsets live in PostgreSQL, not in Kafka: each batch writes its rows and its
``(projection, generation, topic, partition) -> next offset`` checkpoints in one
transaction, and on assignment the worker seeks to the stored checkpoints. A
crash at any point therefore neither loses nor double-applies an event. (The
same offsets are also committed to Kafka after the database commit, only so that
standard lag tooling sees the group; they are never read back.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import Gauge

from projections.anomalies import AnomalyDetection
from projections.detector import DetectorConfig
from projections.events import from_kafka
from projections.fold import ProjEvent
from projections.store import PROJECTION, CheckpointConflict, FramesProjectionStore, GenerationChanged
from tracker import metrics
from tracker.codec import FrameEventCodec
from tracker.config import Settings
from tracker.errors import TrackerError
from tracker.runtime import Batch, KafkaWorker, WorkerStats

log = logging.getLogger(__name__)


@dataclass
class ProjectionStats(WorkerStats):
    skipped: int = 0
    conflicts: int = 0
    generation_switches: int = 0


@dataclass
class _Decoded:
    """A fetched batch, decoded: each partition's events and the offset after its last record."""

    events: dict[tuple[str, int], list[ProjEvent]]
    ends: dict[tuple[str, int], int]
    records: dict[tuple[str, int], int]
    skipped: int


class ProjectionWorker(KafkaWorker[_Decoded]):
    kind = "projections"
    stats: ProjectionStats

    def __init__(self, settings: Settings, *, codec: FrameEventCodec | None = None) -> None:
        super().__init__(settings, group_id=settings.groups.projections)
        self.codec = codec or FrameEventCodec()
        self.stats = ProjectionStats()
        self._store: FramesProjectionStore | None = None
        self.generation = 0
        # (topic, partition) -> the checkpoint we believe is stored (None: no row yet)
        self._expected: dict[tuple[str, int], int | None] = {}
        an = settings.anomaly
        self.detection = (
            AnomalyDetection(DetectorConfig(window_s=an.window_s, lateness_s=an.lateness_s))
            if an.enabled
            else None
        )

    @property
    def store(self) -> FramesProjectionStore:
        if self._store is None:
            raise TrackerError("ProjectionWorker is not started: call start() first")
        return self._store

    async def open(self, stack: Any) -> None:
        self._store = FramesProjectionStore(self.pool)
        self.generation = await self.retry_db(self._store.live_generation)

    async def on_assigned(self, tps: list[TopicPartition]) -> None:
        await self._seek_to_checkpoints(tps)

    async def on_revoked(self, tps: list[TopicPartition]) -> None:
        # The batch lock is held: an in-flight batch has finished; its
        # checkpoint guard would have kept it safe anyway.
        for tp in tps:
            self._expected.pop((tp.topic, tp.partition), None)

    async def position(self, tp: TopicPartition) -> int | None:
        return self._expected.get((tp.topic, tp.partition)) or 0

    def lag_series(self, tp: TopicPartition) -> tuple[Gauge, tuple[str, ...]]:
        return metrics.projection_lag, (PROJECTION, tp.topic, str(tp.partition))

    async def _seek_to_checkpoints(self, tps: list[TopicPartition]) -> None:
        store = self.store
        stored = await self.retry_db(lambda: store.checkpoints(self.generation))
        begin = [tp for tp in tps if (tp.topic, tp.partition) not in stored]
        for tp in tps:
            off = stored.get((tp.topic, tp.partition))
            self._expected[(tp.topic, tp.partition)] = off
            if off is not None:
                self.consumer.seek(tp, off)
        if begin:
            await self.consumer.seek_to_beginning(*begin)

    def prepare(self, batch: Batch) -> _Decoded:
        events: dict[tuple[str, int], list[ProjEvent]] = {}
        ends: dict[tuple[str, int], int] = {}
        records: dict[tuple[str, int], int] = {}
        skipped = 0
        for tp, msgs in batch.items():
            key = (tp.topic, tp.partition)
            ends[key] = msgs[-1].offset + 1
            records[key] = len(msgs)
            mine = events[key] = []
            for m in msgs:
                e = from_kafka(self.codec, m)
                if e is None:
                    skipped += 1
                else:
                    mine.append(e)
        return _Decoded(events, ends, records, skipped)

    async def write(self, decoded: _Decoded) -> int:
        store = self.store
        # Positions are taken now, under the batch lock: partitions revoked since
        # the batch was fetched are left out, and the checkpoints expected are
        # those the previous batch left.
        positions = {
            key: (self._expected[key], end) for key, end in decoded.ends.items() if key in self._expected
        }
        if not positions:
            return 0
        n = sum(decoded.records[key] for key in positions)
        events = [e for key in positions for e in decoded.events[key]]
        detection = self.detection
        try:
            if detection is None:
                await self.durable(
                    lambda: store.apply(
                        events, generation=self.generation, positions=positions, check_live=True
                    )
                )
            else:
                # The latest capture time of each partition of the stage events'
                # topic in the batch: its watermark (and every partition of that
                # topic, so that one no batch has carried yet holds it back).
                topic = self.settings.topics.processing
                marks = {
                    key: max(e.frame_timestamp for e in decoded.events[key])
                    for key in positions
                    if decoded.events[key] and key[0] == topic
                }
                every = [(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic) or ())]
                generation = self.generation
                await self.durable(
                    lambda: store.apply_then(
                        events,
                        generation=generation,
                        positions=positions,
                        check_live=True,
                        then=lambda conn: detection.advance(conn, generation, marks, partitions=every),
                    )
                )
        except (CheckpointConflict, GenerationChanged) as e:
            await self._resync(e)
            return 0
        self.stats.skipped += decoded.skipped
        for key, (_, new) in positions.items():
            self._expected[key] = new
        try:
            await self.consumer.commit(
                {TopicPartition(*k): OffsetAndMetadata(v[1], "") for k, v in positions.items()}
            )
        except KafkaError as e:  # informational only; the database is the truth
            log.debug("kafka offset commit (informational) failed: %s", e)
        self.stats.batches += 1
        self.stats.records += n
        return n

    async def _resync(self, why: Exception) -> None:
        """Stored checkpoints moved under us: discard the batch and seek to them."""
        if isinstance(why, GenerationChanged):
            self.stats.generation_switches += 1
            self.generation = await self.retry_db(self.store.live_generation)
            log.info("projection rebuilt: continuing on generation %d", self.generation)
        else:
            self.stats.conflicts += 1
            log.warning("checkpoint conflict (%s); re-seeking", why)
        await self._seek_to_checkpoints(list(self.consumer.assignment()))
