-- dcb: tags, queries and conditional appends (dynamic consistency
-- boundaries), and every error as psql shows it. All of tenant 'dcb', so
-- that a query for every event sees this file's alone; positions are shown
-- relative to p0.
\set VERBOSITY default
\set SHOW_CONTEXT never
SET allsource.tenant = 'dcb';
SELECT last_value - (NOT is_called)::int AS p0 FROM allsource.event_position \gset
SELECT set_config('dcb.p0', :'p0', false) IS NOT NULL AS p0_set;
-- An append_if's outcome, a ZA004's conflicting position relative to p0
-- (the message names it absolutely, which depends on the files before).
CREATE FUNCTION pg_temp.append_if(events jsonb, fail_if_events_match jsonb, after_position bigint)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    message text;
BEGIN
    PERFORM allsource.append_if(events, fail_if_events_match, after_position);
    RETURN 'appended';
EXCEPTION WHEN SQLSTATE 'ZA004' THEN
    GET STACKED DIAGNOSTICS message = MESSAGE_TEXT;
    RETURN 'ZA004: the event at p0 + '
        || (substring(message FROM 'position (\d+) matches')::bigint - current_setting('dcb.p0')::bigint)
        || ' matches';
END
$$;

------------------------------------------------------------------------------
-- Tags on append and append_batch; repeats are kept once
------------------------------------------------------------------------------
SELECT version, position - :p0 AS position
FROM allsource.append('dcb-course-7', 'CourseDefined', '{"capacity": 2}', tags => ARRAY['course:7']);
SELECT first_version, last_version
FROM allsource.append_batch('dcb-students', '[
    {"type": "StudentRegistered", "payload": {"id": 1}, "tags": ["student:1", "student:1"]},
    {"type": "StudentRegistered", "payload": {"id": 2}, "tags": ["student:2"]},
    {"type": "Noted", "payload": {}}
]');
SELECT position - :p0 AS position, stream_id, event_type, tags FROM allsource.events
WHERE tenant_id = 'dcb' ORDER BY position;

------------------------------------------------------------------------------
-- append_if: the course example
------------------------------------------------------------------------------
-- The decision "subscribe student 1 to course 7" reads the course's events
-- and the student's subscriptions, then appends unless one was appended since.
\set decision '[{"types": ["CourseDefined", "StudentSubscribed"], "tags": ["course:7"]}, {"types": ["StudentSubscribed"], "tags": ["student:1"]}]'
SELECT allsource.query_head(:'decision') - :p0 AS head;
SELECT position - :p0 AS position, event_type, payload FROM allsource.read_query(:'decision');
-- Without stream_id the events get a stream of their own ($dcb-…), versions 1..N.
SELECT first_position - :p0 AS first, last_position - :p0 AS last FROM allsource.append_if(
    '[{"type": "StudentSubscribed", "payload": {"student": 1, "course": 7}, "tags": ["course:7", "student:1"]}]',
    :'decision', :p0 + 4);
SELECT stream_id LIKE '$dcb-%' AS own_stream, version FROM allsource.events
WHERE position = :p0 + 5;
SELECT count(*) FROM allsource.read_query(:'decision', :p0 + 4);
-- The same decision again, from the same head: the event just appended matches.
SELECT pg_temp.append_if(
    '[{"type": "StudentSubscribed", "payload": {"student": 1, "course": 7}, "tags": ["course:7", "student:1"]}]',
    :'decision', :p0 + 4);
-- Another student's decision does not match student 1's event, but the course's part does.
SELECT first_position IS NOT NULL AS appended FROM allsource.append_if(
    '[{"type": "StudentSubscribed", "payload": {"student": 2, "course": 7}, "tags": ["course:7", "student:2"]}]',
    '[{"types": ["StudentSubscribed"], "tags": ["student:2"]}]', :p0 + 4);
SELECT pg_temp.append_if(
    '[{"type": "StudentSubscribed", "payload": {"student": 2, "course": 7}, "tags": ["course:7", "student:2"]}]',
    '[{"types": ["CourseDefined", "StudentSubscribed"], "tags": ["course:7"]}]', :p0 + 4);
