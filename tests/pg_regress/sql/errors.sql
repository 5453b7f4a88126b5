-- errors: what PostgreSQL itself refuses before AllSource runs (the
-- Errors table of docs/sql-reference.md: 22P02, 22003, 22P05, 54001), what it refuses around
-- AllSource (25006, 42883), and 0A000 for PREPARE TRANSACTION. The other
-- SQLSTATEs are shown where their function is: ZA001, ZA003, 22023 and 54000
-- in append, ZA002 in lifecycle, 42501 in tenants_roles and write_guard,
-- 0A000 for reads in reads, 53400 and 55000 in queue. Streams err-*.
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT last_value - (NOT is_called)::int AS p0 FROM allsource.event_position \gset

-- 22P02: text that is not JSON never reaches AllSource.
SELECT * FROM allsource.append('err-1', 'T', '{"total": ');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.append_batch('err-1', '[{"type": "T", "payload": 1}');
\echo SQLSTATE :SQLSTATE
-- ... nor does an id that is not a UUID.
SELECT * FROM allsource.append('err-1', 'T', '{}', event_id => 'not-a-uuid');
\echo SQLSTATE :SQLSTATE

-- 22003: a number out of range for bigint or int.
SELECT * FROM allsource.append('err-1', 'T', '{}', expected_version => '9223372036854775808');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.read_stream('err-1', max_count => '2147483648');
\echo SQLSTATE :SQLSTATE

-- 22P05: a \u0000 escape, which jsonb cannot store.
SELECT * FROM allsource.append('err-1', 'T', '{"a": "\u0000"}');
\echo SQLSTATE :SQLSTATE

-- 54001: JSON nested beyond the stack limit.
SELECT * FROM allsource.append('err-1', 'T', (repeat('[', 1000000) || repeat(']', 1000000))::jsonb);
\echo SQLSTATE :SQLSTATE

-- 42883: argument names are part of the interface; a wrong one finds no function.
SELECT * FROM allsource.append('err-1', 'T', '{}', expected => 0);
\echo SQLSTATE :SQLSTATE

-- 25006: writing in a read-only transaction (as on a hot standby).
BEGIN READ ONLY;
SELECT * FROM allsource.append('err-1', 'T', '{}');
\echo SQLSTATE :SQLSTATE
ROLLBACK;
BEGIN READ ONLY;
SELECT * FROM allsource.append_batch('err-1', '[{"type": "T", "payload": 1}]');
\echo SQLSTATE :SQLSTATE
ROLLBACK;
-- ... also to a stream that has its row already.
SELECT version FROM allsource.append('err-ro', 'T', '{}');
BEGIN READ ONLY;
SELECT * FROM allsource.append('err-ro', 'T', '{}');
\echo SQLSTATE :SQLSTATE
ROLLBACK;
SELECT allsource.stream_version('err-ro');
-- Reading is fine.
BEGIN READ ONLY;
SELECT count(*) FROM allsource.read_stream('err-1');
SELECT allsource.stream_version('err-1');
ROLLBACK;

-- 0A000: a transaction that appended cannot be prepared (two-phase commit),
-- the watermark cannot follow its events; it rolls back.
BEGIN;
SELECT version FROM allsource.append('err-2', 'T', '{}');
PREPARE TRANSACTION 'regress_appended';
\echo SQLSTATE :SQLSTATE
SELECT allsource.stream_version('err-2'), count(*) AS prepared FROM pg_prepared_xacts;

-- Nothing of this file was written but err-ro's first event.
SELECT count(*) FROM allsource.streams WHERE stream_id LIKE 'err-%' AND stream_id <> 'err-ro';
