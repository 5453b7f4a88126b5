//! `#[pg_test]`s: each runs inside a real PostgreSQL 15 (with the extension
//! preloaded) in its own transaction, rolled back afterwards. Concurrency and
//! committed-state checks live in the driver tests (`tests/driver`).
//! Tests share one database and run in parallel, so each uses its own stream
//! ids and event ids: two open transactions on one stream would wait on each other.

#[pgrx::pg_schema]
mod tests {
    use allsource_core::checksum::{self, Body, EventFields, GENESIS};
    use pgrx::prelude::*;
    use pgrx::{IntoDatum, Uuid};

    fn one<T: FromDatum + IntoDatum>(query: &str) -> T {
        Spi::get_one::<T>(query)
            .unwrap_or_else(|e| panic!("{query}: {e}"))
            .unwrap_or_else(|| panic!("{query} returned NULL"))
    }

    /// Runs `query` in a subtransaction that must fail; returns (SQLSTATE, message).
    fn failure(query: &str) -> (String, String) {
        Spi::run(
            "CREATE OR REPLACE FUNCTION pg_temp.failure_of(query text) RETURNS text[]
             LANGUAGE plpgsql AS $$
             BEGIN
                 EXECUTE query;
                 RETURN NULL;
             EXCEPTION WHEN OTHERS THEN
                 RETURN ARRAY[SQLSTATE, SQLERRM];
             END $$",
        )
        .unwrap();
        let quoted = pgrx::spi::quote_literal(query);
        let result: Vec<String> = Spi::get_one(&format!("SELECT pg_temp.failure_of({quoted})"))
            .unwrap()
            .unwrap_or_else(|| panic!("expected an error from {query}"));
        (result[0].clone(), result[1].clone())
    }

    fn assert_fails(query: &str, sqlstate: &str, words: &str) {
        let (code, message) = failure(query);
        assert_eq!(code, sqlstate, "{query}: {message}");
        assert!(
            message.contains(words),
            "{query}: {message:?} should mention {words:?}"
        );
    }

    fn event_count() -> i64 {
        one("SELECT count(*) FROM allsource.events")
    }

    #[pg_test]
    fn append_returns_gapless_versions_and_increasing_positions() {
        let mut last_position = 0;
        for expected in 1..=5i64 {
            let (version, position) = Spi::get_two::<i64, i64>(
                "SELECT version, position FROM allsource.append('append-returns-gapless/order-1', 'Placed', '{\"n\": 1}')",
            )
            .unwrap();
            assert_eq!(version, Some(expected));
            assert!(position.unwrap() > last_position);
            last_position = position.unwrap();
        }
        assert_eq!(
            one::<i64>("SELECT allsource.stream_version('append-returns-gapless/order-1')"),
            5
        );
        assert_eq!(
            one::<i64>("SELECT allsource.stream_version('append-returns-gapless/nobody')"),
            0
        );
    }

