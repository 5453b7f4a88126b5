-- integrity: the hash chain as docs/integrity.md defines it,
-- verify_stream, verify_gapless and verify_all on sound data, then on every
-- kind of damage a superuser can do. Streams audit-*, all of tenant 'audit'
-- so that verify_all here sees them alone and the other files never see
-- the damage.
\set VERBOSITY default
\set SHOW_CONTEXT never
SET allsource.tenant = 'audit';

-- The encoding (format 1) in SQL, from docs/integrity.md.
CREATE FUNCTION pg_temp.encoding(stream_id text, version bigint, event_type text, event_id uuid,
                                 payload_digest bytea, metadata_digest bytea, created_at timestamptz)
RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
    SELECT '\x01'::bytea
        || int4send(octet_length(convert_to(stream_id, 'UTF8'))) || convert_to(stream_id, 'UTF8')
        || int8send(version)
        || int4send(octet_length(convert_to(event_type, 'UTF8'))) || convert_to(event_type, 'UTF8')
        || uuid_send(event_id)
        || payload_digest
        || CASE WHEN metadata_digest IS NULL THEN '\x00'::bytea ELSE '\x01'::bytea || metadata_digest END
        || int8send((extract(epoch FROM created_at) * 1000000)::bigint)
$$;
-- Format 2 (events appended since 0.4.0): format byte 0x02, then the tenant and the tags last.
CREATE FUNCTION pg_temp.encoding2(stream_id text, version bigint, event_type text, event_id uuid,
                                  payload_digest bytea, metadata_digest bytea, created_at timestamptz, tenant_id text,
                                  tags text[])
RETURNS bytea LANGUAGE sql IMMUTABLE AS $$
    SELECT overlay(pg_temp.encoding(stream_id, version, event_type, event_id, payload_digest, metadata_digest, created_at)
                   PLACING '\x02'::bytea FROM 1 FOR 1)
        || CASE WHEN tenant_id IS NULL THEN '\x00'::bytea
                ELSE '\x01'::bytea || int4send(octet_length(convert_to(tenant_id, 'UTF8'))) || convert_to(tenant_id, 'UTF8') END
        || CASE WHEN tags IS NULL THEN '\x00'::bytea
                ELSE '\x01'::bytea || int4send(cardinality(tags))
                     || (SELECT string_agg(int4send(octet_length(convert_to(t, 'UTF8'))) || convert_to(t, 'UTF8'), ''::bytea ORDER BY n)
                         FROM unnest(tags) WITH ORDINALITY u(t, n)) END
$$;
-- The test vectors of docs/integrity.md: format 1, format 2 without a tenant, with tenant acme, and of acme with tags.
SELECT encode(e, 'hex') AS encoding, encode(sha256(e || decode(repeat('00', 32), 'hex')), 'hex') AS checksum
FROM pg_temp.encoding('order-1', 1, 'OrderPlaced', '00112233-4455-6677-8899-aabbccddeeff',
                      sha256(convert_to('{"total": 42}', 'UTF8')), NULL, '2026-01-01 00:00:00+00') AS e;
SELECT t AS tenant, encode(sha256(pg_temp.encoding2('order-1', 1, 'OrderPlaced', '00112233-4455-6677-8899-aabbccddeeff',
                      sha256(convert_to('{"total": 42}', 'UTF8')), NULL, '2026-01-01 00:00:00+00', t, tags)
                      || decode(repeat('00', 32), 'hex')), 'hex') AS checksum
FROM (VALUES (NULL, NULL), ('acme', NULL), ('acme', ARRAY['course:7', 'student:42'])) v(t, tags);

-- Streams of five events each.
SELECT s AS stream_id, last_version
FROM unnest(ARRAY['audit-sound', 'audit-payload', 'audit-missing', 'audit-tail', 'audit-versions',
                  'audit-contents', 'audit-copy', 'audit-checksum', 'audit-row-version',
                  'audit-row-checksum', 'audit-orphan']) s,
     allsource.append_batch(s, (SELECT jsonb_agg(jsonb_build_object(
         'type', 'Step' || i, 'payload', jsonb_build_object('n', i),
         'metadata', CASE WHEN i % 2 = 0 THEN jsonb_build_object('m', i) END,
         'tags', CASE WHEN i % 2 = 1 THEN jsonb_build_array('step:' || i, 'audit') END)) FROM generate_series(1, 5) i),
         expected_version => 0);

-- Anyone can recompute every checksum from a plain SELECT.
SELECT stream_id, bool_and(checksum = sha256(pg_temp.encoding2(
           stream_id, version, event_type, event_id, sha256(convert_to(payload::text, 'UTF8')),
           sha256(convert_to(metadata::text, 'UTF8')), created_at, tenant_id, tags) || previous)) AS every_checksum_recomputed
