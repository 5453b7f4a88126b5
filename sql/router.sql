-- AllSource router: one PostgreSQL database that spreads AllSource's 32
-- partitions over several nodes (databases with CREATE EXTENSION allsource)
-- with PL/Proxy, and offers the same allsource.* functions as a node, so an
-- application's SQL runs unchanged against the router.
--
--   psql -v ON_ERROR_STOP=1 -d router -f sql/router.sql
--   INSERT INTO allsource_router.nodes VALUES ('node1', 'host=db1 dbname=events'), ...;
--   INSERT INTO allsource_router.partitions SELECT p, 'node' || (p % 3 + 1) FROM generate_series(0, 31) p;
--
-- Callers reach the nodes as themselves (PL/Proxy adds user=<current user>
-- to the connection strings): the nodes' grants decide what they may do.
--
-- Needs PL/Proxy (Debian: postgresql-NN-plproxy) on the router only; the
-- nodes need AllSource 0.3.0 or later with its default 32 partitions. Running this script again replaces the
-- functions and keeps the configuration.
--
-- What a node call through the router is: PL/Proxy runs each call as its own
-- statement on the node, in autocommit. An append through the router commits
-- on the node when it returns, whatever the caller's transaction does later.

\set ON_ERROR_STOP 1
SET client_min_messages = warning;  -- no NOTICEs of the IF [NOT] EXISTS clauses

-- Refuse the setups in which this script would do harm or not work.
DO $check$
BEGIN
    IF EXISTS (SELECT FROM pg_extension WHERE extname = 'allsource') THEN
        RAISE EXCEPTION 'this database has the allsource extension: the router must be a database of its own'
            USING ERRCODE = '55000',
                  HINT = 'Create an empty database for the router (CREATE DATABASE router) and run sql/router.sql there.';
    END IF;
    -- PL/Proxy prefers a SQL/MED server of the cluster's name over the
    -- configuration functions below: one named allsource would hide them.
    IF EXISTS (SELECT FROM pg_foreign_server WHERE srvname = 'allsource') THEN
        RAISE EXCEPTION 'a foreign server named "allsource" exists: PL/Proxy would use it instead of allsource_router.partitions'
            USING ERRCODE = '55000', HINT = 'DROP SERVER allsource, or run the router in another database.';
    END IF;
    -- PL/Proxy reads every function-configured cluster through the same three
    -- functions: do not overwrite ones that serve other clusters.
    IF EXISTS (SELECT FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
               WHERE n.nspname = 'plproxy' AND p.proname LIKE 'get\_cluster\_%'
                 AND coalesce(obj_description(p.oid, 'pg_proc'), '') NOT LIKE 'PL/Proxy configuration of cluster allsource%') THEN
        RAISE EXCEPTION 'plproxy.get_cluster_* functions of other clusters exist; this script would replace them'
            USING ERRCODE = '55000',
                  HINT = 'Merge the cluster ''allsource'' of sql/router.sql into your functions by hand.';
    END IF;
END
$check$;

CREATE EXTENSION IF NOT EXISTS plproxy;

CREATE SCHEMA IF NOT EXISTS allsource_router;
COMMENT ON SCHEMA allsource_router IS
    'The AllSource router''s configuration (nodes, partition map) and its own functions (partition_for, read_all_nodes, node_watermarks).';
CREATE SCHEMA IF NOT EXISTS allsource;
COMMENT ON SCHEMA allsource IS
    'AllSource through the router: the functions of a node''s allsource schema that concern one stream, each run on the node that owns the stream''s partition.';
GRANT USAGE ON SCHEMA allsource_router, allsource TO PUBLIC;

---------------------------------------------------------------------------
-- Configuration: nodes and the partition -> node map
---------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS allsource_router.nodes (
    node    text PRIMARY KEY,
    connstr text NOT NULL
);
COMMENT ON TABLE allsource_router.nodes IS
    'AllSource nodes: a name and a libpq connection string of the node''s database. PL/Proxy appends user=<current user> unless the string has user=. Readable by its owner only (it may hold passwords).';

