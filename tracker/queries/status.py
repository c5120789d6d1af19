"""``tracker status``: lag, checkpoints, throughput, dead letters and rebuilds.

Reads Kafka (end offsets, the event-store group's committed offsets, the DLQ
size) and PostgreSQL (projection checkpoints, progress samples, rebuilds). No
secret appears in the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from tracker import metrics
from tracker.adapters.kafka import make_consumer, topic_partitions
from tracker.adapters.postgres import call_db, connect
from tracker.config import Settings
from tracker.errors import BrokerError

# Events per second over the last minute: for each worker (process) the
# position gained since the last sample at or before one minute ago (or since
# its first sample, if it started within the minute), summed per kind of worker
# and divided by 60 s.
_RATES = """
WITH s AS (
    SELECT worker, sampled_at, position FROM tracker_progress_samples
    WHERE sampled_at >= now() - interval '10 minutes'
),
ends AS (
    SELECT DISTINCT ON (worker) worker, position AS end_pos FROM s
    WHERE sampled_at >= now() - interval '60 seconds'
    ORDER BY worker, sampled_at DESC
),
starts AS (
    SELECT DISTINCT ON (worker) worker, position AS start_pos FROM s
    -- the latest sample before the minute, else the earliest one within it
    ORDER BY worker, (sampled_at <= now() - interval '60 seconds') DESC,
             CASE WHEN sampled_at <= now() - interval '60 seconds'
                  THEN extract(epoch FROM sampled_at) ELSE -extract(epoch FROM sampled_at) END DESC
)
SELECT split_part(e.worker, '/', 1) AS kind,
       sum(greatest(0, e.end_pos - coalesce(st.start_pos, 0))) / 60.0 AS events_per_s
