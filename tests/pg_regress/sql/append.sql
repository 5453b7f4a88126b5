-- append and append_batch: results, expected versions, idempotency, and every
-- argument error. Streams cart-*.
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT last_value - (NOT is_called)::int AS p0 FROM allsource.event_position \gset

------------------------------------------------------------------------------
-- allsource.append
------------------------------------------------------------------------------
-- A new stream: expected_version => 0 means "must not exist yet". The result
-- is the event's version and its global position.
SELECT version, position - :p0 AS position
FROM allsource.append('cart-1', 'ItemAdded', '{"sku": "A", "qty": 2}',
                      metadata => '{"user": "alice"}', expected_version => 0,
                      event_id => '0b0e5c1e-2a3b-4c5d-8e9f-000000000001');
-- What was stored: jsonb text as PostgreSQL prints it, the caller's id, no
-- tenant, the stream's partition, a 32-byte checksum.
SELECT position - :p0 AS position, partition_id = allsource.partition_for(stream_id) AS own_partition,
       stream_id, version, event_id, event_type, tenant_id, payload, metadata,
       length(checksum) AS checksum_bytes
FROM allsource.events WHERE stream_id = 'cart-1';
SELECT stream_id, partition_id = allsource.partition_for(stream_id) AS own_partition, version,
       tenant_id, last_checksum = (SELECT checksum FROM allsource.events WHERE stream_id = 'cart-1') AS chains,
       deleted_at, deleted_by, erased_at
FROM allsource.streams WHERE stream_id = 'cart-1';

-- expected_version => N: the stream must be exactly at version N.
SELECT version, position - :p0 AS position
FROM allsource.append('cart-1', 'ItemAdded', '{"sku": "B"}', expected_version => 1);
SELECT * FROM allsource.append('cart-1', 'CheckedOut', '{}', expected_version => 1);
\echo SQLSTATE :SQLSTATE
-- A failed append wrote nothing, and took no position.
SELECT allsource.stream_version('cart-1');
-- NULL (the default): any version.
SELECT version, position - :p0 AS position FROM allsource.append('cart-1', 'ItemRemoved', '{"sku": "A"}');
-- -1: the stream must exist.
SELECT version, position - :p0 AS position
FROM allsource.append('cart-1', 'CheckedOut', '{"total": 12.50}', expected_version => -1);
SELECT * FROM allsource.append('cart-2', 'ItemAdded', '{}', expected_version => -1);
\echo SQLSTATE :SQLSTATE
-- 0 on a stream that has events.
SELECT * FROM allsource.append('cart-1', 'ItemAdded', '{}', expected_version => 0);
\echo SQLSTATE :SQLSTATE
-- Below -1 is not a version.
SELECT * FROM allsource.append('cart-1', 'ItemAdded', '{}', expected_version => -2);
\echo SQLSTATE :SQLSTATE

-- A generated event id is a UUID of version 7 (time-ordered).
SELECT substr(event_id::text, 15, 1) AS uuid_version, count(*)
FROM allsource.events WHERE stream_id = 'cart-1' AND event_id <> '0b0e5c1e-2a3b-4c5d-8e9f-000000000001'
GROUP BY 1;

-- Any JSON value is a payload, JSON null included; metadata may be any JSON
-- value or SQL NULL.
SELECT version, position - :p0 AS position FROM allsource.append('cart-3', 'Scalar', '42');
SELECT version, position - :p0 AS position FROM allsource.append('cart-3', 'Text', '"forty-two"', metadata => '[1, 2]');
SELECT version, position - :p0 AS position FROM allsource.append('cart-3', 'Nothing', 'null', metadata => 'null');
SELECT version, position - :p0 AS position
FROM allsource.append('cart-3', 'Unicode', '{"name": "Zoë", "emoji": "\ud83d\ude00", "big": 12345678901234567890.5}');
SELECT version, event_type, payload, metadata, metadata IS NULL AS metadata_is_sql_null
FROM allsource.read_stream('cart-3');

-- Idempotency: the same id with the same stream, type and payload returns
-- the original (version, position) and writes nothing, even when
-- expected_version no longer holds (the retry of an append that succeeded).
SELECT version, position - :p0 AS position
FROM allsource.append('cart-1', 'ItemAdded', '{"sku": "A", "qty": 2}',
                      metadata => '{"user": "alice"}', expected_version => 0,
                      event_id => '0b0e5c1e-2a3b-4c5d-8e9f-000000000001');
