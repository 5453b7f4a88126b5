-- reads: read_stream, stream_version, read_all, read_category, watermark,
-- inflight. Streams order*, invoice-*.
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT last_value - (NOT is_called)::int AS p0 FROM allsource.event_position \gset

SELECT s AS stream_id, r.first_version, r.last_version,
       r.first_position - :p0 AS first_position, r.last_position - :p0 AS last_position
FROM (VALUES (1, 'order-1', '[{"type": "OrderPlaced", "payload": {"total": 42}},
                              {"type": "OrderPaid", "payload": {"amount": 42}},
                              {"type": "OrderShipped", "payload": {}}]'),
             (2, 'invoice-1', '[{"type": "InvoiceSent", "payload": {"total": 42}}]'),
             (3, 'order-1-line-1', '[{"type": "LineAdded", "payload": {"sku": "A"}}]'),
             (4, 'order-2', '[{"type": "OrderPlaced", "payload": {"total": 7}}]'),
             (5, 'order', '[{"type": "CategoryNoted", "payload": {}}]'),
             (6, 'orders-9', '[{"type": "OrderPlaced", "payload": {}}]'),
             (7, 'invoice-1', '[{"type": "InvoicePaid", "payload": {"total": 42}}]'),
             (8, 'order-2', '[{"type": "OrderPaid", "payload": {"amount": 7}}]')) AS v(n, s, events),
     allsource.append_batch(s, events::jsonb) r
ORDER BY n;

------------------------------------------------------------------------------
-- allsource.read_stream, allsource.stream_version
------------------------------------------------------------------------------
-- Rows of allsource.events, oldest first.
SELECT position - :p0 AS position, stream_id, version, event_type, tenant_id, payload, metadata
FROM allsource.read_stream('order-1');
SELECT version, event_type FROM allsource.read_stream('order-1', from_version => 2);
SELECT version, event_type FROM allsource.read_stream('order-1', max_count => 2);
SELECT version, event_type FROM allsource.read_stream('order-1', from_version => 0);
SELECT version, event_type FROM allsource.read_stream('order-1', from_version => 4);
SELECT version, event_type FROM allsource.read_stream('order-1', max_count => 0);
-- Backwards: versions <= from_version, newest first; the latest events with a
-- large from_version.
SELECT version, event_type FROM allsource.read_stream('order-1', 9223372036854775807, 2, backward => true);
SELECT version, event_type FROM allsource.read_stream('order-1', from_version => 2, backward => true);
SELECT version, event_type FROM allsource.read_stream('order-1', from_version => 0, backward => true);
-- Only that stream: not order-1-line-1.
SELECT DISTINCT stream_id FROM allsource.read_stream('order-1');
-- An unknown stream: nothing.
SELECT count(*) FROM allsource.read_stream('order-404');

SELECT allsource.stream_version('order-1') AS order_1, allsource.stream_version('order-404') AS order_404;

-- Argument errors.
SELECT * FROM allsource.read_stream(NULL);
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.read_stream('');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.read_stream(repeat('s', 256));
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.read_stream('order-1', from_version => -1);
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.read_stream('order-1', from_version => NULL);
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.read_stream('order-1', max_count => -1);
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.read_stream('order-1', max_count => NULL);
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.read_stream('order-1', backward => NULL);
\echo SQLSTATE :SQLSTATE
SELECT allsource.stream_version(NULL);
\echo SQLSTATE :SQLSTATE
SELECT allsource.stream_version('');
\echo SQLSTATE :SQLSTATE
SELECT allsource.stream_version(repeat('s', 256));
\echo SQLSTATE :SQLSTATE

