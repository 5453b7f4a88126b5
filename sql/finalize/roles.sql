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
GRANT SELECT, INSERT ON allsource.events, allsource.event_ids, allsource.event_tags TO allsource_worker;
GRANT SELECT, UPDATE ON allsource.published_watermark TO allsource_worker;
GRANT USAGE, SELECT ON SEQUENCE allsource.event_position TO allsource_worker;
-- The workers append for every tenant.
CREATE POLICY worker_rows ON allsource.streams TO allsource_worker USING (true) WITH CHECK (true);
CREATE POLICY worker_rows ON allsource.events TO allsource_worker USING (true) WITH CHECK (true);
