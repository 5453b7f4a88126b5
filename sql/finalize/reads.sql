-- The reads written in SQL, and who may call them.

CREATE FUNCTION allsource.partition_count() RETURNS int
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_catalog.count(*)::int FROM pg_catalog.pg_inherits WHERE inhparent = 'allsource.events'::regclass $$;
COMMENT ON FUNCTION allsource.partition_count() IS
    'Number of partitions of allsource.events, fixed by allsource.partitions at CREATE EXTENSION.';

-- The reads run as the owner (no row-level security per row) and keep to
-- the caller's tenant, allsource.current_tenant(), which they read once.
CREATE FUNCTION allsource.stream_version(stream_id text) RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM allsource._check_stream_id(stream_version.stream_id);
    RETURN coalesce((SELECT s.version FROM allsource.streams s WHERE s.stream_id = stream_version.stream_id
                     AND s.tenant_id IS NOT DISTINCT FROM allsource.current_tenant()), 0);
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
-- Rust (src/sql/read.rs): it reads the stream's own partition with a
-- statement prepared once per backend, where a statement on
-- allsource.events locks all its partitions on every call.
LANGUAGE c STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'read_stream_rows';
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
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT p.id,
           coalesce(s.stream_count, 0),
           coalesce(s.event_count, 0),
           pg_catalog.pg_total_relation_size(pg_catalog.format('allsource.events_p%s', p.id)::regclass),
           (SELECT pg_catalog.max(e.position) FROM allsource.events e WHERE e.partition_id = p.id)
    FROM pg_catalog.generate_series(0, allsource.partition_count() - 1) AS p(id)
    LEFT JOIN (
        -- Versions are gapless, so a stream's version is its event count.
        SELECT st.partition_id, pg_catalog.count(*) AS stream_count, pg_catalog.sum(st.version)::bigint AS event_count
        FROM allsource.streams st GROUP BY st.partition_id
    ) s ON s.partition_id = p.id
    ORDER BY p.id
$$;
COMMENT ON FUNCTION allsource.partition_stats() IS
    'One row per partition, empty ones included: streams, events, bytes on disk (table and indexes), last position.';

CREATE FUNCTION allsource.verify_gapless(stream_id text) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tenant text := allsource.current_tenant();
    stream_version bigint;
    event_count bigint;
    lowest bigint;
    highest bigint;
BEGIN
    PERFORM allsource._check_stream_id(verify_gapless.stream_id);
    SELECT s.version INTO stream_version FROM allsource.streams s WHERE s.stream_id = verify_gapless.stream_id
        AND s.tenant_id IS NOT DISTINCT FROM tenant;
    SELECT pg_catalog.count(*), pg_catalog.min(e.version), pg_catalog.max(e.version) INTO event_count, lowest, highest
    FROM allsource.events e WHERE e.stream_id = verify_gapless.stream_id
        AND e.tenant_id IS NOT DISTINCT FROM tenant;
    -- Versions are unique per stream (an index says so), so n events spanning
    -- 1..n are exactly 1, 2, …, n.
    RETURN event_count = coalesce(stream_version, 0)
       AND (event_count = 0 OR (lowest = 1 AND highest = event_count));
END
$$;
COMMENT ON FUNCTION allsource.verify_gapless(text) IS
    'True when the stream''s events are exactly versions 1..its version (an unknown stream with no events is gapless).';