SELECT allsource.stream_version('cart-1'), count(*) AS events FROM allsource.events WHERE stream_id = 'cart-1';
-- Metadata is not part of the comparison.
SELECT version, position - :p0 AS position
FROM allsource.append('cart-1', 'ItemAdded', '{"sku": "A", "qty": 2}',
                      event_id => '0b0e5c1e-2a3b-4c5d-8e9f-000000000001');
-- The same id with another payload, type or stream: ZA003.
SELECT * FROM allsource.append('cart-1', 'ItemAdded', '{"sku": "A", "qty": 3}',
                               event_id => '0b0e5c1e-2a3b-4c5d-8e9f-000000000001');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.append('cart-1', 'ItemRemoved', '{"sku": "A", "qty": 2}',
                               event_id => '0b0e5c1e-2a3b-4c5d-8e9f-000000000001');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.append('cart-9', 'ItemAdded', '{"sku": "A", "qty": 2}',
                               event_id => '0b0e5c1e-2a3b-4c5d-8e9f-000000000001');
\echo SQLSTATE :SQLSTATE
-- The refused call created no stream.
SELECT count(*) AS cart_9_rows FROM allsource.streams WHERE stream_id = 'cart-9';

-- append runs in the caller's transaction: a rollback leaves no trace.
BEGIN;
SELECT version FROM allsource.append('cart-4', 'ItemAdded', '{}', expected_version => 0);
SELECT allsource.stream_version('cart-4');
ROLLBACK;
SELECT allsource.stream_version('cart-4'),
       (SELECT count(*) FROM allsource.streams WHERE stream_id = 'cart-4') AS stream_rows;

-- Argument errors: 22023, naming the argument.
SELECT * FROM allsource.append(NULL, 'T', '{}');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.append('', 'T', '{}');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.append(repeat('s', 256), 'T', '{}');
\echo SQLSTATE :SQLSTATE
-- The limit is 255 bytes, not characters: 128 two-byte characters are too many.
SELECT * FROM allsource.append(repeat('é', 128), 'T', '{}');
\echo SQLSTATE :SQLSTATE
SELECT version, position - :p0 AS position FROM allsource.append(repeat('s', 255), repeat('t', 255), '{}');
SELECT * FROM allsource.append('cart-5', NULL, '{}');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.append('cart-5', '', '{}');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.append('cart-5', repeat('t', 256), '{}');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.append('cart-5', 'T', NULL);
\echo SQLSTATE :SQLSTATE
-- Errors are checked in argument order: the first bad argument is named.
SELECT * FROM allsource.append('', '', NULL, expected_version => -5);
\echo SQLSTATE :SQLSTATE

-- 54000: payload and metadata together over allsource.max_event_bytes
-- (bytes of their jsonb text; a superuser setting).
SET allsource.max_event_bytes = 32;
SELECT version, position - :p0 AS position FROM allsource.append('cart-5', 'T', '{"a": "0123456789"}', '{"b": 1}');
SELECT * FROM allsource.append('cart-5', 'T', '{"a": "0123456789"}', '{"b": "0123456789"}');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.append('cart-5', 'T', to_jsonb(repeat('x', 100)));
\echo SQLSTATE :SQLSTATE
RESET allsource.max_event_bytes;
SHOW allsource.max_event_bytes;

------------------------------------------------------------------------------
-- allsource.append_batch
------------------------------------------------------------------------------
-- Several events, all or nothing, consecutive versions, increasing positions.
SELECT first_version, last_version, first_position - :p0 AS first_position, last_position - :p0 AS last_position
FROM allsource.append_batch('cart-6', '[
  {"type": "ItemAdded", "payload": {"sku": "B"}, "id": "0b0e5c1e-2a3b-4c5d-8e9f-000000000002"},
  {"type": "ItemAdded", "payload": {"sku": "C"}, "metadata": {"ip": "10.0.0.1"}, "id": "0b0e5c1e-2a3b-4c5d-8e9f-000000000003"},
  {"type": "CheckedOut", "payload": null}
]', expected_version => 0);
SELECT version, position - :p0 AS position, event_type, event_id = '0b0e5c1e-2a3b-4c5d-8e9f-000000000003' AS given_id,
       payload, metadata
