-- After ALTER EXTENSION allsource UPDATE: what the old release wrote
-- still behaves, and writing goes on where it left off.
\set ON_ERROR_STOP on
DO $$
DECLARE
    v bigint;
    p bigint;
    last_position bigint;
    head bytea;
BEGIN
    IF EXISTS (SELECT FROM allsource.verify_all()) THEN
        RAISE EXCEPTION 'verify_all() reports problems after the upgrade';
    END IF;
    -- Every tenant's streams too, and the tombstones the upgrade sealed.
    IF EXISTS (SELECT FROM allsource.verify_all_tenants()) THEN
        RAISE EXCEPTION 'verify_all_tenants() reports problems after the upgrade: %',
            (SELECT string_agg(format('%s/%s: %s', tenant_id, stream_id, problem), '; ') FROM allsource.verify_all_tenants());
    END IF;
    IF (SELECT checksum FROM allsource.stream_head('gone-1'))
       IS NOT DISTINCT FROM (SELECT last_checksum FROM allsource.streams WHERE stream_id = 'gone-1') THEN
        RAISE EXCEPTION 'the tombstone of gone-1 was not sealed';
    END IF;
    IF (SELECT problem FROM allsource.verify_stream('erased-1')) NOT LIKE 'erased at %' THEN
        RAISE EXCEPTION 'the erased stream does not verify as erased';
    END IF;
    IF allsource.stream_version('order-1') <> 2 OR allsource.stream_version('order-2') <> 2 THEN
        RAISE EXCEPTION 'stream versions changed';
    END IF;
    IF (SELECT version FROM allsource.load_snapshot('order-2')) <> 2 THEN
        RAISE EXCEPTION 'the snapshot is gone';
    END IF;
    IF (SELECT count(*) FROM allsource.read_stream('order-1')) <> 2
       OR EXISTS (SELECT FROM allsource.read_stream('gone-1')) THEN
        RAISE EXCEPTION 'read_stream returns the wrong events';
    END IF;

    SELECT max(position) INTO last_position FROM allsource.events;
    SELECT h.checksum INTO head FROM allsource.stream_head('order-1') h;
    SELECT a.version, a.position INTO v, p FROM allsource.append('order-1', 'OrderShipped', '{}', expected_version => 2) a;
    -- The new event (format 2) chains to the format 1 ones; the old head still holds.
    IF NOT (SELECT ok FROM allsource.verify_anchor('order-1', 2, head)) THEN
        RAISE EXCEPTION 'order-1 no longer holds its head from before the upgrade';
    END IF;
    IF v <> 3 OR p <= last_position THEN
        RAISE EXCEPTION 'append after the upgrade: version %, position % (last position before: %)', v, p, last_position;
    END IF;
    BEGIN
        PERFORM allsource.append('order-1', 'OrderShipped', '{}', expected_version => 2);
        RAISE EXCEPTION 'a stale expected version was accepted';
    EXCEPTION WHEN SQLSTATE 'ZA001' THEN NULL;
    END;
    BEGIN
        PERFORM allsource.append('gone-1', 'Revived', '{}');
        RAISE EXCEPTION 'a deleted stream took an append';
    EXCEPTION WHEN SQLSTATE 'ZA002' THEN NULL;
    END;
    -- The same event id again is the retry of an append that succeeded.
    IF (SELECT version FROM allsource.append('cart-1', 'ItemAdded', '{"sku": "B"}',
                                             event_id => '0190a6e4-0000-7000-8000-000000000001')) <> 1 THEN
        RAISE EXCEPTION 'an idempotent retry wrote again';
    END IF;
    IF EXISTS (SELECT FROM allsource.read_stream('acme-1')) THEN
        RAISE EXCEPTION 'another tenant''s stream is visible without its tenant';
    END IF;
END
$$;
-- The queue: enqueue and await in their own statements, as applications do.
SELECT allsource.enqueue('queued-1', 'Queued', '{"n": 3}', expected_version => 2) AS ticket \gset
SELECT status FROM allsource.await_ticket(:ticket);
DO $$
BEGIN
    IF allsource.stream_version('queued-1') <> 3 THEN
        RAISE EXCEPTION 'the queue did not append after the upgrade';
    END IF;
    IF (SELECT count(*) FROM allsource.read_all(0, 1000))
       <> (SELECT count(*) FROM allsource.events WHERE tenant_id IS NULL) THEN
        RAISE EXCEPTION 'read_all does not return every event';
    END IF;
    IF allsource.watermark() < (SELECT max(position) FROM allsource.events) THEN
        RAISE EXCEPTION 'watermark % is below the last committed position', allsource.watermark();
    END IF;
END
$$;
-- Dynamic consistency boundaries on the upgraded store: the old events have
-- no tags, a claim of a tag holds once, and a tagged event verifies.
DO $$
DECLARE
    p bigint;
BEGIN
    IF EXISTS (SELECT FROM allsource.events WHERE tags IS NOT NULL) THEN
        RAISE EXCEPTION 'events from before the upgrade have tags';
    END IF;
    SELECT a.first_position INTO p FROM allsource.append_if(
        '[{"type": "SeatBooked", "payload": {"seat": 1}, "tags": ["seat:1", "show:1"]}]',
        '[{"types": ["SeatBooked"], "tags": ["seat:1"]}]', 0) a;
    BEGIN
        PERFORM allsource.append_if('[{"type": "SeatBooked", "payload": {"seat": 1}, "tags": ["seat:1"]}]',
                                    '[{"types": ["SeatBooked"], "tags": ["seat:1"]}]', 0);
        RAISE EXCEPTION 'a second claim of seat:1 was accepted';
    EXCEPTION WHEN SQLSTATE 'ZA004' THEN NULL;
    END;
    IF (SELECT array_agg(position) FROM allsource.read_query('[{"tags": ["show:1"]}]')) <> ARRAY[p] THEN
        RAISE EXCEPTION 'read_query does not find the tagged event at %', p;
    END IF;
    PERFORM allsource.append('order-1', 'OrderTagged', '{}', tags => ARRAY['order:1']);
    IF EXISTS (SELECT FROM allsource.verify_all()) THEN
        RAISE EXCEPTION 'verify_all() reports problems after tagged appends';
    END IF;
END
$$;
