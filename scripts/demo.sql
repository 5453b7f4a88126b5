-- A short tour; scripts/run.sh runs it in a fresh database each time.
DROP EXTENSION IF EXISTS allsource CASCADE;
CREATE EXTENSION allsource;

-- Append two events to a new stream; expected_version => 0 means "must be new".
SELECT * FROM allsource.append('order-1', 'OrderPlaced', '{"total": 42}', expected_version => 0);
SELECT * FROM allsource.append('order-1', 'OrderPaid', '{"amount": 42}', expected_version => 1);

-- A writer that still believes the stream is at version 1 is refused (ZA001).
\set VERBOSITY verbose
SELECT * FROM allsource.append('order-1', 'OrderCancelled', '{}', expected_version => 1);
\set VERBOSITY default

-- Several events at once, all or nothing.
SELECT * FROM allsource.append_batch('order-1', '[
  {"type": "ItemShipped", "payload": {"sku": "A-1"}},
  {"type": "ItemShipped", "payload": {"sku": "B-7"}, "metadata": {"carrier": "post"}}
]', expected_version => 2);

-- Read it back.
SELECT version, position, event_type, payload, metadata
FROM allsource.read_stream('order-1');
SELECT allsource.stream_version('order-1') AS version,
       allsource.partition_for('order-1') AS partition;

-- Fast ingestion: enqueue returns a ticket at once, a background worker appends
-- queued events in batches; the ticket tells what became of the event.
SELECT * FROM allsource.await_ticket(allsource.enqueue('sensor-1', 'Reading', '{"celsius": 21.5}'));
SELECT events_appended, appends, batches, enqueued, conflicts, worker_commits FROM allsource.stats();

-- The global order, up to the watermark, and the hash chain verified.
SELECT allsource.watermark();
SELECT position, stream_id, event_type FROM allsource.read_all(after_position => 0);
SELECT * FROM allsource.verify_stream('order-1');
