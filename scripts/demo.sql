-- A short tour. scripts/run.sh runs it on every start, in the database it
-- tells you to connect to: it drops and changes nothing, and each run writes
-- streams of its own (order-demoN and sensor-demoN for run N).
SET client_min_messages = warning;  -- no "already exists" on the next runs
CREATE EXTENSION IF NOT EXISTS allsource;
ALTER EXTENSION allsource UPDATE;
RESET client_min_messages;
SELECT format('order-demo%s', count(*) + 1) AS order_stream,
       format('sensor-demo%s', count(*) + 1) AS sensor_stream,
       allsource.watermark() AS since
FROM allsource.streams WHERE stream_id LIKE 'order-demo%' \gset

-- Append two events to a new stream; expected_version => 0 means "must be new".
SELECT * FROM allsource.append(:'order_stream', 'OrderPlaced', '{"total": 42}', expected_version => 0);
SELECT * FROM allsource.append(:'order_stream', 'OrderPaid', '{"amount": 42}', expected_version => 1);

-- A writer that still believes the stream is at version 1 is refused (ZA001).
\set VERBOSITY verbose
SELECT * FROM allsource.append(:'order_stream', 'OrderCancelled', '{}', expected_version => 1);
\set VERBOSITY default

-- Several events at once, all or nothing.
SELECT * FROM allsource.append_batch(:'order_stream', '[
  {"type": "ItemShipped", "payload": {"sku": "A-1"}},
  {"type": "ItemShipped", "payload": {"sku": "B-7"}, "metadata": {"carrier": "post"}}
]', expected_version => 2);

-- Read it back.
SELECT version, position, event_type, payload, metadata
FROM allsource.read_stream(:'order_stream');
SELECT allsource.stream_version(:'order_stream') AS version,
       allsource.partition_for(:'order_stream') AS partition;

-- Fast ingestion: enqueue returns a ticket at once, a background worker appends
-- queued events in batches; the ticket tells what became of the event.
SELECT * FROM allsource.await_ticket(allsource.enqueue(:'sensor_stream', 'Reading', '{"celsius": 21.5}'));
SELECT events_appended, appends, batches, enqueued, conflicts, worker_commits FROM allsource.stats();

-- The global order since this run began, up to the watermark, and the hash chain verified.
SELECT allsource.watermark();
SELECT position, stream_id, event_type FROM allsource.read_all(after_position => :since);
SELECT * FROM allsource.verify_stream(:'order_stream');
