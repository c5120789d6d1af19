-- 007: the camera × stage rollup, so that a frame's stages can be compared
-- with the same camera's runs of the same stage in the same hour.
--
-- stage_camera_stats_g<N> (read through the view stage_camera_stats, like the
-- other rollups) has one row per (camera_id, stage, hour) with the counters
-- and the latency histogram of performance_stats (002): runs, runs by status
-- (completed, failed, conflicted, running), duration_count, duration_sum_ms
-- and duration_buckets of the finished runs that have a duration. hour is the
-- hour of the frame's capture time (frame_timestamp), as in the other rollups.
-- Its primary key is (camera_id, hour, stage): one camera's hour is one range
-- of it.
--
-- The projection worker keeps it exact as it keeps the other additive
-- rollups: a batch adds contribution(new row) - contribution(old row) of each
-- stage run it changed (projections/rollups.py, stage_camera_contribution; a
-- run whose camera id changes moves from one camera's row to the other's).
-- performance_stats is unchanged; its deltas are now this rollup's summed over
-- cameras, so the two agree at every commit. Partitioned by day on hour like
-- the other rollups (a hypertable with TimescaleDB), listed in
-- tracker_partitioned_tables (so retention drops its days with the rest), and
-- created, pointed at and dropped with its generation.
--
-- The generation functions now cover it, as 005 and 006 did: each is renamed
-- <name>_<the migration that defined it>, unchanged, and a function of its old
-- name calls it and then handles stage_camera_stats_g<N>.
--
-- Generations that exist already (the live one; one that a running rebuild is
-- filling) get the table now, filled from their processing_stages rows by the
-- rules of the fold (a test checks the two agree). Writers of those tables
-- wait for this migration (SHARE lock). Run it with the projection workers and
-- rebuilds stopped, and restart them on this version: a worker of an earlier
-- version does not know the table and would leave it behind (`tracker replay`
-- would then make it exact again).

CREATE FUNCTION tracker_create_stage_camera_stats(g integer) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    ts boolean := EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb');
    name text := 'stage_camera_stats_g' || g;
BEGIN
    EXECUTE format($ddl$
        CREATE TABLE %I (
            camera_id          text        NOT NULL,
            stage              text        NOT NULL,
            hour               timestamptz NOT NULL,
            runs               bigint      NOT NULL DEFAULT 0,
            completed          bigint      NOT NULL DEFAULT 0,
            failed             bigint      NOT NULL DEFAULT 0,
            conflicted         bigint      NOT NULL DEFAULT 0,
            running            bigint      NOT NULL DEFAULT 0,
            duration_count     bigint      NOT NULL DEFAULT 0,
            duration_sum_ms    double precision NOT NULL DEFAULT 0,
            duration_buckets   bigint[]    NOT NULL,
            PRIMARY KEY (camera_id, hour, stage)
        ) %s$ddl$, name, CASE WHEN ts THEN '' ELSE 'PARTITION BY RANGE (hour)' END);
    IF ts THEN
        PERFORM create_hypertable(name::regclass, by_range('hour', INTERVAL '1 day'));
    END IF;
    INSERT INTO tracker_partitioned_tables (table_name, time_column)
    VALUES (name, 'hour') ON CONFLICT DO NOTHING;
END
$fn$;

CREATE FUNCTION tracker_point_stage_camera_stats_view(g integer) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format('CREATE OR REPLACE VIEW stage_camera_stats AS SELECT camera_id, stage, hour, runs, completed, failed, conflicted, running, duration_count, duration_sum_ms, duration_buckets FROM %I', 'stage_camera_stats_g' || g);
END
$fn$;

-- Fill stage_camera_stats_g<g> from the generation's stage runs: what the
-- projection worker's contributions add up to (projections.rollups
-- stage_camera_contribution). A run counts once in runs and once under its
-- status; a finished run with a duration counts in the histogram, in the
-- bucket of the first bound at or above its duration (tracker.buckets:
-- bisect_left, upper bounds inclusive), the last bucket being +Inf.
CREATE FUNCTION tracker_fill_stage_camera_stats(g integer) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    lo timestamptz;
    hi timestamptz;