CREATE TABLE IF NOT EXISTS allsource_router.partitions (
    partition_id int     PRIMARY KEY CHECK (partition_id BETWEEN 0 AND 31),
    node         text    NOT NULL REFERENCES allsource_router.nodes,
    -- false while the partition moves: writes through the router are refused.
    writable     boolean NOT NULL DEFAULT true
);
COMMENT ON TABLE allsource_router.partitions IS
    'The partition map: which node holds each of the 32 partitions (it must name all 32), and whether writes to it go through (false while it moves). Moving a partition ends with an UPDATE here, after its rows were copied (see docs/scaling-out.md).';
GRANT SELECT ON allsource_router.partitions TO PUBLIC;

-- PL/Proxy reloads a cluster when get_cluster_version() returns another
-- number than the one it cached. The version is a row that the tables'
-- statement triggers update, not a bare sequence: a new number becomes visible
-- with the commit that changed the map, so no session caches the old map under
-- it. The numbers come from a sequence all the same, which never hands one out
-- twice: a session that cached a map inside a transaction that rolled back
-- never sees its number again.
CREATE SEQUENCE IF NOT EXISTS allsource_router.config_version_seq AS int;
CREATE TABLE IF NOT EXISTS allsource_router.config_version (
    version int     NOT NULL,
    one_row boolean PRIMARY KEY DEFAULT true CHECK (one_row)
);
INSERT INTO allsource_router.config_version (version)
    VALUES (nextval('allsource_router.config_version_seq')) ON CONFLICT DO NOTHING;
COMMENT ON SEQUENCE allsource_router.config_version_seq IS
    'Numbers for allsource_router.config_version.';
COMMENT ON TABLE allsource_router.config_version IS
    'The version of the router''s configuration: renumbered by every statement that changes allsource_router.nodes or allsource_router.partitions, so PL/Proxy reloads the map.';

CREATE OR REPLACE FUNCTION allsource_router._bump_config_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE allsource_router.config_version SET version = nextval('allsource_router.config_version_seq');
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION allsource_router._bump_config_version() IS
    'Trigger: a change of the nodes or the partition map gives allsource_router.config_version a new number.';

DROP TRIGGER IF EXISTS bump_config_version ON allsource_router.nodes;
CREATE TRIGGER bump_config_version AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON allsource_router.nodes FOR EACH STATEMENT EXECUTE FUNCTION allsource_router._bump_config_version();
DROP TRIGGER IF EXISTS bump_config_version ON allsource_router.partitions;
CREATE TRIGGER bump_config_version AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON allsource_router.partitions FOR EACH STATEMENT EXECUTE FUNCTION allsource_router._bump_config_version();

-- PL/Proxy's configuration functions (its "cluster configuration API"): used
-- for a cluster that has no SQL/MED server of its name. Security definer, so
-- callers need no access to the connection strings.
CREATE SCHEMA IF NOT EXISTS plproxy;
GRANT USAGE ON SCHEMA plproxy TO PUBLIC;  -- PL/Proxy calls them as the caller

CREATE OR REPLACE FUNCTION plproxy.get_cluster_version(cluster_name text) RETURNS int4
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF cluster_name = 'allsource' THEN
        RETURN (SELECT c.version FROM allsource_router.config_version c);
    END IF;
    RAISE EXCEPTION 'unknown PL/Proxy cluster "%"', cluster_name USING ERRCODE = '42704';
END
$$;
COMMENT ON FUNCTION plproxy.get_cluster_version(text) IS
    'PL/Proxy configuration of cluster allsource: its version (allsource_router.config_version); PL/Proxy reloads the partitions when it changes.';

