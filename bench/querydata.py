"""Fill a database with many stored events, fast, for the query scenario.

One hour of the simulator's realistic mix (24 cameras, the frame rate that
makes 24 hours hold the target) is planned, folded by the real projection
fold (``projections.fold``) and COPYed into seed tables; the seed is then
replicated 24 times inside PostgreSQL, each copy one hour earlier with its own
event, frame and trace ids, into ``frame_events`` and the live generation's
``frame_metadata``/``processing_stages``. The rollups are the seed's rollups
shifted by the same hours (the failure rollup: the seed's failures, each with
its copy's times, frame id and trace id, grouped again), so every table agrees
with every other. All stored events fall in the last 24 hours: the 24-hour
failure analysis spans all of them and the 1-hour slow-frame window one
twenty-fourth.

The secondary indexes and primary keys are dropped during the bulk insert and
rebuilt afterwards with their original definitions (then VACUUM ANALYZE, as
autovacuum would eventually do), which is several times faster than
maintaining them row by row; the freshly built indexes are compact, so the
query figures are for unbloated indexes.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiokafka.partitioner import DefaultPartitioner

from bench.mix import TraceIds, plan_events
from projections.columns import failure_to_db
from projections.fold import (
    FRAME_COUNTERS,
    STAGE_COUNTERS,
    BatchFold,
    FailureKey,
    FailureSample,
    FailureStat,
    Rollup,
    frame_contribution,
    frame_failure,
    stage_camera_contribution,
    stage_contribution,
    stage_failure,
)
from projections.inline import events_of
from projections.store import FRAME_COLS, STAGE_COLS, GenerationStatements, frame_to_db, stage_to_db
from tracker.codec import FrameEventCodec
from tracker.config import Settings
from tracker.simulator import SimulationConfig
from tracker.store.postgres import COLUMNS, record_to_row

HOURS = 24
LANES = 2  # concurrent insert connections
CAMERAS = 24
EVENTS_PER_FRAME = 9.8  # a little under the mix's ~10: the target is a minimum

_FUNCS = """
CREATE OR REPLACE FUNCTION bench_id(id text, k integer) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT CASE WHEN k = 0 OR id IS NULL THEN id ELSE md5(id || ':' || k)::uuid::text END $$;
CREATE OR REPLACE FUNCTION bench_hex(id text, k integer) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT CASE WHEN k = 0 OR id IS NULL THEN id ELSE md5(id || ':' || k) END $$;
CREATE OR REPLACE FUNCTION bench_fid(id text, k integer) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT CASE WHEN k = 0 THEN id ELSE id || '.r' || k END $$;
"""


def replica_frame_id(frame_id: str, k: int) -> str:
    return frame_id if k == 0 else f"{frame_id}.r{k}"


def _replica_hex(value: str | None, k: int) -> str | None:
    """``bench_hex`` (``_FUNCS``) in Python."""
    return value if k == 0 or value is None else hashlib.md5(f"{value}:{k}".encode()).hexdigest()


def replica_failures(
    seed: list[tuple[FailureKey, FailureSample]], hours: int
) -> dict[FailureKey, FailureStat]:
    """The failure rollup of ``hours`` copies of the seed's failures, copy ``k``
    ``k`` hours earlier with the frame and trace ids the copy's rows get."""
    out: dict[FailureKey, FailureStat] = {}
    for k in range(hours):
        d = timedelta(hours=k)
        for (source, hour, camera, stage, error_type), f in seed:
            copy = FailureSample(
                f.at - d,
                replica_frame_id(f.frame_id, k),
                f.frame_timestamp - d,
                f.attempt,
                _replica_hex(f.trace_id, k),
            )
            out.setdefault((source, hour - d, camera, stage, error_type), FailureStat()).add(copy)
    return out


async def _seed(settings: Settings, events_per_hour: int, seed: int, start: datetime) -> dict[str, Any]:
    fps = events_per_hour / (CAMERAS * 3600.0 * EVENTS_PER_FRAME)
    cfg = SimulationConfig(
        cameras=CAMERAS, fps=fps, duration_s=3600.0, seed=seed, realtime=False, start=start
    )
    codec = FrameEventCodec()
    fp = codec.current.fingerprint
    traces = TraceIds(seed)
    part = DefaultPartitioner()
    parts = list(range(settings.topics.partitions))
    offsets: dict[tuple[str, int], int] = {}
    rows, records = [], []
    for _, e in plan_events(cfg):
        topic = settings.topics.of(e.source)
        p = part(e.frame_id.encode(), parts, parts)
        off = offsets.get((topic, p), 0)
        offsets[(topic, p)] = off + 1
        trace_id, span_id = traces.for_event(e)
        rows.append(
            record_to_row(
                e.to_record(),
                topic=topic,
                partition=p,
                offset=off,
                fingerprint=fp,
                trace_id=trace_id,
                span_id=span_id,
            )
        )
        records.append({"attributes": dict(e.attributes)})
    # The same events as the inline projection folds them: from their rows.
    batch = BatchFold().extend(events_of(records, rows))
    fstats: dict[Any, Rollup] = {}
    for row in batch.frames.values():
        fk, fr = frame_contribution(row)
        fstats.setdefault(fk, Rollup()).add(fr)
    sstats: dict[Any, Rollup] = {}
    for srow in batch.stages.values():
        sk, sr = stage_contribution(srow)
        sstats.setdefault(sk, Rollup()).add(sr)
    scstats: dict[Any, Rollup] = {}
    for srow in batch.stages.values():
        sck, scr = stage_camera_contribution(srow)
        scstats.setdefault(sck, Rollup()).add(scr)
    failures = [frame_failure(r) for r in batch.frames.values()] + [
        stage_failure(r) for r in batch.stages.values()
    ]
    return {
        "events": rows,
        "frames": [frame_to_db(r) for r in batch.frames.values()],
        "stages": [stage_to_db(r) for r in batch.stages.values()],
        "frame_ids": [k[0] for k in batch.frames],
        "fstats": fstats,
        "sstats": sstats,
        "scstats": scstats,
        "failures": [f for f in failures if f is not None],
        "fps": fps,
    }