-- Categories: a stream "order-1" belongs to category "order". This index
-- serves read_category in position order; read_all uses the primary key.
CREATE INDEX events_category_position ON allsource.events (pg_catalog.split_part(stream_id, '-', 1), position);
-- Queries by type (read_query, append_if's conditions): an item with types
-- and no tags reads this index; an item with tags reads allsource.event_tags.
CREATE INDEX events_type_position ON allsource.events (event_type, position);

-- Reads in global order stop at the watermark, and read with a snapshot
-- taken after computing it (the next statement, under READ COMMITTED).
-- REPEATABLE READ and SERIALIZABLE keep the transaction's first snapshot,
-- older than the watermark: events below it could be missing from that
-- snapshot and be skipped for ever, so those levels are refused.
CREATE FUNCTION allsource._watermark_for_read(function_name text) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_catalog.current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION '% needs READ COMMITTED, not %', function_name, pg_catalog.upper(pg_catalog.current_setting('transaction_isolation'))
            USING ERRCODE = '0A000',
                  DETAIL = 'Under this isolation level the transaction''s snapshot predates the watermark, so events below it could be invisible and skipped.',
                  HINT = 'Read the global order in a READ COMMITTED transaction (the default).';
    END IF;
    RETURN allsource.watermark();
END
$$;

-- A tenant's events, or the events without a tenant: two statements, so
-- each has the estimate of its own plain condition (IS NULL, or =).
CREATE FUNCTION allsource.read_all(
    after_position bigint DEFAULT 0,
    max_count int DEFAULT 1000,
    event_types text[] DEFAULT NULL,
    partition_id int DEFAULT NULL
) RETURNS SETOF allsource.events
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    upto bigint;
    tenant text := allsource.current_tenant();
BEGIN
    PERFORM allsource._check_read_all(read_all.after_position, read_all.max_count, read_all.partition_id, allsource.partition_count());
    upto := allsource._watermark_for_read('allsource.read_all');
    -- Separate statements rather than "partition_id IS NULL OR …": PL/pgSQL's
    -- generic plan can prune partitions only on a plain equality.
    IF read_all.partition_id IS NULL AND tenant IS NULL THEN
        RETURN QUERY
            SELECT e.* FROM allsource.events e
            WHERE e.position > read_all.after_position AND e.position <= upto
              AND (read_all.event_types IS NULL OR e.event_type = ANY (read_all.event_types))
              AND e.tenant_id IS NULL
            ORDER BY e.position LIMIT read_all.max_count;
    ELSIF read_all.partition_id IS NULL THEN
        RETURN QUERY
            SELECT e.* FROM allsource.events e
            WHERE e.position > read_all.after_position AND e.position <= upto
              AND (read_all.event_types IS NULL OR e.event_type = ANY (read_all.event_types))
              AND e.tenant_id = tenant
            ORDER BY e.position LIMIT read_all.max_count;
    ELSIF tenant IS NULL THEN
        RETURN QUERY
            SELECT e.* FROM allsource.events e
            WHERE e.partition_id = read_all.partition_id
              AND e.position > read_all.after_position AND e.position <= upto
              AND (read_all.event_types IS NULL OR e.event_type = ANY (read_all.event_types))
              AND e.tenant_id IS NULL
            ORDER BY e.position LIMIT read_all.max_count;
    ELSE
        RETURN QUERY
            SELECT e.* FROM allsource.events e
            WHERE e.partition_id = read_all.partition_id
              AND e.position > read_all.after_position AND e.position <= upto
              AND (read_all.event_types IS NULL OR e.event_type = ANY (read_all.event_types))
              AND e.tenant_id = tenant
            ORDER BY e.position LIMIT read_all.max_count;
    END IF;
END
$$;
COMMENT ON FUNCTION allsource.read_all(bigint, int, text[], int) IS
    'Events after after_position in position order, never past the watermark; optionally of some types or one partition.';

-- The events matching a query (dynamic consistency boundaries), a tenant's
-- own, in position order up to the watermark: _query_positions finds them
-- (with a statement prepared once per query shape), this reads their rows.
CREATE FUNCTION allsource.read_query(
    query jsonb DEFAULT NULL,
    after_position bigint DEFAULT 0,
    max_count int DEFAULT 1000
) RETURNS SETOF allsource.events
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
-- The lookups' estimate (every partition for every row) is far above what
-- they cost, and would have JIT compile them on every call.
SET jit = off
AS $$
DECLARE
    upto bigint;
BEGIN
    PERFORM allsource._check_read_all(read_query.after_position, read_query.max_count, NULL, allsource.partition_count());
    upto := allsource._watermark_for_read('allsource.read_query');
    -- OFFSET 0: one primary key lookup per position, in the one partition
    -- it names, rather than a join that reads every partition.
    RETURN QUERY
        SELECT e.* FROM allsource._query_positions(read_query.query, read_query.after_position, upto, read_query.max_count) p,
        LATERAL (SELECT r.* FROM allsource.events r
                 WHERE r.partition_id OPERATOR(pg_catalog.=) p.partition_id
                   AND r.position OPERATOR(pg_catalog.=) p.position OFFSET 0) e
        ORDER BY p.position;
END
$$;
COMMENT ON FUNCTION allsource.read_query(jsonb, bigint, int) IS
    'Events matching a query ([{"types": [...], "tags": [...]}, ...]; NULL or [] for every event) after after_position, in position order, never past the watermark.';
REVOKE EXECUTE ON FUNCTION allsource._query_positions(jsonb, bigint, bigint, int) FROM PUBLIC;

CREATE FUNCTION allsource.read_category(
    category text,
    after_position bigint DEFAULT 0,
    max_count int DEFAULT 1000,
    consumer_group_member int DEFAULT NULL,
    consumer_group_size int DEFAULT NULL
) RETURNS SETOF allsource.events
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    upto bigint;
    tenant text := allsource.current_tenant();
BEGIN
    PERFORM allsource._check_read_category(read_category.category, read_category.after_position, read_category.max_count,
                                           read_category.consumer_group_member, read_category.consumer_group_size);
    upto := allsource._watermark_for_read('allsource.read_category');
    IF tenant IS NULL THEN
        RETURN QUERY
            SELECT e.* FROM allsource.events e
            WHERE pg_catalog.split_part(e.stream_id, '-', 1) = pg_catalog.split_part(read_category.category, '-', 1)
              AND (e.stream_id = read_category.category OR pg_catalog.starts_with(e.stream_id, read_category.category || '-'))
              AND e.position > read_category.after_position AND e.position <= upto
              AND e.tenant_id IS NULL
              AND (read_category.consumer_group_size IS NULL
                   OR allsource.partition_for(e.stream_id, read_category.consumer_group_size) = read_category.consumer_group_member)
            ORDER BY e.position LIMIT read_category.max_count;
    ELSE
        RETURN QUERY
            SELECT e.* FROM allsource.events e
            WHERE pg_catalog.split_part(e.stream_id, '-', 1) = pg_catalog.split_part(read_category.category, '-', 1)
              AND (e.stream_id = read_category.category OR pg_catalog.starts_with(e.stream_id, read_category.category || '-'))
              AND e.position > read_category.after_position AND e.position <= upto
              AND e.tenant_id = tenant
              AND (read_category.consumer_group_size IS NULL
                   OR allsource.partition_for(e.stream_id, read_category.consumer_group_size) = read_category.consumer_group_member)
            ORDER BY e.position LIMIT read_category.max_count;
    END IF;
END
$$;
COMMENT ON FUNCTION allsource.read_category(text, bigint, int, int, int) IS
    'Events of the streams named category or category-…, in position order, never past the watermark; with a consumer group, only the streams of that member.';

CREATE FUNCTION allsource.load_snapshot(stream_id text) RETURNS TABLE (version bigint, state jsonb)
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM allsource._check_stream_id(load_snapshot.stream_id);
    RETURN QUERY
        SELECT s.version, s.state FROM allsource.snapshots s
        WHERE s.stream_id = load_snapshot.stream_id
          AND s.tenant_id IS NOT DISTINCT FROM allsource.current_tenant();
END
$$;
COMMENT ON FUNCTION allsource.load_snapshot(text) IS
    'The stream''s latest snapshot: its version and state; no row when there is none.';

-- A stream's head: what to record to detect later that its tail was cut
-- off or its tombstone removed (verify_anchor checks a recorded head).
CREATE FUNCTION allsource.stream_head(stream_id text) RETURNS TABLE (version bigint, checksum bytea)
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM allsource._check_stream_id(stream_head.stream_id);
    RETURN QUERY
        SELECT s.version, coalesce(s.tombstone_checksum, s.last_checksum) FROM allsource.streams s
        WHERE s.stream_id OPERATOR(pg_catalog.=) stream_head.stream_id
          AND s.tenant_id IS NOT DISTINCT FROM allsource.current_tenant();
END
$$;
COMMENT ON FUNCTION allsource.stream_head(text) IS
    'The stream''s version and head checksum (the last event''s, or the tombstone''s once deleted); no row for an unknown stream. Record it and check it later with verify_anchor.';

-- Reading is for readers and writers (the reads run as the owner).
REVOKE EXECUTE ON FUNCTION allsource.stream_version(text), allsource.read_stream(text, bigint, int, boolean),
    allsource.verify_gapless(text), allsource.read_all(bigint, int, text[], int),
    allsource.read_category(text, bigint, int, int, int), allsource.load_snapshot(text),
    allsource.read_query(jsonb, bigint, int), allsource.query_head(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION allsource.stream_version(text), allsource.read_stream(text, bigint, int, boolean),
    allsource.verify_gapless(text), allsource.read_all(bigint, int, text[], int),
    allsource.read_category(text, bigint, int, int, int), allsource.load_snapshot(text),
    allsource.read_query(jsonb, bigint, int), allsource.query_head(jsonb)
TO allsource_reader, allsource_writer;
REVOKE EXECUTE ON FUNCTION allsource.stream_head(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION allsource.stream_head(text) TO allsource_reader, allsource_writer;
