-- Runs last in CREATE EXTENSION: guards, reads in SQL, and pg_dump registration.

-- Direct writes are refused, superusers included: only the extension's own
-- functions write these tables. Statement-level triggers on every table and
-- every partition (a partition can be written directly).
DO $guards$
DECLARE
    target regclass;
BEGIN
    FOR target IN
        SELECT 'allsource.streams'::regclass
        UNION ALL SELECT 'allsource.event_ids'::regclass
        UNION ALL SELECT 'allsource.events'::regclass
        UNION ALL SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'allsource.events'::regclass
    LOOP
        EXECUTE format(
            'CREATE TRIGGER refuse_direct_write BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s '
            'FOR EACH STATEMENT EXECUTE FUNCTION allsource.refuse_direct_write()', target);
        PERFORM pg_catalog.pg_extension_config_dump(target, '');
    END LOOP;
END
$guards$;
SELECT pg_catalog.pg_extension_config_dump('allsource.event_position', '');
REVOKE ALL ON ALL TABLES IN SCHEMA allsource FROM PUBLIC;

CREATE FUNCTION allsource.partition_count() RETURNS int
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT count(*)::int FROM pg_catalog.pg_inherits WHERE inhparent = 'allsource.events'::regclass $$;
COMMENT ON FUNCTION allsource.partition_count() IS
    'Number of partitions of allsource.events, fixed by allsource.partitions at CREATE EXTENSION.';

CREATE FUNCTION allsource.stream_version(stream_id text) RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
BEGIN
    PERFORM allsource._check_stream_id(stream_version.stream_id);
    RETURN coalesce((SELECT s.version FROM allsource.streams s WHERE s.stream_id = stream_version.stream_id), 0);
END
$$;
COMMENT ON FUNCTION allsource.stream_version(text) IS
    'The last written version of the stream, 0 when it has no events.';

CREATE FUNCTION allsource.read_stream(
    stream_id text,
    from_version bigint DEFAULT 1,
    max_count int DEFAULT 1000,
    backward boolean DEFAULT false
) RETURNS SETOF allsource.events
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
DECLARE
    stream_partition int;
BEGIN
    PERFORM allsource._check_read_stream(read_stream.stream_id, read_stream.from_version, read_stream.max_count, read_stream.backward);
    SELECT s.partition_id INTO stream_partition
    FROM allsource.streams s
    WHERE s.stream_id = read_stream.stream_id AND s.deleted_at IS NULL;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- partition_id first: the scan touches one partition's index only.
    IF read_stream.backward THEN
        RETURN QUERY
            SELECT e.* FROM allsource.events e
            WHERE e.partition_id = stream_partition AND e.stream_id = read_stream.stream_id
              AND e.version <= read_stream.from_version
            ORDER BY e.version DESC LIMIT read_stream.max_count;
    ELSE
        RETURN QUERY
            SELECT e.* FROM allsource.events e
            WHERE e.partition_id = stream_partition AND e.stream_id = read_stream.stream_id
              AND e.version >= read_stream.from_version
            ORDER BY e.version LIMIT read_stream.max_count;
    END IF;
END
$$;
COMMENT ON FUNCTION allsource.read_stream(text, bigint, int, boolean) IS
    'Events of one stream: versions >= from_version ascending, or with backward => true versions <= from_version descending; at most max_count.';

CREATE FUNCTION allsource.partition_stats() RETURNS TABLE (
    partition_id int,
    stream_count bigint,
    event_count bigint,
    total_bytes bigint,
    last_position bigint
)
LANGUAGE sql STABLE
AS $$
    SELECT p.id,
           coalesce(s.stream_count, 0),
           coalesce(s.event_count, 0),
           pg_catalog.pg_total_relation_size(format('allsource.events_p%s', p.id)::regclass),
           (SELECT max(e.position) FROM allsource.events e WHERE e.partition_id = p.id)
    FROM generate_series(0, allsource.partition_count() - 1) AS p(id)
    LEFT JOIN (
        -- Versions are gapless, so a stream's version is its event count.
        SELECT st.partition_id, count(*) AS stream_count, sum(st.version)::bigint AS event_count
        FROM allsource.streams st GROUP BY st.partition_id
    ) s ON s.partition_id = p.id
    ORDER BY p.id
$$;
COMMENT ON FUNCTION allsource.partition_stats() IS
    'One row per partition, empty ones included: streams, events, bytes on disk (table and indexes), last position.';

CREATE FUNCTION allsource.verify_gapless(stream_id text) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $$
DECLARE
    stream_version bigint;
    event_count bigint;
    lowest bigint;
    highest bigint;
BEGIN
    PERFORM allsource._check_stream_id(verify_gapless.stream_id);
    SELECT s.version INTO stream_version FROM allsource.streams s WHERE s.stream_id = verify_gapless.stream_id;
    SELECT count(*), min(e.version), max(e.version) INTO event_count, lowest, highest
    FROM allsource.events e WHERE e.stream_id = verify_gapless.stream_id;
    -- Versions are unique per stream (an index says so), so n events spanning
    -- 1..n are exactly 1, 2, …, n.
    RETURN event_count = coalesce(stream_version, 0)
       AND (event_count = 0 OR (lowest = 1 AND highest = event_count));
END
$$;
COMMENT ON FUNCTION allsource.verify_gapless(text) IS
    'True when the stream''s events are exactly versions 1..its version (an unknown stream with no events is gapless).';
