-- Run by scripts/test.sh against a server that does NOT preload allsource:
-- everything that needs no shared memory must work. psql stops at the first error.
\set ON_ERROR_STOP on
SELECT current_setting('shared_preload_libraries') = '' AS not_preloaded \gset
\if :not_preloaded
\else
  \echo 'expected a server without shared_preload_libraries'
  SELECT 1/0;
\endif
CREATE EXTENSION allsource;
SELECT version FROM allsource.append('plain', 'T', '{"a": 1}', expected_version => 0) \gset
SELECT last_version FROM allsource.append_batch('plain', '[{"type": "T", "payload": 2}]', expected_version => 1) \gset
SELECT count(*) AS events FROM allsource.read_stream('plain') \gset
SELECT (:version = 1 AND :last_version = 2 AND :events = 2 AND allsource.stream_version('plain') = 2) AS ok \gset
\if :ok
  \echo 'without preloading: append, append_batch, read_stream and stream_version work'
\else
  SELECT 1/0;
\endif

-- Lifecycle needs no preloading either; the audit below recomputes the erased
-- stream's chain from the digests a hard delete keeps.
SELECT version AS first FROM allsource.append('erased', 'T', '{"name": "Ada"}', '{"ip": "10.0.0.1"}') \gset
SELECT version AS second FROM allsource.append('erased', 'T', '{"name": "Ada L."}') \gset
SELECT allsource.save_snapshot('erased', 2, '{}') AS saved \gset
SELECT allsource.delete_stream('erased', hard => true) AS erased_version \gset
SELECT (:'saved'::boolean AND :erased_version = 2
        AND (SELECT ok FROM allsource.verify_stream('erased'))
        AND NOT EXISTS (SELECT FROM allsource.load_snapshot('erased'))) AS ok \gset
\if :ok
  \echo 'without preloading: save_snapshot, delete_stream (hard) and verify_stream work'
\else
  SELECT 1/0;
\endif

-- What needs shared memory says so, with 55000.
DO $$
DECLARE
    failures int := 0;
    call text;
BEGIN
    FOREACH call IN ARRAY ARRAY['SELECT allsource.watermark()', 'SELECT * FROM allsource.inflight()',
                                'SELECT * FROM allsource.read_all()', 'SELECT * FROM allsource.read_category(''c'')',
                                'SELECT allsource.enqueue(''s'', ''T'', ''{}'')', 'SELECT * FROM allsource.await_ticket(1)',
                                'SELECT * FROM allsource.stats()', 'SELECT allsource.stats_reset()',
                                'SELECT * FROM allsource.ingest_workers()']
    LOOP
        BEGIN
            EXECUTE call;
        EXCEPTION WHEN SQLSTATE '55000' THEN
            failures := failures + 1;
        END;
    END LOOP;
    IF failures <> 9 THEN
        RAISE EXCEPTION 'only % of 9 calls raised 55000 without preloading', failures;
    END IF;
END $$;
\echo 'without preloading: watermark, inflight, read_all, read_category, the queue and stats raise 55000'

-- Subscriptions are created, listed and dropped without preloading; consuming
-- (the lease lives in shared memory) raises 55000.
SELECT allsource.create_subscription('unpreloaded', categories => ARRAY['c']);
SELECT count(*) = 1 AND bool_and(watermark IS NULL AND holder_pid IS NULL AND checkpoint = 0) AS ok
FROM allsource.subscriptions() \gset
\if :ok
  \echo 'without preloading: create_subscription and subscriptions() work'
\else
  SELECT 1/0;
\endif
DO $$
DECLARE
    failures int := 0;
    call text;
BEGIN
    FOREACH call IN ARRAY ARRAY['SELECT * FROM allsource.receive(''unpreloaded'')',
                                'SELECT allsource.ack(''unpreloaded'', 0)',
                                'SELECT allsource.nack(''unpreloaded'', 1)']
    LOOP
        BEGIN
            EXECUTE call;
        EXCEPTION WHEN SQLSTATE '55000' THEN
            failures := failures + 1;
        END;
    END LOOP;
    IF failures <> 3 THEN
        RAISE EXCEPTION 'only % of 3 consuming calls raised 55000 without preloading', failures;
    END IF;
END $$;
SELECT allsource.drop_subscription('unpreloaded');
\echo 'without preloading: receive, ack and nack raise 55000; drop_subscription works'
