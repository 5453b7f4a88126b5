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
        UNION ALL SELECT 'allsource.erased_events'::regclass
        UNION ALL SELECT 'allsource.snapshots'::regclass
        UNION ALL SELECT 'allsource.events'::regclass
        UNION ALL SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'allsource.events'::regclass
    LOOP
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER refuse_direct_write BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s '
            'FOR EACH STATEMENT EXECUTE FUNCTION allsource.refuse_direct_write()', target);
        PERFORM pg_catalog.pg_extension_config_dump(target, '');
    END LOOP;
END
$guards$;
SELECT pg_catalog.pg_extension_config_dump('allsource.event_position', '');
-- Guarded too, but not dumped: a restored primary publishes its own watermark.
CREATE TRIGGER refuse_direct_write BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON allsource.published_watermark
    FOR EACH STATEMENT EXECUTE FUNCTION allsource.refuse_direct_write();
REVOKE ALL ON ALL TABLES IN SCHEMA allsource FROM PUBLIC;

-- Row-level security: roles that are neither superusers nor the owner see
-- their tenant's rows only, also through direct SELECTs. (The functions run
-- as the owner and filter by tenant themselves, once per call rather than
-- once per row, for every role.)
ALTER TABLE allsource.streams ENABLE ROW LEVEL SECURITY;
ALTER TABLE allsource.events ENABLE ROW LEVEL SECURITY;
ALTER TABLE allsource.snapshots ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON allsource.streams USING (allsource._in_tenant(tenant_id));
CREATE POLICY tenant_rows ON allsource.events USING (allsource._in_tenant(tenant_id));
CREATE POLICY tenant_rows ON allsource.snapshots USING (allsource._in_tenant(tenant_id));

-- Roles: readers read, writers also write through the functions; neither
-- writes the tables directly. Created once per cluster, kept if they exist.
DO $roles$
DECLARE
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['allsource_reader', 'allsource_writer', 'allsource_worker', 'allsource_auditor'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = role_name) THEN
            -- Another database's CREATE EXTENSION may create it at the same moment.
            BEGIN
                EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', role_name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END
$roles$;
-- allsource_worker is what the background workers write as (not the
-- superuser they connect as): nobody may log in as it or be a member of it,
-- or they would hold its rights.
DO $worker_role$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.rolname = 'allsource_worker'
               AND (r.rolcanlogin OR r.rolsuper OR r.rolbypassrls))
       OR EXISTS (SELECT FROM pg_catalog.pg_auth_members m
                  WHERE m.roleid = 'allsource_worker'::pg_catalog.regrole) THEN
        RAISE EXCEPTION 'role "allsource_worker" can log in, is a superuser, bypasses row-level security or has members'
            USING ERRCODE = '42501',
                  DETAIL = 'AllSource''s background workers write as this role: whoever can act as it could write as they do.',
                  HINT = 'Drop the role (or make it NOLOGIN NOSUPERUSER NOBYPASSRLS without members), then CREATE EXTENSION allsource again.';
    END IF;
END
$worker_role$;
GRANT USAGE ON SCHEMA allsource TO allsource_reader, allsource_writer, allsource_worker;
GRANT SELECT ON allsource.streams, allsource.events, allsource.snapshots TO allsource_reader, allsource_writer;
-- watermark() reads the last position handed out (SELECT does not allow
-- nextval), and on a hot standby the published watermark.
GRANT SELECT ON SEQUENCE allsource.event_position TO allsource_reader, allsource_writer;
GRANT SELECT ON allsource.published_watermark TO allsource_reader, allsource_writer;
-- The workers' appends (streams, events, ids; the row of a new stream they
-- refused goes again), the publisher's watermark.
GRANT SELECT, INSERT, UPDATE, DELETE ON allsource.streams TO allsource_worker;
GRANT SELECT, INSERT ON allsource.events, allsource.event_ids TO allsource_worker;
GRANT SELECT, UPDATE ON allsource.published_watermark TO allsource_worker;
GRANT USAGE, SELECT ON SEQUENCE allsource.event_position TO allsource_worker;
-- The workers append for every tenant.
CREATE POLICY worker_rows ON allsource.streams TO allsource_worker USING (true) WITH CHECK (true);
CREATE POLICY worker_rows ON allsource.events TO allsource_worker USING (true) WITH CHECK (true);

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
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    stream_partition int;
BEGIN
    PERFORM allsource._check_read_stream(read_stream.stream_id, read_stream.from_version, read_stream.max_count, read_stream.backward);
    SELECT s.partition_id INTO stream_partition
    FROM allsource.streams s
    WHERE s.stream_id = read_stream.stream_id AND s.deleted_at IS NULL
      AND s.tenant_id IS NOT DISTINCT FROM allsource.current_tenant();
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

