-- queue: enqueue, await_ticket and ingest_workers on a server that preloads
-- AllSource with allsource.database naming this database (one worker, the
-- default). Tickets are never shown: they come from the clock. Streams sensor-*.
-- (await_ticket's NOTICE for a rejected ticket names the ticket, so it stays
-- below client_min_messages = warning, which cargo pgrx regress sets.)
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT last_value - (NOT is_called)::int AS p0 FROM allsource.event_position \gset

-- One worker, connected (it may still be starting after this database was created).
SELECT regress.wait_for_worker('idle', 0);
SELECT worker, pid IS NOT NULL AS running, state, queued_events FROM allsource.ingest_workers();

-- enqueue returns a ticket at once; await_ticket waits for the outcome.
SELECT allsource.enqueue('sensor-1', 'Reading', '{"value": 1}', metadata => '{"unit": "C"}',
                         expected_version => 0, event_id => '5e5e5e5e-0000-4000-8000-000000000001') AS t1 \gset
SELECT status, version, position - :p0 AS position FROM allsource.await_ticket(:t1);
SELECT position - :p0 AS position, version, event_id, event_type, payload, metadata FROM allsource.read_stream('sensor-1');
-- The result stays: awaiting again gives the same answer.
SELECT status, version, position - :p0 AS position FROM allsource.await_ticket(:t1, timeout_ms => 0);

-- Many in flight, one wait: a lane settles its tickets in queue order, and a
-- stream's events are appended in the order they were enqueued.
SELECT min(t) AS first_ticket, max(t) AS last_ticket
FROM (SELECT allsource.enqueue('sensor-2', 'Reading', jsonb_build_object('value', i)) AS t
      FROM generate_series(1, 5) i) s \gset
SELECT :last_ticket > :first_ticket AS tickets_increase;
SELECT status, version, position - :p0 AS position FROM allsource.await_ticket(:last_ticket);
SELECT status, version, position - :p0 AS position FROM allsource.await_ticket(:first_ticket, 0);
SELECT version, payload FROM allsource.read_stream('sensor-2');

-- conflict: the expected version did not hold; version is the stream's.
SELECT allsource.enqueue('sensor-1', 'Reading', '{"value": 2}', expected_version => 0) AS t \gset
SELECT * FROM allsource.await_ticket(:t);
-- An idempotent repeat: the original's version and position.
SELECT allsource.enqueue('sensor-1', 'Reading', '{"value": 1}', expected_version => 0,
                         event_id => '5e5e5e5e-0000-4000-8000-000000000001') AS t \gset
SELECT status, version, position - :p0 AS position FROM allsource.await_ticket(:t);
-- rejected: an event id of another event (ZA003), a deleted stream (ZA002),
-- another tenant's stream (42501).
SELECT allsource.enqueue('sensor-1', 'Reading', '{"value": 99}',
                         event_id => '5e5e5e5e-0000-4000-8000-000000000001') AS t \gset
SELECT * FROM allsource.await_ticket(:t);
SELECT allsource.delete_stream('sensor-3');
SELECT allsource.enqueue('sensor-3', 'Reading', '{}') AS t \gset
SELECT * FROM allsource.await_ticket(:t);
SET allsource.tenant = 'acme';
SELECT allsource.enqueue('sensor-1', 'Reading', '{}') AS t \gset
SELECT * FROM allsource.await_ticket(:t);
-- A queued event carries its session's tenant.
SELECT allsource.enqueue('sensor-acme', 'Reading', '{}') AS t \gset
SELECT status, version FROM allsource.await_ticket(:t);
SELECT stream_id, tenant_id FROM allsource.read_stream('sensor-acme');
RESET allsource.tenant;
SELECT count(*) FROM allsource.read_stream('sensor-acme');
SELECT allsource.stream_version('sensor-1') AS sensor_1, allsource.stream_version('sensor-3') AS sensor_3;

-- Not transactional: queued when enqueue returns, even if the caller's
-- transaction rolls back.
BEGIN;
SELECT allsource.enqueue('sensor-4', 'Reading', '{"rolled_back": true}') AS t \gset
ROLLBACK;
SELECT status, version FROM allsource.await_ticket(:t);
SELECT version, payload FROM allsource.read_stream('sensor-4');

-- pending: not settled within timeout_ms. Here the worker waits for the lock
-- on sensor-4's stream row, which this transaction holds until it commits
-- (a minute at most here: by default it gives up after 200 ms, see below).
ALTER SYSTEM SET allsource.ingest_lock_timeout_ms = 60000;
SELECT pg_reload_conf();
SELECT pg_sleep(1);  -- the worker reloads its configuration when it wakes
BEGIN;
SELECT version FROM allsource.append('sensor-4', 'Reading', '{"direct": true}');
SELECT allsource.enqueue('sensor-4', 'Reading', '{"queued": true}') AS blocked \gset
-- The worker took it and waits.
SELECT regress.wait_for_worker('appending', 0);
SELECT * FROM allsource.await_ticket(:blocked, timeout_ms => 100);

