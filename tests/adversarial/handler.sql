-- Run by tests/adversarial/run.sh as the superuser, under eve's search_path:
-- a handler subscription, which the subscription workers run (_handle and
-- _call_handler) under the same hostile settings. Only qualified names here.
\set ON_ERROR_STOP on
CREATE SCHEMA handled;
CREATE TABLE handled.seen ("position" bigint);
CREATE FUNCTION handled.record(e allsource.events) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS 'INSERT INTO handled.seen VALUES (e.position)';
SELECT allsource.create_subscription('exercised_handler', handler => 'handled.record(allsource.events)');
SELECT allsource.append('handled-1', 'Seen', '{}');
DO $$
BEGIN
    FOR i IN 1..300 LOOP
        IF EXISTS (SELECT FROM handled.seen) THEN
            RETURN;
        END IF;
        PERFORM pg_catalog.pg_sleep(0.1);
    END LOOP;
    RAISE EXCEPTION 'the handler subscription was never handled';
END
$$;