CREATE OR REPLACE FUNCTION plproxy.get_cluster_partitions(cluster_name text) RETURNS SETOF text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    missing text;
BEGIN
    IF cluster_name IS DISTINCT FROM 'allsource' THEN
        RAISE EXCEPTION 'unknown PL/Proxy cluster "%"', cluster_name USING ERRCODE = '42704';
    END IF;
    -- Partition ids are 0..31 and unique (the table's check and key), so a
    -- gap is the only way the map can be wrong.
    SELECT string_agg(g::text, ', ' ORDER BY g) INTO missing
    FROM generate_series(0, 31) g
    WHERE NOT EXISTS (SELECT FROM allsource_router.partitions p WHERE p.partition_id = g);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'the AllSource partition map does not cover all 32 partitions: % missing', missing
            USING ERRCODE = '55000',
                  HINT = 'Map every partition 0..31 to a node in allsource_router.partitions.';
    END IF;
    RETURN QUERY
        SELECT n.connstr FROM allsource_router.partitions p JOIN allsource_router.nodes n ON n.node = p.node
        ORDER BY p.partition_id;
END
$$;
COMMENT ON FUNCTION plproxy.get_cluster_partitions(text) IS
    'PL/Proxy configuration of cluster allsource: its 32 connection strings in partition order, from allsource_router.partitions; an error when the map has a gap.';

CREATE OR REPLACE FUNCTION plproxy.get_cluster_config(cluster_name text, OUT key text, OUT val text)
RETURNS SETOF record
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF cluster_name IS DISTINCT FROM 'allsource' THEN
        RAISE EXCEPTION 'unknown PL/Proxy cluster "%"', cluster_name USING ERRCODE = '42704';
    END IF;
    -- PL/Proxy's defaults: connections kept while they work, no timeouts
    -- (libpq's connect_timeout can go into the connection strings).
    RETURN;
END
$$;
COMMENT ON FUNCTION plproxy.get_cluster_config(text) IS
    'PL/Proxy configuration of cluster allsource: its options (none: PL/Proxy''s defaults).';

-- The nodes that hold partitions, each with one of its partitions: RUN ON
-- that partition reaches the node (PL/Proxy shares one connection among the
-- partitions of a node).
CREATE OR REPLACE VIEW allsource_router.active_nodes AS
    SELECT p.node, min(p.partition_id) AS via_partition, count(*)::int AS partitions
    FROM allsource_router.partitions p GROUP BY p.node ORDER BY p.node;
COMMENT ON VIEW allsource_router.active_nodes IS
    'The nodes that hold at least one partition, in name order: how many, and the lowest one (through which the router reaches the node as a whole).';
GRANT SELECT ON allsource_router.active_nodes TO PUBLIC;

---------------------------------------------------------------------------
-- Partitions
---------------------------------------------------------------------------

-- The extension's hash (core/src/partition.rs): the first 8 bytes of SHA-256 of
-- the UTF-8 bytes, big-endian unsigned, modulo 32. 256 is a multiple of 32,
-- so that is the eighth byte modulo 32.
CREATE OR REPLACE FUNCTION allsource_router.partition_for(stream_id text) RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN stream_id IS NULL THEN 0  -- the node raises its own 22023 for it
                ELSE get_byte(sha256(convert_to(stream_id, 'UTF8')), 7) % 32 END
$$;
COMMENT ON FUNCTION allsource_router.partition_for(text) IS
    'The partition (0..31) of a stream: first 8 bytes of SHA-256 of its UTF-8 bytes, big-endian, modulo 32, as the extension computes it. NULL maps to 0, so that node reports the bad argument.';

-- Writes route through this one, so that a partition can be frozen while it
-- moves; a lookup in the map (a cached index page) per write.
CREATE OR REPLACE FUNCTION allsource_router.partition_for_write(stream_id text) RETURNS int
LANGUAGE plpgsql STABLE AS $$
DECLARE
    part int := allsource_router.partition_for(stream_id);
BEGIN
    IF EXISTS (SELECT FROM allsource_router.partitions m WHERE m.partition_id = part AND NOT m.writable) THEN
        RAISE EXCEPTION 'partition % of stream "%" takes no writes while it moves', part, stream_id
            USING ERRCODE = '55006', HINT = 'Retry in a moment: allsource_router.partitions says when it is writable again.';
    END IF;
    RETURN part;
END
$$;
COMMENT ON FUNCTION allsource_router.partition_for_write(text) IS
    'allsource_router.partition_for, for the writing functions: raises 55006 while the partition is not writable (allsource_router.partitions.writable, during a move).';

CREATE OR REPLACE FUNCTION allsource.partition_count() RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 32 $$;
COMMENT ON FUNCTION allsource.partition_count() IS
    'The number of partitions behind the router: 32, the nodes'' default.';

-- Like the node's function, argument checks and messages included; any
-- count: u64 mod n = ((hi mod n) * (2^32 mod n) + lo) mod n with 32-bit halves.
CREATE OR REPLACE FUNCTION allsource.partition_for(stream_id text, partition_count int DEFAULT NULL)
RETURNS int
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    n      int := coalesce(partition_count, 32);
    digest bytea;
    hi     bigint;
    lo     bigint;
BEGIN
    IF stream_id IS NULL THEN
        RAISE EXCEPTION 'invalid argument "stream_id": must not be null' USING ERRCODE = '22023';
    ELSIF stream_id = '' THEN
        RAISE EXCEPTION 'invalid argument "stream_id": must not be empty' USING ERRCODE = '22023';
    ELSIF octet_length(stream_id) > 255 THEN
        RAISE EXCEPTION 'invalid argument "stream_id": is % bytes long, the limit is 255', octet_length(stream_id)
            USING ERRCODE = '22023';
    ELSIF n NOT BETWEEN 1 AND 1024 THEN
        RAISE EXCEPTION 'invalid argument "partition_count": % is out of range 1..1024', n USING ERRCODE = '22023';
    END IF;
    digest := sha256(convert_to(stream_id, 'UTF8'));
    hi := (get_byte(digest, 0)::bigint << 24) + (get_byte(digest, 1)::bigint << 16)
        + (get_byte(digest, 2)::bigint << 8) + get_byte(digest, 3);
    lo := (get_byte(digest, 4)::bigint << 24) + (get_byte(digest, 5)::bigint << 16)
        + (get_byte(digest, 6)::bigint << 8) + get_byte(digest, 7);
    RETURN (((hi % n) * (4294967296 % n) + lo) % n)::int;
END
$$;
COMMENT ON FUNCTION allsource.partition_for(text, int) IS
    'The partition a stream''s events live in, of partition_count partitions (32, the router''s, by default); the same hash as on a node.';

---------------------------------------------------------------------------
-- The node's functions, routed by stream
---------------------------------------------------------------------------

-- A node's allsource.events row, so read_stream returns the same type name
-- and columns as on a node.
DO $type$
BEGIN
    IF to_regtype('allsource.events') IS NULL THEN
        CREATE TYPE allsource.events AS (
            position     bigint,
            partition_id int,
            stream_id    text,
            version      bigint,
            event_id     uuid,
            event_type   text,
            tenant_id    text,
            payload      jsonb,
            metadata     jsonb,
            created_at   timestamptz,
            checksum     bytea,
            tags         text[]
        );
    ELSIF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                      WHERE attrelid = 'allsource.events'::regclass AND attname = 'tags' AND NOT attisdropped) THEN
        -- A router made before tags (0.4.0): its nodes return them now.
        ALTER TYPE allsource.events ADD ATTRIBUTE tags text[];
    END IF;
END
$type$;
COMMENT ON TYPE allsource.events IS
    'An event row as a node''s allsource.events table has it (the router stores no events).';

-- Without a SELECT, PL/Proxy runs SELECT <result columns> FROM
-- allsource.<same name>(<all arguments>) on the node that RUN ON picks: the
-- partition from the hash, which the cluster maps to its node's connection.
-- Writes route through partition_for_write (55006 while the partition moves).
-- Errors come back with the node's SQLSTATE, the message prefixed by PL/Proxy;
-- after one, PL/Proxy drops that connection and reconnects at the next call
-- ("NOTICE: PL/Proxy: dropping stale conn").

-- Before tags (0.4.0) append had no tags argument: that overload would make
-- every call ambiguous.
DROP FUNCTION IF EXISTS allsource.append(text, text, jsonb, jsonb, bigint, uuid);
CREATE OR REPLACE FUNCTION allsource.append(stream_id text, event_type text, payload jsonb,
    metadata jsonb DEFAULT NULL, expected_version bigint DEFAULT NULL, event_id uuid DEFAULT NULL,
    tags text[] DEFAULT NULL)
RETURNS TABLE (version bigint, "position" bigint)
LANGUAGE plproxy AS $$
    CLUSTER 'allsource';
    RUN ON allsource_router.partition_for_write(stream_id);
$$;
COMMENT ON FUNCTION allsource.append(text, text, jsonb, jsonb, bigint, uuid, text[]) IS
    'allsource.append on the node that owns the stream''s partition; commits there at once (not part of the caller''s transaction). Position is the node''s.';

CREATE OR REPLACE FUNCTION allsource.append_batch(stream_id text, events jsonb, expected_version bigint DEFAULT NULL)
RETURNS TABLE (first_version bigint, last_version bigint, first_position bigint, last_position bigint)
LANGUAGE plproxy AS $$
    CLUSTER 'allsource';
    RUN ON allsource_router.partition_for_write(stream_id);
$$;
COMMENT ON FUNCTION allsource.append_batch(text, jsonb, bigint) IS
    'allsource.append_batch on the node that owns the stream''s partition; all or nothing, committed there at once.';

CREATE OR REPLACE FUNCTION allsource.read_stream(stream_id text, from_version bigint DEFAULT 1,
    max_count int DEFAULT 1000, backward boolean DEFAULT false)
RETURNS SETOF allsource.events
LANGUAGE plproxy AS $$
    CLUSTER 'allsource';
    RUN ON allsource_router.partition_for(stream_id);
$$;
COMMENT ON FUNCTION allsource.read_stream(text, bigint, int, boolean) IS
    'allsource.read_stream on the node that owns the stream''s partition.';

CREATE OR REPLACE FUNCTION allsource.stream_version(stream_id text) RETURNS bigint
LANGUAGE plproxy AS $$
    CLUSTER 'allsource';
    RUN ON allsource_router.partition_for(stream_id);
$$;
COMMENT ON FUNCTION allsource.stream_version(text) IS
    'allsource.stream_version on the node that owns the stream''s partition.';

CREATE OR REPLACE FUNCTION allsource.verify_stream(stream_id text)
RETURNS TABLE (ok boolean, events_checked bigint, first_bad_version bigint, problem text)
LANGUAGE plproxy AS $$
    CLUSTER 'allsource';
    RUN ON allsource_router.partition_for(stream_id);
$$;
COMMENT ON FUNCTION allsource.verify_stream(text) IS
    'allsource.verify_stream on the node that owns the stream''s partition.';

CREATE OR REPLACE FUNCTION allsource.verify_gapless(stream_id text) RETURNS boolean
LANGUAGE plproxy AS $$
    CLUSTER 'allsource';
    RUN ON allsource_router.partition_for(stream_id);
$$;
COMMENT ON FUNCTION allsource.verify_gapless(text) IS
    'allsource.verify_gapless on the node that owns the stream''s partition.';

CREATE OR REPLACE FUNCTION allsource.delete_stream(stream_id text, hard boolean DEFAULT false) RETURNS bigint
LANGUAGE plproxy AS $$
    CLUSTER 'allsource';
    RUN ON allsource_router.partition_for_write(stream_id);
$$;
COMMENT ON FUNCTION allsource.delete_stream(text, boolean) IS
    'allsource.delete_stream on the node that owns the stream''s partition; committed there at once.';

CREATE OR REPLACE FUNCTION allsource.save_snapshot(stream_id text, version bigint, state jsonb) RETURNS boolean
LANGUAGE plproxy AS $$
    CLUSTER 'allsource';
    RUN ON allsource_router.partition_for_write(stream_id);
$$;
COMMENT ON FUNCTION allsource.save_snapshot(text, bigint, jsonb) IS
    'allsource.save_snapshot on the node that owns the stream''s partition; committed there at once.';

CREATE OR REPLACE FUNCTION allsource.load_snapshot(stream_id text) RETURNS TABLE (version bigint, state jsonb)
LANGUAGE plproxy AS $$
    CLUSTER 'allsource';
    RUN ON allsource_router.partition_for(stream_id);
$$;
COMMENT ON FUNCTION allsource.load_snapshot(text) IS
    'allsource.load_snapshot on the node that owns the stream''s partition.';

-- Tickets. The router hands out the node's ticket unchanged: a ticket does
-- not say which node issued it, and there is no room to add that (a node
-- numbers its tickets from the microsecond its shared memory was created,
-- times 1,024: about 1.8e18 in 2026, so "ticket * 32 + partition" would
-- overflow bigint). await_ticket asks every node at once instead, through
-- allsource._await_ticket_if_issued (in the extension since 0.3.0):
-- the node that issued the ticket waits for it, the others answer at once.
-- Ticket numbers of two nodes coincide only if one has issued 1,024 more
-- tickets than the other for each microsecond between the nodes' starts (a
-- billion more for nodes started a second apart); if two nodes know a ticket,
-- await_ticket refuses to guess.