FROM ends e LEFT JOIN starts st USING (worker)
GROUP BY 1
"""


@dataclass
class PartitionStatus:
    topic: str
    partition: int
    end: int
    position: int | None
    updated_at: datetime | None = None

    @property
    def lag(self) -> int | None:
        return None if self.position is None else max(0, self.end - self.position)


@dataclass
class GroupStatus:
    name: str
    partitions: list[PartitionStatus] = field(default_factory=list)
    events_per_s: float = 0.0
    last_checkpoint: datetime | None = None

    @property
    def lag(self) -> int:
        return sum(p.lag if p.lag is not None else p.end for p in self.partitions)


@dataclass
class Status:
    event_store: GroupStatus
    projection: GroupStatus
    projection_generation: int | None
    dlq_records: int
    replay: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        def group(g: GroupStatus) -> dict[str, Any]:
            return {
                "name": g.name,
                "lag": g.lag,
                "events_per_s": round(g.events_per_s, 1),
                "last_checkpoint": g.last_checkpoint.isoformat() if g.last_checkpoint else None,
                "partitions": [
                    {
                        "topic": p.topic,
                        "partition": p.partition,
                        "end": p.end,
                        "position": p.position,
                        "lag": p.lag,
                    }
                    for p in g.partitions
                ],
            }

        return {
            "event_store": group(self.event_store),
            "projection": group(self.projection),
            "projection_generation": self.projection_generation,
            "dlq_records": self.dlq_records,
            "replay": self.replay,
        }


async def collect_status(settings: Settings) -> Status:
    kafka, topics, groups = settings.kafka, settings.topics, settings.groups
    tps = await topic_partitions(kafka, topics.events)
    dlq_tps = await topic_partitions(kafka, [topics.dlq])
    consumer = make_consumer(kafka, group_id=groups.event_store, role="status")
    try:
        await consumer.start()
        ends = await consumer.end_offsets(tps) if tps else {}
        dlq_begin = await consumer.beginning_offsets(dlq_tps) if dlq_tps else {}
        dlq_end = await consumer.end_offsets(dlq_tps) if dlq_tps else {}
        committed = {tp: await consumer.committed(tp) for tp in tps}
    except KafkaError as e:
        raise BrokerError(f"cannot read Kafka offsets: {e}", retriable=e.retriable) from e
    finally:
        await consumer.stop()

    conn = await connect(settings.database)
    try:

        async def db() -> tuple[Any, ...]:
            gen = await conn.fetchval("SELECT generation FROM projection_state WHERE projection = 'frames'")
            cps = await conn.fetch(
                'SELECT topic, "partition", next_offset, updated_at FROM projection_checkpoints '
                "WHERE projection = 'frames' AND generation = $1",
                gen,
            )
            rates = await conn.fetch(_RATES)
            last = dict(
                await conn.fetch(
                    "SELECT split_part(worker, '/', 1), max(sampled_at) "
                    "FROM tracker_progress_samples GROUP BY 1"
                )
            )
            replay = await conn.fetchrow(
                "SELECT id, generation, source, status, started_at, updated_at, events_applied, "
                "events_per_s, lag_events, eta_s, message FROM projection_replays "
                "WHERE projection = 'frames' ORDER BY id DESC LIMIT 1"
            )
            return gen, cps, rates, replay, last

        gen, cps, rates, replay, last = await call_db(db)
    finally:
        await conn.close()

    store = GroupStatus(groups.event_store)
    for tp in tps:
        store.partitions.append(PartitionStatus(tp.topic, tp.partition, ends[tp], committed[tp]))
    proj = GroupStatus(f"{groups.projections} (projection frames)")
    by_tp = {(r["topic"], r["partition"]): r for r in cps}
    for tp in tps:
        r = by_tp.get((tp.topic, tp.partition))
        proj.partitions.append(
            PartitionStatus(
                tp.topic,
                tp.partition,
                ends[tp],
                r["next_offset"] if r else None,
                r["updated_at"] if r else None,
            )
        )
    proj.last_checkpoint = max((r["updated_at"] for r in cps), default=None)
    store.last_checkpoint = last.get("event-store")
    for r in rates:
        if r["kind"] == "event-store":
            store.events_per_s = float(r["events_per_s"] or 0)
        elif r["kind"] == "projections":
            proj.events_per_s = float(r["events_per_s"] or 0)
    dlq = sum(dlq_end[tp] - dlq_begin[tp] for tp in dlq_tps)
    replay_info = None
    if replay is not None:
        replay_info = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in dict(replay).items()}
    status = Status(store, proj, gen, dlq, replay_info)
    export_status_metrics(status)
    return status


def export_status_metrics(status: Status) -> None:
    """The pipeline-wide view ``tracker serve`` exports, under families of its own:
    every partition's lag from the broker and the checkpoints, the DLQ size, a
    rebuild running. The workers' lag families (their assigned partitions, from
    their own positions) and throughput counters are theirs alone: were serve to
    set them too, a ``sum`` over both scrapes would count each partition twice."""
    for p in status.event_store.partitions:
        if p.lag is not None:
            metrics.consumer_committed_lag.labels(status.event_store.name, p.topic, str(p.partition)).set(
                p.lag
            )
    for p in status.projection.partitions:
        metrics.projection_checkpoint_lag.labels("frames", p.topic, str(p.partition)).set(
            p.lag if p.lag is not None else p.end
        )
    metrics.dlq_size.set(status.dlq_records)
    metrics.replay_running.set(1 if status.replay and status.replay.get("status") == "running" else 0)


def render(status: Status) -> str:
    now = datetime.now(UTC)
    lines = []
    for g in (status.event_store, status.projection):
        age = f"{(now - g.last_checkpoint).total_seconds():.0f}s ago" if g.last_checkpoint else "-"
        lines.append(
            f"{g.name}: lag {g.lag} records, {g.events_per_s:,.0f} events/s (last minute), "
            f"last progress {age}"
        )
        lines.append(f"  {'TOPIC':<40} {'PART':>4} {'END':>10} {'POSITION':>10} {'LAG':>8}")
        for p in g.partitions:
            pos = "-" if p.position is None else str(p.position)
            lag = "-" if p.lag is None else str(p.lag)
            lines.append(f"  {p.topic:<40} {p.partition:>4} {p.end:>10} {pos:>10} {lag:>8}")
    lines.append(f"projection generation: {status.projection_generation}")
    lines.append(f"dead letters: {status.dlq_records}")
    r = status.replay
    if r is None:
        lines.append("rebuilds: none yet")
    elif r["status"] == "running":
        lines.append(
            f"rebuild RUNNING into generation {r['generation']} from {r['source']}: "
            f"{r['events_applied']} events applied, {r['events_per_s'] or 0:,.0f} events/s, "
            f"lag {r['lag_events']}, eta {r['eta_s'] or 0:.0f}s"
        )
    else:
        lines.append(
            f"last rebuild: {r['status']} (generation {r['generation']}, from {r['source']}, "
            f"{r['updated_at']})"
        )
    return "\n".join(lines)


__all__ = ["Status", "TopicPartition", "collect_status", "render"]
