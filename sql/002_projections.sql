-- 002: projections (frame_metadata, processing_stages, frame_stats_hourly,
-- performance_stats), their checkpoints, and generations for zero-downtime
-- rebuilds.
--
-- Readers use the VIEWS frame_metadata, processing_stages, frame_stats_hourly
-- and performance_stats. Each view selects from the physical tables of the
-- projection's current *generation* (frame_metadata_g1, ...). A rebuild fills
-- the tables of a new generation while the current one keeps serving, then
-- `CREATE OR REPLACE VIEW` in one transaction swaps it in: readers see either
-- the old or the new generation, never an empty or half-built one.
--
-- The rollups are plain tables kept exact by the projection worker (each batch
-- adds contribution(new row) - contribution(old row)), in TimescaleDB mode as
-- well. Continuous aggregates were considered and not used: they aggregate a
-- time column of an append-only table, whereas a frame's row changes state as
-- its events arrive (captured -> ... -> completed), and a continuous aggregate
-- is only as fresh as its last refresh; the worker's deltas are exact at every
-- commit, and identical on both backends. TimescaleDB mode makes every
-- generation table a hypertable (one-day chunks) instead of a natively
-- partitioned table, with compression on frame_events (see 003).

CREATE TABLE projection_state (
    projection  text PRIMARY KEY,
    generation  integer NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Checkpoints: the next offset to apply per (projection, generation, topic,
-- partition); written in the same transaction as the rows they cover.
CREATE TABLE projection_checkpoints (
    projection  text    NOT NULL,
    generation  integer NOT NULL,
    topic       text    NOT NULL,
    "partition" integer NOT NULL,
    next_offset bigint  NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, generation, topic, "partition")
);

CREATE TABLE projection_replays (
    id              bigserial PRIMARY KEY,
    projection      text        NOT NULL,
    generation      integer     NOT NULL,
    source          text        NOT NULL,
    status          text        NOT NULL,  -- running | swapped | failed | abandoned
    started_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    events_applied  bigint      NOT NULL DEFAULT 0,
    events_per_s    double precision,
    lag_events      bigint,
    eta_s           double precision,
    message         text
);
-- At most one running rebuild per projection.
CREATE UNIQUE INDEX projection_replays_one_running
    ON projection_replays (projection) WHERE status = 'running';

