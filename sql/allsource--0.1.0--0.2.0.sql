-- AllSource 0.1.0 → 0.2.0. A released script is never edited: the next
-- change goes into the next script.
\echo Use "ALTER EXTENSION allsource UPDATE TO '0.2.0'" to load this file. \quit

-- Who erased a stream (a hard delete can follow another role's soft delete).
ALTER TABLE allsource.streams ADD COLUMN erased_by text;

-- Every function and the main tables described in the catalog (\df+, \dd,
-- \dt+), as a fresh 0.2.0 install has them.
COMMENT ON FUNCTION allsource.append(text, text, jsonb, jsonb, bigint, uuid) IS
    'Appends one event to the stream when its version is expected_version (NULL: any; 0: no stream yet; -1: the stream exists); returns the event''s version and position. ZA001 on a wrong version.';
COMMENT ON FUNCTION allsource.append_batch(text, jsonb, bigint) IS
    'Appends a JSON array of events ({"type", "payload", "metadata", "id"}) to the stream at once, all or nothing; returns the first and last versions and positions.';
COMMENT ON FUNCTION allsource.enqueue(text, text, jsonb, jsonb, bigint, uuid) IS
    'Hands one event to the ingest workers, which append it in batches; returns a ticket for await_ticket. Nothing is written until the ticket says committed.';
COMMENT ON FUNCTION allsource.await_ticket(bigint, int) IS
    'Waits up to timeout_ms for an enqueued event: status committed (with version and position), conflict (with the stream''s version), rejected (a NOTICE gives the SQLSTATE), or pending.';
COMMENT ON FUNCTION allsource.delete_stream(text, boolean) IS
    'Deletes the stream: soft leaves a tombstone (no more appends, nothing to read); hard also erases payloads, metadata and the snapshot while the chain stays verifiable. Returns the last version.';
COMMENT ON FUNCTION allsource.save_snapshot(text, bigint, jsonb) IS
    'Stores the state of the stream at a version; keeps the highest version (returns false when a newer snapshot is stored).';
COMMENT ON FUNCTION allsource.watermark() IS
    'The highest position below which every event is committed or will never exist: readers never read past it.';
COMMENT ON FUNCTION allsource.inflight() IS
    'Transactions holding the watermark back: backend pid, the lowest position it has taken, and since when.';
COMMENT ON FUNCTION allsource.ingest_workers() IS
    'What each ingest worker does: pid, state, events queued in its lane, batches and events written, last batch size.';
COMMENT ON FUNCTION allsource.stats() IS
    'Counters and latency percentiles of appends, batches, the queue and conflicts since the server started or stats_reset().';
COMMENT ON FUNCTION allsource.stats_reset() IS
    'Sets the counters and latency histograms of stats() back to zero.';
COMMENT ON FUNCTION allsource.partition_for(text, int) IS
    'The partition a stream''s events live in (of partition_count partitions, this database''s by default).';
COMMENT ON FUNCTION allsource.verify_stream(text) IS
    'Recomputes the stream''s hash chain: ok, events checked, and the first version that does not match with what is wrong.';
COMMENT ON FUNCTION allsource.verify_all() IS
    'verify_stream over every stream: one row per stream whose chain or versions do not hold.';
COMMENT ON TABLE allsource.streams IS
    'One row per stream: its version, last checksum, tenant and tombstone. Written by AllSource''s functions only.';
COMMENT ON TABLE allsource.events IS
    'Every event, partitioned by partition_for(stream_id); position is the global order. Written by AllSource''s functions only.';
COMMENT ON TABLE allsource.snapshots IS
    'The latest snapshot of each stream (save_snapshot, load_snapshot).';