CREATE OR REPLACE FUNCTION allsource.enqueue(stream_id text, event_type text, payload jsonb,
    metadata jsonb DEFAULT NULL, expected_version bigint DEFAULT NULL, event_id uuid DEFAULT NULL)
RETURNS bigint
LANGUAGE plproxy AS $$
    CLUSTER 'allsource';
    RUN ON allsource_router.partition_for_write(stream_id);
$$;
COMMENT ON FUNCTION allsource.enqueue(text, text, jsonb, jsonb, bigint, uuid) IS
    'allsource.enqueue on the node that owns the stream''s partition; returns that node''s ticket, for the router''s await_ticket.';

CREATE OR REPLACE FUNCTION allsource_router._await_ticket(target_partition int, ticket bigint, timeout_ms int)
RETURNS TABLE (status text, version bigint, "position" bigint)
LANGUAGE plproxy AS $$
    CLUSTER 'allsource';
    RUN ON target_partition;
    SELECT * FROM allsource.await_ticket(ticket, timeout_ms);
$$;
COMMENT ON FUNCTION allsource_router._await_ticket(int, bigint, int) IS
    'Internal: allsource.await_ticket(ticket, timeout_ms) on the node that holds target_partition.';

CREATE OR REPLACE FUNCTION allsource_router._await_ticket_everywhere(ticket bigint, timeout_ms int)
RETURNS TABLE (status text, version bigint, "position" bigint, refusal text)
LANGUAGE plproxy AS $$
    CLUSTER 'allsource';
    RUN ON ALL;
    SELECT * FROM allsource._await_ticket_if_issued(ticket, timeout_ms);