-- Reading is for readers and writers (the reads run as the owner).
REVOKE EXECUTE ON FUNCTION allsource.stream_version(text), allsource.read_stream(text, bigint, int, boolean),
    allsource.verify_gapless(text), allsource.read_all(bigint, int, text[], int),
    allsource.read_category(text, bigint, int, int, int), allsource.load_snapshot(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION allsource.stream_version(text), allsource.read_stream(text, bigint, int, boolean),
    allsource.verify_gapless(text), allsource.read_all(bigint, int, text[], int),
    allsource.read_category(text, bigint, int, int, int), allsource.load_snapshot(text)
TO allsource_reader, allsource_writer;

-- Writing is for writers: the functions that write run as the extension's
-- owner (SECURITY DEFINER, pinned search_path), so callers need no table
-- privileges, only these grants.
DO $grants$
DECLARE
    writes text := 'allsource.append(text, text, jsonb, jsonb, bigint, uuid), '
                   'allsource.append_batch(text, jsonb, bigint), '
                   'allsource.enqueue(text, text, jsonb, jsonb, bigint, uuid), '
                   'allsource.await_ticket(bigint, int), '
                   'allsource.delete_stream(text, boolean), '
                   'allsource.save_snapshot(text, bigint, jsonb)';
BEGIN
    EXECUTE pg_catalog.format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', writes);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO allsource_writer', writes);
