-- The plain references beside which the benchmarks put AllSource's append
-- (benches/compare.sh, benches/append_breakdown.sh): plain_events, a table
-- LIKE allsource.events (same columns and indexes, event_id unique), for
-- PostgreSQL's own INSERT; and plain_append, what a user would write without
-- AllSource, over plain_streams and plpgsql_events.
CREATE TABLE plain_events (LIKE allsource.events INCLUDING DEFAULTS INCLUDING INDEXES);
ALTER TABLE plain_events ADD UNIQUE (event_id);
CREATE SEQUENCE plain_position;
CREATE TABLE plpgsql_events (LIKE plain_events INCLUDING ALL);
CREATE TABLE plain_streams (stream_id text COLLATE "C" PRIMARY KEY, version bigint NOT NULL);
-- What a user would write without AllSource: lock the stream, check, insert, bump.
CREATE FUNCTION plain_append(stream text, event_type text, payload jsonb, expected bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE current bigint;
BEGIN
    INSERT INTO plain_streams VALUES (stream, 0) ON CONFLICT DO NOTHING;
    SELECT version INTO current FROM plain_streams WHERE stream_id = stream FOR UPDATE;
    IF expected IS NOT NULL AND expected <> current THEN
        RAISE EXCEPTION 'wrong expected version' USING ERRCODE = 'ZA001';
    END IF;
    INSERT INTO plpgsql_events (position, partition_id, stream_id, version, event_id, event_type, payload, created_at, checksum)
    VALUES (nextval('plain_position'), 0, stream, current + 1, gen_random_uuid(), event_type, payload, now(), '\x00');
    UPDATE plain_streams SET version = current + 1 WHERE stream_id = stream;
    RETURN current + 1;
END $$;