-- 53400: the queue is full. With the worker held, 1 MB events fill the lane
-- (32768 slots of 256 bytes, one of them the held event's): the eighth
-- finds no room.
SAVEPOINT fill;
SELECT allsource.enqueue('sensor-5', 'Blob', jsonb_build_object('blob', repeat('x', 1000000)))
FROM generate_series(1, 9);
\echo SQLSTATE :SQLSTATE
ROLLBACK TO fill;
-- allsource.enqueue_timeout_ms: wait that long for room first.
SET allsource.enqueue_timeout_ms = 200;
SELECT allsource.enqueue('sensor-5', 'Blob', jsonb_build_object('blob', repeat('x', 1000000)));
\echo SQLSTATE :SQLSTATE
ROLLBACK TO fill;
RESET allsource.enqueue_timeout_ms;
-- 54000: an event larger than a lane can ever hold.
SET allsource.max_event_bytes = '16MB';
SELECT allsource.enqueue('sensor-5', 'Blob', jsonb_build_object('blob', repeat('x', 9000000)));
\echo SQLSTATE :SQLSTATE
ROLLBACK TO fill;
RESET allsource.max_event_bytes;
-- Seven events wait behind the held one.
SELECT regress.wait_for_worker('appending', 7);
COMMIT;
ALTER SYSTEM RESET allsource.ingest_lock_timeout_ms;
SELECT pg_reload_conf();
-- Released: everything queued is appended, in queue order.
SELECT status, version FROM allsource.await_ticket(:blocked);
SELECT allsource.enqueue('sensor-5', 'Reading', '{"last": true}') AS t \gset
SELECT status, version FROM allsource.await_ticket(:t, timeout_ms => 60000);
SELECT version, payload FROM allsource.read_stream('sensor-4');
SELECT version, event_type, length(payload->>'blob') AS blob FROM allsource.read_stream('sensor-5');
SELECT regress.wait_for_worker('idle', 0);
-- (Erased, so that the files after this one verify 7 MB less.)
SELECT allsource.delete_stream('sensor-5', hard => true);

-- Argument errors: enqueue checks its arguments like append.
SELECT allsource.enqueue(NULL, 'T', '{}');
\echo SQLSTATE :SQLSTATE
SELECT allsource.enqueue('', 'T', '{}');
\echo SQLSTATE :SQLSTATE
SELECT allsource.enqueue(repeat('s', 256), 'T', '{}');
\echo SQLSTATE :SQLSTATE
SELECT allsource.enqueue('sensor-6', NULL, '{}');
\echo SQLSTATE :SQLSTATE
SELECT allsource.enqueue('sensor-6', '', '{}');
\echo SQLSTATE :SQLSTATE
SELECT allsource.enqueue('sensor-6', 'T', NULL);
\echo SQLSTATE :SQLSTATE
SELECT allsource.enqueue('sensor-6', 'T', '{}', expected_version => -2);
\echo SQLSTATE :SQLSTATE
SET allsource.max_event_bytes = 16;
SELECT allsource.enqueue('sensor-6', 'T', '{"a": "0123456789abcdef"}');
\echo SQLSTATE :SQLSTATE
RESET allsource.max_event_bytes;
SELECT * FROM allsource.await_ticket(NULL);
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.await_ticket(:t, timeout_ms => -1);
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.await_ticket(:t, timeout_ms => NULL);
\echo SQLSTATE :SQLSTATE
-- Tickets from before the server started, and tickets never issued.
SELECT * FROM allsource.await_ticket(1);
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.await_ticket(9223372036854775807);
\echo SQLSTATE :SQLSTATE
-- Nothing was queued by the refused calls.
SELECT count(*) FROM allsource.streams WHERE stream_id = 'sensor-6';

-- 55000: the queue serves allsource.database only.
\set regress_db :DBNAME
DROP DATABASE IF EXISTS regress_elsewhere;
CREATE DATABASE regress_elsewhere;
\c regress_elsewhere
CREATE EXTENSION allsource;
SELECT allsource.enqueue('sensor-1', 'Reading', '{}');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.await_ticket(1);
\echo SQLSTATE :SQLSTATE
-- The rest of AllSource works in any database.
SELECT version FROM allsource.append('sensor-1', 'Reading', '{}');
SELECT allsource.watermark() > 0 AS watermark;
\c :regress_db
DROP DATABASE regress_elsewhere;
