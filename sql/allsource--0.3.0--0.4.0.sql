-- AllSource 0.3.0 → 0.4.0. A released script is never edited: the next
-- change goes into the next script. (Not released yet: sql/releases.tsv has
-- no 0.4.0 line, so changes still go here.)
\echo Use "ALTER EXTENSION allsource UPDATE TO '0.4.0'" to load this file. \quit

-- Privileges (issue 16). Every function runs with search_path pinned to
-- pg_catalog, pg_temp and names what it calls with its schema; the reads run
-- as the owner and keep to the caller's tenant themselves; the background
-- workers write as the role allsource_worker; stats_reset() is the owner's.

ALTER FUNCTION allsource._check_stream_id(text) SET search_path TO pg_catalog, pg_temp;
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
-- Rust (src/sql/read.rs): it reads the stream's own partition with a
-- statement prepared once per backend, where a statement on
-- allsource.events locks all its partitions on every call.
LANGUAGE c STABLE PARALLEL SAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'read_stream_rows';
DROP FUNCTION allsource._check_read_stream(text, bigint, int, boolean);

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

-- ===== Subscriptions (issue 18) (issue 18): tables, the members' leases and the
-- handler call (Rust), and the functions of sql/finalize/subscriptions.sql.
-- Subscriptions: named consumers of the global log (create_subscription).
-- Their rows are dumped with the extension; the functions of
-- sql/finalize/subscriptions.sql write them.
CREATE SEQUENCE allsource.subscription_id;
CREATE TABLE allsource.subscriptions (
    -- A subscription dropped and created again under its name is another.
    subscription_id bigint      PRIMARY KEY DEFAULT nextval('allsource.subscription_id'),
    name            text        COLLATE "C" NOT NULL,
    tenant_id       text,
    categories      text[],
    event_types     text[],
    start_after     bigint      NOT NULL,
    members         int         NOT NULL,
    handler         regprocedure,
    max_attempts    int         NOT NULL,
    -- The role that created it: a handler runs as that role.
    created_by      text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE allsource.subscriptions IS
    'Every subscription: its filters, members, handler and owner (create_subscription).';
-- A name is unique within its tenant (and among subscriptions without one).
CREATE UNIQUE INDEX subscriptions_name ON allsource.subscriptions (COALESCE(tenant_id, ''), name);

-- A member's checkpoint: every event of the member at or below it is done.
CREATE TABLE allsource.subscription_members (
    subscription_id bigint NOT NULL,
    member     int         NOT NULL,
    checkpoint bigint      NOT NULL,
    acked_at   timestamptz,
    last_error text,
    PRIMARY KEY (subscription_id, member)
);
COMMENT ON TABLE allsource.subscription_members IS
    'Each subscription member''s checkpoint (moved by ack in the caller''s transaction) and last error.';

-- Events of a member that failed (nack) and are not parked, and parked events
-- put back (retry_parked): both are delivered before anything newer.
CREATE TABLE allsource.subscription_attempts (
    subscription_id bigint  NOT NULL,
    position    bigint      NOT NULL,
    member      int         NOT NULL,
    attempts    int         NOT NULL,
    last_reason text,
    retry_after timestamptz,
    PRIMARY KEY (subscription_id, position)
);
COMMENT ON TABLE allsource.subscription_attempts IS
    'Failed attempts at events not parked yet, and parked events put back by retry_parked.';

-- Events that failed max_attempts times: kept with their reason, never dropped.
CREATE TABLE allsource.parked_events (
    subscription_id bigint  NOT NULL,
    position    bigint      NOT NULL,
    member      int         NOT NULL,
    attempts    int         NOT NULL,
    last_reason text,
    parked_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscription_id, position)
);
COMMENT ON TABLE allsource.parked_events IS
    'Events a subscription member gave up on after max_attempts (nack), until retry_parked.';
-- As a fresh install's REVOKE ALL ON ALL TABLES leaves them: the owner's alone.
REVOKE ALL ON allsource.subscriptions, allsource.subscription_members, allsource.subscription_attempts,
    allsource.parked_events FROM PUBLIC;

CREATE FUNCTION allsource."_call_handler"(
	"handler" oid, /* pg_sys :: Oid */
	"owner" TEXT, /* & str */
	"events" anyelement /* AnyElement */
) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'call_handler_wrapper';
CREATE FUNCTION allsource."_calling_role"() RETURNS TEXT /* String */
STRICT STABLE PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_calling_role_wrapper';
CREATE FUNCTION allsource."_check_subscription"(
	"name" TEXT, /* Option < & str > */
	"categories" TEXT[], /* :: std :: option :: Option < Vec < Option < String > > > */
	"event_types" TEXT[], /* :: std :: option :: Option < Vec < Option < String > > > */
	"start_after" bigint, /* Option < i64 > */
	"members" INT, /* Option < i32 > */
	"max_attempts" INT /* Option < i32 > */
) RETURNS void
IMMUTABLE PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_check_subscription_wrapper';
CREATE FUNCTION allsource."_count_acked"(
	"subscription_id" bigint, /* i64 */
	"member" INT, /* i32 */
	"upto" bigint /* i64 */
) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'count_acked_wrapper';
CREATE FUNCTION allsource."_count_delivered"(
	"subscription_id" bigint, /* i64 */
	"member" INT, /* i32 */
	"positions" bigint[] /* Vec < i64 > */
) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'count_delivered_wrapper';
CREATE FUNCTION allsource."_count_parked"(
	"subscription_id" bigint, /* i64 */
	"member" INT, /* i32 */
	"position" bigint /* i64 */
) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'count_parked_wrapper';
CREATE FUNCTION allsource."_hold_member"(
	"subscription_id" bigint, /* i64 */
	"name" TEXT, /* & str */
	"member" INT /* i32 */
) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'hold_member_wrapper';
CREATE FUNCTION allsource."_member_holder"(
	"subscription_id" bigint, /* i64 */
	"member" INT /* i32 */
) RETURNS INT /* Option < i32 > */
STRICT VOLATILE PARALLEL SAFE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'member_holder_wrapper';
CREATE FUNCTION allsource."_release_member"(
	"subscription_id" bigint, /* i64 */
	"member" INT /* i32 */
) RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'release_member_wrapper';