-- As psql shows a ZA004 (its position depends on the files before this one).
\set VERBOSITY sqlstate
SELECT * FROM allsource.append_if('[{"type": "CourseDefined", "payload": {}, "tags": ["course:7"]}]',
    '[{"types": ["CourseDefined"], "tags": ["course:7"]}]', :p0);
\set VERBOSITY default
-- after_position NULL: any matching event at all.
SELECT pg_temp.append_if('[{"type": "CourseDefined", "payload": {}, "tags": ["course:7"]}]',
    '[{"types": ["CourseDefined"], "tags": ["course:7"]}]', NULL);
-- No condition: always appends.
SELECT last_position - first_position AS more FROM allsource.append_if(
    '[{"type": "Noted", "payload": {"n": 1}}, {"type": "Noted", "payload": {"n": 2}}]');

------------------------------------------------------------------------------
-- Query semantics
------------------------------------------------------------------------------
-- Only tags: every tag of the item.
SELECT position - :p0 AS position, event_type, tags FROM allsource.read_query('[{"tags": ["course:7", "student:2"]}]');
-- Only types.
SELECT position - :p0 AS position, event_type FROM allsource.read_query('[{"types": ["StudentRegistered"]}]');
-- Both, and many items: any item.
SELECT position - :p0 AS position, event_type FROM allsource.read_query(
    '[{"types": ["CourseDefined"], "tags": ["course:7"]}, {"types": ["Noted"]}, {"tags": ["student:2"]}]');
-- Empty query, [] and an empty item: every event (of the tenant).
SELECT count(*) FROM allsource.read_query();
SELECT count(*) FROM allsource.read_query('[]');
SELECT count(*) FROM allsource.read_query('[{}]');
SELECT count(*) FROM allsource.read_query('[{"types": [], "tags": []}]');
-- A tag no event has; a type no event has.
SELECT count(*) FROM allsource.read_query('[{"tags": ["course:8"]}]');
SELECT count(*) FROM allsource.read_query('[{"types": ["Nothing"], "tags": ["course:7"]}]');
-- A read writes nothing: no transaction id (a hot standby could not assign one).
BEGIN;
SELECT count(*) FROM allsource.read_query('[{"tags": ["course:7"]}]');
SELECT pg_current_xact_id_if_assigned() IS NULL AS no_transaction_id;
ROLLBACK;
-- Paging: after_position and max_count.
SELECT position - :p0 AS position FROM allsource.read_query('[{"tags": ["course:7"]}]', :p0 + 1, 1);
-- Names are data, never SQL: quotes and backslashes match themselves.
SELECT count(*) FROM allsource.append('dcb-odd', 'Odd', '{}', tags => ARRAY['it''s', 'back\slash', '{"x"}']);
SELECT event_type, tags FROM allsource.read_query('[{"tags": ["it''s", "back\\slash", "{\"x\"}"]}]');

------------------------------------------------------------------------------
-- What a condition's check matches: an item's every tag and one of its types,
-- the first match after rows that do not; items without tags beside others
------------------------------------------------------------------------------
SELECT last_value AS c0 FROM allsource.event_position \gset
SELECT count(*) FROM allsource.append_batch('dcb-check', '[
    {"type": "Seated", "payload": {}, "tags": ["room:1"]},
    {"type": "Booked", "payload": {}, "tags": ["room:1", "guest:1"]},
    {"type": "Seated", "payload": {}, "tags": ["room:1", "seat:9", "guest:2"]}
]');
-- Both tags: only the second event carries room:1 and guest:1.
SELECT pg_temp.append_if('[{"type": "T", "payload": {}}]', '[{"tags": ["room:1", "guest:1"]}]', :c0);
SELECT pg_temp.append_if('[{"type": "T", "payload": {}}]', '[{"tags": ["room:1", "guest:1"]}]', :c0 + 2);
-- A type and a tag: the first Booked with room:1; none after it.
SELECT pg_temp.append_if('[{"type": "T", "payload": {}}]', '[{"types": ["Booked"], "tags": ["room:1"]}]', :c0);
SELECT pg_temp.append_if('[{"type": "T", "payload": {}}]', '[{"types": ["Booked"], "tags": ["room:1"]}]', :c0 + 2);
-- Past the rows of the item's first tag that match it not, to one that does.
SELECT pg_temp.append_if('[{"type": "T", "payload": {}}]', '[{"tags": ["room:1", "seat:9"]}]', :c0);
SELECT pg_temp.append_if('[{"type": "T", "payload": {}}]', '[{"types": ["Seated"], "tags": ["room:1"]}]', :c0 + 1);
-- The earliest match of all the items.
SELECT pg_temp.append_if('[{"type": "T", "payload": {}}]',
    '[{"tags": ["guest:2"]}, {"types": ["Booked"], "tags": ["guest:1"]}, {"tags": ["room:9"]}]', :c0);
