-- write_guard: INSERT, UPDATE, DELETE, TRUNCATE and COPY on every table of the
-- extension fail with 42501 for anything but AllSource's own functions, the
-- superuser running this file included (the roles' own privileges refuse
-- them earlier: see tenants_roles), but for what a restore sends: COPY
-- allsource.… FROM STDIN (docs/operations.md, "Backup"). Streams guard-*.
\set VERBOSITY default
\set SHOW_CONTEXT never

SELECT version FROM allsource.append('guard-1', 'T', '{"a": 1}');
SELECT allsource.save_snapshot('guard-1', 1, '{}');
SELECT allsource.delete_stream('guard-2', hard => true);

-- allsource.events, its partitions, allsource.streams.
INSERT INTO allsource.events (position, partition_id, stream_id, version, event_id, event_type, payload, created_at, checksum)
SELECT 1000000, partition_id, stream_id, 2, '6e6e6e6e-0000-4000-8000-000000000001', 'Forged', '{}', now(), checksum
FROM allsource.events WHERE stream_id = 'guard-1';
\echo SQLSTATE :SQLSTATE
UPDATE allsource.events SET payload = '{"a": 2}' WHERE stream_id = 'guard-1';
\echo SQLSTATE :SQLSTATE
-- Statement triggers: refused even when no row would change.
DELETE FROM allsource.events WHERE false;
\echo SQLSTATE :SQLSTATE
TRUNCATE allsource.events;
\echo SQLSTATE :SQLSTATE
SELECT format('UPDATE allsource.events_p%s SET payload = %L WHERE stream_id = %L',
              allsource.partition_for('guard-1'), '{"a": 2}', 'guard-1') AS partition_update \gset
:partition_update;
\echo SQLSTATE :SQLSTATE
DELETE FROM allsource.events_p0;
\echo SQLSTATE :SQLSTATE
TRUNCATE allsource.events_p31;
\echo SQLSTATE :SQLSTATE
INSERT INTO allsource.streams (stream_id, partition_id) VALUES ('guard-3', 0);
\echo SQLSTATE :SQLSTATE
UPDATE allsource.streams SET deleted_at = NULL, erased_at = NULL WHERE stream_id = 'guard-2';
\echo SQLSTATE :SQLSTATE
DELETE FROM allsource.streams WHERE stream_id = 'guard-1';
\echo SQLSTATE :SQLSTATE
-- A restore's COPY … FROM STDIN passes (what it loads must verify); a COPY
-- from a server file is no restore.
COPY allsource.streams (stream_id, partition_id) FROM stdin;
guard-4	0
\.
\echo SQLSTATE :SQLSTATE
COPY allsource.streams (stream_id, partition_id) FROM '/dev/null';
\echo SQLSTATE :SQLSTATE
-- The other tables.
INSERT INTO allsource.event_ids VALUES ('6e6e6e6e-0000-4000-8000-000000000002', 0, 1000000);
\echo SQLSTATE :SQLSTATE
DELETE FROM allsource.event_ids;
\echo SQLSTATE :SQLSTATE
-- A forged or deleted tag row would change what append_if's conditions see.
INSERT INTO allsource.event_tags VALUES ('course:7', '', 1000000, 0, '6e6e6e6e-0000-4000-8000-000000000003', 'Forged', '{course:7}');
\echo SQLSTATE :SQLSTATE
DELETE FROM allsource.event_tags;
\echo SQLSTATE :SQLSTATE
UPDATE allsource.snapshots SET state = '{"forged": true}';
\echo SQLSTATE :SQLSTATE
DELETE FROM allsource.snapshots WHERE stream_id = 'guard-1';
\echo SQLSTATE :SQLSTATE
DELETE FROM allsource.erased_events;
\echo SQLSTATE :SQLSTATE
TRUNCATE allsource.erased_events;
\echo SQLSTATE :SQLSTATE
-- Writable CTEs and functions are direct writes too.
WITH gone AS (DELETE FROM allsource.snapshots RETURNING 1) SELECT count(*) FROM gone;
\echo SQLSTATE :SQLSTATE
DO $$ BEGIN UPDATE allsource.streams SET version = 0 WHERE stream_id = 'guard-1'; END $$;
\echo SQLSTATE :SQLSTATE

-- Nothing changed (but the row the COPY loaded).
SELECT stream_id, version, deleted_at IS NOT NULL AS deleted, erased_at IS NOT NULL AS erased
FROM allsource.streams WHERE stream_id LIKE 'guard-%' ORDER BY 1;
SELECT version, payload FROM allsource.events WHERE stream_id = 'guard-1';
SELECT * FROM allsource.load_snapshot('guard-1');
SELECT * FROM allsource.verify_stream('guard-1');
-- The functions still write.
SELECT version FROM allsource.append('guard-1', 'T', '{"a": 2}');
