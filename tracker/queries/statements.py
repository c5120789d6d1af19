"""The read side's statements, each parameterised and built once.

Each is served by an index or a rollup (``tests/integration/test_queries.py``
checks the plans by statement, and bench EXPLAINs the windowed ones): the
journey by ``frame_id`` indexes, slow frames by ``frame_timestamp`` partitions
and indexes, statistics and the failure analysis by the hourly rollups.
"""

from __future__ import annotations

# Run on each new connection of the pool: read as tracker_read where the
# migrations created it.
IS_READ_ROLE_MEMBER = (
    "SELECT pg_has_role(current_user, 'tracker_read', 'MEMBER') FROM pg_roles WHERE rolname = 'tracker_read'"
)
SET_READ_ROLE = "SET SESSION ROLE tracker_read"

JOURNEY_FRAME = """
SELECT frame_id, frame_timestamp, camera_id, state, captured_at, queued_at,
       processing_started_at, completed_at, failed_at, total_processing_time_ms,
       error_type, error_message, error_stage, metadata, last_trace_id, events_applied,
       last_event_at
FROM frame_metadata WHERE frame_id = $1
ORDER BY frame_timestamp LIMIT 1
"""
JOURNEY_EVENTS = """
SELECT event_id::text AS event_id, event_type, occurred_at, recorded_at, producer, stage,
       attempt, duration_ms, error_type, error_message, trace_id, span_id, topic,
       "partition", "offset", lifecycle_flag, camera_id, frame_timestamp,
       extract(epoch FROM occurred_at - lag(occurred_at) OVER (ORDER BY occurred_at, event_id))
           * 1000.0 AS since_previous_ms
FROM frame_events WHERE frame_id = $1
ORDER BY occurred_at, event_id
LIMIT 1000
"""
JOURNEY_STAGES = """
SELECT stage, attempt, status, started_at, finished_at, duration_ms, error_type, error_message
FROM processing_stages WHERE frame_id = $1
ORDER BY coalesce(started_at, finished_at), stage, attempt
"""
SLOW = """
SELECT m.frame_id, m.camera_id, m.frame_timestamp, m.state, m.total_processing_time_ms,
       m.last_trace_id, s.stage AS slowest_stage, s.duration_ms AS slowest_stage_ms
FROM frame_metadata m
LEFT JOIN LATERAL (
    SELECT stage, duration_ms FROM processing_stages ps
    WHERE ps.frame_id = m.frame_id AND ps.frame_timestamp = m.frame_timestamp
      AND ps.duration_ms IS NOT NULL
    ORDER BY ps.duration_ms DESC LIMIT 1) s ON true
WHERE m.frame_timestamp >= $1 AND m.total_processing_time_ms >= $2
  AND ($3::text IS NULL OR m.camera_id = $3)
ORDER BY m.total_processing_time_ms DESC, m.frame_id
LIMIT $4
"""
# The failure analysis reads rollups only: failure_stats (sql/005, kept by the
# projection) for the failures, frame_stats_hourly for the frames they are a
# share of. Both are hourly, so the window starts on an hour, as the other
# rollup reads do. The sample is the latest failure of its group, ties broken
# as the projection breaks them (sample_frame_id is COLLATE "C").
FAILURES = """
SELECT stage, error_type, camera_id,
       sum(failures) AS failures, min(first_seen) AS first_seen, max(last_seen) AS last_seen,
       (array_agg(sample_frame_id ORDER BY last_seen DESC, sample_frame_id DESC,
                  sample_frame_timestamp DESC))[1] AS sample_frame_id,
       (array_agg(sample_trace_id ORDER BY last_seen DESC, sample_frame_id DESC,
                  sample_frame_timestamp DESC))[1] AS sample_trace_id
FROM failure_stats
WHERE source = 'frame' AND hour >= $1 AND failures > 0
GROUP BY stage, error_type, camera_id
ORDER BY failures DESC, stage, error_type, camera_id
"""
FRAMES_PER_CAMERA = """
SELECT camera_id, sum(frames) AS frames FROM frame_stats_hourly WHERE hour >= $1 GROUP BY camera_id
"""
STAGE_FAILURES = """
SELECT stage, error_type, sum(failures) AS failures, min(first_seen) AS first_seen,
       max(last_seen) AS last_seen,
       (array_agg(sample_frame_id ORDER BY last_seen DESC, sample_frame_id DESC,
                  sample_frame_timestamp DESC, sample_attempt DESC))[1] AS sample_frame_id
FROM failure_stats
WHERE source = 'stage' AND hour >= $1 AND failures > 0
GROUP BY stage, error_type ORDER BY failures DESC, stage, error_type
"""
CAMERA_STATS = """
SELECT camera_id, sum(frames) AS frames, sum(captured) AS captured, sum(queued) AS queued,
       sum(processing) AS processing, sum(completed) AS completed, sum(failed) AS failed,
       sum(conflicted) AS conflicted, sum(processing_time_count) AS timed,
       sum(processing_time_sum_ms) AS time_sum_ms,
       tracker_array_sum(processing_time_buckets) AS buckets
FROM frame_stats_hourly WHERE hour >= $1
GROUP BY camera_id ORDER BY camera_id
"""
STAGE_STATS = """
SELECT stage, sum(runs) AS runs, sum(completed) AS completed, sum(failed) AS failed,
       sum(conflicted) AS conflicted, sum(running) AS running,
       sum(duration_count) AS timed, sum(duration_sum_ms) AS time_sum_ms,
       tracker_array_sum(duration_buckets) AS buckets
FROM performance_stats WHERE hour >= $1
GROUP BY stage ORDER BY stage
"""
CAMERA_EXISTS = "SELECT EXISTS (SELECT 1 FROM frame_stats_hourly WHERE camera_id = $1)"

