-- Written by the release the upgrade starts from, before ALTER EXTENSION
-- allsource UPDATE: events of every kind the upgrade must keep
-- (scripts/test_upgrade.sh). Every release runs it: only what 0.1.0 offers.
\set ON_ERROR_STOP on
CREATE EXTENSION allsource;

SELECT allsource.append('order-1', 'OrderPlaced', '{"total": 42}', '{"user": "alice"}', expected_version => 0);
SELECT allsource.append('order-1', 'OrderPaid', '{"amount": 42}', expected_version => 1);
SELECT allsource.append_batch('order-2', '[{"type": "OrderPlaced", "payload": {"total": 7}},
                                          {"type": "ItemAdded", "payload": {"sku": "A"}, "metadata": {"n": 1}}]', 0);
SELECT allsource.append('cart-1', 'ItemAdded', '{"sku": "B"}', event_id => '0190a6e4-0000-7000-8000-000000000001');
SELECT allsource.save_snapshot('order-2', 2, '{"total": 7, "items": ["A"]}');
-- A tombstone, and a stream erased by a hard delete.
SELECT allsource.append('gone-1', 'Created', '{}');
SELECT allsource.delete_stream('gone-1');
SELECT allsource.append('erased-1', 'Secret', '{"card": "4111"}', '{"ip": "10.0.0.1"}');
SELECT allsource.delete_stream('erased-1', hard => true);
-- A tenant's stream.
SET allsource.tenant = 'acme';
SELECT allsource.append('acme-1', 'Created', '{"plan": "pro"}');
-- Tombstones of a tenant's stream and of a stream never written: 0.4.0 seals them.
SELECT allsource.append('acme-gone', 'Created', '{}');
SELECT allsource.delete_stream('acme-gone');
RESET allsource.tenant;
SELECT allsource.delete_stream('never-1');
-- Events through the ingest queue.
SELECT allsource.enqueue('queued-1', 'Queued', '{"n": 1}', expected_version => 0) AS ticket \gset
SELECT status FROM allsource.await_ticket(:ticket);
SELECT allsource.enqueue('queued-1', 'Queued', '{"n": 2}', expected_version => 1) AS ticket \gset
SELECT status FROM allsource.await_ticket(:ticket);
DO $$
BEGIN
    IF allsource.stream_version('queued-1') <> 2 THEN
        RAISE EXCEPTION 'the queued events were not appended';
    END IF;
END
$$;
