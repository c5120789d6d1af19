-- 005: the failure rollup, so that the failure analysis reads rollups only.
--
-- failure_stats_g<N> (read through the view failure_stats, like the other
-- rollups) has one row per (source, hour, camera_id, stage, error_type):
--
-- * source 'frame': frames whose ProcessingFailed was folded (frame_metadata
--   rows with a failure, conflicted ones included), by the failure's stage
--   ('(none)' when it names none) and error type, at failed_at;
-- * source 'stage': failed or conflicted stage runs (processing_stages), by
--   stage and error type, at finished_at;
-- * hour: the hour of the frame's capture time (frame_timestamp), as in the
--   other rollups, so an hourly window of the rollup is the same window of
--   the rows;
-- * error_type '' stands for none (a key column is never NULL; the codec
--   refuses an empty error type, so '' is never a real one); the view shows
--   it as NULL;
-- * failures: how many; first_seen / last_seen: the earliest and latest time;
--   sample_*: the latest failure by (time, frame id, frame timestamp,
--   attempt), its time being last_seen; sample_trace_id is the frame's
--   last_trace_id (NULL for stage runs); sample_attempt 0 for frames.
--   sample_frame_id is COLLATE "C" so that it compares by code point, as the
--   projection worker (Python) compares it.
--
-- The projection worker keeps it exact (projections/rollups.py says how):
-- added failures merge monotonically (count + 1, min, the later sample), and a
-- group a batch retracts a failure from is set again from its rows in the
-- same transaction. It is partitioned by day on hour like the other rollups
-- (a hypertable with TimescaleDB), listed in tracker_partitioned_tables (so
-- retention drops its days with the rest), and created and dropped with its
-- generation.
--
-- The generation functions of 002 now cover it: each is renamed
-- <name>_002, unchanged, and a function of its old name calls it and then
-- handles failure_stats_g<N>; 002 stays as it was released and its DDL is not
-- repeated here.
--
-- Generations that exist already (the live one; one that a running rebuild is
-- filling) get the table now, filled from their rows by the rules of the fold
-- (projections.rollups.failure_totals; a test checks the two agree). Writers
-- of those tables wait for this migration (SHARE lock). Run it with the
-- projection workers and rebuilds stopped, and restart them on this version:
-- a worker of an earlier version does not know the table and would leave it
-- behind (`tracker replay` would then make it exact again).

CREATE FUNCTION tracker_create_failure_stats(g integer) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    ts boolean := EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb');
    name text := 'failure_stats_g' || g;
BEGIN
    EXECUTE format($ddl$
        CREATE TABLE %I (
            source                 text        NOT NULL,
            hour                   timestamptz NOT NULL,
            camera_id              text        NOT NULL,
            stage                  text        NOT NULL,
            error_type             text        NOT NULL,
            failures               bigint      NOT NULL DEFAULT 0,
            first_seen             timestamptz,
            last_seen              timestamptz,
            sample_frame_id        text COLLATE "C",
            sample_frame_timestamp timestamptz,
            sample_attempt         integer,
            sample_trace_id        text,
            PRIMARY KEY (source, hour, camera_id, stage, error_type)
        ) %s$ddl$, name, CASE WHEN ts THEN '' ELSE 'PARTITION BY RANGE (hour)' END);
    IF ts THEN
        PERFORM create_hypertable(name::regclass, by_range('hour', INTERVAL '1 day'));
    END IF;
    INSERT INTO tracker_partitioned_tables (table_name, time_column)
    VALUES (name, 'hour') ON CONFLICT DO NOTHING;
END
$fn$;

