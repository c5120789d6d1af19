-- 008: learned anomaly detection (projections/detector.py, projections/anomalies.py).
--
-- The detector judges closed windows of the frames' capture time
-- (frame_timestamp): per camera and stage the finished runs, failures and
-- median duration, per camera the frames that reached processing. A window
-- closes once every partition's latest capture time (the watermark) has passed
-- its end by the allowed lateness; windows are closed in time order by whichever
-- projection writer sees the watermark pass, in its batch's transaction.
--
-- anomalies_g<N> (read through the view anomalies, like the other tables of
-- the projection) has one row per episode (consecutive abnormal windows of one
-- camera, stage and kind: stage_slow, failure_burst, frame_rate_drop,
-- camera_silent; stage '' for a camera's) and one per frame whose stage ran
-- beyond its learned p95 in a slow window (kind slow_frame, frame_id set):
--
-- * started_at / ended_at: the episode's first window start and last window
--   end (for a frame: its capture time, twice); windows: how many;
-- * score (the largest of the episode; for a frame, its duration over the
--   expected one), expected and observed (of that window): ms for durations,
--   failures per run for bursts, frames per window for rates;
-- * detected_at: the event time it became known (first window end plus the
--   lateness), the same in a rebuild; recorded_at: the wall clock.
--
-- Partitioned by day on started_at like the other generation tables (a
-- hypertable with TimescaleDB), listed in tracker_partitioned_tables so that
-- retention drops its days with the rest.
--
-- anomaly_detector holds each generation's detector: the window and lateness it
-- runs with, the start of the next window to close, and the learned baselines
-- (JSON). anomaly_watermarks holds the latest capture time seen per topic and
-- partition. Both are written in the projection's transaction, so a restarted
-- worker resumes where the last commit left them and a rebuild's generation gets
-- its own.
--
-- processing_stages_g<N> gets an index on frame_timestamp: a window's runs are a
-- range of it.

CREATE TABLE anomaly_detector (
    generation   integer PRIMARY KEY,
    window_s     integer     NOT NULL,
    lateness_s   integer     NOT NULL,
    next_window  timestamptz,
    state        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE anomaly_watermarks (
    generation   integer     NOT NULL,
    topic        text        NOT NULL,
    "partition"  integer     NOT NULL,
    latest       timestamptz NOT NULL,
    PRIMARY KEY (generation, topic, "partition")
);

CREATE FUNCTION tracker_create_anomalies(g integer) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    ts boolean := EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb');
    name text := 'anomalies_g' || g;
BEGIN
    EXECUTE format($ddl$
        CREATE TABLE %I (
            kind            text        NOT NULL,
            camera_id       text        NOT NULL,
            stage           text        NOT NULL DEFAULT '',
            frame_id        text        NOT NULL DEFAULT '',
            frame_timestamp timestamptz,
            attempt         integer,
            started_at      timestamptz NOT NULL,
            ended_at        timestamptz NOT NULL,
            windows         integer     NOT NULL DEFAULT 1,
            score           double precision NOT NULL,
            expected        double precision,
            observed        double precision,
            detected_at     timestamptz NOT NULL,
            recorded_at     timestamptz NOT NULL DEFAULT now(),
            trace_id        text,
            PRIMARY KEY (kind, camera_id, stage, frame_id, started_at)
        ) %s$ddl$, name, CASE WHEN ts THEN '' ELSE 'PARTITION BY RANGE (started_at)' END);
    EXECUTE format('CREATE INDEX %I ON %I (started_at)', name || '_started_idx', name);
    EXECUTE format('CREATE INDEX %I ON %I (frame_id) WHERE frame_id <> %L', name || '_frame_idx', name, '');
    EXECUTE format('CREATE INDEX %I ON %I (frame_timestamp)',
                   'processing_stages_g' || g || '_ts_idx', 'processing_stages_g' || g);
    IF ts THEN
        PERFORM create_hypertable(name::regclass, by_range('started_at', INTERVAL '1 day'));
    END IF;
    INSERT INTO tracker_partitioned_tables (table_name, time_column)
    VALUES (name, 'started_at') ON CONFLICT DO NOTHING;
END
$fn$;

CREATE FUNCTION tracker_point_anomalies_view(g integer) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format('CREATE OR REPLACE VIEW anomalies AS SELECT kind, camera_id, stage, frame_id, frame_timestamp, attempt, started_at, ended_at, windows, score, expected, observed, detected_at, recorded_at, trace_id FROM %I', 'anomalies_g' || g);
END
$fn$;

ALTER FUNCTION tracker_create_frames_generation(integer) RENAME TO tracker_create_frames_generation_007;
CREATE FUNCTION tracker_create_frames_generation(g integer) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM tracker_create_frames_generation_007(g);
    PERFORM tracker_create_anomalies(g);
END
$fn$;

ALTER FUNCTION tracker_point_frames_views(integer) RENAME TO tracker_point_frames_views_007;
CREATE FUNCTION tracker_point_frames_views(g integer) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM tracker_point_frames_views_007(g);
    PERFORM tracker_point_anomalies_view(g);
END
$fn$;

ALTER FUNCTION tracker_drop_frames_generation(integer) RENAME TO tracker_drop_frames_generation_007;
CREATE FUNCTION tracker_drop_frames_generation(g integer) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM tracker_drop_frames_generation_007(g);  -- refuses the live generation
    EXECUTE format('DROP TABLE IF EXISTS %I CASCADE', 'anomalies_g' || g);
    DELETE FROM tracker_partitioned_tables WHERE table_name = 'anomalies_g' || g;
    DELETE FROM anomaly_detector WHERE generation = g;
    DELETE FROM anomaly_watermarks WHERE generation = g;
END
$fn$;

-- The generations that exist now: their detector starts learning from the
-- windows still to close (a rebuild learns from the whole history).
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
        PERFORM tracker_create_anomalies(g);
    END LOOP;
    PERFORM tracker_point_anomalies_view(
        (SELECT generation FROM projection_state WHERE projection = 'frames'));
END $$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tracker_read') THEN
        GRANT SELECT ON anomalies, anomaly_detector TO tracker_read;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'cannot grant to tracker_read; skipped';
END $$;
