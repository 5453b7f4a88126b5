-- tenants_roles: allsource.tenant and current_tenant(), what every function
-- does with another tenant's stream, row-level security on direct SELECTs,
-- and what allsource_reader, allsource_writer and a role with neither may do.
-- Streams account-*, tenants acme and globex; roles from setup.
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT last_value - (NOT is_called)::int AS p0 FROM allsource.event_position \gset

------------------------------------------------------------------------------
-- Tenants
------------------------------------------------------------------------------
-- Unset or empty: no tenant (NULL).
SELECT allsource.current_tenant() IS NULL AS no_tenant;
SET allsource.tenant = 'acme';
SELECT allsource.current_tenant();
SET allsource.tenant = '';
SELECT allsource.current_tenant() IS NULL AS no_tenant;

-- A new stream belongs to the tenant that first writes it; appends and
-- snapshots record it.
SET allsource.tenant = 'acme';
SELECT version, position - :p0 AS position FROM allsource.append('account-1', 'Opened', '{"owner": "acme"}',
                                                                 event_id => 'acacacac-0000-4000-8000-000000000001');
SELECT last_version FROM allsource.append_batch('account-1', '[{"type": "Deposited", "payload": {"amount": 10}}]');
SELECT allsource.save_snapshot('account-1', 2, '{"balance": 10}');
SELECT version, event_type, tenant_id FROM allsource.read_stream('account-1');
SELECT * FROM allsource.load_snapshot('account-1');
SELECT stream_id, tenant_id FROM allsource.streams WHERE stream_id LIKE 'account-%';
SELECT stream_id, tenant_id FROM allsource.snapshots WHERE stream_id LIKE 'account-%';
SELECT * FROM allsource.verify_stream('account-1');
SELECT allsource.verify_gapless('account-1');
SELECT position - :p0 AS position, stream_id FROM allsource.read_all(:p0);
SELECT position - :p0 AS position, stream_id FROM allsource.read_category('account', :p0);

-- Another tenant: acme's stream looks like one that does not exist to the
-- read and verify functions ...
SET allsource.tenant = 'globex';
SELECT count(*) FROM allsource.read_stream('account-1');
SELECT allsource.stream_version('account-1');
SELECT * FROM allsource.load_snapshot('account-1');
SELECT * FROM allsource.verify_stream('account-1');
SELECT allsource.verify_gapless('account-1');
SELECT count(*) FROM allsource.read_all(:p0);
SELECT count(*) FROM allsource.read_category('account', :p0);
-- ... and writing to it raises 42501.
SELECT * FROM allsource.append('account-1', 'Withdrawn', '{"amount": 10}');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.append_batch('account-1', '[{"type": "Withdrawn", "payload": {"amount": 10}}]');
\echo SQLSTATE :SQLSTATE
SELECT allsource.save_snapshot('account-1', 1, '{}');
\echo SQLSTATE :SQLSTATE
SELECT allsource.delete_stream('account-1');
\echo SQLSTATE :SQLSTATE
SELECT allsource.delete_stream('account-1', hard => true);
\echo SQLSTATE :SQLSTATE
-- globex's own stream.
SELECT version, position - :p0 AS position FROM allsource.append('account-2', 'Opened', '{"owner": "globex"}',
                                                                 event_id => 'acacacac-0000-4000-8000-000000000002');
