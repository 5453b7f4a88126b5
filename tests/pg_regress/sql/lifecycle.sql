-- lifecycle: snapshots, soft and hard deletes, and their errors. Streams user-*.
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT last_value - (NOT is_called)::int AS p0 FROM allsource.event_position \gset

SELECT last_version FROM allsource.append_batch('user-1', '[
  {"type": "Registered", "payload": {"name": "Ada"}, "metadata": {"ip": "10.0.0.1"}},
  {"type": "Renamed", "payload": {"name": "Ada L."}},
  {"type": "Verified", "payload": {}}
]', expected_version => 0);

------------------------------------------------------------------------------
-- allsource.save_snapshot, allsource.load_snapshot
------------------------------------------------------------------------------
-- No snapshot yet: no row.
SELECT * FROM allsource.load_snapshot('user-1');
-- true: stored.
SELECT allsource.save_snapshot('user-1', 2, '{"name": "Ada L."}');
SELECT * FROM allsource.load_snapshot('user-1');
-- Loading: the snapshot, then the events after it.
SELECT version, event_type FROM allsource.read_stream('user-1', from_version => (SELECT version + 1 FROM allsource.load_snapshot('user-1')));
-- The highest version is kept: an older one returns false and changes nothing;
-- the same version replaces it; a newer one too.
SELECT allsource.save_snapshot('user-1', 1, '{"name": "Ada"}');
SELECT allsource.save_snapshot('user-1', 2, '{"name": "Ada L.", "again": true}');
SELECT * FROM allsource.load_snapshot('user-1');
SELECT allsource.save_snapshot('user-1', 3, '{"name": "Ada L.", "verified": true}');
SELECT * FROM allsource.load_snapshot('user-1');
SELECT stream_id, version, state, tenant_id FROM allsource.snapshots WHERE stream_id = 'user-1';

-- Errors: 22023 naming the argument.
SELECT allsource.save_snapshot('user-1', 4, '{}');
\echo SQLSTATE :SQLSTATE
SELECT allsource.save_snapshot('user-404', 1, '{}');
\echo SQLSTATE :SQLSTATE
SELECT allsource.save_snapshot('user-1', 0, '{}');
\echo SQLSTATE :SQLSTATE
SELECT allsource.save_snapshot('user-1', -1, '{}');
\echo SQLSTATE :SQLSTATE
SELECT allsource.save_snapshot('user-1', NULL, '{}');
\echo SQLSTATE :SQLSTATE
SELECT allsource.save_snapshot('user-1', 1, NULL);
\echo SQLSTATE :SQLSTATE
SELECT allsource.save_snapshot(NULL, 1, '{}');
\echo SQLSTATE :SQLSTATE
SELECT allsource.save_snapshot('', 1, '{}');
\echo SQLSTATE :SQLSTATE
SELECT allsource.save_snapshot(repeat('s', 256), 1, '{}');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.load_snapshot(NULL);
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.load_snapshot('');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.load_snapshot(repeat('s', 256));
\echo SQLSTATE :SQLSTATE
-- allsource.max_event_bytes does not limit snapshots.
SET allsource.max_event_bytes = 16;
SELECT allsource.save_snapshot('user-1', 3, jsonb_build_object('padding', repeat('x', 100)));
RESET allsource.max_event_bytes;
SELECT version, length(state::text) FROM allsource.load_snapshot('user-1');

