"""A small, fixed frame-event history, and the project's own write path for it.

The history is planned by the simulator's ``plan_frame`` with a seeded random,
a given start time and seeded event and frame ids, so two builds with the same
arguments are identical. It becomes Kafka-like messages (the Avro value, the
``traceparent`` header, topic, partition and offset), which are then written
to a database exactly as the two workers write them:

- ``write_events``: what ``EventStoreConsumer._process`` does with a batch once
  it has been fetched (decode and validate, ``ensure_partitions``, lifecycle
  flags from the stored terminals, ``record_to_row``,
  ``PostgresEventStore.append``: COPY into a temporary staging table, then
  INSERT .. SELECT .. ON CONFLICT DO NOTHING);
- ``write_projections``: what ``ProjectionWorker._process`` does
  (``from_kafka``, ``FramesProjectionStore.apply`` with checkpoint positions:
  COPY into temporary staging tables, upserts, executemany of rollup deltas).

Both finish by redelivering the first batch (idempotency on both paths).
"""

from __future__ import annotations

import random
import uuid
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from unittest import mock

import asyncpg

from projections.events import from_kafka
from projections.store import FramesProjectionStore
from tracker import events as ev
from tracker.codec import FrameEventCodec
from tracker.events import from_micros
from tracker.simulator import SimulationConfig, plan_frame
from tracker.store.consumer import decode_batch, store_batch
from tracker.store.postgres import PostgresEventStore

TOPIC_PREFIX = "ts.frames"
CAMERA_TOPIC, PROCESSING_TOPIC = f"{TOPIC_PREFIX}.camera", f"{TOPIC_PREFIX}.processing"
PARTITIONS = 3


@dataclass(frozen=True)
class Message:
    """The parts of a Kafka record the workers read."""

    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


@dataclass
class History:
    batches: list[list[Message]]
    frame_ids: list[str]
    failed_frame_ids: list[str]
    anomalous_frame_ids: list[str]
    days: set[date] = field(default_factory=set)

    @property
    def events(self) -> int:
        return sum(len(b) for b in self.batches)


@contextmanager
def _seeded_uuid4(rng: random.Random) -> Iterator[None]:
    """Event ids and frame ids come from uuid.uuid4(): make them reproducible."""
    with mock.patch("uuid.uuid4", lambda: uuid.UUID(int=rng.getrandbits(128), version=4)):
        yield


def build_history(
    *,
    start: datetime,
    cameras: int = 3,
    frames_per_camera: int = 100,
    interval_s: float = 120.0,
    seed: int = 8,
    batch_size: int = 150,
) -> History:
    """Frames captured every ``interval_s`` per camera from ``start``; about 15%
    fail, some stages are retried or slow; two frames break their lifecycle
    (a stage after completion, and a failure after completion: 'conflicted')."""
    rng = random.Random(seed)
    ids = random.Random(seed + 1)
    cfg = SimulationConfig(
        cameras=cameras,
        failure_rate=0.15,
        retry_rate=0.05,
        slow_rate=0.05,
        seed=seed,
        realtime=False,
        start=start,
    )
    cams = [f"cam-{i + 1:03d}" for i in range(cameras)]
    planned: list[tuple[float, int, ev.FrameEvent]] = []
    with _seeded_uuid4(ids):
        for i in range(frames_per_camera):
            for c, cam in enumerate(cams):
                capture = i * interval_s + rng.uniform(0, interval_s * 0.1) + c * 1e-6
                for t, e in plan_frame(rng, cfg, cam, capture, start, f"processor/{c % 2 + 1}"):
                    planned.append((t, len(planned), e))
        # Lifecycle anomalies, arriving a little later than the frame's end.
        completed = [e for _, _, e in planned if isinstance(e, ev.ProcessingCompleted)]
        late: list[ev.FrameEvent] = []
        for done, kind in zip(completed[3:5], ("after", "conflict"), strict=True):
            at = done.occurred_at + timedelta(milliseconds=40)
            common: dict[str, Any] = {
                "frame_id": done.frame_id,
                "camera_id": done.camera_id,
                "frame_timestamp": done.frame_timestamp,
                "occurred_at": at,
                "producer": done.producer,
            }
            if kind == "after":
                late.append(ev.StageStarted(**common, stage="notify", attempt=9))
            else:
                late.append(
                    ev.ProcessingFailed(
                        **common, error_type="LateFailure", error_message="failed after completion"
                    )
                )
        for anomaly in late:
            planned.append(((anomaly.occurred_at - start).total_seconds(), len(planned), anomaly))
    planned.sort(key=lambda x: (x[0], x[1]))

    codec = FrameEventCodec()
    traces: dict[str, str] = {}
    next_offset: dict[tuple[str, int], int] = {}
    messages = []
    for _, _, e in planned:
        topic = CAMERA_TOPIC if e.source == ev.CAMERA else PROCESSING_TOPIC
        partition = zlib.crc32(e.frame_id.encode()) % PARTITIONS
        offset = next_offset.get((topic, partition), 0)
        next_offset[(topic, partition)] = offset + 1
        trace = traces.setdefault(e.frame_id, f"{ids.getrandbits(128):032x}")
        traceparent = f"00-{trace}-{ids.getrandbits(64):016x}-01".encode()
        messages.append(
            Message(
                topic,
                partition,
                offset,
                e.frame_id.encode(),
                codec.encode(e),
                (("traceparent", traceparent), ("event_type", e.event_type.encode())),
            )
        )
    frame_ids = sorted({e.frame_id for _, _, e in planned})
    failed = sorted({e.frame_id for _, _, e in planned if isinstance(e, ev.ProcessingFailed)})
    return History(
        batches=[messages[i : i + batch_size] for i in range(0, len(messages), batch_size)],
        frame_ids=frame_ids,
        failed_frame_ids=failed,
        anomalous_frame_ids=sorted(e.frame_id for e in late),
        days={e.frame_timestamp.date() for _, _, e in planned},
    )