$$;
COMMENT ON FUNCTION allsource_router._await_ticket_everywhere(bigint, int) IS
    'Internal: allsource._await_ticket_if_issued on every node at once (one row per node).';

CREATE OR REPLACE FUNCTION allsource.await_ticket(ticket bigint, timeout_ms int DEFAULT 10000)
RETURNS TABLE (status text, version bigint, "position" bigint)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    r         record;
    answer    record;  -- of the node that knows the ticket
    answered  boolean := false;
    knowing   int := 0;
    expired   text;    -- a node's "no longer kept": the ticket may be its
    refused   text;    -- any node's refusal
BEGIN
    IF ticket IS NULL OR ticket < 0 OR timeout_ms IS NULL OR timeout_ms < 0 THEN
        -- Any node refuses these, with its own message.
        RETURN QUERY SELECT * FROM allsource_router._await_ticket(0, ticket, timeout_ms);
        RETURN;
    END IF;
    FOR r IN SELECT * FROM allsource_router._await_ticket_everywhere(ticket, timeout_ms) LOOP
        IF r.status IS NOT NULL THEN
            knowing := knowing + 1;
            answer := r;
            answered := true;
        ELSIF r.refusal LIKE '%no longer kept%' THEN
            knowing := knowing + 1;
            expired := r.refusal;
        ELSE
            refused := r.refusal;
        END IF;
    END LOOP;
    IF knowing > 1 THEN
        RAISE EXCEPTION 'invalid argument "ticket": % is known to more than one node', ticket
            USING ERRCODE = '22023',
                  HINT = 'Tickets of nodes started at nearly the same time can coincide; await it on the node that issued it.';
    ELSIF NOT answered THEN
        RAISE EXCEPTION '%', coalesce(expired, refused, format('invalid argument "ticket": %s was never issued', ticket))
            USING ERRCODE = '22023';
    END IF;
    status := answer.status;
    version := answer.version;
    position := answer.position;
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION allsource.await_ticket(bigint, int) IS
    'allsource.await_ticket on the node that issued the ticket: asks every node at once; the issuing node waits up to timeout_ms. 22023 when no node, or more than one, knows the ticket.';