END
$grants$;
-- Resetting the statistics is the owner's: it may grant it.
REVOKE EXECUTE ON FUNCTION allsource.stats_reset() FROM PUBLIC;
-- The trigger function is written in Rust, without pgrx's search_path attribute.
ALTER FUNCTION allsource.refuse_direct_write() SET search_path = pg_catalog, pg_temp;
-- Verification reads the erased events' digests: readers and writers only.
REVOKE EXECUTE ON FUNCTION allsource.verify_stream(text), allsource.verify_all(),
    allsource.verify_anchor(text, bigint, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION allsource.verify_stream(text), allsource.verify_all(),
    allsource.verify_anchor(text, bigint, bytea)
TO allsource_reader, allsource_writer;
-- Every tenant's streams at once: for auditors (and the owner) only.
REVOKE EXECUTE ON FUNCTION allsource.verify_all_tenants() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION allsource.verify_all_tenants() TO allsource_auditor;
GRANT USAGE ON SCHEMA allsource TO allsource_auditor;

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
REVOKE EXECUTE ON FUNCTION allsource.stream_head(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION allsource.stream_head(text) TO allsource_reader, allsource_writer;
COMMENT ON FUNCTION allsource.stream_head(text) IS
    'The stream''s version and head checksum (the last event''s, or the tombstone''s once deleted); no row for an unknown stream. Record it and check it later with verify_anchor.';

-- For a router over several nodes (sql/router.sql): a ticket does not say
-- which node issued it, so the router asks every node at once. A node that did
-- not issue it must answer without an error: PL/Proxy fails the whole call on
-- any node's error.
CREATE FUNCTION allsource._await_ticket_if_issued(ticket bigint, timeout_ms int)
RETURNS TABLE (status text, version bigint, "position" bigint, refusal text)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY SELECT a.status, a.version, a.position, NULL::text
                 FROM allsource.await_ticket(ticket, timeout_ms) a;
EXCEPTION WHEN invalid_parameter_value THEN
    -- Never issued, issued before the last restart, or no longer kept.
    RETURN QUERY SELECT NULL::text, NULL::bigint, NULL::bigint, SQLERRM;
END
$$;
REVOKE EXECUTE ON FUNCTION allsource._await_ticket_if_issued(bigint, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION allsource._await_ticket_if_issued(bigint, int) TO allsource_writer;
COMMENT ON FUNCTION allsource._await_ticket_if_issued(bigint, int) IS
    'await_ticket for the router (sql/router.sql): a ticket this server refuses (22023) gives a row with status NULL and the refusal instead of an error.';

-- What \df+ and \dd show for the functions written in Rust (the SQL ones
-- carry theirs where they are created above).
COMMENT ON FUNCTION allsource.append(text, text, jsonb, jsonb, bigint, uuid) IS
    'Appends one event to the stream when its version is expected_version (NULL: any; 0: no stream yet; -1: the stream exists); returns the event''s version and position. ZA001 on a wrong version.';
COMMENT ON FUNCTION allsource.append_batch(text, jsonb, bigint) IS
    'Appends a JSON array of events ({"type", "payload", "metadata", "id"}) to the stream at once, all or nothing; returns the first and last versions and positions.';
COMMENT ON FUNCTION allsource.enqueue(text, text, jsonb, jsonb, bigint, uuid) IS
    'Hands one event to the ingest workers, which append it in batches; returns a ticket for await_ticket. Nothing is written until the ticket says committed.';
COMMENT ON FUNCTION allsource.await_ticket(bigint, int) IS
    'Waits up to timeout_ms for an enqueued event: status committed (with version and position), conflict (with the stream''s version), rejected (a NOTICE gives the SQLSTATE), or pending.';
COMMENT ON FUNCTION allsource.delete_stream(text, boolean) IS
    'Deletes the stream: soft leaves a tombstone (no more appends, nothing to read); hard also erases payloads, metadata and the snapshot while the chain stays verifiable. Returns the last version.';
COMMENT ON FUNCTION allsource.save_snapshot(text, bigint, jsonb) IS
    'Stores the state of the stream at a version; keeps the highest version (returns false when a newer snapshot is stored).';
COMMENT ON FUNCTION allsource.watermark() IS
    'The highest position below which every event is committed or will never exist: readers never read past it. On a hot standby, the primary''s as last replayed (allsource.published_watermark).';
COMMENT ON FUNCTION allsource.inflight() IS
    'Transactions holding the watermark back: backend pid, the lowest position it has taken, and since when.';
COMMENT ON FUNCTION allsource.ingest_workers() IS
    'What each ingest worker does: pid, state, events queued in its lane, batches and events written, last batch size, and the locks it gave up waiting for: how often, and the last holder (pid, or NULL for a prepared transaction; xid) and when.';
COMMENT ON FUNCTION allsource.stats() IS
    'Counters and latency percentiles of appends, batches, the queue and conflicts since the server started or stats_reset().';
COMMENT ON FUNCTION allsource.stats_reset() IS
    'Sets the counters and latency histograms of stats() back to zero.';
COMMENT ON FUNCTION allsource.partition_for(text, int) IS
    'The partition a stream''s events live in (of partition_count partitions, this database''s by default).';
COMMENT ON FUNCTION allsource.verify_stream(text) IS
    'Recomputes the stream''s hash chain: ok, events checked, and the first version that does not match with what is wrong.';
COMMENT ON FUNCTION allsource.current_tenant() IS
    'The session''s tenant (allsource.role_tenant of its role, else SET allsource.tenant), NULL without one: reads and writes are scoped to it.';
COMMENT ON FUNCTION allsource.verify_all() IS
    'verify_stream over every stream of the session''s tenant, and the partitions and event id registry: one row per stream that does not hold (stream_id NULL for the store''s own parts).';
COMMENT ON FUNCTION allsource.verify_all_tenants() IS
    'verify_all over every tenant''s streams, with each failing stream''s tenant: for the extension''s owner and allsource_auditor.';
COMMENT ON FUNCTION allsource.verify_anchor(text, bigint, bytea) IS
    'verify_stream, and whether the stream still holds a head recorded earlier with stream_head (checksum at version): catches a cut-off tail or a removed tombstone.';