# ---- the write path ------------------------------------------------------------------


@dataclass
class WriteStats:
    stored: int = 0
    duplicates: int = 0
    flagged: int = 0
    projected_events: int = 0


async def write_events(pool: asyncpg.Pool, history: History, stats: WriteStats) -> None:
    """The event-store consumer's database steps, batch by batch (then one redelivery)."""
    store = PostgresEventStore(pool)
    codec = FrameEventCodec()
    for batch in [*history.batches, history.batches[0]]:
        decoded = decode_batch(codec, batch)
        assert not decoded.dead
        result, flagged = await store_batch(store, decoded)
        stats.flagged += len(flagged)
        stats.stored += len(result.inserted)
        stats.duplicates += result.duplicates


async def write_projections(
    pool: asyncpg.Pool, history: History, stats: WriteStats, *, checkpoints: bool = True
) -> None:
    """The projection worker's database steps, with checkpoints (then one
    redelivery); without ``checkpoints``, as a rebuild from the store applies."""
    store = FramesProjectionStore(pool)
    codec = FrameEventCodec()
    generation = await store.live_generation()
    expected: dict[tuple[str, int], int | None] = {}
    for batch in history.batches:
        events = [e for e in (from_kafka(codec, m) for m in batch) if e is not None]
        if not checkpoints:
            await store.apply(events, generation=generation)
            stats.projected_events += len(events)
            continue
        positions: dict[tuple[str, int], tuple[int | None, int]] = {}
        for m in batch:
            key = (m.topic, m.partition)
            positions[key] = (expected.get(key), m.offset + 1)
        await store.apply(events, generation=generation, positions=positions, check_live=True)
        expected.update({k: v[1] for k, v in positions.items()})
        stats.projected_events += len(events)
    # A redelivered batch (as after a crash between commit and checkpoint read):
    # the fold's event-id sets make it a no-op.
    events = [e for e in (from_kafka(codec, m) for m in history.batches[0]) if e is not None]
    await store.apply(events, generation=generation)


def late_history(history: History, *, seed: int = 99) -> History:
    """One more event, for a frame of ``history``, arriving long after it:
    a stage of the first completed frame starting after its completion."""
    codec = FrameEventCodec()
    ids = random.Random(seed)
    done = None
    for batch in history.batches:
        for m in batch:
            rec = codec.decode_record(m.value).record
            if (
                rec["event_type"] == "ProcessingCompleted"
                and rec["frame_id"] not in history.anomalous_frame_ids
            ):
                done = rec
                break
        if done:
            break
    assert done is not None
    with _seeded_uuid4(ids):
        e = ev.StageStarted(
            frame_id=done["frame_id"],
            camera_id=done["camera_id"],
            frame_timestamp=from_micros(done["frame_timestamp"]),
            occurred_at=from_micros(done["occurred_at"]) + timedelta(seconds=5),
            producer="processor/late",
            stage="analyze",
            attempt=5,
        )
    msg = Message(
        PROCESSING_TOPIC,
        zlib.crc32(e.frame_id.encode()) % PARTITIONS,
        10_000,
        e.frame_id.encode(),
        codec.encode(e),
        (("traceparent", f"00-{ids.getrandbits(128):032x}-{ids.getrandbits(64):016x}-01".encode()),),
    )
    return History([[msg]], [e.frame_id], [], [e.frame_id], {e.frame_timestamp.date()})


async def write_history(pool: asyncpg.Pool, history: History) -> WriteStats:
    stats = WriteStats()
    await write_events(pool, history, stats)
    await write_projections(pool, history, stats)
    return stats


def sample_frames(history: History, every: int = 10) -> Sequence[str]:
    """Frames whose journeys are compared: every failed and anomalous frame, and a sample."""
    return sorted(
        set(history.failed_frame_ids) | set(history.anomalous_frame_ids) | set(history.frame_ids[::every])
    )
