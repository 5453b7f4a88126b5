-- partitions: partition_count, partition_for (the test vectors of
-- docs/sql-reference.md and its formula), partition_stats. Streams part-*.
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT last_value - (NOT is_called)::int AS p0 FROM allsource.event_position \gset

-- Fixed at CREATE EXTENSION by allsource.partitions (default 32).
SELECT allsource.partition_count();

-- The test vectors of docs/sql-reference.md. Without a count, the extension's own.
SELECT stream_id, count, allsource.partition_for(stream_id, count) AS partition
FROM (VALUES ('order-1', 32), ('order-1', 7), ('customer-42', 32), ('customer-42', 1024),
             ('Äpfel-ünd-Birnen', 32), ('order-1', 1)) AS v(stream_id, count);
SELECT allsource.partition_for('order-1') AS order_1, allsource.partition_for('customer-42', NULL) AS customer_42;
-- The hash: the first 8 bytes of SHA-256 over the UTF-8 bytes, big-endian
-- unsigned, modulo the count; the same in SQL for every count 1..1024.
SELECT count(*) AS checked,
       count(*) FILTER (WHERE allsource.partition_for(s, n) <>
           (('x' || left(encode(sha256(convert_to(s, 'UTF8')), 'hex'), 16))::bit(64)::bigint::numeric
            + CASE WHEN ('x' || left(encode(sha256(convert_to(s, 'UTF8')), 'hex'), 16))::bit(64)::bigint < 0
                   THEN 18446744073709551616 ELSE 0 END) % n) AS mismatches
FROM unnest(ARRAY['order-1', 'customer-42', 'Äpfel-ünd-Birnen', 'a', 'part-x', repeat('z', 255)]) s,
     generate_series(1, 1024) n;
-- The empty id is not a stream id (docs/sql-reference.md shows its hash all the same).
SELECT allsource.partition_for('');
\echo SQLSTATE :SQLSTATE
SELECT allsource.partition_for(NULL);
\echo SQLSTATE :SQLSTATE
SELECT allsource.partition_for(repeat('s', 256));
\echo SQLSTATE :SQLSTATE
SELECT allsource.partition_for('order-1', 0);
\echo SQLSTATE :SQLSTATE
SELECT allsource.partition_for('order-1', 1025);
\echo SQLSTATE :SQLSTATE
SELECT allsource.partition_for('order-1', -1);
\echo SQLSTATE :SQLSTATE
-- allsource.partitions is read by CREATE EXTENSION only; out of range is refused.
SET allsource.partitions = 0;
\echo SQLSTATE :SQLSTATE
SET allsource.partitions = 8;
SELECT allsource.partition_count();
RESET allsource.partitions;

-- partition_stats: one row per partition, empty ones included.
SELECT count(*) AS partitions, min(partition_id), max(partition_id),
       bool_and(total_bytes > 0) AS all_have_bytes
FROM allsource.partition_stats();
CREATE TEMP TABLE before AS SELECT * FROM allsource.partition_stats();
SELECT last_version FROM allsource.append_batch('part-a', '[{"type": "T", "payload": 1}, {"type": "T", "payload": 2}, {"type": "T", "payload": 3}]');
SELECT version FROM allsource.append('part-b', 'T', '{}');
SELECT version FROM allsource.append('part-c', 'T', '{}');
SELECT allsource.delete_stream('part-c');
SELECT allsource.delete_stream('part-d');
-- What changed: streams (tombstones included), events (a stream's version),
-- and the last position, in the partitions those streams live in (other
-- files' streams may share them: differences only).
SELECT s AS stream_id, allsource.partition_for(s) AS partition_id
FROM unnest(ARRAY['part-a', 'part-b', 'part-c', 'part-d']) s ORDER BY 2, 1;
SELECT a.partition_id, a.stream_count - b.stream_count AS new_streams, a.event_count - b.event_count AS new_events,
       CASE WHEN a.last_position IS DISTINCT FROM b.last_position THEN a.last_position - :p0 END AS new_last_position
FROM allsource.partition_stats() a JOIN before b USING (partition_id)
WHERE (a.stream_count, a.event_count) <> (b.stream_count, b.event_count) OR a.last_position IS DISTINCT FROM b.last_position
ORDER BY 1;