    #[pg_test]
    fn append_stores_every_field() {
        Spi::run(
            "SELECT allsource.append('cart-7', 'ItemAdded', '{\"sku\": \"A\", \"qty\": 2}',
                 metadata => '{\"by\": \"alice\"}',
                 event_id => '00112233-4455-6677-8899-aabbccddeeff')",
        )
        .unwrap();
        let row = "FROM allsource.events WHERE stream_id = 'cart-7'";
        assert_eq!(
            one::<String>(&format!("SELECT event_type {row}")),
            "ItemAdded"
        );
        assert_eq!(
            one::<String>(&format!("SELECT payload::text {row}")),
            r#"{"qty": 2, "sku": "A"}"#
        );
        assert_eq!(
            one::<String>(&format!("SELECT metadata::text {row}")),
            r#"{"by": "alice"}"#
        );
        assert_eq!(
            one::<String>(&format!("SELECT event_id::text {row}")),
            "00112233-4455-6677-8899-aabbccddeeff"
        );
        assert!(one::<bool>(&format!("SELECT created_at = now() {row}")));
        assert!(one::<bool>(&format!(
            "SELECT octet_length(checksum) = 32 {row}"
        )));
        assert!(one::<bool>(&format!(
            "SELECT partition_id = allsource.partition_for('cart-7') {row}"
        )));
        assert!(one::<bool>(
            "SELECT s.partition_id = allsource.partition_for('cart-7') AND s.version = 1 AND s.deleted_at IS NULL
             FROM allsource.streams s WHERE stream_id = 'cart-7'"
        ));
        assert!(one::<bool>(
            "SELECT e.position = i.position FROM allsource.events e
             JOIN allsource.event_ids i USING (event_id) WHERE e.stream_id = 'cart-7'"
        ));
    }

    #[pg_test]
    fn generated_event_ids_are_distinct() {
        for _ in 0..20 {
            Spi::run("SELECT allsource.append('generated-event-ids/s', 'T', '1')").unwrap();
        }
        assert_eq!(
            one::<i64>("SELECT count(DISTINCT event_id) FROM allsource.events"),
            20
        );
    }

    #[pg_test]
    fn expected_version_modes() {
        // 0: the stream must have no events.
        Spi::run(
            "SELECT allsource.append('expected-version-modes/s', 'T', '1', expected_version => 0)",
        )
        .unwrap();
        assert_fails(
            "SELECT allsource.append('expected-version-modes/s', 'T', '1', expected_version => 0)",
            "ZA001",
            "expected 0 (no stream), actual 1",
        );
        // N: exactly N.
        Spi::run(
            "SELECT allsource.append('expected-version-modes/s', 'T', '1', expected_version => 1)",
        )
        .unwrap();
        assert_fails(
            "SELECT allsource.append('expected-version-modes/s', 'T', '1', expected_version => 1)",
            "ZA001",
            "stream \"expected-version-modes/s\": expected 1, actual 2",
        );
        assert_fails(
            "SELECT allsource.append('expected-version-modes/s', 'T', '1', expected_version => 5)",
            "ZA001",
            "actual 2",
        );
        // -1: the stream must exist.
        Spi::run(
            "SELECT allsource.append('expected-version-modes/s', 'T', '1', expected_version => -1)",
        )
        .unwrap();
        assert_fails(
            "SELECT allsource.append('expected-version-modes/new', 'T', '1', expected_version => -1)",
            "ZA001",
            "expected -1 (stream exists), actual 0",
        );
        // NULL: anything.
        Spi::run("SELECT allsource.append('expected-version-modes/s', 'T', '1', expected_version => NULL)").unwrap();
        assert_eq!(
            one::<i64>("SELECT allsource.stream_version('expected-version-modes/s')"),
            4
        );
        assert_eq!(
            one::<i64>("SELECT allsource.stream_version('expected-version-modes/new')"),
            0
        );
        assert_fails(
            "SELECT allsource.append('expected-version-modes/s', 'T', '1', expected_version => -2)",
            "22023",
            "expected_version",
        );
        assert_eq!(event_count(), 4, "refused appends wrote nothing");
    }

    #[pg_test]
    fn wrong_expected_version_has_detail_and_hint() {
        Spi::run("SELECT allsource.append('wrong-expected-version/s', 'T', '1')").unwrap();
        Spi::run(
            "DO $$ DECLARE d text; h text;
             BEGIN
                 PERFORM allsource.append('wrong-expected-version/s', 'T', '1', expected_version => 7);
             EXCEPTION WHEN SQLSTATE 'ZA001' THEN
                 GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL, h = PG_EXCEPTION_HINT;
                 PERFORM set_config('allsource_test.detail', d || ' | ' || h, true);
             END $$",
        )
        .unwrap();
        let detail: String = one("SELECT current_setting('allsource_test.detail')");
        assert!(
            detail.contains(
                "stream \"wrong-expected-version/s\" is at version 1; the append expected 7"
            ),
            "{detail}"
        );
        assert!(detail.contains("retry"), "{detail}");
    }

    #[pg_test]
    fn idempotent_retries_return_the_original() {
        let append = "SELECT version, position FROM allsource.append('idempotent-retries-return/s', 'T', '{\"a\": 1}',
                          event_id => '00000000-0000-0000-0005-000000000001', expected_version => 0)";
        let first = Spi::get_two::<i64, i64>(append).unwrap();
        Spi::run("SELECT allsource.append('idempotent-retries-return/s', 'Other', '2')").unwrap();
        // The retry carries a now-stale expected version and still gets the original back.
        assert_eq!(Spi::get_two::<i64, i64>(append).unwrap(), first);
        assert_eq!(event_count(), 2);
        assert_eq!(
            one::<i64>("SELECT allsource.stream_version('idempotent-retries-return/s')"),
            2
        );

        let id = "'00000000-0000-0000-0005-000000000001'";
        assert_fails(
            &format!("SELECT allsource.append('idempotent-retries-return/s', 'T', '{{\"a\": 2}}', event_id => {id})"),
            "ZA003",
            "00000000-0000-0000-0005-000000000001",
        );
        assert_fails(
            &format!("SELECT allsource.append('idempotent-retries-return/s', 'U', '{{\"a\": 1}}', event_id => {id})"),
            "ZA003",
            "different event",
        );
        assert_fails(
            &format!("SELECT allsource.append('idempotent-retries-return/t', 'T', '{{\"a\": 1}}', event_id => {id})"),
            "ZA003",
            "different event",
        );
        assert_eq!(event_count(), 2);
    }

    #[pg_test]
    fn append_batch_appends_all_in_order() {
        Spi::run("SELECT allsource.append('append-batch-appends/s', 'First', '0')").unwrap();
        let (first, last) = Spi::get_two::<i64, i64>(
            r#"SELECT first_version, last_version FROM allsource.append_batch('append-batch-appends/s', '[
                {"type": "A", "payload": {"i": 1}},
                {"type": "B", "payload": {"i": 2}, "metadata": {"m": true}},
                {"type": "C", "payload": {"i": 3}, "id": "00000000-0000-0000-0006-0000000000cc"}
            ]', expected_version => 1)"#,
        )
        .unwrap();
        assert_eq!((first, last), (Some(2), Some(4)));
        assert!(one::<bool>(
            "SELECT bool_and(position > lag) FROM (
                 SELECT position, lag(position, 1, 0::bigint) OVER (ORDER BY version) AS lag
                 FROM allsource.events WHERE stream_id = 'append-batch-appends/s') p"
        ));
        assert_eq!(
            one::<String>(
                "SELECT string_agg(event_type, ',' ORDER BY version) FROM allsource.events"
            ),
            "First,A,B,C"
        );
        assert_eq!(
            one::<String>("SELECT event_id::text FROM allsource.events WHERE version = 4"),
            "00000000-0000-0000-0006-0000000000cc"
        );
        assert_eq!(
            one::<String>("SELECT metadata::text FROM allsource.events WHERE version = 3"),
            r#"{"m": true}"#
        );
    }

    #[pg_test]
    fn append_batch_is_all_or_nothing() {
        assert_fails(
            r#"SELECT allsource.append_batch('append-batch-is/s', '[{"type": "A", "payload": 1}, {"type": "", "payload": 2}]')"#,
            "22023",
            "events[1].type",
        );
        assert_fails(
            r#"SELECT allsource.append_batch('append-batch-is/s', '[{"type": "A", "payload": 1}]', expected_version => 3)"#,
            "ZA001",
            "actual 0",
        );
        assert_fails(
            r#"SELECT allsource.append_batch('append-batch-is/s', '{"type": "A"}')"#,
            "22023",
            "JSON array",
        );
        assert_fails(
            r#"SELECT allsource.append_batch('append-batch-is/s', '[]')"#,
            "22023",
            "at least one event",
        );
        assert_fails(
            "SELECT allsource.append_batch('append-batch-is/s', NULL)",
            "22023",
            "\"events\": must not be null",
        );
        assert_eq!(event_count(), 0);
        assert_eq!(
            one::<i64>("SELECT count(*) FROM allsource.streams"),
            0,
            "no stream row is left behind"
        );
    }

    #[pg_test]
    fn append_batch_replays_idempotently() {
        let batch = r#"SELECT first_version, last_position FROM allsource.append_batch('append-batch-replays/s', '[
            {"type": "A", "payload": 1, "id": "00000000-0000-0000-0008-00000000000a"},
            {"type": "B", "payload": 2, "id": "00000000-0000-0000-0008-00000000000b"}
        ]', expected_version => 0)"#;
        let original = Spi::get_two::<i64, i64>(batch).unwrap();
        assert_eq!(Spi::get_two::<i64, i64>(batch).unwrap(), original);
        assert_eq!(event_count(), 2);
        // One known id beside a new one is not a retry.
        assert_fails(
            r#"SELECT allsource.append_batch('append-batch-replays/s', '[
                {"type": "A", "payload": 1, "id": "00000000-0000-0000-0008-00000000000a"},
                {"type": "C", "payload": 3}]')"#,
            "ZA003",
            "00000000-0000-0000-0008-00000000000a",
        );
        assert_eq!(event_count(), 2);
    }

    #[pg_test]
    fn bad_arguments_raise_22023_and_name_the_argument() {
        let long = "x".repeat(256);
        let cases = [
            ("SELECT allsource.append(NULL, 'T', '1')".to_string(), "\"stream_id\""),
            ("SELECT allsource.append('', 'T', '1')".to_string(), "\"stream_id\""),
            (format!("SELECT allsource.append('{long}', 'T', '1')"), "\"stream_id\""),
            ("SELECT allsource.append('bad-arguments-raise/s', NULL, '1')".to_string(), "\"event_type\""),
            ("SELECT allsource.append('bad-arguments-raise/s', '', '1')".to_string(), "\"event_type\""),
            (format!("SELECT allsource.append('bad-arguments-raise/s', '{long}', '1')"), "\"event_type\""),
            ("SELECT allsource.append('bad-arguments-raise/s', 'T', NULL)".to_string(), "\"payload\""),
            ("SELECT allsource.append_batch('', '[]')".to_string(), "\"stream_id\""),
            (r#"SELECT allsource.append_batch('bad-arguments-raise/s', '[{"type": "T", "payload": 1, "id": "x"}]')"#.to_string(), "events[0].id"),
            (r#"SELECT allsource.append_batch('bad-arguments-raise/s', '[{"type": "T", "payload": 1, "extra": 1}]')"#.to_string(), "unknown key"),
            ("SELECT * FROM allsource.read_stream('')".to_string(), "\"stream_id\""),
            ("SELECT * FROM allsource.read_stream('bad-arguments-raise/s', -1)".to_string(), "\"from_version\""),
            ("SELECT * FROM allsource.read_stream('bad-arguments-raise/s', 1, -5)".to_string(), "\"max_count\""),
            ("SELECT * FROM allsource.read_stream('bad-arguments-raise/s', NULL)".to_string(), "\"from_version\""),
            ("SELECT allsource.stream_version('')".to_string(), "\"stream_id\""),
            ("SELECT allsource.partition_for('')".to_string(), "\"stream_id\""),
            ("SELECT allsource.partition_for('bad-arguments-raise/s', 0)".to_string(), "\"partition_count\""),
            ("SELECT allsource.partition_for('bad-arguments-raise/s', -3)".to_string(), "\"partition_count\""),
        ];
        for (query, words) in &cases {
            assert_fails(query, "22023", words);
        }
        // 255 bytes is allowed.
        Spi::run(&format!(
            "SELECT allsource.append('{}', 'T', '1')",
            &long[1..]
        ))
        .unwrap();
        assert_eq!(event_count(), 1);
    }

    #[pg_test]
    fn oversized_events_raise_54000() {
        Spi::run("SET LOCAL allsource.max_event_bytes = 100").unwrap();
        let big = format!("'{{\"x\": \"{}\"}}'", "y".repeat(100));
        assert_fails(
            &format!("SELECT allsource.append('oversized-events-raise/s', 'T', {big})"),
            "54000",
            "100",
        );
        assert_fails(
            &format!(
                "SELECT allsource.append('oversized-events-raise/s', 'T', '1', metadata => {big})"
            ),
            "54000",
            "100",
        );
        assert_fails(
            &format!("SELECT allsource.append_batch('oversized-events-raise/s', jsonb_build_array(jsonb_build_object('type', 'T', 'payload', {big}::jsonb)))"),
            "54000",
            "events[0]",
        );
        Spi::run("SELECT allsource.append('oversized-events-raise/s', 'T', '\"small\"')").unwrap();
        assert_eq!(event_count(), 1);
    }

    #[pg_test]
    fn appending_to_a_deleted_stream_raises_za002() {
        Spi::run("SELECT allsource.append('appending-to-a/s', 'T', '1')").unwrap();
        // Until delete_stream exists, mark the tombstone the way it will.
        Spi::run("SET LOCAL session_replication_role = replica").unwrap();
        Spi::run(
            "UPDATE allsource.streams SET deleted_at = now() WHERE stream_id = 'appending-to-a/s'",
        )
        .unwrap();
        Spi::run("SET LOCAL session_replication_role = origin").unwrap();
        assert_fails(
            "SELECT allsource.append('appending-to-a/s', 'T', '1')",
            "ZA002",
            "stream \"appending-to-a/s\" is deleted",
        );
        assert_eq!(
            one::<i64>("SELECT count(*) FROM allsource.read_stream('appending-to-a/s')"),
            0
        );
        assert_eq!(
            one::<i64>("SELECT allsource.stream_version('appending-to-a/s')"),
            1
        );
    }

    #[pg_test]
    fn direct_writes_are_refused_even_for_superusers() {
        assert!(one::<bool>(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ));
        Spi::run("SELECT allsource.append('direct-writes-are/s', 'T', '1')").unwrap();
        let partition: i32 = one("SELECT allsource.partition_for('direct-writes-are/s')");
        let part = format!("allsource.events_p{partition}");
        let statements = [
            "INSERT INTO allsource.events SELECT * FROM allsource.events".to_string(),
            format!("INSERT INTO {part} SELECT * FROM {part}"),
            "UPDATE allsource.events SET payload = '2'".to_string(),
            format!("UPDATE {part} SET payload = '2'"),
            "DELETE FROM allsource.events".to_string(),
            format!("DELETE FROM {part}"),
            "TRUNCATE allsource.events".to_string(),
            format!("TRUNCATE {part}"),
            "INSERT INTO allsource.streams (stream_id, partition_id) VALUES ('x', 0)".to_string(),
            "UPDATE allsource.streams SET version = 9".to_string(),
            "DELETE FROM allsource.streams".to_string(),
            "TRUNCATE allsource.streams".to_string(),
            "DELETE FROM allsource.event_ids".to_string(),
            "TRUNCATE allsource.event_ids".to_string(),
        ];
        for statement in &statements {
            assert_fails(statement, "42501", "is not allowed");
        }
        assert_eq!(event_count(), 1);
        assert_eq!(
            one::<String>("SELECT payload::text FROM allsource.events"),
            "1"
        );
    }

    #[pg_test]
    fn read_stream_forward_backward_and_windows() {
        Spi::run("SELECT allsource.append_batch('read-stream-forward/s', (SELECT jsonb_agg(jsonb_build_object('type', 'T', 'payload', i)) FROM generate_series(1, 10) i))").unwrap();
        Spi::run("SELECT allsource.append('read-stream-forward/other', 'T', '0')").unwrap();
        let versions = |query: &str| -> String {
            one(&format!("SELECT coalesce(string_agg(version::text, ',' ORDER BY ord), '') FROM {query} WITH ORDINALITY AS r(position, partition_id, stream_id, version, event_id, event_type, tenant_id, payload, metadata, created_at, checksum, ord)"))
        };
        assert_eq!(
            versions("allsource.read_stream('read-stream-forward/s')"),
            "1,2,3,4,5,6,7,8,9,10"
        );
        assert_eq!(
            versions("allsource.read_stream('read-stream-forward/s', 8)"),
            "8,9,10"
        );
        assert_eq!(
            versions("allsource.read_stream('read-stream-forward/s', 2, 3)"),
            "2,3,4"
        );
        assert_eq!(
            versions("allsource.read_stream('read-stream-forward/s', 5, 2, true)"),
            "5,4"
        );
        assert_eq!(
            versions("allsource.read_stream('read-stream-forward/s', 100, 3, backward => true)"),
            "10,9,8"
        );
        assert_eq!(
            versions("allsource.read_stream('read-stream-forward/s', 1, 0)"),
            ""
        );
        assert_eq!(
            versions("allsource.read_stream('read-stream-forward/s', 11)"),
            ""
        );
        assert_eq!(versions("allsource.read_stream('missing')"), "");
        assert_eq!(
            one::<String>(
                "SELECT payload::text FROM allsource.read_stream('read-stream-forward/s', 3, 1)"
            ),
            "3"
        );
    }

    #[pg_test]
    fn partitions() {
        assert_eq!(one::<i32>("SELECT allsource.partition_count()"), 32);
        assert_eq!(
            one::<i64>(
                "SELECT count(*) FROM pg_inherits WHERE inhparent = 'allsource.events'::regclass"
            ),
            32
        );
        // The test vectors of docs/sql-reference.md.
        assert_eq!(one::<i32>("SELECT allsource.partition_for('order-1')"), 12);
        assert_eq!(
            one::<i32>("SELECT allsource.partition_for('order-1', 7)"),
            0
        );
        assert_eq!(
            one::<i32>("SELECT allsource.partition_for('customer-42', partition_count => 1024)"),
            821
        );
        assert_eq!(
            one::<i32>("SELECT allsource.partition_for('Äpfel-ünd-Birnen')"),
            21
        );

        Spi::run("SELECT allsource.append_batch('order-1', '[{\"type\": \"A\", \"payload\": 1}, {\"type\": \"A\", \"payload\": 2}]')").unwrap();
        Spi::run("SELECT allsource.append('customer-42', 'A', '1')").unwrap();
        assert_eq!(
            one::<i64>("SELECT count(*) FROM allsource.partition_stats()"),
            32
        );
        assert_eq!(
            one::<String>(
                "SELECT string_agg(format('%s:%s:%s', partition_id, stream_count, event_count), ' ' ORDER BY partition_id)
                 FROM allsource.partition_stats() WHERE event_count > 0"
            ),
            "12:1:2 21:1:1"
        );
        assert!(one::<bool>(
            "SELECT last_position = (SELECT max(position) FROM allsource.events WHERE stream_id = 'order-1')
                    AND total_bytes > 0
             FROM allsource.partition_stats() WHERE partition_id = 12"
        ));
        assert!(one::<bool>("SELECT last_position IS NULL AND event_count = 0 FROM allsource.partition_stats() WHERE partition_id = 0"));
    }

    /// The stored checksums are the Rust chain over what SELECT returns: the
    /// jsonb text Rust hashes is exactly PostgreSQL's, for awkward JSON too.
    #[pg_test]
    fn checksums_chain_over_the_stored_text() {
        let payloads = [
            r#"{"b": 1, "a": [1, 2.50, -0.0010, 1e3, 12345678901234567890123]}"#,
            r#""quote \" backslash \\ newline \n tab \t bell \u0007 snowman ☃ emoji 😀""#,
            r#"{"nested": {"deeper": {"deepest": [null, true, false, {}, []]}}, "": ""}"#,
            r#"[1E+2, 0.1e-2, 100.00]"#,
        ];
        for payload in payloads {
            Spi::run(&format!(
                "SELECT allsource.append('chain', 'T', {}, metadata => '{{\"k\": [1, 2]}}')",
                pgrx::spi::quote_literal(payload)
            ))
            .unwrap();
        }
        let mut previous = GENESIS;
        Spi::connect(|client| {
            let rows = client
                .select(
                    "SELECT stream_id, version, event_type, event_id, payload::text, metadata::text,
                            (extract(epoch FROM created_at) * 1000000)::bigint, checksum
                     FROM allsource.events ORDER BY version",
                    None,
                    &[],
                )
                .unwrap();
            assert_eq!(rows.len(), payloads.len());
            for row in rows {
                let stream_id: String = row.get(1).unwrap().unwrap();
                let event_type: String = row.get(3).unwrap().unwrap();
                let event_id: Uuid = row.get(4).unwrap().unwrap();
                let payload: String = row.get(5).unwrap().unwrap();
                let metadata: Option<String> = row.get(6).unwrap();
                let stored: Vec<u8> = row.get(8).unwrap().unwrap();
                let fields = EventFields {
                    stream_id: &stream_id,
                    version: row.get(2).unwrap().unwrap(),
                    event_type: &event_type,
                    event_id: *event_id.as_bytes(),
                    payload: Body::Text(&payload),
                    metadata: metadata.as_deref().map(Body::Text),
                    created_at_unix_micros: row.get(7).unwrap().unwrap(),
                    tenant: None,
                };
                let expected = checksum::checksum(&fields, &previous);
                assert_eq!(
                    stored,
                    expected.to_vec(),
                    "version {} payload {payload}",
                    fields.version
                );
                previous = expected;
            }
        });
        assert_eq!(
            one::<Vec<u8>>("SELECT last_checksum FROM allsource.streams WHERE stream_id = 'chain'"),
            previous.to_vec()
        );
    }

    /// Appends `n` events to `stream` (payload `{"n": i}`, metadata on even versions).
    fn stream_of(stream: &str, n: i64) {
        Spi::run(&format!(
            "SELECT allsource.append_batch('{stream}', (SELECT jsonb_agg(jsonb_build_object(
                 'type', 'T' || i % 3, 'payload', jsonb_build_object('n', i),
                 'metadata', CASE WHEN i % 2 = 0 THEN jsonb_build_object('m', i) END) ORDER BY i)
             FROM generate_series(1, {n}) i))"
        ))
        .unwrap();
    }

    /// Runs `sql` the way a superuser would tamper: around the guard triggers.
    fn tamper(sql: &str) {
        Spi::run("SET LOCAL session_replication_role = replica").unwrap();
        Spi::run(sql).unwrap();
        Spi::run("SET LOCAL session_replication_role = origin").unwrap();
    }

    fn verdict(stream: &str) -> (bool, i64, Option<i64>, Option<String>) {
        Spi::connect(|client| {
            let row = client
                .select(
                    &format!("SELECT * FROM allsource.verify_stream('{stream}')"),
                    None,
                    &[],
                )
                .unwrap()
                .first();
            (
                row.get(1).unwrap().unwrap(),
                row.get(2).unwrap().unwrap(),
                row.get(3).unwrap(),
                row.get(4).unwrap(),
            )
        })
    }

    fn assert_damage(stream: &str, version: i64, words: &str) {
        let (ok, _, first_bad, problem) = verdict(stream);
        assert!(!ok, "{stream}: damage not found");
        assert_eq!(first_bad, Some(version), "{stream}: {problem:?}");
        let problem = problem.unwrap();
        assert!(
            problem.contains(words),
            "{stream}: {problem:?} should mention {words:?}"
        );
    }

    #[pg_test]
    fn a_clean_store_verifies_clean() {
        stream_of("verify-clean/a", 25);
        stream_of("verify-clean/b", 1);
        Spi::run("SELECT allsource.append('verify-clean/a', 'More', '{}')").unwrap();
        assert_eq!(verdict("verify-clean/a"), (true, 26, None, None));
        assert_eq!(verdict("verify-clean/b"), (true, 1, None, None));
        assert_eq!(verdict("verify-clean/unknown"), (true, 0, None, None));
        assert!(one::<bool>(
            "SELECT allsource.verify_gapless('verify-clean/a')"
        ));
        assert!(one::<bool>(
            "SELECT allsource.verify_gapless('verify-clean/unknown')"
        ));
        assert_eq!(one::<i64>("SELECT count(*) FROM allsource.verify_all()"), 0);
        assert_fails(
            "SELECT * FROM allsource.verify_stream('')",
            "22023",
            "\"stream_id\"",
        );
        assert_fails(
            "SELECT allsource.verify_gapless(NULL)",
            "22023",
            "\"stream_id\"",
        );
    }

    #[pg_test]
    fn every_kind_of_damage_is_found_at_its_version() {
        let at = |stream: &str, version: i64| {
            format!("FROM allsource.events WHERE stream_id = '{stream}' AND version = {version}")
        };
        let cases: Vec<(&str, String, i64, &str)> = vec![
            ("payload", "UPDATE allsource.events SET payload = '{\"n\": 999}' WHERE (stream_id, version) = ('tamper/payload', 3)".into(), 3, "content of version 3"),
            ("metadata", "UPDATE allsource.events SET metadata = NULL WHERE (stream_id, version) = ('tamper/metadata', 4)".into(), 4, "content of version 4"),
            ("type", "UPDATE allsource.events SET event_type = 'Forged' WHERE (stream_id, version) = ('tamper/type', 1)".into(), 1, "content of version 1"),
            ("event-id", "UPDATE allsource.events SET event_id = gen_random_uuid() WHERE (stream_id, version) = ('tamper/event-id', 5)".into(), 5, "content of version 5"),
            ("created-at", "UPDATE allsource.events SET created_at = created_at + interval '1 microsecond' WHERE (stream_id, version) = ('tamper/created-at', 2)".into(), 2, "content of version 2"),
            ("removed", "DELETE FROM allsource.events WHERE (stream_id, version) = ('tamper/removed', 3)".into(), 3, "version 3 is missing"),
            ("removed-last", "DELETE FROM allsource.events WHERE (stream_id, version) = ('tamper/removed-last', 6)".into(), 6, "events end at version 5"),
            ("swapped", "UPDATE allsource.events SET version = -2 WHERE (stream_id, version) = ('tamper/swapped', 2);
                         UPDATE allsource.events SET version = 2 WHERE (stream_id, version) = ('tamper/swapped', 5);
                         UPDATE allsource.events SET version = 5 WHERE (stream_id, version) = ('tamper/swapped', -2)".into(), 2, "swapped"),
            ("swapped-content", "UPDATE allsource.events e SET payload = o.payload, metadata = o.metadata, event_type = o.event_type,
                                        event_id = o.event_id, created_at = o.created_at
                                 FROM allsource.events o
                                 WHERE e.stream_id = 'tamper/swapped-content' AND o.stream_id = e.stream_id
                                   AND (e.version, o.version) IN ((3, 4), (4, 3))".into(), 3, "holds the content of version 4"),
            ("copied", format!("UPDATE allsource.events SET checksum = (SELECT checksum {}) WHERE (stream_id, version) = ('tamper/copied', 5)", at("tamper/copied", 1)), 5, "copy of version 1"),
            ("stream-row", "UPDATE allsource.streams SET version = 9 WHERE stream_id = 'tamper/stream-row'".into(), 7, "says version 9"),
        ];
        for (name, sql, _, _) in &cases {
            stream_of(&format!("tamper/{name}"), 6);
            tamper(sql);
        }

        for (name, _, version, words) in &cases {
            assert_damage(&format!("tamper/{name}"), *version, words);
        }

        // verify_all reports each damaged stream once, at the same version,
        // and the registry rows left pointing at no event with their id:
        // those of the two removed events and of the changed id.
        let reported: String = one(
            "SELECT string_agg(format('%s@%s', stream_id, first_bad_version), ' ')
             FROM allsource.verify_all() WHERE stream_id IS NOT NULL",
        );
        assert_eq!(
            one::<String>("SELECT problem FROM allsource.verify_all() WHERE stream_id IS NULL"),
            "3 rows of allsource.event_ids point at no event with their id: those ids are refused as if used"
        );
        let mut reported: Vec<&str> = reported.split(' ').collect();
        reported.sort();
        let mut expected: Vec<String> = cases
            .iter()
            .map(|(n, _, v, _)| format!("tamper/{n}@{v}"))
            .collect();
        expected.sort();
        assert_eq!(reported, expected);

        assert!(!one::<bool>(
            "SELECT allsource.verify_gapless('tamper/removed')"
        ));
        assert!(!one::<bool>(
            "SELECT allsource.verify_gapless('tamper/stream-row')"
        ));
        assert!(
            one::<bool>("SELECT allsource.verify_gapless('tamper/payload')"),
            "content damage keeps versions gapless"
        );
    }

    #[pg_test]
    fn orphaned_events_are_reported() {
        stream_of("orphan/a", 2);
        tamper("DELETE FROM allsource.streams WHERE stream_id = 'orphan/a'");
        assert_damage("orphan/a", 1, "stream row is missing");
        assert_eq!(
            one::<String>(
                "SELECT format('%s@%s', stream_id, first_bad_version) FROM allsource.verify_all()"
            ),
            "orphan/a@1"
        );
    }

    /// Random streams in the database, one random damage each, found at the right version.
    #[pg_test]
    fn random_damage_is_always_found() {
        // A fixed-seed xorshift: the extension build has no dev-dependencies.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = |bound: i64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % bound as u64) as i64
        };
        for case in 0..40 {
            let stream = format!("random-damage/{case}");
            let n = 2 + next(30);
            stream_of(&stream, n);
            let k = 1 + next(n);
            let row = format!("WHERE (stream_id, version) = ('{stream}', {k})");
            let (sql, expected) = match next(6) {
                0 => (format!("UPDATE allsource.events SET payload = payload || '{{\"x\": 1}}' {row}"), k),
                1 => (format!("UPDATE allsource.events SET event_type = event_type || '!' {row}"), k),
                2 => (format!("DELETE FROM allsource.events {row}"), k),
                3 => {
                    let j = if k == n { 1 } else { k + 1 };
                    (format!(
                        "UPDATE allsource.events SET checksum = (SELECT checksum FROM allsource.events
                             WHERE (stream_id, version) = ('{stream}', {j})) {row}"
                    ), k)
                }
                4 => (format!("UPDATE allsource.events SET created_at = created_at - interval '1 second' {row}"), k),
                _ => {
                    let claimed = n + 1 + next(3);
                    (format!("UPDATE allsource.streams SET version = {claimed} WHERE stream_id = '{stream}'"), n + 1)
                }
            };
            tamper(&sql);
            let (ok, _, first_bad, problem) = verdict(&stream);
            assert!(!ok, "case {case}: {sql}");
            assert_eq!(first_bad, Some(expected), "case {case}: {sql}: {problem:?}");
        }
    }

    #[pg_test]
    fn an_open_append_holds_the_watermark_below_its_position() {
        let before: i64 = one("SELECT allsource.watermark()");
        let position: i64 = one("SELECT position FROM allsource.append('watermark/own', 'T', '1')");
        assert!(position > before);
        let mark: i64 = one("SELECT allsource.watermark()");
        assert!(
            mark < position,
            "watermark {mark} must stay below our uncommitted position {position}"
        );
        assert!(one::<bool>(&format!(
            "SELECT lowest_position <= {position} AND since BETWEEN now() AND clock_timestamp()
             FROM allsource.inflight() WHERE pid = pg_backend_pid()"
        )));
        // Our own uncommitted event is past the watermark, so read_all does not return it.
        assert_eq!(
            one::<i64>(&format!(
                "SELECT count(*) FROM allsource.read_all({before}) WHERE position = {position}"
            )),
            0
        );
    }

    #[pg_test]
    fn global_reads_refuse_bad_arguments_and_snapshot_isolation() {
        let cases = [
            ("SELECT * FROM allsource.read_all(-1)", "22023", "\"after_position\""),
            ("SELECT * FROM allsource.read_all(0, -1)", "22023", "\"max_count\""),
            ("SELECT * FROM allsource.read_all(NULL)", "22023", "\"after_position\""),
            ("SELECT * FROM allsource.read_all(partition_id => 32)", "22023", "\"partition_id\""),
            ("SELECT * FROM allsource.read_all(partition_id => -1)", "22023", "\"partition_id\""),
            ("SELECT * FROM allsource.read_category('')", "22023", "\"category\""),
            ("SELECT * FROM allsource.read_category(NULL)", "22023", "\"category\""),
            ("SELECT * FROM allsource.read_category('c', -5)", "22023", "\"after_position\""),
            ("SELECT * FROM allsource.read_category('c', consumer_group_member => 2, consumer_group_size => 2)", "22023", "\"consumer_group_member\""),
            ("SELECT * FROM allsource.read_category('c', consumer_group_member => -1, consumer_group_size => 2)", "22023", "\"consumer_group_member\""),
            ("SELECT * FROM allsource.read_category('c', consumer_group_member => 0, consumer_group_size => 0)", "22023", "\"consumer_group_size\""),
            ("SELECT * FROM allsource.read_category('c', consumer_group_member => 0)", "22023", "\"consumer_group_size\""),
            ("SELECT * FROM allsource.read_category('c', consumer_group_size => 3)", "22023", "\"consumer_group_member\""),
        ];
        for (query, code, words) in cases {
            assert_fails(query, code, words);
        }
    }

    #[pg_test]
    fn enqueue_checks_arguments_first_then_the_database() {
        let cases = [
            (
                "SELECT allsource.enqueue(NULL, 'T', '{}')",
                "22023",
                "\"stream_id\"",
            ),
            (
                "SELECT allsource.enqueue('s', '', '{}')",
                "22023",
                "\"event_type\"",
            ),
            (
                "SELECT allsource.enqueue('s', 'T', NULL)",
                "22023",
                "\"payload\"",
            ),
            (
                "SELECT allsource.enqueue('s', 'T', '{}', expected_version => -7)",
                "22023",
                "\"expected_version\"",
            ),
            (
                "SELECT allsource.enqueue('s', 'T', to_jsonb(repeat('x', 1100000)))",
                "54000",
                "payload",
            ),
            // The test database is not allsource.database (postgres): the workers do not append here.
            (
                "SELECT allsource.enqueue('s', 'T', '{}')",
                "55000",
                "\"postgres\"",
            ),
            (
                "SELECT * FROM allsource.await_ticket(1)",
                "55000",
                "\"postgres\"",
            ),
        ];
        for (query, code, words) in cases {
            assert_fails(query, code, words);
        }
    }

    #[pg_test]
    fn stats_count_conflicts_as_they_happen() {
        let conflicts = || one::<i64>("SELECT conflicts FROM allsource.stats()");
        let before = conflicts();
        assert_fails(
            "SELECT allsource.append('stats-conflict', 'T', '{}', expected_version => 5)",
            "ZA001",
            "stats-conflict",
        );
        // Other tests run at the same time and may conflict too.
        assert!(conflicts() > before);
        let workers: i64 = one("SELECT count(*) FROM allsource.ingest_workers()");
        assert_eq!(workers, 1, "allsource.ingest_workers defaults to 1");
    }

    #[pg_test]
    fn a_soft_delete_leaves_a_tombstone() {
        Spi::run("SELECT allsource.append_batch('soft-delete/s', '[{\"type\": \"A\", \"payload\": 1}, {\"type\": \"B\", \"payload\": 2}]')").unwrap();
        let version: i64 = one("SELECT allsource.delete_stream('soft-delete/s')");
        assert_eq!(version, 2);
        assert_fails(
            "SELECT allsource.append('soft-delete/s', 'C', '3')",
            "ZA002",
            "is deleted",
        );
        let read: i64 = one("SELECT count(*) FROM allsource.read_stream('soft-delete/s')");
        assert_eq!(read, 0, "read_stream returns nothing");
        let version: i64 = one("SELECT allsource.stream_version('soft-delete/s')");
        assert_eq!(version, 2, "stream_version keeps the last version");
        let by: String =
            one("SELECT deleted_by FROM allsource.streams WHERE stream_id = 'soft-delete/s'");
        assert_eq!(by, one::<String>("SELECT current_user::text"));
        let stored: String = one("SELECT payload::text FROM allsource.events WHERE stream_id = 'soft-delete/s' AND version = 2");
        assert_eq!(stored, "2", "a soft delete keeps the payloads");
        // A stream never written gets a tombstone too.
        let version: i64 = one("SELECT allsource.delete_stream('soft-delete/never')");
        assert_eq!(version, 0);
        assert_fails(
            "SELECT allsource.append('soft-delete/never', 'C', '3')",
            "ZA002",
            "is deleted",
        );
        assert_fails(
            "SELECT allsource.delete_stream('soft-delete/s', NULL)",
            "22023",
            "hard",
        );
    }

    #[pg_test]
    fn a_hard_delete_erases_content_and_the_chain_still_verifies() {
        Spi::run("SELECT allsource.append('hard-delete/s', 'A', '{\"name\": \"Ada\"}', '{\"ip\": \"10.0.0.1\"}')").unwrap();
        Spi::run("SELECT allsource.append('hard-delete/s', 'B', '{\"name\": \"Ada L.\"}')")
            .unwrap();
        Spi::run("SELECT allsource.save_snapshot('hard-delete/s', 2, '{\"name\": \"Ada L.\"}')")
            .unwrap();
        let version: i64 = one("SELECT allsource.delete_stream('hard-delete/s', hard => true)");
        assert_eq!(version, 2);
        let left: i64 = one(
            "SELECT count(*) FROM allsource.events WHERE stream_id = 'hard-delete/s' \
             AND (payload <> 'null' OR metadata IS NOT NULL)",
        );
        assert_eq!(left, 0, "payload and metadata are gone");
        let digests: i64 = one(
            "SELECT count(*) FROM allsource.erased_events x JOIN allsource.events e USING (partition_id, position) \
             WHERE e.stream_id = 'hard-delete/s' AND (e.version = 1) = (x.metadata_digest IS NOT NULL)",
        );
        assert_eq!(
            digests, 2,
            "digests of both payloads, metadata only where there was one"
        );
        let (ok, checked) = Spi::get_two::<bool, i64>(
            "SELECT ok, events_checked FROM allsource.verify_stream('hard-delete/s')",
        )
        .unwrap();
        assert_eq!((ok, checked), (Some(true), Some(2)));
        let problem: String = one("SELECT problem FROM allsource.verify_stream('hard-delete/s')");
        assert!(problem.starts_with("erased at "), "{problem}");
        let failing: i64 =
            one("SELECT count(*) FROM allsource.verify_all() WHERE stream_id = 'hard-delete/s'");
        assert_eq!(failing, 0, "erased is not corrupt");
        let snapshots: i64 = one("SELECT count(*) FROM allsource.load_snapshot('hard-delete/s')");
        assert_eq!(snapshots, 0, "the snapshot goes with the payloads");
        // A forged digest is still caught.
        Spi::run(
            "SET LOCAL session_replication_role = replica;
             UPDATE allsource.erased_events SET payload_digest = sha256('x')
             WHERE position = (SELECT position FROM allsource.events WHERE stream_id = 'hard-delete/s' AND version = 2);
             SET LOCAL session_replication_role = origin",
        )
        .unwrap();
        let (ok, bad) = Spi::get_two::<bool, i64>(
            "SELECT ok, first_bad_version FROM allsource.verify_stream('hard-delete/s')",
        )
        .unwrap();
        assert_eq!((ok, bad), (Some(false), Some(2)));
    }

    #[pg_test]
    fn snapshots_keep_the_latest() {
        Spi::run("SELECT allsource.append_batch('snapshots/s', '[{\"type\": \"A\", \"payload\": 1}, {\"type\": \"B\", \"payload\": 2}, {\"type\": \"C\", \"payload\": 3}]')").unwrap();
        let none: i64 = one("SELECT count(*) FROM allsource.load_snapshot('snapshots/s')");
        assert_eq!(none, 0);
        assert!(one::<bool>(
            "SELECT allsource.save_snapshot('snapshots/s', 2, '{\"sum\": 3}')"
        ));
        assert!(
            !one::<bool>("SELECT allsource.save_snapshot('snapshots/s', 1, '{\"sum\": 1}')"),
            "an older snapshot does not replace a newer one"
        );
        assert!(one::<bool>(
            "SELECT allsource.save_snapshot('snapshots/s', 3, '{\"sum\": 6}')"
        ));
        let (version, state) = Spi::get_two::<i64, pgrx::JsonB>(
            "SELECT version, state FROM allsource.load_snapshot('snapshots/s')",
        )
        .unwrap();
        assert_eq!(version, Some(3));
        assert_eq!(state.unwrap().0, serde_json::json!({"sum": 6}));
        assert_fails(
            "SELECT allsource.save_snapshot('snapshots/s', 4, '{}')",
            "22023",
            "at version 3",
        );
        assert_fails(
            "SELECT allsource.save_snapshot('snapshots/s', 0, '{}')",
            "22023",
            "version",
        );
        assert_fails(
            "SELECT allsource.save_snapshot('snapshots/s', 1, NULL)",
            "22023",
            "state",
        );
        assert_fails(
            "SELECT allsource.save_snapshot('snapshots/none', 1, '{}')",
            "22023",
            "at version 0",
        );
        Spi::run("SELECT allsource.delete_stream('snapshots/s')").unwrap();
        assert_fails(
            "SELECT allsource.save_snapshot('snapshots/s', 3, '{}')",
            "ZA002",
            "deleted",
        );
    }

    #[pg_test]
    fn a_tenant_sees_and_writes_only_its_own_streams() {
        Spi::run("SET LOCAL allsource.tenant = 'acme'").unwrap();
        Spi::run("SELECT allsource.append('tenants/acme-1', 'A', '{\"secret\": 1}')").unwrap();
        Spi::run("SELECT allsource.save_snapshot('tenants/acme-1', 1, '{}')").unwrap();
        let tenant: String =
            one("SELECT tenant_id FROM allsource.events WHERE stream_id = 'tenants/acme-1'");
        assert_eq!(tenant, "acme");
        Spi::run("SET LOCAL allsource.tenant = 'globex'").unwrap();
        for (query, sqlstate) in [
            ("SELECT allsource.append('tenants/acme-1', 'A', '{}')", "42501"),
            ("SELECT allsource.append_batch('tenants/acme-1', '[{\"type\": \"A\", \"payload\": 1}]')", "42501"),
            ("SELECT allsource.delete_stream('tenants/acme-1')", "42501"),
            ("SELECT allsource.save_snapshot('tenants/acme-1', 1, '{}')", "42501"),
        ] {
            assert_fails(query, sqlstate, "another tenant");
        }
        for query in [
            "SELECT count(*) FROM allsource.read_stream('tenants/acme-1')",
            "SELECT count(*) FROM allsource.load_snapshot('tenants/acme-1')",
            "SELECT allsource.stream_version('tenants/acme-1')",
            "SELECT events_checked FROM allsource.verify_stream('tenants/acme-1')",
            "SELECT count(*) FROM allsource.verify_all() WHERE stream_id = 'tenants/acme-1'",
        ] {
            assert_eq!(one::<i64>(query), 0, "{query}");
        }
        assert!(one::<bool>(
            "SELECT allsource.verify_gapless('tenants/acme-1')"
        ));
        // No tenant is a scope of its own too.
        Spi::run("RESET allsource.tenant").unwrap();
        assert_fails(
            "SELECT allsource.append('tenants/acme-1', 'A', '{}')",
            "42501",
            "another tenant",
        );
        Spi::run("SET LOCAL allsource.tenant = 'acme'").unwrap();
        let version: i64 = one("SELECT allsource.stream_version('tenants/acme-1')");
        assert_eq!(version, 1);
    }
}
