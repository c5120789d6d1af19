"""The SQL of the ``frames`` projection's PostgreSQL store, built once (not per batch).

:class:`GenerationStatements` holds the statements that name one generation's
tables; the others (the live generation, checkpoints, advisory locks) are the
same for every generation.
"""

from __future__ import annotations

import hashlib

from projections.columns import FAILURE_COLS, FAILURE_KEY_COLS, FRAME_COLS, STAGE_COLS

PROJECTION = "frames"


def lock_key(frame_id: str) -> int:
    """Stable signed 64-bit advisory-lock key per frame."""
    return int.from_bytes(hashlib.blake2b(frame_id.encode(), digest_size=8).digest(), "big", signed=True)


class GenerationStatements:
    """SQL for one generation."""

    def __init__(self, g: int) -> None:
        fm, ps = f"frame_metadata_g{g}", f"processing_stages_g{g}"
        fsh, pst = f"frame_stats_hourly_g{g}", f"performance_stats_g{g}"
        fst, scs = f"failure_stats_g{g}", f"stage_camera_stats_g{g}"
        self.frame_table, self.stage_table = fm, ps
        self.frame_stats_table, self.stage_stats_table = fsh, pst
        self.failure_stats_table, self.stage_camera_stats_table = fst, scs
        # The generation's time-partitioned tables (``tracker_ensure_partitions``);
        # the anomalies' windows are of the same days as the frames (sql/008).
        self.tables = (fm, ps, fsh, pst, fst, scs, f"anomalies_g{g}")
        fcols = ", ".join(FRAME_COLS)
        scols = ", ".join(STAGE_COLS)
        fset = ", ".join(f"{c} = EXCLUDED.{c}" for c in FRAME_COLS[2:]) + ", updated_at = now()"
        sset = ", ".join(f"{c} = EXCLUDED.{c}" for c in STAGE_COLS[4:]) + ", updated_at = now()"
        self.create_staging = (
            f"CREATE TEMP TABLE IF NOT EXISTS proj_frame_staging (LIKE {fm} INCLUDING DEFAULTS) "
            "ON COMMIT DELETE ROWS; "
            f"CREATE TEMP TABLE IF NOT EXISTS proj_stage_staging (LIKE {ps} INCLUDING DEFAULTS) "
            "ON COMMIT DELETE ROWS"
        )
        self.select_frames = (
            f"SELECT {fcols} FROM {fm} t JOIN unnest($1::text[], $2::timestamptz[]) AS k(id, ts) "
            "ON t.frame_id = k.id AND t.frame_timestamp = k.ts"
        )
        self.select_stages = (
            f"SELECT {scols} FROM {ps} t JOIN unnest($1::text[], $2::timestamptz[]) AS k(id, ts) "
            "ON t.frame_id = k.id AND t.frame_timestamp = k.ts"
        )
        self.upsert_frames = (
            f"INSERT INTO {fm} ({fcols}) SELECT {fcols} FROM proj_frame_staging "
            f"ON CONFLICT (frame_id, frame_timestamp) DO UPDATE SET {fset}"
        )
        self.upsert_stages = (
            f"INSERT INTO {ps} ({scols}) SELECT {scols} FROM proj_stage_staging "
            f"ON CONFLICT (frame_id, frame_timestamp, stage, attempt) DO UPDATE SET {sset}"
        )
        self.upsert_frame_stats = (
            f"INSERT INTO {fsh} AS t (camera_id, hour, frames, captured, queued, processing, "
            "completed, failed, conflicted, processing_time_count, processing_time_sum_ms, "
            "processing_time_buckets) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "
            "ON CONFLICT (camera_id, hour) DO UPDATE SET frames = t.frames + EXCLUDED.frames, "
            "captured = t.captured + EXCLUDED.captured, queued = t.queued + EXCLUDED.queued, "
            "processing = t.processing + EXCLUDED.processing, "
            "completed = t.completed + EXCLUDED.completed, failed = t.failed + EXCLUDED.failed, "
            "conflicted = t.conflicted + EXCLUDED.conflicted, "
            "processing_time_count = t.processing_time_count + EXCLUDED.processing_time_count, "
            "processing_time_sum_ms = t.processing_time_sum_ms + EXCLUDED.processing_time_sum_ms, "
            "processing_time_buckets = tracker_array_add(t.processing_time_buckets, "
            "EXCLUDED.processing_time_buckets)"
        )
        stage_sums = (
            "runs = t.runs + EXCLUDED.runs, "
            "completed = t.completed + EXCLUDED.completed, failed = t.failed + EXCLUDED.failed, "
            "conflicted = t.conflicted + EXCLUDED.conflicted, running = t.running + EXCLUDED.running, "
            "duration_count = t.duration_count + EXCLUDED.duration_count, "
            "duration_sum_ms = t.duration_sum_ms + EXCLUDED.duration_sum_ms, "
            "duration_buckets = tracker_array_add(t.duration_buckets, EXCLUDED.duration_buckets)"
        )
        stage_counters = (
            "runs, completed, failed, conflicted, running, duration_count, duration_sum_ms, duration_buckets"
        )
        self.upsert_stage_stats = (
            f"INSERT INTO {pst} AS t (stage, hour, {stage_counters}) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) "
            f"ON CONFLICT (stage, hour) DO UPDATE SET {stage_sums}"
        )
        # The per-camera-and-stage rollup (sql/007): the same counters per camera.
        self.upsert_stage_camera_stats = (
            f"INSERT INTO {scs} AS t (camera_id, stage, hour, {stage_counters}) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) "
            f"ON CONFLICT (camera_id, hour, stage) DO UPDATE SET {stage_sums}"
        )
        # The failure rollup (projections.rollups): counts add up; the first time
        # is a min; the sample is the later of the two by (last_seen, frame id,
        # frame timestamp, attempt), compared as Python compares them (the sample
        # id column is COLLATE "C": code-point order), and last_seen is its time.
        # A delta that adds nothing (only a retraction) has no sample and keeps
        # the stored one; its group is then set from the rows (set_failure_stats).
        later = (
            "(EXCLUDED.sample_frame_id IS NOT NULL AND (t.sample_frame_id IS NULL OR "
            "(EXCLUDED.last_seen, EXCLUDED.sample_frame_id, EXCLUDED.sample_frame_timestamp, "
            "EXCLUDED.sample_attempt) > (t.last_seen, t.sample_frame_id, t.sample_frame_timestamp, "
            "t.sample_attempt)))"
        )
        sample_cols = (
            "last_seen",
            "sample_frame_id",
            "sample_frame_timestamp",
            "sample_attempt",
            "sample_trace_id",
        )
        fkeys = ", ".join(FAILURE_KEY_COLS)
        self.upsert_failure_stats = (
            f"INSERT INTO {fst} AS t ({', '.join(FAILURE_COLS)}) "
            f"VALUES ({', '.join(f'${i}' for i in range(1, len(FAILURE_COLS) + 1))}) "
            f"ON CONFLICT ({fkeys}) DO UPDATE SET failures = t.failures + EXCLUDED.failures, "
            "first_seen = least(t.first_seen, EXCLUDED.first_seen), "
            + ", ".join(f"{c} = CASE WHEN {later} THEN EXCLUDED.{c} ELSE t.{c} END" for c in sample_cols)
        )
        # A group's failure rollup row set from what the fold computed of its rows.
        nkeys = len(FAILURE_KEY_COLS)
        self.set_failure_stats = (
            f"UPDATE {fst} SET "
            + ", ".join(f"{c} = ${i}" for i, c in enumerate(FAILURE_COLS[nkeys:], nkeys + 1))
            + " WHERE "
            + " AND ".join(f"{c} = ${i}" for i, c in enumerate(FAILURE_KEY_COLS, 1))
        )
        # The rows of the failure rollup's groups: failed frames, and failed or
        # conflicted stage runs, of (camera, hour) pairs.
        self.select_failed_frames = (
            f"SELECT {fcols} FROM {fm} t JOIN unnest($1::text[], $2::timestamptz[]) AS k(cam, h) "
            "ON t.camera_id = k.cam AND t.frame_timestamp >= k.h "
            "AND t.frame_timestamp < k.h + interval '1 hour' WHERE t.failed_event_id IS NOT NULL"
        )
        self.select_failed_stages = (
            f"SELECT {scols} FROM {ps} t JOIN unnest($1::text[], $2::timestamptz[]) AS k(cam, h) "
            "ON t.camera_id = k.cam AND t.frame_timestamp >= k.h "
            "AND t.frame_timestamp < k.h + interval '1 hour' "
            "WHERE t.status IN ('failed', 'conflicted') AND t.failed_event_id IS NOT NULL"
        )


