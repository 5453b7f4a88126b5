-- Tables, sequence and partitions. Runs first in CREATE EXTENSION; the
-- functions pgrx generates from Rust come after it, sql/finalize/*.sql last.

-- AllSource's text is UTF-8 throughout (its functions are Rust, the hash
-- chain covers UTF-8 text): in a database of another encoding it would store
-- something other than what was sent, so it is refused before anything exists.
DO $encoding$
BEGIN
    IF pg_catalog.getdatabaseencoding() <> 'UTF8' THEN
        RAISE EXCEPTION 'AllSource needs a UTF8 database: % is %', pg_catalog.current_database(), pg_catalog.getdatabaseencoding()
            USING ERRCODE = '0A000',
                  DETAIL = 'Payloads, metadata, stream ids and tenants are UTF-8 text; stored in another encoding they would change.',
                  HINT = 'Create the database with ENCODING ''UTF8'' (CREATE DATABASE ... ENCODING ''UTF8'' TEMPLATE template0) and CREATE EXTENSION allsource there. Clients may use any client_encoding.';
    END IF;
END
$encoding$;
-- CREATE EXTENSION installs into a schema "allsource" that already exists.
-- One that another role owns, fills or may create objects in would let that
-- role replace what the extension's functions run as superuser: refuse it.
DO $schema$
DECLARE
    schema_oid oid := 'allsource'::pg_catalog.regnamespace;
    owner_name name;
BEGIN
    SELECT r.rolname INTO owner_name
    FROM pg_catalog.pg_namespace n JOIN pg_catalog.pg_roles r ON r.oid = n.nspowner
    WHERE n.oid = schema_oid;
    IF owner_name <> current_user THEN
        RAISE EXCEPTION 'schema "allsource" belongs to role "%", not to "%", who is creating the extension', owner_name, current_user
            USING ERRCODE = '42P06',
                  DETAIL = 'The extension''s functions run as their owner and would find objects that role put there.',
                  HINT = 'Drop or rename that schema, then run CREATE EXTENSION allsource again.';
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_depend d
               WHERE d.refclassid = 'pg_catalog.pg_namespace'::pg_catalog.regclass AND d.refobjid = schema_oid
                 AND d.classid <> 'pg_catalog.pg_extension'::pg_catalog.regclass)
       OR EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.relnamespace = schema_oid)
       OR EXISTS (SELECT FROM pg_catalog.pg_proc p WHERE p.pronamespace = schema_oid) THEN
        RAISE EXCEPTION 'schema "allsource" already holds objects'
            USING ERRCODE = '42P06',
                  DETAIL = 'CREATE EXTENSION allsource needs the schema empty: an object left there could stand in for one of the extension''s.',
                  HINT = 'Drop or rename that schema, then run CREATE EXTENSION allsource again.';
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a
               WHERE n.oid = schema_oid AND a.grantee <> n.nspowner AND a.privilege_type = 'CREATE') THEN
        RAISE EXCEPTION 'other roles may create objects in schema "allsource"'
            USING ERRCODE = '42P06',
                  HINT = 'REVOKE CREATE ON SCHEMA allsource FROM those roles (or drop the schema), then run CREATE EXTENSION allsource again.';
    END IF;
END
$schema$;

-- Global positions. No per-backend cache: positions are taken in the order
-- transactions ask for them, which the watermark relies on.
CREATE SEQUENCE allsource.event_position AS bigint NO CYCLE;

-- Stream ids are identifiers, not prose: byte order (COLLATE "C") makes every
-- comparison on them a memcmp, in the keys and indexes below.
CREATE TABLE allsource.streams (
    stream_id     text        COLLATE "C" PRIMARY KEY,
    partition_id  int         NOT NULL,
    version       bigint      NOT NULL DEFAULT 0,
    tenant_id     text,
    -- The checksum of the stream's last event: the next event chains to it
    -- without reading it.
    last_checksum bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    -- delete_stream: a tombstone (deleted_at), who deleted, and when a hard
    -- delete erased the payloads and who did.
    deleted_at    timestamptz,
    deleted_by    text,
    erased_at     timestamptz,
    erased_by     text,
    -- Seals the tombstone into the hash chain (SHA-256 of deleted_at,
    -- deleted_by, tenant and version ‖ last_checksum), so that a cleared
    -- deleted_at is found: docs/integrity.md, "Tombstones".
    tombstone_checksum bytea
);
COMMENT ON TABLE allsource.streams IS
    'One row per stream: its version, last checksum, tenant and tombstone. Written by AllSource''s functions only.';

CREATE TABLE allsource.events (
    position     bigint      NOT NULL,
    partition_id int         NOT NULL,
    stream_id    text        COLLATE "C" NOT NULL,
    version      bigint      NOT NULL,
    event_id     uuid        NOT NULL,
    event_type   text        NOT NULL,
    tenant_id    text,
    payload      jsonb       NOT NULL,
    metadata     jsonb,
    created_at   timestamptz NOT NULL,
    checksum     bytea       NOT NULL,
    -- For dynamic consistency boundaries (append_if, read_query); NULL: none.
    tags         text[],
    -- A partitioned table's unique keys must contain the partition key;
    -- position and a stream's versions are unique on their own all the same.
    PRIMARY KEY (position, partition_id),
    UNIQUE (stream_id, version, partition_id)
) PARTITION BY LIST (partition_id);
COMMENT ON TABLE allsource.events IS
    'Every event, partitioned by partition_for(stream_id); position is the global order. Written by AllSource''s functions only.';

-- event_id is unique across partitions, which a partitioned table's own
-- indexes cannot enforce: this table does, and finds an event by its id.
CREATE TABLE allsource.event_ids (
    event_id     uuid   PRIMARY KEY,
    partition_id int    NOT NULL,
    position     bigint NOT NULL
);

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

-- What a hard delete keeps of each erased event: the SHA-256 digests of its
-- payload and metadata text, which is what the hash chain covers, so the
-- stream still verifies without the content.
CREATE TABLE allsource.erased_events (
    partition_id    int    NOT NULL,
    position        bigint NOT NULL,
    payload_digest  bytea  NOT NULL,
    metadata_digest bytea,
    PRIMARY KEY (partition_id, position)
);

-- The latest snapshot of each stream (save_snapshot keeps the highest version).
CREATE TABLE allsource.snapshots (
    stream_id  text        COLLATE "C" PRIMARY KEY,
    version    bigint      NOT NULL,
    state      jsonb       NOT NULL,
    tenant_id  text,
    created_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE allsource.snapshots IS
    'The latest snapshot of each stream (save_snapshot, load_snapshot).';

-- The primary's watermark, written by its watermark publisher whenever it
-- moves: a hot standby replays it and never reads past it. One row.
CREATE TABLE allsource.published_watermark (
    position     bigint      NOT NULL,
    published_at timestamptz NOT NULL,
    one_row      boolean     PRIMARY KEY DEFAULT true CHECK (one_row)
);
INSERT INTO allsource.published_watermark (position, published_at) VALUES (0, now());
COMMENT ON TABLE allsource.published_watermark IS
    'The primary''s watermark and when it last moved, for hot standbys: watermark() on a standby returns it. Written by the watermark publisher only.';

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

-- One partition per partition id: allsource.partitions, read once, now.
DO $partitions$
DECLARE
    setting text := current_setting('allsource.partitions', true);
    partition_count int;
BEGIN
    IF setting IS NULL OR setting = '' THEN
        partition_count := 32;
    ELSIF setting !~ '^\s*[0-9]{1,4}\s*$' OR setting::int NOT BETWEEN 1 AND 1024 THEN
        RAISE EXCEPTION 'invalid value for allsource.partitions: "%"', setting
            USING ERRCODE = '22023', HINT = 'Use a whole number from 1 to 1024.';
    ELSE
        partition_count := setting::int;
    END IF;
    FOR p IN 0 .. partition_count - 1 LOOP
        EXECUTE format('CREATE TABLE allsource.events_p%s PARTITION OF allsource.events FOR VALUES IN (%s)', p, p);
    END LOOP;
END
$partitions$;