-- An item with types only beside one with tags.
SELECT pg_temp.append_if('[{"type": "T", "payload": {}}]', '[{"tags": ["guest:2"]}, {"types": ["Booked"]}]', :c0);
-- Another tenant's events never match.
SET allsource.tenant = 'dcb-other';
SELECT pg_temp.append_if('[{"type": "T", "payload": {}}]', '[{"tags": ["room:1"]}]', 0);
SET allsource.tenant = 'dcb';
-- This transaction's own event: the error's detail says so.
CREATE FUNCTION pg_temp.refusal_detail(events jsonb, fail_if_events_match jsonb)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    detail text;
BEGIN
    PERFORM allsource.append_if(events, fail_if_events_match);
    RETURN 'appended';
EXCEPTION WHEN SQLSTATE 'ZA004' THEN
    GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
    RETURN detail;
END
$$;
BEGIN;
SELECT count(*) FROM allsource.append_if('[{"type": "Booked", "payload": {}, "tags": ["room:2"]}]');
SELECT pg_temp.refusal_detail('[{"type": "Booked", "payload": {}, "tags": ["room:2"]}]', '[{"tags": ["room:2"]}]');
ROLLBACK;
SELECT pg_temp.refusal_detail('[{"type": "Booked", "payload": {}, "tags": ["room:2"]}]', '[{"tags": ["room:2"]}]');
-- A retry of a decision with the same ids does not conflict with itself.
SELECT count(*) FROM allsource.append_if(
    '[{"type": "Booked", "payload": {}, "tags": ["room:3"], "id": "00000000-0000-0000-0019-000000000003"}]',
    '[{"tags": ["room:3"]}]', :c0);
SELECT count(*) FROM allsource.append_if(
    '[{"type": "Booked", "payload": {}, "tags": ["room:3"], "id": "00000000-0000-0000-0019-000000000003"}]',
    '[{"tags": ["room:3"]}]', :c0);

------------------------------------------------------------------------------
-- Streams: with stream_id the events join it, with every stream rule
------------------------------------------------------------------------------
SELECT last_position - first_position AS more FROM allsource.append_if(
    '[{"type": "Opened", "payload": {}, "tags": ["account:1"]}]', '[{"tags": ["account:1"]}]', 0,
    stream_id => 'dcb-account-1');
SELECT version, event_type FROM allsource.read_stream('dcb-account-1');
SELECT allsource.delete_stream('dcb-account-1');
SELECT * FROM allsource.append_if('[{"type": "Deposited", "payload": {}}]', stream_id => 'dcb-account-1');

------------------------------------------------------------------------------
-- Idempotency: a retry with the same event ids returns the original
------------------------------------------------------------------------------
SELECT first_position - :p0 AS first FROM allsource.append_if(
    '[{"type": "Claimed", "payload": {}, "tags": ["username:ada"], "id": "00000000-0000-0000-0019-000000000001"}]',
    '[{"tags": ["username:ada"]}]', 0);
SELECT first_position - :p0 AS first FROM allsource.append_if(
    '[{"type": "Claimed", "payload": {}, "tags": ["username:ada"], "id": "00000000-0000-0000-0019-000000000001"}]',
    '[{"tags": ["username:ada"]}]', 0);