SELECT_LIVE_GENERATION = "SELECT generation FROM projection_state WHERE projection = $1"
# FOR SHARE: see FramesProjectionStore.apply_folded.
SELECT_LIVE_GENERATION_FOR_SHARE = f"{SELECT_LIVE_GENERATION} FOR SHARE"
SELECT_CHECKPOINTS = (
    'SELECT topic, "partition", next_offset FROM projection_checkpoints '
    "WHERE projection = $1 AND generation = $2"
)
# FOR UPDATE: a second writer of a partition (a zombie after a rebalance) waits
# for the first to commit, then reads its checkpoint and conflicts instead of
# overwriting it (once the partition has a checkpoint row).
SELECT_CHECKPOINTS_FOR_UPDATE = f"{SELECT_CHECKPOINTS} FOR UPDATE"
UPSERT_CHECKPOINT = (
    'INSERT INTO projection_checkpoints (projection, generation, topic, "partition", next_offset) '
    'VALUES ($1, $2, $3, $4, $5) ON CONFLICT (projection, generation, topic, "partition") '
    "DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()"
)
# Per-frame advisory locks, taken in key order (no lock-order deadlock).
LOCK_FRAMES = "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k ORDER BY k"
ENSURE_PARTITIONS = "SELECT tracker_ensure_partitions($1, $2, $3)"
