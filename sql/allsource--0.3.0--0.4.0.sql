-- AllSource 0.3.0 → 0.4.0. A released script is never edited: the next
-- change goes into the next script. (Not released yet: sql/releases.tsv has
-- no 0.4.0 line, so changes still go here.)
\echo Use "ALTER EXTENSION allsource UPDATE TO '0.4.0'" to load this file. \quit

-- Privileges (issue 16). Every function runs with search_path pinned to
-- pg_catalog, pg_temp and names what it calls with its schema; the reads run
-- as the owner and keep to the caller's tenant themselves; the background
-- workers write as the role allsource_worker; stats_reset() is the owner's.

ALTER FUNCTION allsource._check_stream_id(text) SET search_path TO pg_catalog, pg_temp;
ALTER FUNCTION allsource._check_read_stream(text, bigint, int, boolean) SET search_path TO pg_catalog, pg_temp;
ALTER FUNCTION allsource._check_read_all(bigint, int, int, int) SET search_path TO pg_catalog, pg_temp;
ALTER FUNCTION allsource._check_read_category(text, bigint, int, int, int) SET search_path TO pg_catalog, pg_temp;
ALTER FUNCTION allsource.enqueue(text, text, jsonb, jsonb, bigint, uuid) SET search_path TO pg_catalog, pg_temp;
ALTER FUNCTION allsource.await_ticket(bigint, int) SET search_path TO pg_catalog, pg_temp;
ALTER FUNCTION allsource._in_tenant(text) SET search_path TO pg_catalog, pg_temp;
ALTER FUNCTION allsource.partition_for(text, int) SET search_path TO pg_catalog, pg_temp;
ALTER FUNCTION allsource.stats() SET search_path TO pg_catalog, pg_temp;
ALTER FUNCTION allsource.stats_reset() SET search_path TO pg_catalog, pg_temp;
ALTER FUNCTION allsource.watermark() SET search_path TO pg_catalog, pg_temp;
ALTER FUNCTION allsource.inflight() SET search_path TO pg_catalog, pg_temp;
ALTER FUNCTION allsource.refuse_direct_write() SET search_path TO pg_catalog, pg_temp;

-- The session's tenant, written in Rust now: role-bound tenants (allsource.role_tenant).
CREATE OR REPLACE FUNCTION allsource.current_tenant() RETURNS text
STRICT STABLE PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'current_tenant_wrapper';
COMMENT ON FUNCTION allsource.current_tenant() IS
    'The session''s tenant (allsource.role_tenant of its role, else SET allsource.tenant), NULL without one: reads and writes are scoped to it.';

CREATE OR REPLACE FUNCTION allsource.partition_count() RETURNS int
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_catalog.count(*)::int FROM pg_catalog.pg_inherits WHERE inhparent = 'allsource.events'::regclass $$;

CREATE OR REPLACE FUNCTION allsource.stream_version(stream_id text) RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM allsource._check_stream_id(stream_version.stream_id);
    RETURN coalesce((SELECT s.version FROM allsource.streams s WHERE s.stream_id = stream_version.stream_id
                     AND s.tenant_id IS NOT DISTINCT FROM allsource.current_tenant()), 0);
END
$$;