# Frame search (the web UI and GET /api/v1/frames). The prefix and neighbour
# reads use the text_pattern_ops index of sql/006: ~<~ and friends compare
# bytes, so the ids starting with a prefix are one range of that index whatever
# the collation, and an unknown id's neighbours in it share its longest prefix.
_FRAME_ROW = (
    "frame_id, camera_id, frame_timestamp, state, total_processing_time_ms, error_type, error_stage, "
    "last_trace_id"
)
SEARCH_PREFIX = f"""
SELECT {_FRAME_ROW}
FROM frame_metadata WHERE frame_id ~>=~ $1 AND frame_id ~<~ $2
ORDER BY frame_id USING ~<~
LIMIT $3
"""
NEIGHBOUR_IDS = """
(SELECT frame_id FROM frame_metadata WHERE frame_id ~<~ $1 ORDER BY frame_id USING ~>~ LIMIT $2)
UNION ALL
(SELECT frame_id FROM frame_metadata WHERE frame_id ~>~ $1 ORDER BY frame_id USING ~<~ LIMIT $2)
"""
# The frames whose events carry a trace id (from a log line, a trace view or
# an exemplar): the partial trace_id index of sql/001 finds the events, each
# frame's primary key its row. The publisher makes one trace per frame; a
# service may trace several frames in one.
SEARCH_TRACE = f"""
SELECT {_FRAME_ROW}
FROM frame_metadata WHERE (frame_id, frame_timestamp) IN (
    SELECT DISTINCT frame_id, frame_timestamp FROM frame_events WHERE trace_id = $1)
ORDER BY frame_timestamp DESC, frame_id
LIMIT $2
"""
SEARCH_CAMERA = f"""
SELECT {_FRAME_ROW}
FROM frame_metadata WHERE camera_id = $1 AND frame_timestamp >= $2 AND frame_timestamp < $3
ORDER BY frame_timestamp DESC, frame_id
LIMIT $4
"""
# Frames captured in the window that failed (or conflicted), latest failure
# first, as FAILURES counts them; the partial index on failed_at serves it.
RECENT_FAILED = f"""
SELECT {_FRAME_ROW}
FROM frame_metadata WHERE frame_timestamp >= $1 AND failed_at IS NOT NULL
ORDER BY failed_at DESC, frame_id
LIMIT $2
"""
# "Is this normal?": one hour's histograms, a primary-key read of each rollup:
# the camera's total time, each stage on that camera (stage_camera_stats,
# sql/007: one range of its key), and each stage on every camera.
BASELINE_CAMERA = """
SELECT processing_time_count AS timed, processing_time_sum_ms AS time_sum_ms,
       processing_time_buckets AS buckets
FROM frame_stats_hourly WHERE camera_id = $1 AND hour = $2
"""
BASELINE_CAMERA_STAGES = """
SELECT stage, duration_count AS timed, duration_sum_ms AS time_sum_ms, duration_buckets AS buckets
FROM stage_camera_stats WHERE camera_id = $1 AND hour = $2
ORDER BY stage
"""
BASELINE_STAGES = """
SELECT stage, duration_count AS timed, duration_sum_ms AS time_sum_ms, duration_buckets AS buckets
FROM performance_stats WHERE hour = $1
ORDER BY stage
"""

# Anomaly episodes (frame_id '') that overlap the window, latest first, with
# how many frames of slow windows each reported and the worst of them.
ANOMALIES = """
SELECT a.kind, a.camera_id, a.stage, a.started_at, a.ended_at, a.windows, a.score, a.expected,
       a.observed, a.detected_at, a.recorded_at, a.trace_id, f.frames, f.sample_frame_id
FROM anomalies a
LEFT JOIN LATERAL (
    SELECT count(*) AS frames, (array_agg(s.frame_id ORDER BY s.score DESC, s.frame_id))[1] AS sample_frame_id
    FROM anomalies s
    WHERE a.kind = 'stage_slow' AND s.kind = 'slow_frame' AND s.camera_id = a.camera_id
      AND s.stage = a.stage AND s.started_at >= a.started_at AND s.started_at < a.ended_at
) f ON true
WHERE a.frame_id = '' AND a.ended_at >= $1
ORDER BY a.started_at DESC, a.kind, a.camera_id, a.stage
LIMIT $2
"""
# A frame's own anomalies (a slow stage) and the episodes of its camera that
# its capture time falls in.
JOURNEY_ANOMALIES = """
SELECT kind, camera_id, stage, frame_id, started_at, ended_at, windows, score, expected, observed,
       detected_at
FROM anomalies
WHERE frame_id = $1
   OR (frame_id = '' AND camera_id = $2 AND started_at <= $3 AND ended_at > $3
       AND started_at > $3 - interval '1 day')
ORDER BY started_at, kind, stage
"""