------------------------------------------------------------------------------
-- allsource.read_all
------------------------------------------------------------------------------
-- Everything after a position, in position order (this file's events: the
-- earlier files' are at or below :p0).
SELECT position - :p0 AS position, stream_id, version, event_type
FROM allsource.read_all(after_position => :p0);
SELECT position - :p0 AS position, stream_id, version FROM allsource.read_all(:p0, 3);
SELECT position - :p0 AS position, stream_id, version FROM allsource.read_all(:p0 + 8, 100);
SELECT position - :p0 AS position, stream_id, event_type
FROM allsource.read_all(:p0, event_types => ARRAY['OrderPaid', 'InvoiceSent']);
SELECT count(*) FROM allsource.read_all(:p0, event_types => ARRAY[]::text[]);
SELECT count(*) FROM allsource.read_all(:p0, max_count => 0);
-- One partition.
SELECT position - :p0 AS position, stream_id, partition_id = allsource.partition_for('order-1') AS order_1_partition
FROM allsource.read_all(:p0, partition_id => allsource.partition_for('order-1'));
-- The defaults start at the beginning: 1000 rows at most.
SELECT count(*) <= 1000 AS at_most_1000, min(position) AS first_position FROM allsource.read_all();

-- Argument errors.
SELECT * FROM allsource.read_all(after_position => -1);
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.read_all(after_position => NULL);
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.read_all(max_count => -1);
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.read_all(max_count => NULL);
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.read_all(partition_id => 32);
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.read_all(partition_id => -1);
\echo SQLSTATE :SQLSTATE

------------------------------------------------------------------------------
-- allsource.read_category
------------------------------------------------------------------------------
-- The streams named category or category-…: order covers order, order-1,
-- order-1-line-1 and order-2, not orders-9.
SELECT position - :p0 AS position, stream_id, version, event_type
FROM allsource.read_category('order', after_position => :p0);
-- order-1 covers order-1 and order-1-line-1.
SELECT position - :p0 AS position, stream_id, version FROM allsource.read_category('order-1', :p0);
SELECT position - :p0 AS position, stream_id, version FROM allsource.read_category('order', :p0 + 4, 2);
SELECT count(*) FROM allsource.read_category('ord', :p0);
-- Consumer groups: member m of n gets exactly the streams with
-- partition_for(stream_id, n) = m.
SELECT m AS member, string_agg(DISTINCT stream_id, ', ' ORDER BY stream_id) AS streams,
       bool_and(allsource.partition_for(stream_id, 2) = m) AS by_partition_for
FROM generate_series(0, 1) m,
     allsource.read_category('order', :p0, consumer_group_member => m, consumer_group_size => 2)
GROUP BY m ORDER BY m;
SELECT count(*) FROM allsource.read_category('order', :p0, consumer_group_member => 0, consumer_group_size => 1);

-- Argument errors.
SELECT * FROM allsource.read_category(NULL);
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.read_category('');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.read_category(repeat('c', 256));
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.read_category('order', after_position => -1);
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.read_category('order', after_position => NULL);
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.read_category('order', max_count => -1);
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.read_category('order', max_count => NULL);
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.read_category('order', consumer_group_member => 0);
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.read_category('order', consumer_group_size => 2);
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.read_category('order', consumer_group_member => 0, consumer_group_size => 0);
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.read_category('order', consumer_group_member => 0, consumer_group_size => 1025);
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.read_category('order', consumer_group_member => 2, consumer_group_size => 2);
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.read_category('order', consumer_group_member => -1, consumer_group_size => 2);
\echo SQLSTATE :SQLSTATE

------------------------------------------------------------------------------
-- allsource.watermark, allsource.inflight
------------------------------------------------------------------------------
-- Nothing in flight: the watermark is the last position handed out.
SELECT allsource.watermark() - :p0 AS watermark,
       allsource.watermark() = (SELECT last_value FROM allsource.event_position) AS at_last_position;
SELECT * FROM allsource.inflight();
-- An open transaction that appended holds the watermark below its first
-- position; inflight() names it. Its own events are past the watermark, so
-- read_all does not return them until it commits.
BEGIN;
SELECT version, position - :p0 AS position FROM allsource.append('order-3', 'OrderPlaced', '{}');
SELECT version, position - :p0 AS position FROM allsource.append('order-3', 'OrderPaid', '{}');
SELECT allsource.watermark() - :p0 AS watermark;
SELECT pid = pg_backend_pid() AS this_session, lowest_position - :p0 AS lowest_position,
       since BETWEEN now() AND clock_timestamp() AS since_its_first_append
FROM allsource.inflight();
SELECT count(*) FROM allsource.read_all(:p0 + 8);
COMMIT;
SELECT allsource.watermark() - :p0 AS watermark, (SELECT count(*) FROM allsource.inflight()) AS inflight;
SELECT position - :p0 AS position, stream_id, version FROM allsource.read_all(:p0 + 8);
-- A rolled-back append leaves a hole the watermark moves past.
BEGIN;
SELECT version, position - :p0 AS position FROM allsource.append('order-4', 'OrderPlaced', '{}');
ROLLBACK;
SELECT version, position - :p0 AS position FROM allsource.append('order-4', 'OrderPlaced', '{}');
SELECT allsource.watermark() - :p0 AS watermark;
SELECT position - :p0 AS position, stream_id, version FROM allsource.read_all(:p0 + 10);

-- read_all and read_category need READ COMMITTED: 0A000 otherwise.
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT allsource.watermark() - :p0 AS watermark;
SELECT count(*) FROM allsource.read_all(:p0);
\echo SQLSTATE :SQLSTATE
ROLLBACK;
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT count(*) FROM allsource.read_category('order', :p0);
\echo SQLSTATE :SQLSTATE
ROLLBACK;
-- read_stream is not bound to the watermark: any isolation level.
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT count(*) FROM allsource.read_stream('order-1');
ROLLBACK;
