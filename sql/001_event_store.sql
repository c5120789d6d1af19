-- 001: the event store.
--
-- Plain PostgreSQL (the baseline every test runs on): frame_events is
-- range-partitioned by day on frame_timestamp, the capture time every event
-- carries, so all events of a frame land in one partition whatever order they
-- arrive in, and retention drops whole partitions.
-- TimescaleDB (when `tracker migrate` could CREATE EXTENSION timescaledb): the
-- same columns as a hypertable with one-day chunks.

-- Tables that are time-partitioned, and how; partition maintenance and
-- retention walk this list, so a new partitioned table only needs a row here.
CREATE TABLE tracker_partitioned_tables (
    table_name  text PRIMARY KEY,
    time_column text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Create the daily partitions of p_table covering [p_from, p_to] (UTC days).
-- Idempotent; a no-op for hypertables (TimescaleDB makes its own chunks).
-- Callers run it in a short transaction of its own before writing: it takes an
-- ACCESS EXCLUSIVE lock on the parent for each new partition, which must not be
-- held across a data batch.
CREATE FUNCTION tracker_ensure_partitions(p_table text, p_from timestamptz, p_to timestamptz)
RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    d date;
    part text;
    created integer := 0;
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_partitioned_table pt
        JOIN pg_class c ON c.oid = pt.partrelid
        WHERE c.relname = p_table AND c.relnamespace = 'public'::regnamespace
    ) THEN
        RETURN 0;
    END IF;
    -- Serialise creators: two workers seeing a new day at once would otherwise
    -- race on the catalog even with IF NOT EXISTS.
    PERFORM pg_advisory_xact_lock(hashtext('tracker_ensure_partitions:' || p_table));
    d := (p_from AT TIME ZONE 'UTC')::date;
    WHILE d <= (p_to AT TIME ZONE 'UTC')::date LOOP
        part := format('%s_p%s', p_table, to_char(d, 'YYYYMMDD'));
        IF to_regclass(format('public.%I', part)) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE public.%I PARTITION OF public.%I FOR VALUES FROM (%L) TO (%L)',
                part, p_table,
                (d::timestamp AT TIME ZONE 'UTC'), ((d + 1)::timestamp AT TIME ZONE 'UTC'));
            created := created + 1;
        END IF;
        d := d + 1;
    END LOOP;
    RETURN created;
END
$fn$;

DO $$
DECLARE
    ts boolean := EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb');
BEGIN
    EXECUTE format($ddl$
        CREATE TABLE frame_events (
            event_id           uuid        NOT NULL,
            event_type         text        NOT NULL,
            frame_id           text        NOT NULL,
            camera_id          text        NOT NULL,
            frame_timestamp    timestamptz NOT NULL,
            occurred_at        timestamptz NOT NULL,
            recorded_at        timestamptz NOT NULL DEFAULT now(),
            producer           text        NOT NULL DEFAULT '',
            stage              text,
            attempt            integer     NOT NULL DEFAULT 1,
            duration_ms        double precision,
            error_type         text,
            error_message      text,
            data               jsonb       NOT NULL DEFAULT '{}'::jsonb,
            trace_id           text,
            span_id            text,
            topic              text        NOT NULL,
            "partition"        integer     NOT NULL,
            "offset"           bigint      NOT NULL,
            schema_fingerprint bytea       NOT NULL,
            lifecycle_flag     text,
            -- frame_timestamp is in the key because a unique constraint on a
            -- partitioned table must include the partition key; it is part of
            -- the event, so a redelivered event still conflicts.
            PRIMARY KEY (event_id, frame_timestamp)
        ) %s$ddl$,
        CASE WHEN ts THEN '' ELSE 'PARTITION BY RANGE (frame_timestamp)' END);
    IF ts THEN
        PERFORM create_hypertable('frame_events', by_range('frame_timestamp', INTERVAL '1 day'));
    END IF;
END $$;

INSERT INTO tracker_partitioned_tables (table_name, time_column)
VALUES ('frame_events', 'frame_timestamp');

-- Journey of one frame, in occurrence order.
CREATE INDEX frame_events_frame_idx ON frame_events (frame_id, occurred_at);
-- Per-camera time windows.
CREATE INDEX frame_events_camera_time_idx ON frame_events (camera_id, frame_timestamp);
-- Trace id -> frame (exemplar and trace links).
CREATE INDEX frame_events_trace_idx ON frame_events (trace_id) WHERE trace_id IS NOT NULL;

COMMENT ON TABLE frame_events IS
  'Event store: one row per frame lifecycle event, append-only, idempotent on event_id.';
COMMENT ON COLUMN frame_events.lifecycle_flag IS
  'Set when a valid event is illegal for the frame''s lifecycle (e.g. a stage after completion); stored, not dropped.';
