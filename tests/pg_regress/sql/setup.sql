-- setup: runs first, in a freshly created database (cargo pgrx regress runs
-- setup.sql only when it creates the database; tests/pg_regress/run.sh always
-- has it recreated). Every other file depends on this one only and writes
-- streams of its own, so any file can run alone after it.
--
-- Conventions of every file: errors show psql's default message, DETAIL and
-- HINT (no CONTEXT: it names internal helpers and PL/pgSQL line numbers),
-- followed by their SQLSTATE (\echo SQLSTATE :SQLSTATE). Nothing that varies
-- between runs is shown: positions relative to :p0, the last position handed
-- out before the file started; no created_at, checksums or generated ids.
CREATE EXTENSION allsource;
SELECT extname, extversion, extnamespace::regnamespace AS schema
FROM pg_extension WHERE extname = 'allsource';

-- The roles the tests act as. Roles are cluster-wide and outlive the
-- database, so they are dropped first (allsource_reader and allsource_writer,
-- created by CREATE EXTENSION, are kept on purpose: see tenants_roles).
DROP ROLE IF EXISTS regress_reader, regress_writer, regress_nobody;
CREATE ROLE regress_reader;
GRANT allsource_reader TO regress_reader;
CREATE ROLE regress_writer;
GRANT allsource_writer TO regress_writer;
CREATE ROLE regress_nobody;

-- The server the suite runs on: AllSource preloaded, its ingest workers
-- appending in this database.
SELECT current_setting('shared_preload_libraries') AS shared_preload_libraries,
       current_setting('allsource.database') = current_database() AS workers_append_here,
       current_setting('allsource.ingest_workers') AS ingest_workers;

-- For the files that use the ingest queue: polls (at most 30 s) until the
-- worker is in the given state with that many events queued and not yet
-- taken, and returns what it last saw. After this database is (re)created
-- the worker needs a moment to connect to it.
CREATE SCHEMA regress;
CREATE FUNCTION regress.wait_for_worker(wanted_state text, wanted_queued bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    seen text;
BEGIN
    FOR i IN 1 .. 3000 LOOP
        SELECT format('%s, %s queued', state, queued_events) INTO seen
        FROM allsource.ingest_workers() WHERE worker = 0;
        EXIT WHEN seen = format('%s, %s queued', wanted_state, wanted_queued);
        PERFORM pg_sleep(0.01);
    END LOOP;
    RETURN seen;
END
$$;
