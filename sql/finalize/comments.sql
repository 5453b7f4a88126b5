-- Runs last in CREATE EXTENSION. What \df+ and \dd show for the functions
-- written in Rust (the SQL ones carry theirs where they are created).
COMMENT ON FUNCTION allsource.append(text, text, jsonb, jsonb, bigint, uuid, text[]) IS
    'Appends one event (with tags, optionally) to the stream when its version is expected_version (NULL: any; 0: no stream yet; -1: the stream exists); returns the event''s version and position. ZA001 on a wrong version.';
COMMENT ON FUNCTION allsource.append_batch(text, jsonb, bigint) IS
    'Appends a JSON array of events ({"type", "payload", "metadata", "id", "tags"}) to the stream at once, all or nothing; returns the first and last versions and positions.';
COMMENT ON FUNCTION allsource.append_if(jsonb, jsonb, bigint, text) IS
    'Appends events (append_batch''s array, with "tags") unless an event matching fail_if_events_match lies after after_position (ZA004 naming it); in stream_id, or in a stream of their own. Locks by the tags and types involved, never globally unless a query item is empty.';
COMMENT ON FUNCTION allsource.query_head(jsonb) IS
    'The position a decision based on read_query(query) may pass to append_if as after_position: the watermark. Take it before reading.';
COMMENT ON FUNCTION allsource._query_positions(jsonb, bigint, bigint, int) IS
    'The partitions and positions of the events read_query returns; 22023 names a bad part of the query.';
COMMENT ON FUNCTION allsource.enqueue(text, text, jsonb, jsonb, bigint, uuid) IS
    'Hands one event to the ingest workers, which append it in batches; returns a ticket for await_ticket. Nothing is written until the ticket says committed.';
COMMENT ON FUNCTION allsource.await_ticket(bigint, int) IS
    'Waits up to timeout_ms for an enqueued event: status committed (with version and position), conflict (with the stream''s version), rejected (a NOTICE gives the SQLSTATE), or pending.';
COMMENT ON FUNCTION allsource.delete_stream(text, boolean) IS
    'Deletes the stream: soft leaves a tombstone (no more appends, nothing to read); hard also erases payloads, metadata and the snapshot while the chain stays verifiable. Returns the last version.';
COMMENT ON FUNCTION allsource.save_snapshot(text, bigint, jsonb) IS
    'Stores the state of the stream at a version; keeps the highest version (returns false when a newer snapshot is stored).';
COMMENT ON FUNCTION allsource.watermark() IS
    'The highest position below which every event is committed or will never exist: readers never read past it. On a hot standby, the primary''s as last replayed (allsource.published_watermark).';
COMMENT ON FUNCTION allsource.inflight() IS
    'Transactions holding the watermark back: backend pid, the lowest position it has taken, and since when.';
COMMENT ON FUNCTION allsource.ingest_workers() IS
    'What each ingest worker does: pid, state, events queued in its lane, batches and events written, last batch size, and the locks it gave up waiting for: how often, and the last holder (pid, or NULL for a prepared transaction; xid) and when.';
COMMENT ON FUNCTION allsource.stats() IS
    'Counters and latency percentiles of appends, batches, the queue, conflicts and subscriptions (delivered, acked, parked) since the server started or stats_reset().';
COMMENT ON FUNCTION allsource.stats_reset() IS
    'Sets the counters and latency histograms of stats() back to zero.';
COMMENT ON FUNCTION allsource.partition_for(text, int) IS
    'The partition a stream''s events live in (of partition_count partitions, this database''s by default).';
COMMENT ON FUNCTION allsource.verify_stream(text) IS
    'Recomputes the stream''s hash chain: ok, events checked, and the first version that does not match with what is wrong.';
COMMENT ON FUNCTION allsource.current_tenant() IS
    'The session''s tenant (allsource.role_tenant of its role, else SET allsource.tenant), NULL without one: reads and writes are scoped to it.';
COMMENT ON FUNCTION allsource.verify_all() IS
    'verify_stream over every stream of the session''s tenant, and the partitions and event id registry: one row per stream that does not hold (stream_id NULL for the store''s own parts).';
COMMENT ON FUNCTION allsource.verify_all_tenants() IS
    'verify_all over every tenant''s streams, with each failing stream''s tenant: for the extension''s owner and allsource_auditor.';
COMMENT ON FUNCTION allsource.verify_anchor(text, bigint, bytea) IS
    'verify_stream, and whether the stream still holds a head recorded earlier with stream_head (checksum at version): catches a cut-off tail or a removed tombstone.';