-- stats() counts subscriptions: delivered, acked, parked. New columns: DROP and CREATE.
DROP FUNCTION allsource.stats();
CREATE FUNCTION allsource."stats"() RETURNS TABLE (
	"events_appended" bigint,  /* i64 */
	"appends" bigint,  /* i64 */
	"batches" bigint,  /* i64 */
	"enqueued" bigint,  /* i64 */
	"conflicts" bigint,  /* i64 */
	"rejects" bigint,  /* i64 */
	"queue_depth" bigint,  /* i64 */
	"worker_commits" bigint,  /* i64 */
	"workers_running" INT,  /* i32 */
	"append_p50_us" bigint,  /* Option < i64 > */
	"append_p99_us" bigint,  /* Option < i64 > */
	"ticket_p50_us" bigint,  /* Option < i64 > */
	"ticket_p99_us" bigint,  /* Option < i64 > */
	"delivered" bigint,  /* i64 */
	"acked" bigint,  /* i64 */
	"parked" bigint,  /* i64 */
	"since" timestamp with time zone  /* TimestampWithTimeZone */
)
STRICT VOLATILE PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'stats_wrapper';
COMMENT ON FUNCTION allsource.stats() IS
    'Counters and latency percentiles of appends, batches, the queue, conflicts and subscriptions (delivered, acked, parked) since the server started or stats_reset().';

-- Subscriptions: named consumers of the global log with server-side
-- checkpoints (tables in sql/schema.sql; the members' leases are in Rust,
-- src/sql/subscription/lease.rs). Every function runs as the extension's
-- owner and keeps to the caller's tenant.

