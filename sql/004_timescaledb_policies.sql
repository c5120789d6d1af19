-- 004: TimescaleDB policies: compression of old frame_events chunks, and
-- retention of every time-partitioned table.
--
-- Plain PostgreSQL: nothing at all (retention there is `tracker retention
-- --older-than AGE`, run from cron or a scheduled job). Every TimescaleDB-only
-- statement below runs through EXECUTE, so plain PostgreSQL never parses it.
--
-- Defaults, per deployment changeable at run time without a new migration
-- (SELECT alter_job(id, config => ...) / remove_compression_policy(...)):
--
-- * Compression: frame_events chunks (one UTC day each) whose range ended
--   more than 7 days ago, segmented by camera_id (the per-camera windows) and
--   ordered by frame_timestamp (so a frame's events lie together: a frame is
--   one capture time of one camera), then event_id: the primary key's columns
--   are then all segment-by or order-by columns, which is what TimescaleDB
--   wants (it warns otherwise) to check the key of a late or redelivered event
--   against a compressed chunk without decompressing all of it. Such an event
--   still goes in (INSERT .. ON CONFLICT DO NOTHING works on compressed
--   chunks), only slower. Recent TimescaleDB (2.23 in tests/timescale) also
--   keeps bloom filters per compressed batch on the indexed columns
--   (frame_id, trace_id), so a journey skips most batches. The projection tables are not compressed: a
--   frame's row is updated as its events arrive, and the rollups are small.
--
-- * Retention: 90 days, as one job (`tracker_retention_job`) that calls
--   tracker_drop_partitions_older_than (003), the function `tracker retention`
--   calls. Not one add_retention_policy per table: those are separate jobs in
--   separate transactions, so for a while a day could be gone from
--   frame_events and still present in frame_metadata (or the reverse), and the
--   generation tables that a projection rebuild creates later would have no
--   policy at all. The job walks tracker_partitioned_tables at every run, drops
--   whole UTC days of every table in one transaction, and so keeps the
--   projections consistent with the events that are left.

DO $do$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN;
    END IF;

    EXECUTE $sql$
        ALTER TABLE frame_events SET (
            timescaledb.compress,
            timescaledb.compress_segmentby = 'camera_id',
            timescaledb.compress_orderby = 'frame_timestamp, event_id')
    $sql$;
    EXECUTE $sql$
        SELECT add_compression_policy('frame_events', INTERVAL '7 days', if_not_exists => true)
    $sql$;

    EXECUTE $sql$
        CREATE PROCEDURE tracker_retention_job(job_id integer, config jsonb)
        LANGUAGE plpgsql AS $fn$
        DECLARE
            drop_after interval := coalesce((config ->> 'drop_after')::interval, INTERVAL '90 days');
            n integer;
        BEGIN
            SELECT count(*) INTO n
            FROM public.tracker_drop_partitions_older_than(now() - drop_after);
            RAISE LOG 'tracker_retention_job %: dropped % chunk(s) older than %', job_id, n, drop_after;
        END
        $fn$
    $sql$;
    EXECUTE $sql$
        COMMENT ON PROCEDURE tracker_retention_job(integer, jsonb) IS
          'TimescaleDB job: drops whole UTC days older than config.drop_after (default 90 days) of every table in tracker_partitioned_tables, in one transaction.'
    $sql$;
    EXECUTE $sql$
        SELECT add_job('tracker_retention_job', INTERVAL '1 day',
                       config => '{"drop_after": "90 days"}'::jsonb)
    $sql$;
END
$do$;
