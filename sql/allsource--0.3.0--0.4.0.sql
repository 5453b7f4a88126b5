-- AllSource 0.3.0 → 0.4.0. A released script is never edited: the next
-- change goes into the next script. (Not released yet: sql/releases.tsv has
-- no 0.4.0 line, so changes still go here.)
\echo Use "ALTER EXTENSION allsource UPDATE TO '0.4.0'" to load this file. \quit

-- ---------------------------------------------------------------------------
-- Data: tenants, encoding, restores (issue 16, items 13-15)
-- ---------------------------------------------------------------------------

-- CREATE EXTENSION now refuses a database that is not UTF8 (sql/schema.sql);
-- an existing install in one cannot be repaired by an update: say so.
DO $encoding$
BEGIN
    IF pg_catalog.getdatabaseencoding() <> 'UTF8' THEN
        RAISE WARNING 'AllSource needs a UTF8 database: % is %', pg_catalog.current_database(), pg_catalog.getdatabaseencoding()
            USING DETAIL = 'Non-ASCII text may already be stored other than it was sent, and verify_all may fail.',
                  HINT = 'Move the store to a database created with ENCODING ''UTF8'' (README "Database encoding").';
    END IF;
END
$encoding$;

-- current_tenant() is Rust now: it refuses a tenant that is not UTF-8 (22023)
-- as every read and write does, instead of returning the raw bytes.
CREATE OR REPLACE FUNCTION allsource."current_tenant"() RETURNS TEXT
STRICT STABLE PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'current_tenant_wrapper';

-- The write guard lets a restore's COPY ... FROM STDIN through: a change in
-- Rust only, refuse_direct_write() keeps its definition.
