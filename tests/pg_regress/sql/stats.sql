-- stats: the server's counters, from a reset, over operations whose effect
-- is known. Latencies and times vary: only whether they are there is shown.
-- Streams stat-*.
\set VERBOSITY default
\set SHOW_CONTEXT never

-- The ingest worker is connected (see setup).
SELECT regress.wait_for_worker('idle', 0);

SELECT allsource.stats_reset();
\x on
SELECT events_appended, appends, batches, enqueued, conflicts, rejects, queue_depth, worker_commits,
       workers_running, append_p50_us, append_p99_us, ticket_p50_us, ticket_p99_us, since <= now() AS since_reset
FROM allsource.stats();
\x off

-- Counted at commit: an append, a batch of three, an idempotent repeat (a
-- call, no event).
SELECT version FROM allsource.append('stat-1', 'T', '{}', event_id => '57a757a7-0000-4000-8000-000000000001');
SELECT last_version FROM allsource.append_batch('stat-1', '[{"type": "T", "payload": 1}, {"type": "T", "payload": 2}, {"type": "T", "payload": 3}]');
SELECT version FROM allsource.append('stat-1', 'T', '{}', event_id => '57a757a7-0000-4000-8000-000000000001');
-- Not counted: a rolled-back append, a bad argument.
BEGIN;
SELECT version FROM allsource.append('stat-1', 'T', '{}');
ROLLBACK;
SELECT version FROM allsource.append('', 'T', '{}');
-- Counted when they happen: a conflict, rejects (a deleted stream, a reused id).
SELECT version FROM allsource.append('stat-1', 'T', '{}', expected_version => 1);
SELECT allsource.delete_stream('stat-2');
SELECT version FROM allsource.append('stat-2', 'T', '{}');
SELECT version FROM allsource.append('stat-3', 'T', '{"other": true}', event_id => '57a757a7-0000-4000-8000-000000000001');
-- Through the queue: two events appended, one conflict, one reject.
SELECT allsource.enqueue('stat-4', 'T', '{}') AS t \gset
SELECT status FROM allsource.await_ticket(:t);
SELECT allsource.enqueue('stat-4', 'T', '{}') AS t \gset
SELECT status FROM allsource.await_ticket(:t);
SELECT allsource.enqueue('stat-4', 'T', '{}', expected_version => 0) AS t \gset
SELECT status FROM allsource.await_ticket(:t);
SELECT allsource.enqueue('stat-2', 'T', '{}') AS t \gset
SELECT status FROM allsource.await_ticket(:t);

\x on
SELECT events_appended, appends, batches, enqueued, conflicts, rejects, queue_depth, worker_commits,
       workers_running, append_p50_us > 0 AND append_p99_us >= append_p50_us AS append_latencies,
       ticket_p50_us > 0 AND ticket_p99_us >= ticket_p50_us AS ticket_latencies
FROM allsource.stats();
\x off

-- A reset sets everything back to zero.
SELECT allsource.stats_reset();
SELECT events_appended, appends, batches, enqueued, conflicts, rejects, worker_commits,
       append_p50_us, ticket_p50_us
FROM allsource.stats();