CREATE OR REPLACE FUNCTION allsource.read_stream(
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

CREATE OR REPLACE FUNCTION allsource.partition_stats() RETURNS TABLE (
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

CREATE OR REPLACE FUNCTION allsource.verify_gapless(stream_id text) RETURNS boolean
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

CREATE OR REPLACE FUNCTION allsource._watermark_for_read(function_name text) RETURNS bigint
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

CREATE OR REPLACE FUNCTION allsource.read_all(
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

CREATE OR REPLACE FUNCTION allsource.read_category(
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

CREATE OR REPLACE FUNCTION allsource.load_snapshot(stream_id text) RETURNS TABLE (version bigint, state jsonb)
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

CREATE OR REPLACE FUNCTION allsource._await_ticket_if_issued(ticket bigint, timeout_ms int)
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

-- Reading is for readers and writers (the reads run as the owner).
REVOKE EXECUTE ON FUNCTION allsource.stream_version(text), allsource.read_stream(text, bigint, int, boolean),
    allsource.verify_gapless(text), allsource.read_all(bigint, int, text[], int),
    allsource.read_category(text, bigint, int, int, int), allsource.load_snapshot(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION allsource.stream_version(text), allsource.read_stream(text, bigint, int, boolean),
    allsource.verify_gapless(text), allsource.read_all(bigint, int, text[], int),
    allsource.read_category(text, bigint, int, int, int), allsource.load_snapshot(text)
TO allsource_reader, allsource_writer;

REVOKE EXECUTE ON FUNCTION allsource._await_ticket_if_issued(bigint, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION allsource._await_ticket_if_issued(bigint, int) TO allsource_writer;
REVOKE EXECUTE ON FUNCTION allsource.stats_reset() FROM PUBLIC;

DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'allsource_worker') THEN
        -- Another database's upgrade may create it at the same moment.
        BEGIN
            CREATE ROLE allsource_worker NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
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
-- The workers' appends (streams, events, ids; the row of a new stream they
-- refused goes again), the publisher's watermark.
GRANT SELECT, INSERT, UPDATE, DELETE ON allsource.streams TO allsource_worker;
GRANT SELECT, INSERT ON allsource.events, allsource.event_ids TO allsource_worker;
GRANT SELECT, UPDATE ON allsource.published_watermark TO allsource_worker;
GRANT USAGE, SELECT ON SEQUENCE allsource.event_position TO allsource_worker;
-- The workers append for every tenant.
CREATE POLICY worker_rows ON allsource.streams TO allsource_worker USING (true) WITH CHECK (true);
CREATE POLICY worker_rows ON allsource.events TO allsource_worker USING (true) WITH CHECK (true);

-- Ingest workers (issue 16, items 8 and 9): ingest_workers() also reports the
-- locks a worker gave up waiting for (allsource.ingest_lock_timeout_ms) and
-- who held the last one. New columns: DROP and CREATE.
DROP FUNCTION allsource.ingest_workers();
CREATE FUNCTION allsource.ingest_workers() RETURNS TABLE (
	"worker" INT,
	"pid" INT,
	"state" TEXT,
	"queued_events" bigint,
	"batches" bigint,
	"events" bigint,
	"last_batch_size" INT,
	"lock_timeouts" bigint,
	"blocked_by" INT,
	"blocked_by_xid" bigint,
	"blocked_at" timestamp with time zone
)
STRICT VOLATILE PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'ingest_workers_wrapper';
COMMENT ON FUNCTION allsource.ingest_workers() IS
    'What each ingest worker does: pid, state, events queued in its lane, batches and events written, last batch size, and the locks it gave up waiting for: how often, and the last holder (pid, or NULL for a prepared transaction; xid) and when.';

-- Data (issue 16, items 13-15). CREATE EXTENSION now refuses a database that
-- is not UTF8 (sql/schema.sql); an existing install in one cannot be repaired
-- by an update: say so. (A tenant that is not UTF-8 is refused by
-- current_tenant() above; the write guard lets a restore's COPY ... FROM
-- STDIN through, a change in Rust only.)
DO $encoding$
BEGIN
    IF pg_catalog.getdatabaseencoding() <> 'UTF8' THEN
        RAISE WARNING 'AllSource needs a UTF8 database: % is %', pg_catalog.current_database(), pg_catalog.getdatabaseencoding()
            USING DETAIL = 'Non-ASCII text may already be stored other than it was sent, and verify_all may fail.',
                  HINT = 'Move the store to a database created with ENCODING ''UTF8'' (README "Database encoding").';
    END IF;
END
$encoding$;

-- ===== Integrity (issue 16, items 5-7): tombstones sealed into the chain,
-- stream_head and verify_anchor, verify_all_tenants and allsource_auditor.
-- (Events written before 0.4.0 keep their format 1 checksums: verify reads
-- both formats, so nothing else is rewritten.)
ALTER TABLE allsource.streams ADD COLUMN tombstone_checksum bytea;
COMMENT ON TABLE allsource.streams IS
    'One row per stream: its version, last checksum, tenant and tombstone. Written by AllSource''s functions only.';
-- Seal the tombstones 0.3.0 wrote, as delete_stream now does: SHA-256 of
-- the tombstone's encoding (README, Integrity) ‖ the last checksum.
ALTER TABLE allsource.streams DISABLE TRIGGER refuse_direct_write;
UPDATE allsource.streams s SET tombstone_checksum = pg_catalog.sha256(
        '\x80'::bytea
        OPERATOR(pg_catalog.||) pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(s.stream_id, 'UTF8')))
        OPERATOR(pg_catalog.||) pg_catalog.convert_to(s.stream_id, 'UTF8')
        OPERATOR(pg_catalog.||) pg_catalog.int8send(s.version)
        OPERATOR(pg_catalog.||) CASE WHEN s.tenant_id IS NULL THEN '\x00'::bytea
             ELSE '\x01'::bytea OPERATOR(pg_catalog.||) pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(s.tenant_id, 'UTF8')))
                  OPERATOR(pg_catalog.||) pg_catalog.convert_to(s.tenant_id, 'UTF8') END
        OPERATOR(pg_catalog.||) pg_catalog.int8send((EXTRACT(epoch FROM s.deleted_at) OPERATOR(pg_catalog.*) 1000000)::bigint)
        OPERATOR(pg_catalog.||) CASE WHEN s.deleted_by IS NULL THEN '\x00'::bytea
             ELSE '\x01'::bytea OPERATOR(pg_catalog.||) pg_catalog.int4send(pg_catalog.octet_length(pg_catalog.convert_to(s.deleted_by, 'UTF8')))
                  OPERATOR(pg_catalog.||) pg_catalog.convert_to(s.deleted_by, 'UTF8') END
        OPERATOR(pg_catalog.||) coalesce(s.last_checksum, pg_catalog.decode(pg_catalog.repeat('00', 32), 'hex')))