BEGIN
    EXECUTE format('SELECT min(frame_timestamp), max(frame_timestamp) FROM %I', 'processing_stages_g' || g)
        INTO lo, hi;
    IF lo IS NULL THEN
        RETURN;
    END IF;
    PERFORM tracker_ensure_partitions('stage_camera_stats_g' || g, lo, hi);
    EXECUTE format($sql$
        WITH runs AS (
            SELECT camera_id, stage,
                   date_trunc('hour', frame_timestamp AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour,
                   status,
                   CASE WHEN status <> 'running' THEN duration_ms END AS ms
            FROM %I
        ),
        -- One row per group, status and bucket (0: no duration): a few per group.
        cells AS (
            SELECT camera_id, stage, hour, status,
                   CASE WHEN ms IS NULL THEN 0
                        ELSE 1 + (SELECT count(*) FROM unnest(tracker_bucket_bounds()) AS b WHERE b < ms)
                   END AS bucket,
                   count(*) AS n, sum(ms) AS ms_sum
            FROM runs
            GROUP BY 1, 2, 3, 4, 5
        )
        INSERT INTO %I (camera_id, stage, hour, runs, completed, failed, conflicted, running,
                        duration_count, duration_sum_ms, duration_buckets)
        SELECT camera_id, stage, hour, sum(n),
               coalesce(sum(n) FILTER (WHERE status = 'completed'), 0),
               coalesce(sum(n) FILTER (WHERE status = 'failed'), 0),
               coalesce(sum(n) FILTER (WHERE status = 'conflicted'), 0),
               coalesce(sum(n) FILTER (WHERE status = 'running'), 0),
               coalesce(sum(n) FILTER (WHERE bucket > 0), 0),
               coalesce(sum(ms_sum), 0),
               tracker_array_sum(ARRAY(
                   SELECT CASE WHEN i = bucket THEN n ELSE 0 END
                   FROM generate_series(1, array_length(tracker_bucket_bounds(), 1) + 1) AS i
                   ORDER BY i))
        FROM cells
        GROUP BY camera_id, stage, hour
    $sql$, 'processing_stages_g' || g, 'stage_camera_stats_g' || g);
END
$fn$;

ALTER FUNCTION tracker_create_frames_generation(integer) RENAME TO tracker_create_frames_generation_006;
CREATE FUNCTION tracker_create_frames_generation(g integer) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM tracker_create_frames_generation_006(g);
    PERFORM tracker_create_stage_camera_stats(g);
END
$fn$;

ALTER FUNCTION tracker_point_frames_views(integer) RENAME TO tracker_point_frames_views_005;
CREATE FUNCTION tracker_point_frames_views(g integer) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM tracker_point_frames_views_005(g);
    PERFORM tracker_point_stage_camera_stats_view(g);
END
$fn$;

ALTER FUNCTION tracker_drop_frames_generation(integer) RENAME TO tracker_drop_frames_generation_005;
CREATE FUNCTION tracker_drop_frames_generation(g integer) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM tracker_drop_frames_generation_005(g);  -- refuses the live generation
    EXECUTE format('DROP TABLE IF EXISTS %I CASCADE', 'stage_camera_stats_g' || g);
    DELETE FROM tracker_partitioned_tables WHERE table_name = 'stage_camera_stats_g' || g;
END
$fn$;

-- The generations that exist now.
DO $$
DECLARE
    g integer;
BEGIN
    FOR g IN
        SELECT substring(c.relname FROM '^processing_stages_g([0-9]+)$')::integer
        FROM pg_class c
        WHERE c.relname ~ '^processing_stages_g[0-9]+$' AND c.relnamespace = 'public'::regnamespace
          AND c.relkind IN ('r', 'p')
        ORDER BY 1
    LOOP
        EXECUTE format('LOCK TABLE %I IN SHARE MODE', 'processing_stages_g' || g);
        PERFORM tracker_create_stage_camera_stats(g);
        PERFORM tracker_fill_stage_camera_stats(g);
    END LOOP;
    PERFORM tracker_point_stage_camera_stats_view(
        (SELECT generation FROM projection_state WHERE projection = 'frames'));
END $$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tracker_read') THEN
        GRANT SELECT ON stage_camera_stats TO tracker_read;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'cannot grant to tracker_read; skipped';
END $$;
