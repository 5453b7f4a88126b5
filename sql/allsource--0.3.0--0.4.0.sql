-- AllSource 0.3.0 → 0.4.0. A released script is never edited: the next
-- change goes into the next script. (Not released yet: sql/releases.tsv has
-- no 0.4.0 line, so changes still go here.)
\echo Use "ALTER EXTENSION allsource UPDATE TO '0.4.0'" to load this file. \quit

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
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM allsource._check_stream_id(stream_head.stream_id);
    RETURN QUERY
        SELECT s.version, coalesce(s.tombstone_checksum, s.last_checksum) FROM allsource.streams s
        WHERE s.stream_id OPERATOR(pg_catalog.=) stream_head.stream_id
          AND allsource._in_tenant(s.tenant_id);
END
$$;
COMMENT ON FUNCTION allsource.stream_head(text) IS
    'The stream''s version and head checksum (the last event''s, or the tombstone''s once deleted); no row for an unknown stream. Record it and check it later with verify_anchor.';
COMMENT ON FUNCTION allsource.verify_all() IS
    'verify_stream over every stream of the session''s tenant, and the partitions and event id registry: one row per stream that does not hold (stream_id NULL for the store''s own parts).';
COMMENT ON FUNCTION allsource.verify_all_tenants() IS
    'verify_all over every tenant''s streams, with each failing stream''s tenant: for the extension''s owner and allsource_auditor.';
COMMENT ON FUNCTION allsource.verify_anchor(text, bigint, bytea) IS
    'verify_stream, and whether the stream still holds a head recorded earlier with stream_head (checksum at version): catches a cut-off tail or a removed tombstone.';