---------------------------------------------------------------------------
-- Reading across nodes
---------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION allsource_router._read_all_on(target_partition int, after_position bigint, max_count int)
RETURNS SETOF allsource.events
LANGUAGE plproxy AS $$
    CLUSTER 'allsource';
    RUN ON target_partition;
    SELECT * FROM allsource.read_all(after_position, max_count);
$$;
COMMENT ON FUNCTION allsource_router._read_all_on(int, bigint, int) IS
    'Internal: allsource.read_all(after_position, max_count) on the node that holds target_partition (all of that node''s partitions).';

CREATE OR REPLACE FUNCTION allsource_router._watermark_on(target_partition int) RETURNS bigint
LANGUAGE plproxy AS $$
    CLUSTER 'allsource';
    RUN ON target_partition;
    SELECT allsource.watermark();
$$;
COMMENT ON FUNCTION allsource_router._watermark_on(int) IS
    'Internal: allsource.watermark() of the node that holds target_partition.';

-- Its rows gained tags in 0.4.0: a new result type, which CREATE OR REPLACE cannot give.
DROP FUNCTION IF EXISTS allsource_router.read_all_nodes(jsonb, int);
CREATE FUNCTION allsource_router.read_all_nodes(cursors jsonb DEFAULT '{}', max_count int DEFAULT 1000)
RETURNS TABLE (node text, "position" bigint, partition_id int, stream_id text, version bigint, event_id uuid,
               event_type text, tenant_id text, payload jsonb, metadata jsonb, created_at timestamptz, checksum bytea,
               tags text[])
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    n record;
BEGIN
    IF cursors IS NULL OR jsonb_typeof(cursors) <> 'object' THEN
        RAISE EXCEPTION 'invalid argument "cursors": must be a JSON object of node name to position, like {"node1": 41250}'
            USING ERRCODE = '22023';
    END IF;
    -- Node by node: each node's read_all is in its own position order, up to
    -- its own watermark. Positions of different nodes are unrelated numbers.
    FOR n IN SELECT a.node AS name, a.via_partition AS via FROM allsource_router.active_nodes a LOOP
        RETURN QUERY
            SELECT n.name, e.*
            FROM allsource_router._read_all_on(n.via, coalesce((cursors ->> n.name)::bigint, 0), max_count) e;
    END LOOP;
END
$$;
COMMENT ON FUNCTION allsource_router.read_all_nodes(jsonb, int) IS
    'The events after each node''s cursor ({"node": last position received from it}, 0 when absent), up to max_count per node and never past that node''s watermark; ordered by node, then position. Order holds within a node only: there is no total order across nodes.';

CREATE OR REPLACE FUNCTION allsource_router.node_watermarks() RETURNS TABLE (node text, watermark bigint)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    n record;
BEGIN
    FOR n IN SELECT a.node AS name, a.via_partition AS via FROM allsource_router.active_nodes a LOOP
        node := n.name;
        watermark := allsource_router._watermark_on(n.via);
        RETURN NEXT;
    END LOOP;
END
$$;
COMMENT ON FUNCTION allsource_router.node_watermarks() IS
    'allsource.watermark() of every node that holds a partition. Each is a position on that node only: watermarks of different nodes do not compare.';