SELECT stream_id FROM allsource.events WHERE event_id = '00000000-0000-0000-0019-000000000001';
-- Another id for the same username is a conflict.
SELECT pg_temp.append_if(
    '[{"type": "Claimed", "payload": {}, "tags": ["username:ada"]}]', '[{"tags": ["username:ada"]}]', 0);

------------------------------------------------------------------------------
-- Tenants are separate boundaries
------------------------------------------------------------------------------
SET allsource.tenant = 'dcb-other';
SELECT count(*) FROM allsource.read_query('[{"tags": ["username:ada"]}]');
SELECT first_position > 0 AS appended FROM allsource.append_if(
    '[{"type": "Claimed", "payload": {}, "tags": ["username:ada"]}]', '[{"tags": ["username:ada"]}]', 0);
SET allsource.tenant = 'dcb';

------------------------------------------------------------------------------
-- Every event verifies, tags included
------------------------------------------------------------------------------
SELECT count(*) AS problems FROM allsource.verify_all();

------------------------------------------------------------------------------
-- Errors: 22023 naming the part, 0A000, and nothing written
------------------------------------------------------------------------------
SELECT count(*) AS before FROM allsource.events WHERE tenant_id = 'dcb' \gset
SELECT * FROM allsource.append('dcb-bad', 'T', '{}', tags => ARRAY['']);
SELECT * FROM allsource.append('dcb-bad', 'T', '{}', tags => ARRAY[NULL]);
SELECT * FROM allsource.append('dcb-bad', 'T', '{}', tags => ARRAY[repeat('x', 256)]);
SELECT * FROM allsource.append('dcb-bad', 'T', '{}', tags => (SELECT array_agg('t' || i) FROM generate_series(1, 65) i));
SELECT * FROM allsource.append_batch('dcb-bad', '[{"type": "T", "payload": {}, "tags": "a"}]');
SELECT * FROM allsource.append_batch('dcb-bad', '[{"type": "T", "payload": {}, "tags": [1]}]');
SELECT * FROM allsource.read_query('{"tags": ["a"]}');
SELECT * FROM allsource.read_query('[{"tag": ["a"]}]');
SELECT * FROM allsource.read_query('[{}, {"types": "A"}]');
SELECT * FROM allsource.read_query('[{"tags": [""]}]');
SELECT * FROM allsource.read_query('[["a"]]');
SELECT * FROM allsource.read_query(NULL, -1);
SELECT * FROM allsource.read_query(NULL, 0, -1);
SELECT allsource.query_head('[{"types": [null]}]');
SELECT * FROM allsource.append_if(NULL);
SELECT * FROM allsource.append_if('[]');
SELECT * FROM allsource.append_if('[{"type": "T", "payload": {}}]', '[{"tags": [7]}]');
SELECT * FROM allsource.append_if('[{"type": "T", "payload": {}}]', '"x"');
SELECT * FROM allsource.append_if('[{"type": "T", "payload": {}}]', NULL, -5);
SELECT * FROM allsource.append_if('[{"type": "T", "payload": {}}]', stream_id => '');
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT * FROM allsource.append_if('[{"type": "T", "payload": {}}]');
ROLLBACK;
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT * FROM allsource.read_query();
ROLLBACK;
SELECT count(*) - :before AS written FROM allsource.events WHERE tenant_id = 'dcb';

------------------------------------------------------------------------------
-- The locks: AllSource's own class, not pg_advisory_lock's
------------------------------------------------------------------------------
BEGIN;
SELECT count(*) FROM allsource.append_if('[{"type": "Locked", "payload": {}, "tags": ["lock:1"]}]', '[{"tags": ["lock:1"]}]');
SELECT locktype, objsubid, mode, count(*) FROM pg_locks
WHERE locktype = 'advisory' AND pid = pg_backend_pid() GROUP BY 1, 2, 3 ORDER BY 3;
ROLLBACK;
RESET allsource.tenant;