CREATE FUNCTION tracker_point_failure_stats_view(g integer) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format('CREATE OR REPLACE VIEW failure_stats AS SELECT source, hour, camera_id, stage, nullif(error_type, '''') AS error_type, failures, first_seen, last_seen, sample_frame_id, sample_frame_timestamp, sample_attempt, sample_trace_id FROM %I', 'failure_stats_g' || g);
END
$fn$;

-- Fill failure_stats_g<g> from the generation's rows: what the projection
-- worker's failure_totals gives for them.
CREATE FUNCTION tracker_fill_failure_stats(g integer) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    lo timestamptz;
    hi timestamptz;
BEGIN
    EXECUTE format('SELECT min(frame_timestamp), max(frame_timestamp) FROM %I', 'frame_metadata_g' || g)
        INTO lo, hi;
    IF lo IS NULL THEN
        RETURN;  -- every event makes a frame row: no frames, no stage runs either
    END IF;
    PERFORM tracker_ensure_partitions('failure_stats_g' || g, lo, hi);
    EXECUTE format($sql$
        INSERT INTO %I (source, hour, camera_id, stage, error_type, failures, first_seen, last_seen,
                        sample_frame_id, sample_frame_timestamp, sample_attempt, sample_trace_id)
        SELECT source, hour, camera_id, stage, error_type, count(*), min(at), max(at),
               (array_agg(frame_id ORDER BY at DESC, frame_id DESC, frame_timestamp DESC, attempt DESC))[1],
               (array_agg(frame_timestamp ORDER BY at DESC, frame_id DESC, frame_timestamp DESC, attempt DESC))[1],
               (array_agg(attempt ORDER BY at DESC, frame_id DESC, frame_timestamp DESC, attempt DESC))[1],
               (array_agg(trace_id ORDER BY at DESC, frame_id DESC, frame_timestamp DESC, attempt DESC))[1]
        FROM (
            SELECT 'frame' AS source,
                   date_trunc('hour', frame_timestamp AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour,
                   camera_id, coalesce(error_stage, '(none)') AS stage,
                   coalesce(error_type, '') AS error_type, failed_at AS at,
                   frame_id COLLATE "C" AS frame_id, frame_timestamp, 0 AS attempt,
                   last_trace_id AS trace_id
            FROM %I WHERE failed_event_id IS NOT NULL
            UNION ALL
            SELECT 'stage',
                   date_trunc('hour', frame_timestamp AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
                   camera_id, stage, coalesce(error_type, ''), finished_at,
                   frame_id COLLATE "C", frame_timestamp, attempt, NULL
            FROM %I WHERE failed_event_id IS NOT NULL
        ) f
        GROUP BY source, hour, camera_id, stage, error_type
    $sql$, 'failure_stats_g' || g, 'frame_metadata_g' || g, 'processing_stages_g' || g);
END
$fn$;

ALTER FUNCTION tracker_create_frames_generation(integer) RENAME TO tracker_create_frames_generation_002;
CREATE FUNCTION tracker_create_frames_generation(g integer) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM tracker_create_frames_generation_002(g);
    PERFORM tracker_create_failure_stats(g);
END
$fn$;

ALTER FUNCTION tracker_point_frames_views(integer) RENAME TO tracker_point_frames_views_002;
CREATE FUNCTION tracker_point_frames_views(g integer) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM tracker_point_frames_views_002(g);
    PERFORM tracker_point_failure_stats_view(g);
END
$fn$;

ALTER FUNCTION tracker_drop_frames_generation(integer) RENAME TO tracker_drop_frames_generation_002;
CREATE FUNCTION tracker_drop_frames_generation(g integer) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM tracker_drop_frames_generation_002(g);  -- refuses the live generation
    EXECUTE format('DROP TABLE IF EXISTS %I CASCADE', 'failure_stats_g' || g);
    DELETE FROM tracker_partitioned_tables WHERE table_name = 'failure_stats_g' || g;
END
$fn$;

-- The generations that exist now.
DO $$
DECLARE
    g integer;
BEGIN
    FOR g IN
        SELECT substring(c.relname FROM '^frame_metadata_g([0-9]+)$')::integer
        FROM pg_class c
        WHERE c.relname ~ '^frame_metadata_g[0-9]+$' AND c.relnamespace = 'public'::regnamespace
          AND c.relkind IN ('r', 'p')
        ORDER BY 1
    LOOP
        EXECUTE format('LOCK TABLE %I, %I IN SHARE MODE', 'frame_metadata_g' || g, 'processing_stages_g' || g);
        PERFORM tracker_create_failure_stats(g);
        PERFORM tracker_fill_failure_stats(g);
    END LOOP;
    PERFORM tracker_point_failure_stats_view(
        (SELECT generation FROM projection_state WHERE projection = 'frames'));
END $$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tracker_read') THEN
        GRANT SELECT ON failure_stats TO tracker_read;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'cannot grant to tracker_read; skipped';
END $$;