async def _index_defs(conn: asyncpg.Connection, table: str) -> list[tuple[str, str, str | None, str | None]]:
    rows = await conn.fetch(
        "SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS def, "
        "c.conname, pg_get_constraintdef(c.oid) AS condef "
        "FROM pg_index i LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid "
        "WHERE i.indrelid = $1::regclass",
        table,
    )
    return [(r["name"], r["def"], r["conname"], r["condef"]) for r in rows]


async def _drop_indexes(
    conn: asyncpg.Connection, table: str
) -> list[tuple[str, str, str | None, str | None]]:
    defs = await _index_defs(conn, table)
    for name, _, conname, _ in defs:
        if conname:
            await conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{conname}"')
        else:
            await conn.execute(f"DROP INDEX {name}")
    return defs


async def _restore_indexes(
    conn: asyncpg.Connection, table: str, defs: list[tuple[str, str, str | None, str | None]]
) -> None:
    for _name, idef, conname, condef in defs:
        if conname:
            await conn.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{conname}" {condef}')
        else:
            # An index of a partitioned table is reported "ON ONLY <parent>": build it on every partition.
            await conn.execute(idef.replace(" ON ONLY ", " ON "))


async def build(settings: Settings, target_events: int, *, seed: int = 5, log: Any = print) -> dict[str, Any]:
    """Store at least ``target_events`` events (and their projections) in ``settings``' database."""
    t_all = time.monotonic()
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(hours=1)
    per_hour = -(-target_events // HOURS)
    t0 = time.monotonic()
    s = await _seed(settings, per_hour, seed, start)
    secs = time.monotonic() - t0
    log(f"queries: planned and folded a seed hour of {len(s['events']):,} events in {secs:.0f}s")
    conn = await asyncpg.connect(settings.database.url.get(), command_timeout=None)
    info: dict[str, Any] = {"seed_events": len(s["events"]), "seed_frames": len(s["frames"]), "hours": HOURS}
    try:
        g = int(await conn.fetchval("SELECT generation FROM projection_state WHERE projection = 'frames'"))
        fm, ps = f"frame_metadata_g{g}", f"processing_stages_g{g}"
        await conn.execute(_FUNCS)
        lo, hi = now - timedelta(hours=HOURS + 1), now + timedelta(hours=1)
        st = GenerationStatements(g)
        for t in ("frame_events", *st.tables):
            await conn.execute("SELECT tracker_ensure_partitions($1, $2, $3)", t, lo, hi)
        await conn.execute(
            "CREATE UNLOGGED TABLE bench_seed_events (LIKE frame_events INCLUDING DEFAULTS);"
            f"CREATE UNLOGGED TABLE bench_seed_frames (LIKE {fm} INCLUDING DEFAULTS);"
            f"CREATE UNLOGGED TABLE bench_seed_stages (LIKE {ps} INCLUDING DEFAULTS);"
        )
        t0 = time.monotonic()
        await conn.copy_records_to_table("bench_seed_events", records=s["events"], columns=COLUMNS)
        await conn.copy_records_to_table("bench_seed_frames", records=s["frames"], columns=FRAME_COLS)
        await conn.copy_records_to_table("bench_seed_stages", records=s["stages"], columns=STAGE_COLS)
        log(f"queries: seed copied in {time.monotonic() - t0:.0f}s")

        t0 = time.monotonic()
        dropped = {t: await _drop_indexes(conn, t) for t in ("frame_events", fm, ps)}
        ecols = ", ".join(f'"{c}"' for c in COLUMNS)
        shift = "interval '1 hour' * {k}"
        n_seed = len(s["events"])

        def hour_statements(k: int) -> list[str]:
            sh = shift.format(k=k)
            out = [
                f"INSERT INTO frame_events ({ecols}, recorded_at) SELECT "
                f"bench_id(event_id::text, {k})::uuid, event_type, bench_fid(frame_id, {k}), camera_id, "
                f"frame_timestamp - {sh}, occurred_at - {sh}, producer, stage, attempt, duration_ms, "
                f'error_type, error_message, data, bench_hex(trace_id, {k}), span_id, topic, "partition", '
                f'"offset" + {k * n_seed}, schema_fingerprint, lifecycle_flag, '
                f"occurred_at - {sh} + interval '15 milliseconds' FROM bench_seed_events"
            ]
            fsel = []
            for c in FRAME_COLS:
                if c == "frame_id":
                    fsel.append(f"bench_fid(frame_id, {k})")
                elif c in ("completed_event_id", "failed_event_id", "captured_event_id", "trace_event_id"):
                    fsel.append(f"bench_id({c}, {k})")
                elif c == "last_trace_id":
                    fsel.append(f"bench_hex({c}, {k})")
                elif c == "event_ids":
                    fsel.append(f"ARRAY(SELECT bench_id(e, {k}) FROM unnest(event_ids) e)")
                elif c.endswith("_at") or c == "frame_timestamp":
                    fsel.append(f"{c} - {sh}")
                else:
                    fsel.append(c)
            out.append(
                f"INSERT INTO {fm} ({', '.join(FRAME_COLS)}, updated_at) SELECT {', '.join(fsel)}, "
                f"last_event_at - {sh} + interval '50 milliseconds' FROM bench_seed_frames"
            )
            ssel = []
            for c in STAGE_COLS:
                if c == "frame_id":
                    ssel.append(f"bench_fid(frame_id, {k})")
                elif c in ("completed_event_id", "failed_event_id"):
                    ssel.append(f"bench_id({c}, {k})")
                elif c.endswith("_at") or c == "frame_timestamp":
                    ssel.append(f"{c} - {sh}")
                else:
                    ssel.append(c)
            out.append(
                f"INSERT INTO {ps} ({', '.join(STAGE_COLS)}, updated_at) SELECT {', '.join(ssel)}, "
                f"coalesce(finished_at, started_at) - {sh} + interval '50 milliseconds' "
                "FROM bench_seed_stages"
            )
            return out

        done = 0

        async def insert_hours(hours: list[int]) -> None:
            # One connection per lane: two lanes keep both of PostgreSQL's cores busy.
            nonlocal done
            c2 = await asyncpg.connect(settings.database.url.get(), command_timeout=None)
            try:
                for k in hours:
                    for stmt in hour_statements(k):
                        await c2.execute(stmt)
                    done += 1
                    if done % 6 == 0:
                        log(f"queries: {done}/{HOURS} hours inserted ({time.monotonic() - t0:.0f}s)")
            finally:
                await c2.close()

        await asyncio.gather(*(insert_hours(list(range(lane, HOURS, LANES))) for lane in range(LANES)))
        info["insert_s"] = round(time.monotonic() - t0, 1)
        t0 = time.monotonic()
        await conn.execute("SET maintenance_work_mem = '1GB'")
        for t, defs in dropped.items():
            await _restore_indexes(conn, t, defs)
        info["index_s"] = round(time.monotonic() - t0, 1)
        log(f"queries: indexes rebuilt in {info['index_s']:.0f}s")

        frows, srows, scrows = [], [], []
        for k in range(HOURS):
            d = timedelta(hours=k)
            frows += [(cam, hour - d, *r.as_row(FRAME_COUNTERS)) for (cam, hour), r in s["fstats"].items()]
            srows += [
                (stage, hour - d, *r.as_row(STAGE_COUNTERS)) for (stage, hour), r in s["sstats"].items()
            ]
            scrows += [
                (cam, stage, hour - d, *r.as_row(STAGE_COUNTERS))
                for (cam, stage, hour), r in s["scstats"].items()
            ]
        await conn.executemany(st.upsert_frame_stats, frows)
        await conn.executemany(st.upsert_stage_stats, srows)
        await conn.executemany(st.upsert_stage_camera_stats, scrows)
        failures = replica_failures(s["failures"], HOURS)
        await conn.executemany(
            st.upsert_failure_stats, [failure_to_db(k, f) for k, f in sorted(failures.items())]
        )
        info["failure_rollup_rows"] = len(failures)
        await conn.execute("DROP TABLE bench_seed_events, bench_seed_frames, bench_seed_stages")
        t0 = time.monotonic()
        for t in ("frame_events", *st.tables):
            await conn.execute(f"VACUUM ANALYZE {t}")
        info["vacuum_s"] = round(time.monotonic() - t0, 1)
        info["stored_events"] = int(await conn.fetchval("SELECT count(*) FROM frame_events"))
        info["stored_frames"] = int(await conn.fetchval(f"SELECT count(*) FROM {fm}"))
        info["db_size_mb"] = round(
            int(await conn.fetchval("SELECT pg_database_size(current_database())")) / 2**20
        )
    finally:
        await conn.close()
    info["seconds"] = round(time.monotonic() - t_all, 1)
    info["frame_ids"] = s["frame_ids"]
    return info