FROM (SELECT e.*, lag(checksum, 1, decode(repeat('00', 32), 'hex'))
                  OVER (PARTITION BY stream_id ORDER BY version) AS previous
      FROM allsource.events e WHERE tenant_id = 'audit') e
GROUP BY stream_id ORDER BY stream_id;

-- Sound: every event checked, no problem.
SELECT * FROM allsource.verify_stream('audit-sound');
SELECT allsource.verify_gapless('audit-sound');
SELECT * FROM allsource.verify_all();
-- A stream that does not exist verifies, with nothing checked.
SELECT * FROM allsource.verify_stream('audit-none');
SELECT allsource.verify_gapless('audit-none');

-- Damage, done as a superuser in replica mode (how a restore writes, the
-- one way around the write guard).
SET session_replication_role = replica;
-- A payload changed.
UPDATE allsource.events SET payload = '{"n": -3}' WHERE stream_id = 'audit-payload' AND version = 3;
-- An event removed, in the middle and at the end.
DELETE FROM allsource.events WHERE stream_id = 'audit-missing' AND version = 3;
DELETE FROM allsource.events WHERE stream_id = 'audit-tail' AND version = 5;
-- Two events exchanged: their versions, or their contents.
UPDATE allsource.events SET version = -2 WHERE stream_id = 'audit-versions' AND version = 2;
UPDATE allsource.events SET version = 2 WHERE stream_id = 'audit-versions' AND version = 3;
UPDATE allsource.events SET version = 3 WHERE stream_id = 'audit-versions' AND version = -2;
UPDATE allsource.events e SET event_type = o.event_type, event_id = o.event_id, payload = o.payload,
                              metadata = o.metadata, created_at = o.created_at, tags = o.tags
FROM allsource.events o
WHERE e.stream_id = 'audit-contents' AND o.stream_id = 'audit-contents'
  AND (e.version, o.version) IN ((2, 3), (3, 2));
-- A checksum copied from another event, and one changed.
UPDATE allsource.events e SET checksum = o.checksum
FROM allsource.events o
WHERE e.stream_id = 'audit-copy' AND e.version = 4 AND o.stream_id = 'audit-copy' AND o.version = 2;
UPDATE allsource.events SET checksum = sha256('forged') WHERE stream_id = 'audit-checksum' AND version = 4;
-- The stream row's version and last checksum.
UPDATE allsource.streams SET version = 6 WHERE stream_id = 'audit-row-version';
UPDATE allsource.streams SET last_checksum = sha256('forged') WHERE stream_id = 'audit-row-checksum';
-- The stream row removed.
DELETE FROM allsource.streams WHERE stream_id = 'audit-orphan';
RESET session_replication_role;

-- What verify_stream reports for each.
SELECT s AS stream_id, v.*
FROM unnest(ARRAY['audit-sound', 'audit-payload', 'audit-missing', 'audit-tail', 'audit-versions',
                  'audit-contents', 'audit-copy', 'audit-checksum', 'audit-row-version',
                  'audit-row-checksum', 'audit-orphan']) WITH ORDINALITY AS u(s, n),
     allsource.verify_stream(s) v
ORDER BY n;
-- verify_gapless only looks at versions and the stream row's version.
SELECT s AS stream_id, allsource.verify_gapless(s)
FROM unnest(ARRAY['audit-sound', 'audit-payload', 'audit-missing', 'audit-tail', 'audit-versions',
                  'audit-contents', 'audit-copy', 'audit-checksum', 'audit-row-version',
                  'audit-row-checksum', 'audit-orphan']) WITH ORDINALITY AS u(s, n)
ORDER BY n;
-- verify_all: one row per stream that fails (events without a stream row
-- included), none for the sound one.
-- The streams' findings; the store's own part (stream_id NULL) names how many
-- registry rows the damage above left pointing at no event, a number that
-- depends on which rows the swaps matched: only that it is found is shown.
SELECT * FROM allsource.verify_all() WHERE stream_id IS NOT NULL;
SELECT count(*) = 1 AS registry_damage_found FROM allsource.verify_all()
WHERE stream_id IS NULL AND problem LIKE '% rows of allsource.event_ids point at no event with their id%';

-- Every verify function scopes to the session's tenant: without it, none of
-- these streams exists.
RESET allsource.tenant;
SELECT * FROM allsource.verify_stream('audit-payload');
SELECT allsource.verify_gapless('audit-missing');
SELECT count(*) AS audit_failures FROM allsource.verify_all() WHERE stream_id LIKE 'audit-%';

-- Argument errors.
SELECT * FROM allsource.verify_stream(NULL);
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.verify_stream('');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.verify_stream(repeat('s', 256));
\echo SQLSTATE :SQLSTATE
SELECT allsource.verify_gapless(NULL);
\echo SQLSTATE :SQLSTATE
SELECT allsource.verify_gapless('');
\echo SQLSTATE :SQLSTATE
SELECT allsource.verify_gapless(repeat('s', 256));
\echo SQLSTATE :SQLSTATE
