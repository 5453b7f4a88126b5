-- subscriptions: create, receive, ack, nack, parking, release, listing, and
-- every error as psql shows it. Streams subacct-*, subuser-*; positions are
-- shown relative to p0.
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT last_value - (NOT is_called)::int AS p0 FROM allsource.event_position \gset

SELECT count(*) FROM (
    SELECT allsource.append('subacct-' || i % 2, 'Deposited', pg_catalog.jsonb_build_object('amount', i))
    FROM pg_catalog.generate_series(1, 4) AS i) AS appended;
SELECT allsource.append('subuser-1', 'Registered', '{}') IS NOT NULL AS appended;

------------------------------------------------------------------------------
-- create_subscription, receive, ack
------------------------------------------------------------------------------
SELECT allsource.create_subscription('accounts', categories => ARRAY['subacct'], start_after => :p0);
SELECT allsource.create_subscription('registrations', event_types => ARRAY['Registered'], start_after => :p0);
SELECT allsource.create_subscription('halves', ARRAY['subacct'], start_after => :p0, members => 2);
-- In position order; again the same until acked.
SELECT position - :p0 AS position, stream_id, event_type, payload FROM allsource.receive('accounts', 3);
SELECT position - :p0 AS position FROM allsource.receive('accounts', 3);
SELECT position - :p0 AS position, stream_id FROM allsource.receive('registrations');
-- Each stream in one member.
SELECT member, position - :p0 AS position, stream_id
FROM pg_catalog.generate_series(0, 1) AS member, LATERAL allsource.receive('halves', 10, member)
ORDER BY member, position;
SELECT allsource.ack('accounts', :p0 + 2);
SELECT position - :p0 AS position FROM allsource.receive('accounts');
-- At or below the checkpoint: nothing changes.
SELECT allsource.ack('accounts', :p0 + 1);
SELECT name, member, checkpoint - :p0 AS checkpoint, lag_events, holder_pid = pg_catalog.pg_backend_pid() AS mine, parked
FROM allsource.subscriptions() WHERE name IN ('accounts', 'registrations', 'halves') ORDER BY name, member;

------------------------------------------------------------------------------
-- nack, parking, retry_parked, release
------------------------------------------------------------------------------
SELECT allsource.create_subscription('fragile', ARRAY['subacct'], start_after => :p0, max_attempts => 2);
SELECT allsource.nack('fragile', :p0 + 2, 'bad amount');
SELECT position - :p0 AS position FROM allsource.receive('fragile');
SELECT allsource.nack('fragile', :p0 + 2, 'still bad');
SELECT position - :p0 AS position FROM allsource.receive('fragile');
SELECT position - :p0 AS position, member, attempts, last_reason FROM allsource.parked_events('fragile');
SELECT allsource.ack('fragile', :p0 + 4);
SELECT allsource.retry_parked('fragile');
SELECT position - :p0 AS position FROM allsource.receive('fragile');
SELECT allsource.release('fragile');
SELECT holder_pid FROM allsource.subscriptions() WHERE name = 'fragile';
SELECT allsource.drop_subscription('fragile');

------------------------------------------------------------------------------
-- A batch handler, run by the subscription workers: every event once, in order
------------------------------------------------------------------------------
CREATE TABLE public.subacct_batches (events int, first_position bigint, last_position bigint, ordered boolean);
CREATE FUNCTION public.log_batch(events allsource.events[]) RETURNS void LANGUAGE sql AS $$
    INSERT INTO public.subacct_batches
    SELECT pg_catalog.count(*), pg_catalog.min(e.position), pg_catalog.max(e.position),
           pg_catalog.bool_and(e.position > coalesce(previous, 0))
    FROM (SELECT u.position, pg_catalog.lag(u.position) OVER (ORDER BY u.ordinality) AS previous
          FROM pg_catalog.unnest(events) WITH ORDINALITY AS u) e
$$;
SELECT allsource.create_subscription('batched', ARRAY['subacct'], start_after => :p0,
                                     handler => 'public.log_batch(allsource.events[])');
DO $$
BEGIN
    FOR i IN 1..600 LOOP
        EXIT WHEN (SELECT lag_events FROM allsource.subscriptions() WHERE name = 'batched') = 0;
        PERFORM pg_catalog.pg_sleep(0.05);
    END LOOP;
END $$;
SELECT pg_catalog.sum(events) AS events, pg_catalog.min(first_position) - :p0 AS first,
       pg_catalog.max(last_position) - :p0 AS last, pg_catalog.bool_and(ordered) AS ordered
FROM public.subacct_batches;
SELECT handler, lag_events, parked FROM allsource.subscriptions() WHERE name = 'batched';
SELECT allsource.drop_subscription('batched');
DROP FUNCTION public.log_batch(allsource.events[]);
DROP TABLE public.subacct_batches;

------------------------------------------------------------------------------
-- Errors
------------------------------------------------------------------------------
SELECT allsource.create_subscription('accounts');
SELECT allsource.create_subscription('');
SELECT allsource.create_subscription('m', members => 0);
SELECT allsource.create_subscription('m', max_attempts => 0);
SELECT allsource.create_subscription('m', start_after => -1);
SELECT allsource.create_subscription('m', categories => '{}');
SELECT allsource.create_subscription('m', handler => 'pg_catalog.now()');
SELECT * FROM allsource.receive('nobody');
SELECT * FROM allsource.receive('halves', 10, 2);
SELECT * FROM allsource.receive('accounts', -1);
-- These two name absolute positions: only their SQLSTATEs are shown.
\set VERBOSITY sqlstate
SELECT allsource.ack('accounts', :p0 + 1000);
SELECT allsource.nack('accounts', :p0 + 1);
\set VERBOSITY default
SELECT allsource.drop_subscription('nobody');
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT * FROM allsource.receive('accounts');
ROLLBACK;

SELECT allsource.drop_subscription('accounts');
SELECT allsource.drop_subscription('registrations');
SELECT allsource.drop_subscription('halves');
SELECT count(*) FROM allsource.subscriptions() WHERE name IN ('accounts', 'registrations', 'halves');