-- Element-wise sum of two histogram bucket arrays (NULL counts as zeros).
CREATE FUNCTION tracker_array_add(a bigint[], b bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT CASE
        WHEN a IS NULL THEN b
        WHEN b IS NULL THEN a
        ELSE ARRAY(SELECT coalesce(x, 0) + coalesce(y, 0)
                   FROM unnest(a, b) WITH ORDINALITY AS t(x, y, i) ORDER BY i)
    END
$fn$;

-- Percentile (ms) estimated from cumulative-free bucket counts and their upper
-- bounds, by linear interpolation inside the bucket (error <= bucket width);
-- mirrors projections.fold.percentile_from_buckets.
CREATE FUNCTION tracker_bucket_percentile(buckets bigint[], bounds double precision[], q double precision)
RETURNS double precision
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
DECLARE
    total bigint := 0;
    seen  bigint := 0;
    rank  double precision;
    lo    double precision;
    n     bigint;
BEGIN
    IF buckets IS NULL THEN RETURN NULL; END IF;
    SELECT coalesce(sum(x), 0) INTO total FROM unnest(buckets) x;
    IF total <= 0 THEN RETURN NULL; END IF;
    rank := q * total;
    FOR i IN 1 .. array_length(buckets, 1) LOOP
        n := buckets[i];
        IF n > 0 AND seen + n >= rank THEN
            IF i > array_length(bounds, 1) THEN
                RETURN bounds[array_length(bounds, 1)];
            END IF;
            lo := CASE WHEN i = 1 THEN 0 ELSE bounds[i - 1] END;
            RETURN lo + (bounds[i] - lo) * (rank - seen) / n;
        END IF;
        seen := seen + n;
    END LOOP;
    RETURN bounds[array_length(bounds, 1)];
END
$fn$;

-- The histogram bounds (ms) of projections.fold.BUCKET_BOUNDS_MS; a test keeps
-- the two equal.
CREATE FUNCTION tracker_bucket_bounds() RETURNS double precision[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT ARRAY[5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000, 10000]::double precision[]
$fn$;

-- Create the physical tables of one generation of the `frames` projection.
CREATE FUNCTION tracker_create_frames_generation(g integer) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    ts boolean := EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb');
    part text;
    t record;
BEGIN
    part := CASE WHEN ts THEN '' ELSE 'PARTITION BY RANGE (%s)' END;

    EXECUTE format($ddl$
        CREATE TABLE %I (
            frame_id                 text        NOT NULL,
            frame_timestamp          timestamptz NOT NULL,
            camera_id                text        NOT NULL,
            state                    text        NOT NULL,
            captured_at              timestamptz,
            queued_at                timestamptz,
            processing_started_at    timestamptz,
            completed_at             timestamptz,
            failed_at                timestamptz,
            total_processing_time_ms double precision,
            error_type               text,
            error_message            text,
            error_stage              text,
            metadata                 jsonb       NOT NULL DEFAULT '{}'::jsonb,
            last_trace_id            text,
            events_applied           integer     NOT NULL,
            last_event_at            timestamptz,
            updated_at               timestamptz NOT NULL DEFAULT now(),
            -- fold state (projections/fold.py): which event won each choice
            completed_event_id       text,
            completed_duration_ms    double precision,
            failed_event_id          text,
            failed_duration_ms       double precision,
            captured_event_id        text,
            trace_event_at           timestamptz,
            trace_event_id           text,
            stage_seen_at            timestamptz,
            event_ids                text[]      NOT NULL,
            PRIMARY KEY (frame_id, frame_timestamp)
        ) %s$ddl$, 'frame_metadata_g' || g, format(part, 'frame_timestamp'));

    EXECUTE format($ddl$
        CREATE TABLE %I (
            frame_id              text        NOT NULL,
            frame_timestamp       timestamptz NOT NULL,
            stage                 text        NOT NULL,
            attempt               integer     NOT NULL,
            camera_id             text        NOT NULL,
            status                text        NOT NULL,
            started_at            timestamptz,
            finished_at           timestamptz,
            duration_ms           double precision,
            error_type            text,
            error_message         text,
            updated_at            timestamptz NOT NULL DEFAULT now(),
            completed_event_at    timestamptz,
            completed_event_id    text,
            completed_duration_ms double precision,
            failed_event_at       timestamptz,
            failed_event_id       text,
            failed_duration_ms    double precision,
            PRIMARY KEY (frame_id, frame_timestamp, stage, attempt)
        ) %s$ddl$, 'processing_stages_g' || g, format(part, 'frame_timestamp'));

    EXECUTE format($ddl$
        CREATE TABLE %I (
            camera_id               text        NOT NULL,
            hour                    timestamptz NOT NULL,
            frames                  bigint      NOT NULL DEFAULT 0,
            captured                bigint      NOT NULL DEFAULT 0,
            queued                  bigint      NOT NULL DEFAULT 0,
            processing              bigint      NOT NULL DEFAULT 0,
            completed               bigint      NOT NULL DEFAULT 0,
            failed                  bigint      NOT NULL DEFAULT 0,
            conflicted              bigint      NOT NULL DEFAULT 0,
            processing_time_count   bigint      NOT NULL DEFAULT 0,
            processing_time_sum_ms  double precision NOT NULL DEFAULT 0,
            processing_time_buckets bigint[]    NOT NULL,
            PRIMARY KEY (camera_id, hour)
        ) %s$ddl$, 'frame_stats_hourly_g' || g, format(part, 'hour'));

    EXECUTE format($ddl$
        CREATE TABLE %I (
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
            PRIMARY KEY (stage, hour)
        ) %s$ddl$, 'performance_stats_g' || g, format(part, 'hour'));

    -- Slow-frame and per-camera queries.
    EXECUTE format('CREATE INDEX %I ON %I (camera_id, frame_timestamp)',
                   'frame_metadata_g' || g || '_camera_idx', 'frame_metadata_g' || g);
    EXECUTE format('CREATE INDEX %I ON %I (frame_timestamp, total_processing_time_ms) WHERE total_processing_time_ms IS NOT NULL',
                   'frame_metadata_g' || g || '_slow_idx', 'frame_metadata_g' || g);
    EXECUTE format('CREATE INDEX %I ON %I (failed_at) WHERE failed_at IS NOT NULL',
                   'frame_metadata_g' || g || '_failed_idx', 'frame_metadata_g' || g);
    EXECUTE format('CREATE INDEX %I ON %I (frame_id)',
                   'frame_metadata_g' || g || '_frame_idx', 'frame_metadata_g' || g);
    EXECUTE format('CREATE INDEX %I ON %I (frame_timestamp, status) WHERE status IN (''failed'', ''conflicted'')',
                   'processing_stages_g' || g || '_failed_idx', 'processing_stages_g' || g);
    EXECUTE format('CREATE INDEX %I ON %I (frame_id)',
                   'processing_stages_g' || g || '_frame_idx', 'processing_stages_g' || g);

    FOR t IN SELECT * FROM (VALUES
            ('frame_metadata_g' || g, 'frame_timestamp'),
            ('processing_stages_g' || g, 'frame_timestamp'),
            ('frame_stats_hourly_g' || g, 'hour'),
            ('performance_stats_g' || g, 'hour')) AS v(name, col)
    LOOP
        IF ts THEN
            PERFORM create_hypertable(t.name::regclass, by_range(t.col, INTERVAL '1 day'));
        END IF;
        INSERT INTO tracker_partitioned_tables (table_name, time_column)
        VALUES (t.name, t.col) ON CONFLICT DO NOTHING;
    END LOOP;
END
$fn$;

-- Point the reader views at generation g (one transaction: atomic for readers).
CREATE FUNCTION tracker_point_frames_views(g integer) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format('CREATE OR REPLACE VIEW frame_metadata AS SELECT frame_id, frame_timestamp, camera_id, state, captured_at, queued_at, processing_started_at, completed_at, failed_at, total_processing_time_ms, error_type, error_message, error_stage, metadata, last_trace_id, events_applied, last_event_at, updated_at FROM %I', 'frame_metadata_g' || g);
    EXECUTE format('CREATE OR REPLACE VIEW processing_stages AS SELECT frame_id, frame_timestamp, stage, attempt, camera_id, status, started_at, finished_at, duration_ms, error_type, error_message, updated_at FROM %I', 'processing_stages_g' || g);
    EXECUTE format('CREATE OR REPLACE VIEW frame_stats_hourly AS SELECT camera_id, hour, frames, captured, queued, processing, completed, failed, conflicted, processing_time_count, processing_time_sum_ms, processing_time_buckets FROM %I', 'frame_stats_hourly_g' || g);
    EXECUTE format('CREATE OR REPLACE VIEW performance_stats AS SELECT stage, hour, runs, completed, failed, conflicted, running, duration_count, duration_sum_ms, duration_buckets FROM %I', 'performance_stats_g' || g);
    UPDATE projection_state SET generation = g, updated_at = now() WHERE projection = 'frames';
END
$fn$;

-- Drop the physical tables of a retired generation.
CREATE FUNCTION tracker_drop_frames_generation(g integer) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    name text;
BEGIN
    IF g = (SELECT generation FROM projection_state WHERE projection = 'frames') THEN
        RAISE EXCEPTION 'generation % is live', g;
    END IF;
    FOREACH name IN ARRAY ARRAY['frame_metadata_g' || g, 'processing_stages_g' || g,
                                'frame_stats_hourly_g' || g, 'performance_stats_g' || g]
    LOOP
        EXECUTE format('DROP TABLE IF EXISTS %I CASCADE', name);
        DELETE FROM tracker_partitioned_tables WHERE table_name = name;
    END LOOP;
    DELETE FROM projection_checkpoints WHERE projection = 'frames' AND generation = g;
END
$fn$;

INSERT INTO projection_state (projection, generation) VALUES ('frames', 1);
SELECT tracker_create_frames_generation(1);
SELECT tracker_point_frames_views(1);