FROM allsource.read_stream('cart-6');
-- expected_version applies to the stream before the first event.
SELECT first_version, last_version, first_position - :p0 AS first_position, last_position - :p0 AS last_position
FROM allsource.append_batch('cart-6', '[{"type": "Paid", "payload": {}}]', expected_version => 3);
SELECT * FROM allsource.append_batch('cart-6', '[{"type": "Paid", "payload": {}}]', expected_version => 3);
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.append_batch('cart-6', '[{"type": "Paid", "payload": {}}]', expected_version => -3);
\echo SQLSTATE :SQLSTATE
-- A batch whose every event carries an existing id, with the same content in
-- consecutive versions, returns where the originals landed.
SELECT first_version, last_version, first_position - :p0 AS first_position, last_position - :p0 AS last_position
FROM allsource.append_batch('cart-6', '[
  {"type": "ItemAdded", "payload": {"sku": "B"}, "id": "0b0e5c1e-2a3b-4c5d-8e9f-000000000002"},
  {"type": "ItemAdded", "payload": {"sku": "C"}, "metadata": {"ip": "10.0.0.1"}, "id": "0b0e5c1e-2a3b-4c5d-8e9f-000000000003"}
]', expected_version => 0);
-- Existing and new ids mixed: ZA003.
SELECT * FROM allsource.append_batch('cart-6', '[
  {"type": "ItemAdded", "payload": {"sku": "B"}, "id": "0b0e5c1e-2a3b-4c5d-8e9f-000000000002"},
  {"type": "ItemAdded", "payload": {"sku": "D"}, "id": "0b0e5c1e-2a3b-4c5d-8e9f-000000000004"}
]');
\echo SQLSTATE :SQLSTATE
-- An existing id with other content: ZA003.
SELECT * FROM allsource.append_batch('cart-7', '[
  {"type": "ItemAdded", "payload": {"sku": "Z"}, "id": "0b0e5c1e-2a3b-4c5d-8e9f-000000000002"}
]');
\echo SQLSTATE :SQLSTATE
SELECT allsource.stream_version('cart-6') AS cart_6, allsource.stream_version('cart-7') AS cart_7;

-- The shape of a batch: 22023 naming the element and key.
SELECT * FROM allsource.append_batch(NULL, '[{"type": "T", "payload": 1}]');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.append_batch('', '[{"type": "T", "payload": 1}]');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.append_batch('cart-8', NULL);
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.append_batch('cart-8', '{"type": "T", "payload": 1}');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.append_batch('cart-8', '[]');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.append_batch('cart-8', '[{"type": "T", "payload": 1}, "T"]');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.append_batch('cart-8', '[{"type": "T", "payload": 1, "event_type": "T"}]');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.append_batch('cart-8', '[{"payload": 1}]');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.append_batch('cart-8', '[{"type": 7, "payload": 1}]');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.append_batch('cart-8', '[{"type": "", "payload": 1}]');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.append_batch('cart-8', jsonb_build_array(jsonb_build_object('type', repeat('t', 256), 'payload', 1)));
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.append_batch('cart-8', '[{"type": "T"}]');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.append_batch('cart-8', '[{"type": "T", "payload": 1, "id": "not-a-uuid"}]');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.append_batch('cart-8', '[{"type": "T", "payload": 1, "id": 12}]');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.append_batch('cart-8', '[
  {"type": "T", "payload": 1, "id": "0b0e5c1e-2a3b-4c5d-8e9f-0000000000aa"},
  {"type": "T", "payload": 2, "id": "0b0e5c1e-2a3b-4c5d-8e9f-0000000000aa"}
]');
\echo SQLSTATE :SQLSTATE
SELECT * FROM allsource.append_batch('cart-8',
    (SELECT jsonb_agg(jsonb_build_object('type', 'T', 'payload', i)) FROM generate_series(1, 100001) i));
\echo SQLSTATE :SQLSTATE
-- Nesting: a batch is read with a parser that stops at 128 levels.
SELECT * FROM allsource.append_batch('cart-8',
    ('[{"type": "T", "payload": ' || repeat('[', 127) || repeat(']', 127) || '}]')::jsonb);
\echo SQLSTATE :SQLSTATE
-- append takes that payload.
SELECT version, position - :p0 AS position
FROM allsource.append('cart-8', 'Deep', (repeat('[', 127) || repeat(']', 127))::jsonb);
-- An element over allsource.max_event_bytes: 54000, naming the element.
SET allsource.max_event_bytes = 16;
SELECT * FROM allsource.append_batch('cart-8', '[{"type": "T", "payload": 1}, {"type": "T", "payload": "0123456789abcdef"}]');
\echo SQLSTATE :SQLSTATE
RESET allsource.max_event_bytes;
-- Nothing of the refused batches was written.
SELECT allsource.stream_version('cart-8');

-- Everything this file appended, in position order.
SELECT position - :p0 AS position, left(stream_id, 12) AS stream_id, version, left(event_type, 12) AS event_type
FROM allsource.events WHERE position > :p0 ORDER BY position;
