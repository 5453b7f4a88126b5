-- Run by tests/adversarial/run.sh as the superuser, as writers of two
-- tenants and as a reader, each with the database's (hostile) search_path:
-- every function of the extension, and through enqueue the ingest workers.
-- Variables: who (a prefix for stream ids), tenant ('' for none), writes
-- ('on' or 'off'), id1 and id2 (fresh uuids). Only allsource.* and pg_catalog.* are named here, and no
-- operator is used: eve's look-alikes would catch the test's own bare names.
\set ON_ERROR_STOP on
SET allsource.tenant = :'tenant';
\set s1 :who '-1'
\set s2 :who '-2'
\set s3 :who '-3'
\set s4 :who '-4'
\set tag :who ':seat'
\set claim '[{"type": "Claimed", "payload": {}, "tags": ["' :tag '"]}]'
\set condition '[{"types": ["Claimed"], "tags": ["' :tag '"]}, {"types": ["Opened"]}]'
\if :writes
SELECT * FROM allsource.append(:'s1', 'Opened', '{"n": 1}', '{"by": "test"}', expected_version => 0);
\set batch '[{"type": "Added", "payload": {"n": 2}}, {"type": "Added", "payload": {"n": 3}, "id": "' :id1 '"}]'
SELECT * FROM allsource.append_batch(:'s1', :'batch');
SELECT * FROM allsource.append(:'s2', 'Opened', '{}', event_id => :'id2');
SELECT * FROM allsource.append(:'s2', 'Opened', '{}', event_id => :'id2');  -- a retry: the stored id is looked up
-- The queue: a worker appends it, under the same hostile database settings.
SELECT allsource.enqueue(:'s3', 'Queued', '{"q": true}') AS ticket \gset
SELECT status FROM allsource.await_ticket(:ticket, 10000);
SELECT status FROM allsource._await_ticket_if_issued(:ticket, 1000);
SELECT allsource.save_snapshot(:'s1', 2, '{"total": 3}');
SELECT allsource.delete_stream(:'s2');
SELECT allsource.append(:'s4', 'Secret', '{"pii": "x"}');
SELECT allsource.delete_stream(:'s4', hard => true);
-- Dynamic consistency boundaries: tags, a condition, a stream of its own.
SELECT * FROM allsource.append(:'s1', 'Tagged', '{}', tags => ARRAY[:'tag']);
SELECT allsource.query_head(:'condition') AS head \gset
SELECT * FROM allsource.append_if(:'claim', :'condition', :head);
\endif
SELECT pg_catalog.count(*) FROM allsource.read_query(:'condition');
SELECT pg_catalog.count(*) FROM allsource.read_stream(:'s1');
SELECT pg_catalog.count(*) FROM allsource.read_stream(:'s1', 3, 10, backward => true);
SELECT pg_catalog.count(*) FROM allsource.read_all(0, 100);
SELECT pg_catalog.count(*) FROM allsource.read_all(0, 100, ARRAY['Opened'], 0);
SELECT pg_catalog.count(*) FROM allsource.read_category(:'who', 0, 100);
SELECT pg_catalog.count(*) FROM allsource.read_category(:'who', 0, 100, 0, 2);
SELECT allsource.stream_version(:'s1');
SELECT * FROM allsource.load_snapshot(:'s1');
SELECT allsource.verify_gapless(:'s1');
SELECT * FROM allsource.verify_stream(:'s1');
SELECT version AS head_version, checksum AS head_checksum FROM allsource.stream_head(:'s1') \gset
SELECT * FROM allsource.verify_anchor(:'s1', :head_version, :'head_checksum');
SELECT pg_catalog.count(*) FROM allsource.verify_all();
SELECT allsource.watermark();
SELECT pg_catalog.count(*) FROM allsource.inflight();
SELECT pg_catalog.count(*) FROM allsource.ingest_workers();
SELECT events_appended FROM allsource.stats();
SELECT allsource.partition_for(:'s1'), allsource.partition_for(:'s1', 4);
SELECT allsource.partition_count();
SELECT pg_catalog.count(*) FROM allsource.partition_stats();
SELECT allsource.current_tenant();
-- Subscriptions: writers create (and drop), everyone consumes.
\set sub :who '-sub'
\set gone :who '-gone'
SELECT allsource.partition_for(:'s1', 2) AS member \gset
\if :writes
SELECT allsource.create_subscription(:'sub', ARRAY[:'who'], ARRAY['Opened', 'Added'], 0, 2, NULL, 1);
SELECT allsource.create_subscription(:'gone');
SELECT allsource.drop_subscription(:'gone');
SELECT "position" AS first FROM allsource.receive(:'sub', 1, :member) \gset
SELECT allsource.nack(:'sub', :first, 'exercised', :member);
SELECT allsource.retry_parked(:'sub');
SELECT pg_catalog.count(*) FROM allsource.receive(:'sub', 10, :member);
SELECT allsource.ack(:'sub', :first, :member);
\endif
SELECT pg_catalog.count(*) FROM allsource.receive(:'sub', 10, :member);
SELECT allsource.ack(:'sub', 0, :member);
SELECT allsource.release(:'sub', :member);
SELECT pg_catalog.count(*) FROM allsource.parked_events(:'sub');
SELECT pg_catalog.count(*) FROM allsource.subscriptions();