SELECT position - :p0 AS position, stream_id, tenant_id FROM allsource.read_all(:p0);
-- Event ids are unique across tenants (acme's account-1 holds this one).
SELECT * FROM allsource.append('account-3', 'Opened', '{}', event_id => 'acacacac-0000-4000-8000-000000000001');
\echo SQLSTATE :SQLSTATE

-- Without a tenant, a tenant's stream is another tenant's too.
RESET allsource.tenant;
SELECT count(*) FROM allsource.read_stream('account-1');
SELECT * FROM allsource.append('account-1', 'Withdrawn', '{}');
\echo SQLSTATE :SQLSTATE
-- ... and a stream without a tenant is another tenant's for a tenant.
SELECT version FROM allsource.append('account-4', 'Opened', '{}');
SET allsource.tenant = 'acme';
SELECT * FROM allsource.append('account-4', 'Deposited', '{}');
\echo SQLSTATE :SQLSTATE
-- A tenant name is at most 255 bytes.
SELECT length(set_config('allsource.tenant', repeat('t', 256), false));
SELECT * FROM allsource.append('account-5', 'Opened', '{}');
\echo SQLSTATE :SQLSTATE
RESET allsource.tenant;
SELECT allsource.stream_version('account-1') AS account_1, allsource.stream_version('account-4') AS account_4,
       (SELECT count(*) FROM allsource.streams WHERE stream_id IN ('account-3', 'account-5')) AS refused_streams;

-- Row-level security: direct SELECTs of a role that is neither a superuser
-- nor the owner see the session's tenant's rows only.
SET ROLE regress_reader;
SET allsource.tenant = 'acme';
SELECT stream_id, tenant_id FROM allsource.streams WHERE stream_id LIKE 'account-%' ORDER BY 1;
SELECT stream_id, version FROM allsource.events WHERE stream_id LIKE 'account-%' ORDER BY 1, 2;
SELECT stream_id FROM allsource.snapshots WHERE stream_id LIKE 'account-%';
SET allsource.tenant = 'globex';
SELECT stream_id, tenant_id FROM allsource.streams WHERE stream_id LIKE 'account-%' ORDER BY 1;
SELECT stream_id, version FROM allsource.events WHERE stream_id LIKE 'account-%' ORDER BY 1, 2;
RESET allsource.tenant;
SELECT stream_id, tenant_id FROM allsource.streams WHERE stream_id LIKE 'account-%' ORDER BY 1;
RESET ROLE;

------------------------------------------------------------------------------
-- Roles
------------------------------------------------------------------------------
-- The ingest worker is connected (see setup).
SELECT regress.wait_for_worker('idle', 0);
-- allsource_reader: reads and verifies ...
SET ROLE regress_reader;
SELECT version, event_type FROM allsource.read_stream('account-4');
SELECT allsource.stream_version('account-4');
SELECT count(*) FROM allsource.read_all(:p0);
SELECT count(*) FROM allsource.read_category('account', :p0);
SELECT * FROM allsource.load_snapshot('account-4');
SELECT allsource.watermark() > :p0 AS watermark;
SELECT * FROM allsource.verify_stream('account-4');
SELECT allsource.verify_gapless('account-4');
SELECT count(*) FROM allsource.verify_all() WHERE stream_id LIKE 'account-%';
SELECT allsource.partition_for('account-4') = allsource.partition_for('account-4', 32) AS partition_for,
       allsource.partition_count(), (SELECT count(*) FROM allsource.partition_stats()) AS partition_stats;
SELECT workers_running FROM allsource.stats();
SELECT count(*) FROM allsource.inflight();
SELECT worker FROM allsource.ingest_workers();
-- ... but writes nothing.
SELECT * FROM allsource.append('account-4', 'Deposited', '{}');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.append_batch('account-4', '[{"type": "Deposited", "payload": {}}]');
\echo SQLSTATE :SQLSTATE
SELECT allsource.enqueue('account-4', 'Deposited', '{}');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.await_ticket(1);
\echo SQLSTATE :SQLSTATE
SELECT allsource.delete_stream('account-4');
\echo SQLSTATE :SQLSTATE
SELECT allsource.save_snapshot('account-4', 1, '{}');
\echo SQLSTATE :SQLSTATE
UPDATE allsource.streams SET version = 9 WHERE stream_id = 'account-4';
\echo SQLSTATE :SQLSTATE
SELECT nextval('allsource.event_position');
\echo SQLSTATE :SQLSTATE
-- The erased digests and the id registry are not readable.
SELECT count(*) FROM allsource.erased_events;
\echo SQLSTATE :SQLSTATE
SELECT count(*) FROM allsource.event_ids;
\echo SQLSTATE :SQLSTATE
SELECT count(*) FROM allsource.event_tags;
\echo SQLSTATE :SQLSTATE
RESET ROLE;

-- allsource_writer: writes through the functions ...
SET ROLE regress_writer;
SELECT version, position - :p0 AS position FROM allsource.append('account-4', 'Deposited', '{"amount": 5}');
SELECT last_version FROM allsource.append_batch('account-4', '[{"type": "Withdrawn", "payload": {"amount": 5}}]');
SELECT allsource.save_snapshot('account-4', 3, '{"balance": 0}');
SELECT allsource.enqueue('account-4', 'Closed', '{}') AS t \gset
SELECT status, version FROM allsource.await_ticket(:t);
SELECT allsource.delete_stream('account-4');
SELECT count(*) FROM allsource.verify_all() WHERE stream_id LIKE 'account-%';
-- ... never the tables.
INSERT INTO allsource.snapshots (stream_id, version, state) VALUES ('account-4', 1, '{}');
\echo SQLSTATE :SQLSTATE
DELETE FROM allsource.events WHERE stream_id = 'account-4';
\echo SQLSTATE :SQLSTATE
RESET ROLE;
SELECT stream_id, version, deleted_by FROM allsource.streams WHERE stream_id = 'account-4';

-- A role with neither: no access to the schema at all.
SET ROLE regress_nobody;
SELECT count(*) FROM allsource.events;
\echo SQLSTATE :SQLSTATE
SELECT count(*) FROM allsource.read_stream('account-4');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.append('account-6', 'Opened', '{}');
\echo SQLSTATE :SQLSTATE
RESET ROLE;
