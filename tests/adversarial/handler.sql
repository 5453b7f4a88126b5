-- Run by tests/adversarial/run.sh as the superuser, under eve's search_path:
-- a handler subscription of single events and one of batches, which the
-- subscription workers run (_handle and _call_handler) under the same hostile
-- settings. Only qualified names here.
\set ON_ERROR_STOP on
CREATE SCHEMA handled;
CREATE TABLE handled.seen ("position" bigint);
CREATE FUNCTION handled.record(e allsource.events) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS 'INSERT INTO handled.seen VALUES (e.position)';
CREATE TABLE handled.seen_in_batches ("position" bigint);
CREATE FUNCTION handled.record_batch(events allsource.events[]) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS 'INSERT INTO handled.seen_in_batches SELECT e.position FROM pg_catalog.unnest(events) e';
SELECT allsource.create_subscription('exercised_handler', handler => 'handled.record(allsource.events)');
SELECT allsource.create_subscription('exercised_batch_handler', handler => 'handled.record_batch(allsource.events[])');
SELECT allsource.append('handled-1', 'Seen', '{}');
DO $$
BEGIN
    FOR i IN 1..300 LOOP
        IF EXISTS (SELECT FROM handled.seen) AND EXISTS (SELECT FROM handled.seen_in_batches) THEN
            RETURN;
        END IF;
        PERFORM pg_catalog.pg_sleep(0.1);
    END LOOP;
    RAISE EXCEPTION 'a handler subscription was never handled';
END
$$;