------------------------------------------------------------------------------
-- allsource.delete_stream: soft
------------------------------------------------------------------------------
SELECT last_version FROM allsource.append_batch('user-2', '[
  {"type": "Registered", "payload": {"name": "Grace"}},
  {"type": "Renamed", "payload": {"name": "Grace H."}}
]');
SELECT allsource.save_snapshot('user-2', 2, '{"name": "Grace H."}');
-- Returns the stream's last version, and leaves a tombstone: when, and which
-- role (the caller's, SET ROLE included).
SET ROLE regress_writer;
SELECT allsource.delete_stream('user-2');
RESET ROLE;
SELECT stream_id, version, deleted_at IS NOT NULL AS deleted, deleted_by, erased_at
FROM allsource.streams WHERE stream_id = 'user-2';
-- Appends raise ZA002.
SELECT * FROM allsource.append('user-2', 'Renamed', '{"name": "G."}');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.append_batch('user-2', '[{"type": "Renamed", "payload": {"name": "G."}}]');
\echo SQLSTATE :SQLSTATE
-- ... whatever the expected version, and for the retry of an event it holds.
SELECT * FROM allsource.append('user-2', 'Renamed', '{}', expected_version => 2);
\echo SQLSTATE :SQLSTATE
SELECT event_id AS user_2_first_event FROM allsource.events WHERE stream_id = 'user-2' AND version = 1 \gset
SELECT * FROM allsource.append('user-2', 'Registered', '{"name": "Grace"}', event_id => :'user_2_first_event');
\echo SQLSTATE :SQLSTATE
-- So do snapshots.
SELECT allsource.save_snapshot('user-2', 2, '{}');
\echo SQLSTATE :SQLSTATE
-- read_stream returns nothing; stream_version keeps the last version; the
-- snapshot, the events and the chain stay, in read_all and read_category too.
SELECT count(*) FROM allsource.read_stream('user-2');
SELECT allsource.stream_version('user-2');
SELECT * FROM allsource.load_snapshot('user-2');
SELECT version, payload FROM allsource.events WHERE stream_id = 'user-2' ORDER BY version;
SELECT position - :p0 AS position, stream_id, version FROM allsource.read_all(after_position => :p0) WHERE stream_id = 'user-2';
SELECT position - :p0 AS position, stream_id, version FROM allsource.read_category('user', after_position => :p0) WHERE stream_id = 'user-2';
SELECT * FROM allsource.verify_stream('user-2');
SELECT allsource.verify_gapless('user-2');
-- Deleting again is a no-op: same answer, the tombstone unchanged.
SELECT allsource.delete_stream('user-2');
SELECT deleted_by FROM allsource.streams WHERE stream_id = 'user-2';
-- A stream never written: a tombstone at version 0, so the id cannot be used later.
SELECT allsource.delete_stream('user-3');
SELECT stream_id, version, deleted_at IS NOT NULL AS deleted, deleted_by = current_user AS deleted_by_me
FROM allsource.streams WHERE stream_id = 'user-3';
SELECT * FROM allsource.append('user-3', 'Registered', '{}', expected_version => 0);
\echo SQLSTATE :SQLSTATE
SELECT allsource.stream_version('user-3');

------------------------------------------------------------------------------
-- allsource.delete_stream: hard
------------------------------------------------------------------------------
-- Erases every event's payload (to JSON null) and metadata (to NULL) and the
-- snapshot; returns the last version.
SELECT allsource.delete_stream('user-1', hard => true);
SELECT version, event_type, payload, metadata, metadata IS NULL AS metadata_is_sql_null
FROM allsource.events WHERE stream_id = 'user-1' ORDER BY version;
SELECT * FROM allsource.load_snapshot('user-1');
SELECT stream_id, version, deleted_at IS NOT NULL AS deleted, erased_at IS NOT NULL AS erased,
       erased_at = deleted_at AS erased_when_deleted
FROM allsource.streams WHERE stream_id = 'user-1';
-- What is kept of each event: the digests its checksum covers.
SELECT e.version, x.payload_digest = sha256(convert_to('{"name": "Ada"}', 'UTF8')) AS first_payload_digest,
       length(x.payload_digest) AS payload_digest_bytes, length(x.metadata_digest) AS metadata_digest_bytes
FROM allsource.events e JOIN allsource.erased_events x USING (partition_id, position)
WHERE e.stream_id = 'user-1' ORDER BY e.version;
-- The chain still verifies: ok, with when and by whom it was erased.
SELECT ok, events_checked, first_bad_version,
       regexp_replace(problem, '^erased at .* by (.*)$', 'erased at <erased_at> by \1') = 'erased at <erased_at> by ' || current_user AS problem_says_erased_by_me
FROM allsource.verify_stream('user-1');
SELECT allsource.verify_gapless('user-1');
-- A hard delete of a soft-deleted stream erases it. Here the superuser
-- erases what regress_writer deleted: "by" names deleted_by, the role of the
-- soft delete.
SELECT allsource.delete_stream('user-2', hard => true);
SELECT ok, events_checked, regexp_replace(problem, '^erased at .* by ', 'erased at <erased_at> by ') AS problem
FROM allsource.verify_stream('user-2');
SELECT version, payload, metadata FROM allsource.events WHERE stream_id = 'user-2' ORDER BY version;
SELECT * FROM allsource.load_snapshot('user-2');
-- The tombstone keeps who deleted it first.
SELECT deleted_by FROM allsource.streams WHERE stream_id = 'user-2';
-- Erasing again is a no-op.
SELECT allsource.delete_stream('user-1', hard => true);
-- verify_all does not list erased streams (the rows of the store's own parts,
-- stream_id NULL, show the damage integrity.sql did to the id registry).
SELECT count(*) AS failing FROM allsource.verify_all() WHERE stream_id IS NOT NULL;
-- Appends and snapshots raise ZA002 as for a soft delete.
SELECT * FROM allsource.append('user-1', 'Renamed', '{}');
\echo SQLSTATE :SQLSTATE
SELECT allsource.save_snapshot('user-1', 1, '{}');
\echo SQLSTATE :SQLSTATE

-- Errors: 22023 naming the argument.
SELECT allsource.delete_stream(NULL);
\echo SQLSTATE :SQLSTATE
SELECT allsource.delete_stream('');
\echo SQLSTATE :SQLSTATE
SELECT allsource.delete_stream(repeat('s', 256));
\echo SQLSTATE :SQLSTATE
SELECT allsource.delete_stream('user-4', hard => NULL);
\echo SQLSTATE :SQLSTATE
-- The refused calls left no tombstone.
SELECT count(*) FROM allsource.streams WHERE stream_id = 'user-4';
