-- 006: frame id prefix search (the web UI's search box and its "did you
-- mean" suggestions).
--
-- A btree on frame_id in text_pattern_ops orders ids byte by byte whatever the
-- database's collation, so every id starting with a prefix lies in one range
-- of it (`frame_id ~>=~ p AND frame_id ~<~ next(p)`) and an unknown id's
-- neighbours in that order are the ids sharing its longest prefix. The
-- default-collation index on frame_id cannot promise either under a
-- linguistic collation (en_US ignores '-' at the first level, for one). The
-- same index answers `frame_id = $1` as well.
--
-- Every generation of frame_metadata gets it: the existing ones here, the
-- ones a rebuild creates later through tracker_create_frames_generation,
-- which now adds it after creating the tables as 002 and 005 did.

ALTER FUNCTION tracker_create_frames_generation(integer) RENAME TO tracker_create_frames_generation_005;

CREATE FUNCTION tracker_create_frames_generation(g integer) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM tracker_create_frames_generation_005(g);
    PERFORM tracker_create_frame_id_prefix_index(g);
END
$fn$;

CREATE FUNCTION tracker_create_frame_id_prefix_index(g integer) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I (frame_id text_pattern_ops)',
                   'frame_metadata_g' || g || '_frame_prefix_idx', 'frame_metadata_g' || g);
END
$fn$;

DO $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT substring(table_name FROM '^frame_metadata_g([0-9]+)$')::integer AS g
             FROM tracker_partitioned_tables WHERE table_name ~ '^frame_metadata_g[0-9]+$'
    LOOP
        IF to_regclass(format('public.%I', 'frame_metadata_g' || t.g)) IS NOT NULL THEN
            PERFORM tracker_create_frame_id_prefix_index(t.g);
        END IF;
    END LOOP;
END $$;