WHERE s.deleted_at IS NOT NULL;
ALTER TABLE allsource.streams ENABLE TRIGGER refuse_direct_write;

DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'allsource_auditor') THEN
        BEGIN
            CREATE ROLE allsource_auditor NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
END
$roles$;
GRANT USAGE ON SCHEMA allsource TO allsource_auditor;

CREATE FUNCTION allsource."verify_all_tenants"() RETURNS TABLE (
	"tenant_id" TEXT,  /* Option < String > */
	"stream_id" TEXT,  /* Option < String > */
	"first_bad_version" bigint,  /* Option < i64 > */
	"problem" TEXT  /* Option < String > */
)
STRICT STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'verify_all_tenants_wrapper';

CREATE FUNCTION allsource."verify_anchor"(
	"stream_id" TEXT, /* Option < & str > */
	"version" bigint, /* Option < i64 > */
	"checksum" bytea /* :: std :: option :: Option < Vec < u8 > > */
) RETURNS TABLE (
	"ok" bool,  /* bool */
	"events_checked" bigint,  /* i64 */
	"first_bad_version" bigint,  /* Option < i64 > */
	"problem" TEXT  /* Option < String > */
)
STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'verify_anchor_wrapper';

REVOKE EXECUTE ON FUNCTION allsource.verify_anchor(text, bigint, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION allsource.verify_anchor(text, bigint, bytea) TO allsource_reader, allsource_writer;
REVOKE EXECUTE ON FUNCTION allsource.verify_all_tenants() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION allsource.verify_all_tenants() TO allsource_auditor;

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
COMMENT ON FUNCTION allsource.verify_all() IS
    'verify_stream over every stream of the session''s tenant, and the partitions and event id registry: one row per stream that does not hold (stream_id NULL for the store''s own parts).';
COMMENT ON FUNCTION allsource.verify_all_tenants() IS
    'verify_all over every tenant''s streams, with each failing stream''s tenant: for the extension''s owner and allsource_auditor.';
COMMENT ON FUNCTION allsource.verify_anchor(text, bigint, bytea) IS
    'verify_stream, and whether the stream still holds a head recorded earlier with stream_head (checksum at version): catches a cut-off tail or a removed tombstone.';
