-- 003: what the query side and retention need.

-- Element-wise sum of histogram arrays across rows (percentiles over a window).
CREATE AGGREGATE tracker_array_sum(bigint[]) (
    SFUNC = tracker_array_add,
    STYPE = bigint[]
);

-- Drop every whole day of every time-partitioned table older than p_cutoff
-- (rounded down to a UTC day, so that a table keeps either all or none of a
-- day and the projections stay consistent with the events that are left).
-- Plain PostgreSQL: DROP of the day partitions. TimescaleDB: drop_chunks.
-- Returns one row per dropped partition or chunk.
CREATE FUNCTION tracker_drop_partitions_older_than(p_cutoff timestamptz)
RETURNS TABLE (table_name text, dropped text)
LANGUAGE plpgsql AS $fn$
DECLARE
    t record;
    p record;
    cutoff timestamptz := date_trunc('day', p_cutoff AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    ts boolean := EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb');
    is_hyper boolean;
BEGIN
    FOR t IN SELECT pt.table_name, pt.time_column FROM tracker_partitioned_tables pt ORDER BY 1 LOOP
        CONTINUE WHEN to_regclass(format('public.%I', t.table_name)) IS NULL;
        is_hyper := false;
        IF ts THEN
            -- EXECUTE: the catalog view exists only where TimescaleDB does.
            EXECUTE 'SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables '
                    'WHERE hypertable_name = $1)' INTO is_hyper USING t.table_name;
        END IF;
        IF is_hyper THEN
            FOR p IN EXECUTE format('SELECT c::text AS name FROM drop_chunks(%L, older_than => %L::timestamptz) c',
                                    t.table_name, cutoff) LOOP
                table_name := t.table_name; dropped := p.name; RETURN NEXT;
            END LOOP;
        ELSE
            FOR p IN
                SELECT c.relname AS name
                FROM pg_inherits i
                JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = format('public.%I', t.table_name)::regclass
                  -- the partition's upper bound, from its FOR VALUES clause
                  AND (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz <= cutoff
                ORDER BY c.relname
            LOOP
                EXECUTE format('DROP TABLE public.%I', p.name);
                table_name := t.table_name; dropped := p.name; RETURN NEXT;
            END LOOP;
        END IF;
    END LOOP;
END
$fn$;

-- The query side (CLI queries, HTTP API, Grafana) reads as tracker_read: it
-- may SELECT the event store and the projection views and nothing else, and
-- it writes nothing. Views run with their owner's rights, so granting the
-- views is enough, whatever generation they point at. Roles are cluster-wide:
-- create it once; a database user without CREATEROLE skips this step (the
-- query side then falls back to a read-only transaction mode on its own login).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tracker_read') THEN
        CREATE ROLE tracker_read NOLOGIN;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'cannot create role tracker_read (no CREATEROLE); skipped';
END $$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tracker_read') THEN
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO tracker_read', current_database());
        GRANT USAGE ON SCHEMA public TO tracker_read;
        GRANT SELECT ON frame_events, frame_metadata, processing_stages, frame_stats_hourly,
            performance_stats, projection_state, projection_checkpoints, projection_replays
            TO tracker_read;
        -- Let the login role that runs the migrations switch to it (SET ROLE).
        EXECUTE format('GRANT tracker_read TO %I', current_user);
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'cannot grant to tracker_read; skipped';
END $$;

-- Progress samples written by the workers (at most one per worker every few
-- seconds) so that `tracker status` can tell events/s over the last minute
-- without scanning frame_events.
CREATE TABLE tracker_progress_samples (
    worker     text        NOT NULL,
    sampled_at timestamptz NOT NULL DEFAULT now(),
    position   bigint      NOT NULL,
    PRIMARY KEY (worker, sampled_at)
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tracker_read') THEN
        GRANT SELECT ON tracker_progress_samples TO tracker_read;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'cannot grant to tracker_read; skipped';
END $$;