-- Refuses on a hot standby: consuming writes checkpoints.
CREATE FUNCTION allsource._refuse_on_standby(function_name text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_catalog.pg_is_in_recovery() THEN
        RAISE EXCEPTION '% cannot run on a hot standby', function_name
            USING ERRCODE = '25006',
                  DETAIL = 'This server replays the primary''s WAL and is read-only.',
                  HINT = 'Consume on the primary; allsource.subscriptions() works here.';
    END IF;
END
$$;

-- The caller's tenant's subscription of that name; 42704 if there is none.
CREATE FUNCTION allsource._subscription(name text) RETURNS allsource.subscriptions
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found_subscription allsource.subscriptions;
    tenant text := allsource.current_tenant();
BEGIN
    IF _subscription.name IS NULL THEN
        RAISE EXCEPTION 'invalid argument "subscription": must not be null' USING ERRCODE = '22023';
    END IF;
    SELECT s.* INTO found_subscription FROM allsource.subscriptions s
    WHERE s.name = _subscription.name AND s.tenant_id IS NOT DISTINCT FROM tenant;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subscription "%" does not exist', _subscription.name
            USING ERRCODE = '42704',
                  HINT = 'allsource.subscriptions() lists the subscriptions; allsource.create_subscription() creates one.';
    END IF;
    RETURN found_subscription;
END
$$;

-- 22023 unless member is one of the subscription's; 55000 for a handler
-- subscription, which only the workers consume.
CREATE FUNCTION allsource._check_member(subscription allsource.subscriptions, member int) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF member IS NULL OR member < 0 OR member >= (subscription).members THEN
        RAISE EXCEPTION 'invalid argument "member": must be between 0 and % (subscription "%" has % members), not %',
                (subscription).members - 1, (subscription).name, (subscription).members, coalesce(member::text, 'null')
            USING ERRCODE = '22023';
    END IF;
    IF (subscription).handler IS NOT NULL THEN
        RAISE EXCEPTION 'subscription "%" has a handler: the subscription workers consume it', (subscription).name
            USING ERRCODE = '55000',
                  HINT = 'Create a subscription without a handler to consume it with receive and ack.';
    END IF;
END
$$;

-- Whether the event is one the subscription's member delivers: its tenant,
-- categories (read_category's rule), types and member (the consumer-group hash).
CREATE FUNCTION allsource._delivers(subscription allsource.subscriptions, member int, event allsource.events) RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT (event).tenant_id IS NOT DISTINCT FROM (subscription).tenant_id
       AND ((subscription).categories IS NULL
            OR EXISTS (SELECT FROM pg_catalog.unnest((subscription).categories) AS c (category)
                       WHERE (event).stream_id = c.category OR pg_catalog.starts_with((event).stream_id, c.category || '-')))
       AND ((subscription).event_types IS NULL OR (event).event_type = ANY ((subscription).event_types))
       AND ((subscription).members = 1 OR allsource.partition_for((event).stream_id, (subscription).members) = member)
$$;

CREATE FUNCTION allsource.create_subscription(
    name text,
    categories text[] DEFAULT NULL,
    event_types text[] DEFAULT NULL,
    start_after bigint DEFAULT 0,
    members int DEFAULT 1,
    handler regprocedure DEFAULT NULL,
    max_attempts int DEFAULT 5
) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tenant text := allsource.current_tenant();
    created bigint;
    creator text := allsource._calling_role();
BEGIN
    PERFORM allsource._refuse_on_standby('allsource.create_subscription()');
    PERFORM allsource._check_subscription(create_subscription.name, create_subscription.categories,
        create_subscription.event_types, create_subscription.start_after, create_subscription.members,
        create_subscription.max_attempts);
    IF create_subscription.handler IS NOT NULL THEN
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_proc p
                       WHERE p.oid = create_subscription.handler AND p.prokind = 'f' AND p.pronargs = 1 AND NOT p.proretset
                         AND p.proargtypes[0] IN ('allsource.events'::pg_catalog.regtype, 'allsource.events[]'::pg_catalog.regtype)) THEN
            RAISE EXCEPTION 'invalid argument "handler": % must be a function taking one allsource.events row, or an array of them', create_subscription.handler
                USING ERRCODE = '22023',
                      HINT = 'A handler taking allsource.events[] is called once per batch with its events in order.';
        END IF;
        IF NOT pg_catalog.has_function_privilege(creator, create_subscription.handler, 'EXECUTE') THEN
            RAISE EXCEPTION 'permission denied for function %', create_subscription.handler
                USING ERRCODE = '42501',
                      DETAIL = 'A handler runs as the role that created the subscription.';
        END IF;
    END IF;
    IF EXISTS (SELECT FROM allsource.subscriptions s
               WHERE s.name = create_subscription.name AND s.tenant_id IS NOT DISTINCT FROM tenant) THEN
        RAISE EXCEPTION 'subscription "%" already exists', create_subscription.name
            USING ERRCODE = '42710',
                  HINT = 'Drop it first (allsource.drop_subscription()), or choose another name.';
    END IF;
    INSERT INTO allsource.subscriptions AS s (name, tenant_id, categories, event_types, start_after,
                                              members, handler, max_attempts, created_by)
    VALUES (create_subscription.name, tenant, create_subscription.categories, create_subscription.event_types,
            create_subscription.start_after, create_subscription.members, create_subscription.handler,
            create_subscription.max_attempts, creator)
    RETURNING s.subscription_id INTO created;
    INSERT INTO allsource.subscription_members (subscription_id, member, checkpoint)
    SELECT created, m, create_subscription.start_after
    FROM pg_catalog.generate_series(0, create_subscription.members - 1) AS m;
END
$$;

CREATE FUNCTION allsource.drop_subscription(name text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    dropped allsource.subscriptions;
BEGIN
    PERFORM allsource._refuse_on_standby('allsource.drop_subscription()');
    dropped := allsource._subscription(drop_subscription.name);
    DELETE FROM allsource.parked_events p WHERE p.subscription_id = dropped.subscription_id;
    DELETE FROM allsource.subscription_attempts a WHERE a.subscription_id = dropped.subscription_id;
    DELETE FROM allsource.subscription_members m WHERE m.subscription_id = dropped.subscription_id;
    DELETE FROM allsource.subscriptions s WHERE s.subscription_id = dropped.subscription_id;
END
$$;

-- The member's pending events, at most max_count: first those put back in
-- front (failed and not parked, or retried after parking) at or below its
-- checkpoint done, then the events after it up to the watermark upto,
-- parked ones left out. What receive returns and the workers handle.
CREATE FUNCTION allsource._pending(s allsource.subscriptions, member int, max_count int, done bigint, upto bigint)
RETURNS SETOF allsource.events
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
-- Planning for 32 partitions costs more than fetching 1,000 events; the plan
-- (the position index in order) is the same for any argument.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    returned bigint;
BEGIN
    RETURN QUERY
        SELECT e.* FROM allsource.subscription_attempts a
        JOIN allsource.events e ON e.position = a.position
        WHERE a.subscription_id = s.subscription_id AND a.member = _pending.member AND a.position <= done
        ORDER BY a.position LIMIT max_count;
    GET DIAGNOSTICS returned = ROW_COUNT;
    -- Two statements for the tenant, as in read_all: "IS NOT DISTINCT FROM"
    -- has no estimate, and the plan that misjudges it sorts the whole backlog.
    IF returned < max_count AND s.tenant_id IS NULL THEN
        RETURN QUERY
            SELECT e.* FROM allsource.events e
            WHERE e.position > done AND e.position <= upto AND e.tenant_id IS NULL
              -- _delivers, written out: a function with SET search_path is
              -- not inlined, and a call per row costs more than the scan.
              AND (s.categories IS NULL
                   OR EXISTS (SELECT FROM pg_catalog.unnest(s.categories) AS c (category)
                              WHERE e.stream_id = c.category OR pg_catalog.starts_with(e.stream_id, c.category || '-')))
              AND (s.event_types IS NULL OR e.event_type = ANY (s.event_types))
              AND (s.members = 1 OR allsource.partition_for(e.stream_id, s.members) = _pending.member)
              AND NOT EXISTS (SELECT FROM allsource.parked_events p
                              WHERE p.subscription_id = s.subscription_id AND p.position = e.position)
            ORDER BY e.position LIMIT max_count - returned;
    ELSIF returned < max_count THEN
        RETURN QUERY
            SELECT e.* FROM allsource.events e
            WHERE e.position > done AND e.position <= upto AND e.tenant_id = s.tenant_id
              AND (s.categories IS NULL
                   OR EXISTS (SELECT FROM pg_catalog.unnest(s.categories) AS c (category)
                              WHERE e.stream_id = c.category OR pg_catalog.starts_with(e.stream_id, c.category || '-')))
              AND (s.event_types IS NULL OR e.event_type = ANY (s.event_types))
              AND (s.members = 1 OR allsource.partition_for(e.stream_id, s.members) = _pending.member)
              AND NOT EXISTS (SELECT FROM allsource.parked_events p
                              WHERE p.subscription_id = s.subscription_id AND p.position = e.position)
            ORDER BY e.position LIMIT max_count - returned;
    END IF;
END
$$;

-- The member's next events (see _pending). The member's row is locked until
-- the caller's transaction ends: a session that took the lease over waits
-- for an ack still in flight, and reads the checkpoint it set.
CREATE FUNCTION allsource.receive(subscription text, max_count int DEFAULT 100, member int DEFAULT 0)
RETURNS SETOF allsource.events
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s allsource.subscriptions;
    done bigint;
    upto bigint;
    events allsource.events[];
BEGIN
    PERFORM allsource._refuse_on_standby('allsource.receive()');
    s := allsource._subscription(receive.subscription);
    PERFORM allsource._check_member(s, receive.member);
    IF receive.max_count IS NULL OR receive.max_count < 0 THEN
        RAISE EXCEPTION 'invalid argument "max_count": must be 0 or more, not %', coalesce(receive.max_count::text, 'null')
            USING ERRCODE = '22023';
    END IF;
    PERFORM allsource._hold_member(s.subscription_id, s.name, receive.member);
    upto := allsource._watermark_for_read('allsource.receive');
    SELECT m.checkpoint INTO done FROM allsource.subscription_members m
    WHERE m.subscription_id = s.subscription_id AND m.member = receive.member FOR UPDATE;
    events := ARRAY(SELECT p FROM allsource._pending(s, receive.member, receive.max_count, done, upto) p);
    PERFORM allsource._count_delivered(s.subscription_id, receive.member,
                                       ARRAY(SELECT e.position FROM pg_catalog.unnest(events) e));
    RETURN QUERY SELECT * FROM pg_catalog.unnest(events);
END
$$;

-- Every event of the member up to and including position is done: the
-- checkpoint moves there (never back), in the caller's transaction.
CREATE FUNCTION allsource.ack(subscription text, "position" bigint, member int DEFAULT 0) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s allsource.subscriptions;
    upto bigint;
BEGIN
    PERFORM allsource._refuse_on_standby('allsource.ack()');
    s := allsource._subscription(ack.subscription);
    PERFORM allsource._check_member(s, ack.member);
    PERFORM allsource._hold_member(s.subscription_id, s.name, ack.member);
    upto := allsource.watermark();
    IF ack.position IS NULL OR ack.position < 0 OR ack.position > upto THEN
        RAISE EXCEPTION 'invalid argument "position": must be between 0 and the watermark (%), not %', upto, coalesce(ack.position::text, 'null')
            USING ERRCODE = '22023',
                  HINT = 'Acknowledge the position of an event receive returned.';
    END IF;
    UPDATE allsource.subscription_members m
    SET checkpoint = GREATEST(m.checkpoint, ack.position), acked_at = pg_catalog.now()
    WHERE m.subscription_id = s.subscription_id AND m.member = ack.member;
    DELETE FROM allsource.subscription_attempts a
    WHERE a.subscription_id = s.subscription_id AND a.member = ack.member AND a.position <= ack.position;
    PERFORM allsource._count_acked(s.subscription_id, ack.member, ack.position);
END
$$;

-- One failed attempt at the event at position: 'retry' (it stays in front),
-- or 'parked' at max_attempts (kept in parked_events; the member goes on).
CREATE FUNCTION allsource.nack(subscription text, "position" bigint, reason text DEFAULT NULL, member int DEFAULT 0) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s allsource.subscriptions;
BEGIN
    PERFORM allsource._refuse_on_standby('allsource.nack()');
    s := allsource._subscription(nack.subscription);
    PERFORM allsource._check_member(s, nack.member);
    PERFORM allsource._hold_member(s.subscription_id, s.name, nack.member);
    RETURN allsource._record_failure(s, nack.member, nack.position, nack.reason);
END
$$;

-- nack's work, also the handler workers': counts the attempt, parks at max_attempts.
CREATE FUNCTION allsource._record_failure(s allsource.subscriptions, member int, "position" bigint, reason text) RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    done bigint;
    upto bigint := allsource.watermark();
    tries int;
BEGIN
    SELECT m.checkpoint INTO done FROM allsource.subscription_members m
    WHERE m.subscription_id = s.subscription_id AND m.member = _record_failure.member FOR UPDATE;
    IF _record_failure.position IS NULL
       OR NOT (EXISTS (SELECT FROM allsource.subscription_attempts a
                       WHERE a.subscription_id = s.subscription_id AND a.member = _record_failure.member
                         AND a.position = _record_failure.position)
               OR (_record_failure.position > done AND _record_failure.position <= upto
                   AND EXISTS (SELECT FROM allsource.events e
                               WHERE e.position = _record_failure.position
                                 AND allsource._delivers(s, _record_failure.member, e))
                   AND NOT EXISTS (SELECT FROM allsource.parked_events p
                                   WHERE p.subscription_id = s.subscription_id AND p.position = _record_failure.position))) THEN
        RAISE EXCEPTION 'invalid argument "position": % is not an event member % of subscription "%" has to process',
                coalesce(_record_failure.position::text, 'null'), _record_failure.member, s.name
            USING ERRCODE = '22023',
                  HINT = 'Report a failure of an event receive returned and that is not acknowledged.';
    END IF;
    INSERT INTO allsource.subscription_attempts AS a (subscription_id, position, member, attempts, last_reason, retry_after)
    VALUES (s.subscription_id, _record_failure.position, _record_failure.member, 1, _record_failure.reason, pg_catalog.now())
    ON CONFLICT ON CONSTRAINT subscription_attempts_pkey DO UPDATE
    SET attempts = a.attempts + 1, last_reason = excluded.last_reason,
        -- Backoff for the handler workers: 0.1 s, 0.2 s, 0.4 s … at most a minute.
        retry_after = pg_catalog.now() + LEAST(pg_catalog.power(2, a.attempts) * 0.1, 60) * interval '1 second'
    RETURNING a.attempts INTO tries;
    UPDATE allsource.subscription_members m SET last_error = _record_failure.reason
    WHERE m.subscription_id = s.subscription_id AND m.member = _record_failure.member;
    IF tries < s.max_attempts THEN
        RETURN 'retry';
    END IF;
    DELETE FROM allsource.subscription_attempts a
    WHERE a.subscription_id = s.subscription_id AND a.position = _record_failure.position;
    INSERT INTO allsource.parked_events (subscription_id, position, member, attempts, last_reason)
    VALUES (s.subscription_id, _record_failure.position, _record_failure.member, tries, _record_failure.reason);
    PERFORM allsource._count_parked(s.subscription_id, _record_failure.member, _record_failure.position);
    RETURN 'parked';
END
$$;

-- The subscription workers' work for one member, in the caller's (the
-- worker's) transaction: the pending events go to the handler, in order, as
-- the subscription's owner and for its tenant; their effects and the
-- checkpoint commit together. First all of them in one statement; if one
-- fails (or some have failed before), one by one in a subtransaction each: a
-- failure rolls back that event's effects only and counts an attempt, and the
-- member stops there until its backoff is over ('retry'), or goes on past it
-- ('parked'). Returns how many events were handled.
CREATE FUNCTION allsource._handle(subscription_id bigint, member int, max_count int) RETURNS int
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s allsource.subscriptions;
    done bigint;
    upto bigint;
    events allsource.events[];
    event allsource.events;
    seen int;
    handled int := 0;
    stopped boolean := false;
    passed bigint;
    retried bigint[] := '{}';
    failure text;
BEGIN
    SELECT x.* INTO s FROM allsource.subscriptions x WHERE x.subscription_id = _handle.subscription_id;
    IF NOT FOUND OR s.handler IS NULL THEN
        RETURN 0;
    END IF;
    SELECT m.checkpoint INTO done FROM allsource.subscription_members m
    WHERE m.subscription_id = s.subscription_id AND m.member = _handle.member FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    upto := allsource.watermark();
    PERFORM pg_catalog.set_config('allsource.tenant', coalesce(s.tenant_id, ''), true);
    events := ARRAY(SELECT p FROM allsource._pending(s, _handle.member, _handle.max_count, done, upto) p);
    seen := pg_catalog.cardinality(events);
    PERFORM allsource._count_delivered(s.subscription_id, _handle.member,
                                       ARRAY(SELECT e.position FROM pg_catalog.unnest(events) e));
    IF seen > 0 AND NOT EXISTS (SELECT FROM allsource.subscription_attempts a
                                WHERE a.subscription_id = s.subscription_id AND a.member = _handle.member) THEN
        BEGIN
            PERFORM allsource._call_handler(s.handler, s.created_by, events);
            handled := seen;
            passed := (events[seen]).position;
        EXCEPTION WHEN OTHERS THEN
            NULL; -- one of them failed: one by one below finds which
        END;
    END IF;
    IF handled = 0 THEN
        FOREACH event IN ARRAY events LOOP
            IF EXISTS (SELECT FROM allsource.subscription_attempts a
                       WHERE a.subscription_id = s.subscription_id AND a.position = event.position
                         AND a.retry_after > pg_catalog.clock_timestamp()) THEN
                stopped := true;
                EXIT;
            END IF;
            BEGIN
                PERFORM allsource._call_handler(s.handler, s.created_by, ARRAY[event]);
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS failure = MESSAGE_TEXT;
                IF allsource._record_failure(s, _handle.member, event.position, failure) = 'retry' THEN
                    stopped := true;
                    EXIT;
                END IF;
                CONTINUE;
            END;
            handled := handled + 1;
            IF event.position <= done THEN
                retried := retried || event.position;
            ELSE
                passed := event.position;
            END IF;
        END LOOP;
        DELETE FROM allsource.subscription_attempts a
        WHERE a.subscription_id = s.subscription_id AND a.member = _handle.member
          AND (a.position = ANY (retried) OR a.position <= passed);
    END IF;
    -- Everything pending up to the watermark was handled: the checkpoint
    -- moves to the watermark, past the events this member does not deliver.
    IF NOT stopped AND seen < _handle.max_count THEN
        passed := upto;
    END IF;
    UPDATE allsource.subscription_members m
    SET checkpoint = GREATEST(m.checkpoint, coalesce(passed, m.checkpoint)),
        acked_at = CASE WHEN handled > 0 THEN pg_catalog.now() ELSE m.acked_at END
    WHERE m.subscription_id = s.subscription_id AND m.member = _handle.member
    RETURNING m.checkpoint INTO done;
    PERFORM allsource._count_acked(s.subscription_id, _handle.member, done);
    RETURN handled;
END
$$;

CREATE FUNCTION allsource.release(subscription text, member int DEFAULT 0) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s allsource.subscriptions;
BEGIN
    s := allsource._subscription(release.subscription);
    PERFORM allsource._check_member(s, release.member);
    PERFORM allsource._release_member(s.subscription_id, release.member);
END
$$;

-- Puts parked events (all, or the one at position) back in front, with
-- max_attempts fresh attempts each; returns how many.
CREATE FUNCTION allsource.retry_parked(subscription text, "position" bigint DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s allsource.subscriptions;
    moved bigint;
BEGIN
    PERFORM allsource._refuse_on_standby('allsource.retry_parked()');
    s := allsource._subscription(retry_parked.subscription);
    WITH unparked AS (
        DELETE FROM allsource.parked_events p
        WHERE p.subscription_id = s.subscription_id
          AND (retry_parked.position IS NULL OR p.position = retry_parked.position)
        RETURNING p.position, p.member, p.last_reason
    )
    INSERT INTO allsource.subscription_attempts (subscription_id, position, member, attempts, last_reason, retry_after)
    SELECT s.subscription_id, u.position, u.member, 0, u.last_reason, pg_catalog.now() FROM unparked u;
    GET DIAGNOSTICS moved = ROW_COUNT;
    RETURN moved;
END
$$;

CREATE FUNCTION allsource.parked_events(subscription text)
RETURNS TABLE ("position" bigint, member int, attempts int, last_reason text, parked_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s allsource.subscriptions := allsource._subscription(parked_events.subscription);
BEGIN
    RETURN QUERY
        SELECT p.position, p.member, p.attempts, p.last_reason, p.parked_at
        FROM allsource.parked_events p WHERE p.subscription_id = s.subscription_id
        ORDER BY p.position;
END
$$;

-- One row per subscription of the caller's tenant and member. Works
-- without preloading (no watermark, lag or holder then) and on standbys.
CREATE FUNCTION allsource.subscriptions()
RETURNS TABLE (name text, member int, "checkpoint" bigint, watermark bigint, lag_events bigint,
               oldest_pending_at timestamptz, holder_pid int, parked bigint, handler text, last_error text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tenant text := allsource.current_tenant();
    upto bigint;
BEGIN
    BEGIN
        upto := allsource.watermark();
    EXCEPTION WHEN object_not_in_prerequisite_state THEN
        upto := NULL;
    END;
    RETURN QUERY
        SELECT s.name, m.member, m.checkpoint, upto, pending.events, pending.oldest,
               allsource._member_holder(s.subscription_id, m.member),
               (SELECT pg_catalog.count(*) FROM allsource.parked_events p
                WHERE p.subscription_id = s.subscription_id AND p.member = m.member),
               s.handler::text, m.last_error
        FROM allsource.subscriptions s
        JOIN allsource.subscription_members m ON m.subscription_id = s.subscription_id
        -- Pending: the events after the checkpoint (parked ones left out),
        -- and those put back in front at or below it.
        LEFT JOIN LATERAL (
            SELECT ahead.events + behind.events AS events,
                   LEAST(ahead.oldest, behind.oldest) AS oldest
            FROM (SELECT pg_catalog.count(*) AS events, pg_catalog.min(e.created_at) AS oldest
                  FROM allsource.events e
                  WHERE e.position > m.checkpoint AND e.position <= upto
                    AND e.tenant_id IS NOT DISTINCT FROM s.tenant_id
                    AND (s.categories IS NULL
                         OR EXISTS (SELECT FROM pg_catalog.unnest(s.categories) AS c (category)
                                    WHERE e.stream_id = c.category OR pg_catalog.starts_with(e.stream_id, c.category || '-')))
                    AND (s.event_types IS NULL OR e.event_type = ANY (s.event_types))
                    AND (s.members = 1 OR allsource.partition_for(e.stream_id, s.members) = m.member)
                    AND NOT EXISTS (SELECT FROM allsource.parked_events p
                                    WHERE p.subscription_id = s.subscription_id AND p.position = e.position)) ahead,
                 (SELECT pg_catalog.count(*) AS events, pg_catalog.min(e.created_at) AS oldest
                  FROM allsource.subscription_attempts a
                  JOIN allsource.events e ON e.position = a.position
                  WHERE a.subscription_id = s.subscription_id AND a.member = m.member
                    AND a.position <= m.checkpoint) behind
            WHERE upto IS NOT NULL
        ) pending ON true
        WHERE s.tenant_id IS NOT DISTINCT FROM tenant
        ORDER BY s.name, m.member;
END
$$;

COMMENT ON FUNCTION allsource.create_subscription(text, text[], text[], bigint, int, regprocedure, int) IS
    'Creates a named subscription of the caller''s tenant: events after start_after, of the categories and types given (NULL: all), split over members by stream; a handler is called by the subscription workers.';
COMMENT ON FUNCTION allsource.drop_subscription(text) IS
    'Drops the subscription, its checkpoints, attempts and parked events.';
COMMENT ON FUNCTION allsource.receive(text, int, int) IS
    'The member''s next events after its checkpoint, in position order, never past the watermark, parked ones left out; takes the member''s lease for the session (55006 while another session holds it).';
COMMENT ON FUNCTION allsource.ack(text, bigint, int) IS
    'Every event of the member up to and including position is done: moves the checkpoint there in the caller''s transaction.';
COMMENT ON FUNCTION allsource.nack(text, bigint, text, int) IS
    'Records a failed attempt at the event: retry (it stays in front), or parked once max_attempts is reached (the member goes on).';
COMMENT ON FUNCTION allsource.release(text, int) IS
    'Ends this session''s lease of the member (ending the session does too).';
COMMENT ON FUNCTION allsource.retry_parked(text, bigint) IS
    'Puts parked events (all, or the one at position) back in front of the member, with max_attempts new attempts; returns how many.';
COMMENT ON FUNCTION allsource.parked_events(text) IS
    'The subscription''s parked events, with their attempts and last reason.';
COMMENT ON FUNCTION allsource.subscriptions() IS
    'One row per subscription of the caller''s tenant and member: checkpoint, watermark, lag, oldest pending event, holder, parked events, handler, last error.';

-- Who may call them: readers consume, writers also create, drop and retry.
REVOKE EXECUTE ON FUNCTION allsource._refuse_on_standby(text), allsource._subscription(text),
    allsource._check_member(allsource.subscriptions, int),
    allsource._delivers(allsource.subscriptions, int, allsource.events),
    allsource._record_failure(allsource.subscriptions, int, bigint, text),
    allsource._pending(allsource.subscriptions, int, int, bigint, bigint), allsource._handle(bigint, int, int),
    allsource._call_handler(oid, text, anyelement),
    allsource._count_delivered(bigint, int, bigint[]), allsource._count_acked(bigint, int, bigint),
    allsource._count_parked(bigint, int, bigint),
    allsource._check_subscription(text, text[], text[], bigint, int, int), allsource._calling_role(),
    allsource._hold_member(bigint, text, int), allsource._release_member(bigint, int),
    allsource._member_holder(bigint, int),
    allsource.create_subscription(text, text[], text[], bigint, int, regprocedure, int),
    allsource.drop_subscription(text), allsource.retry_parked(text, bigint),
    allsource.receive(text, int, int), allsource.ack(text, bigint, int),
    allsource.nack(text, bigint, text, int), allsource.release(text, int),
    allsource.parked_events(text), allsource.subscriptions()
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION allsource.receive(text, int, int), allsource.ack(text, bigint, int),
    allsource.nack(text, bigint, text, int), allsource.release(text, int),
    allsource.parked_events(text), allsource.subscriptions()
TO allsource_reader, allsource_writer;
GRANT EXECUTE ON FUNCTION allsource.create_subscription(text, text[], text[], bigint, int, regprocedure, int),
    allsource.drop_subscription(text), allsource.retry_parked(text, bigint)
TO allsource_writer;

-- The subscription workers run _handle as allsource_worker: what it reads and writes.
GRANT SELECT ON allsource.subscriptions TO allsource_worker;
GRANT SELECT, UPDATE ON allsource.subscription_members TO allsource_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON allsource.subscription_attempts TO allsource_worker;
GRANT SELECT, INSERT ON allsource.parked_events TO allsource_worker;
GRANT EXECUTE ON FUNCTION allsource._handle(bigint, int, int),
    allsource._pending(allsource.subscriptions, int, int, bigint, bigint),
    allsource._delivers(allsource.subscriptions, int, allsource.events),
    allsource._record_failure(allsource.subscriptions, int, bigint, text),
    allsource._call_handler(oid, text, anyelement),
    allsource._count_delivered(bigint, int, bigint[]), allsource._count_acked(bigint, int, bigint),
    allsource._count_parked(bigint, int, bigint)
TO allsource_worker;

DO $dump$
BEGIN
    PERFORM pg_catalog.pg_extension_config_dump('allsource.subscriptions', '');
    PERFORM pg_catalog.pg_extension_config_dump('allsource.subscription_members', '');
    PERFORM pg_catalog.pg_extension_config_dump('allsource.subscription_attempts', '');
    PERFORM pg_catalog.pg_extension_config_dump('allsource.parked_events', '');
    PERFORM pg_catalog.pg_extension_config_dump('allsource.subscription_id', '');
END
$dump$;

-- ===== Dynamic consistency boundaries (issue 19): tags on events and their
-- indexes, append with tags, append_if, read_query and query_head.
-- Events before this have no tags (NULL): their checksums stay as they are.
ALTER TABLE allsource.events ADD COLUMN tags text[];
-- Queries by type (read_query, append_if's conditions): an item with types
-- and no tags reads this index; an item with tags reads allsource.event_tags.
CREATE INDEX events_type_position ON allsource.events (event_type, position);

-- One row per tag of each tagged event, for dynamic consistency boundaries:
-- append_if's condition and read_query find a tag's events after a position
-- with one range scan of one index, where allsource.events would be 32
-- partitions to probe; the row has what a query matches besides the tag (the
-- event's type and tags), so a condition never reads the events.
CREATE TABLE allsource.event_tags (
    tag          text   COLLATE "C" NOT NULL,
    -- The event's tenant, '' without one (a tenant is never empty).
    tenant       text   COLLATE "C" NOT NULL,
    position     bigint NOT NULL,
    partition_id int    NOT NULL,
    event_id     uuid   NOT NULL,
    event_type   text   NOT NULL,
    tags         text[] NOT NULL,
    PRIMARY KEY (tag, tenant, position)
);
COMMENT ON TABLE allsource.event_tags IS
    'One row per tag of each tagged event (append_if''s conditions, read_query). Written by AllSource''s functions only.';

CREATE TRIGGER refuse_direct_write BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON allsource.event_tags
    FOR EACH STATEMENT EXECUTE FUNCTION allsource.refuse_direct_write();
SELECT pg_catalog.pg_extension_config_dump('allsource.event_tags', '');
REVOKE ALL ON allsource.event_tags FROM PUBLIC;
GRANT SELECT, INSERT ON allsource.event_tags TO allsource_worker;

-- append_batch's elements take "tags".
COMMENT ON FUNCTION allsource.append_batch(text, jsonb, bigint) IS
    'Appends a JSON array of events ({"type", "payload", "metadata", "id", "tags"}) to the stream at once, all or nothing; returns the first and last versions and positions.';

-- append takes tags: a new signature. The old one would make every call
-- ambiguous, so it goes (with any EXECUTE grants beyond allsource_writer's).
DROP FUNCTION allsource.append(text, text, jsonb, jsonb, bigint, uuid);
CREATE FUNCTION allsource."append"(
	"stream_id" TEXT, /* Option < & str > */
	"event_type" TEXT, /* Option < & str > */
	"payload" jsonb, /* Option < JsonbText > */
	"metadata" jsonb DEFAULT NULL, /* Option < JsonbText > */
	"expected_version" bigint DEFAULT NULL, /* Option < i64 > */
	"event_id" uuid DEFAULT NULL, /* Option < Uuid > */
	"tags" TEXT[] DEFAULT NULL /* :: std :: option :: Option < Vec < Option < String > > > */
) RETURNS TABLE (
	"version" bigint,  /* i64 */
	"position" bigint  /* i64 */
)
SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'append_wrapper';
COMMENT ON FUNCTION allsource.append(text, text, jsonb, jsonb, bigint, uuid, text[]) IS
    'Appends one event (with tags, optionally) to the stream when its version is expected_version (NULL: any; 0: no stream yet; -1: the stream exists); returns the event''s version and position. ZA001 on a wrong version.';

CREATE FUNCTION allsource."append_if"(
	"events" jsonb, /* Option < JsonbText > */
	"fail_if_events_match" jsonb DEFAULT NULL, /* Option < JsonbText > */
	"after_position" bigint DEFAULT NULL, /* Option < i64 > */
	"stream_id" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS TABLE (
	"first_position" bigint,  /* i64 */
	"last_position" bigint  /* i64 */
)
SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'append_if_wrapper';
COMMENT ON FUNCTION allsource.append_if(jsonb, jsonb, bigint, text) IS
    'Appends events (append_batch''s array, with "tags") unless an event matching fail_if_events_match lies after after_position (ZA004 naming it); in stream_id, or in a stream of their own. Locks by the tags and types involved, never globally unless a query item is empty.';
REVOKE EXECUTE ON FUNCTION allsource.append(text, text, jsonb, jsonb, bigint, uuid, text[]),
    allsource.append_if(jsonb, jsonb, bigint, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION allsource.append(text, text, jsonb, jsonb, bigint, uuid, text[]),
    allsource.append_if(jsonb, jsonb, bigint, text) TO allsource_writer;
CREATE FUNCTION allsource."query_head"(
	"query" jsonb DEFAULT NULL /* Option < JsonbText > */
) RETURNS bigint /* i64 */
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'query_head_wrapper';
COMMENT ON FUNCTION allsource.query_head(jsonb) IS
    'The position a decision based on read_query(query) may pass to append_if as after_position: the watermark. Take it before reading.';

CREATE FUNCTION allsource."_query_positions"(
	"query" jsonb, /* Option < JsonbText > */
	"after_position" bigint, /* i64 */
	"upto" bigint, /* i64 */
	"max_count" INT /* i32 */
) RETURNS TABLE (
	"partition_id" INT,  /* i32 */
	"position" bigint  /* i64 */
)
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_query_positions_wrapper';
COMMENT ON FUNCTION allsource._query_positions(jsonb, bigint, bigint, int) IS
    'The partitions and positions of the events read_query returns; 22023 names a bad part of the query.';

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

REVOKE EXECUTE ON FUNCTION allsource.read_query(jsonb, bigint, int), allsource.query_head(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION allsource.read_query(jsonb, bigint, int), allsource.query_head(jsonb)
TO allsource_reader, allsource_writer;
