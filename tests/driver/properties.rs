//! Property tests: every SQL function called with random and adversarial
//! arguments the way a driver sends them, as text the server must parse —
//! NULLs anywhere, empty and huge strings, odd Unicode, deep and huge JSON,
//! batches of every wrong shape, extreme and malformed numbers. Each call
//! either works or fails with a documented SQLSTATE and writes nothing; the
//! server log shows no crash.

use crate::queue::{fresh_queue_db, QUEUE_DB};
use crate::{reconnect_to, TestDb};
use postgres::types::ToSql;
use postgres::Client;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

/// What a call may fail with: the Errors table of docs/sql-reference.md, and PostgreSQL's own
/// input errors raised while it parses the text arguments, before AllSource runs.
const DOCUMENTED: &[&str] = &[
    "ZA001", "ZA002", "ZA003", "22023", "54000", "53400", "42501", "55000", "0A000",
    // PostgreSQL's parsers: bad text for a number, uuid, jsonb or array; a
    // number out of range; a \u0000 escape jsonb cannot store; JSON nested
    // beyond the stack limit.
    "22P02", "22003", "22P05", "54001",
];

/// Arguments as a driver's text protocol sends them: text or NULL.
type Args = Vec<Option<String>>;

fn cases() -> Config {
    Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Text the way users' data looks at its worst.
fn odd_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9-]{1,12}",
        "[ -~]{0,40}",
        "\\PC{0,30}",
        Just("x".repeat(255)),
        Just("é".repeat(128)),
        Just("a\u{202e}b\u{0301}\u{fffd}😀'\"\\%_".to_string()),
        (256usize..2000).prop_map(|n| "s".repeat(n)),
    ]
}

/// A number as text, well-formed or not.
fn odd_number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (-3i64..5).prop_map(|n| n.to_string()),
        Just(i64::MAX.to_string()),
        Just(i64::MIN.to_string()),
        Just("9223372036854775808".to_string()),
        Just("2147483648".to_string()),
        Just("1e3".to_string()),
        Just(" 7 ".to_string()),
        Just("abc".to_string()),
        Just(String::new()),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{0,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// JSON text: valid values, deep nesting, oversized strings, or not JSON at all.
fn odd_json() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => json_value().prop_map(|v| v.to_string()),
        1 => (1usize..5000).prop_map(|depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth))),
        1 => (1usize..3000).prop_map(|depth| format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))),
        1 => (4000usize..20000).prop_map(|n| json!({"big": "x".repeat(n)}).to_string()),
        1 => Just("{\"nul\": \"\\u0000\"}".to_string()),
        1 => Just("{not json".to_string()),
        1 => Just(String::new()),
    ]
}

/// A batch for append_batch: events of every wrong shape among right ones.
fn odd_batch() -> impl Strategy<Value = String> {
    let event = prop_oneof![
        3 => (odd_text(), json_value()).prop_map(|(t, p)| json!({"type": t, "payload": p})),
        1 => json_value(),
        1 => (json_value(), json_value()).prop_map(|(t, p)| json!({"type": t, "payload": p})),
        1 => (odd_text(), "\\PC{0,40}").prop_map(|(t, id)| json!({"type": t, "payload": 1, "id": id})),
        1 => odd_text().prop_map(|t| json!({"type": t})),
        1 => Just(json!({"type": "A", "payload": 1, "extra": true})),
    ];
    prop_oneof![
        4 => prop::collection::vec(event, 0..8).prop_map(|events| Value::from(events).to_string()),
        1 => (1000usize..1200).prop_map(|n| Value::from(vec![json!({"type": "A", "payload": 1}); n]).to_string()),
        1 => odd_json(),
    ]
}

fn maybe<S: Strategy<Value = String>>(strategy: S) -> impl Strategy<Value = Option<String>> {
    prop_oneof![1 => Just(None), 6 => strategy.prop_map(Some)]
}

/// Everything a failed call must leave as it was: the tables' rows.
const TABLES: &str =
    "SELECT (SELECT count(*) FROM allsource.events), (SELECT count(*) FROM allsource.streams),
        (SELECT count(*) FROM allsource.snapshots), (SELECT count(*) FROM allsource.erased_events),
        (SELECT coalesce(sum(version), 0)::bigint FROM allsource.streams),
        (SELECT count(*) FROM allsource.streams WHERE deleted_at IS NOT NULL)";
/// The queue's: events enqueued (the workers append the accepted ones
/// meanwhile, so the tables move on their own).
const QUEUE: &str = "SELECT enqueued FROM allsource.stats()";

fn footprint(client: &mut Client, query: &str) -> Vec<i64> {
    let row = client.query_one(query, &[]).unwrap();
    (0..row.len()).map(|i| row.get(i)).collect()
}

/// Calls `sql` with `args`; a failure must carry a documented SQLSTATE and
/// leave the tables as they were.
fn call(client: &mut Client, sql: &str, args: &Args, written: &str) -> Result<(), TestCaseError> {
    let before = footprint(client, written);
    let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
    match client.query(sql, &params) {
        Ok(_) => Ok(()),
        Err(error) => {
            let Some(db) = error.as_db_error() else {
                return Err(TestCaseError::fail(format!(
                    "{sql} {args:?}: the session died: {error}"
                )));
            };
            let code = db.code().code();
            prop_assert!(
                DOCUMENTED.contains(&code),
                "{sql} {args:?}: undocumented SQLSTATE {code}: {}",
                db.message()
            );
            prop_assert_eq!(
                footprint(client, written),
                before,
                "{} {:?} failed ({}) but wrote",
                sql,
                args,
                code
            );
            Ok(())
        }
    }
}

/// Runs `strategy`'s cases against `sql` on a fresh session of `db`, then
/// checks the server log for crashes.
fn run(database: &str, sql: &str, strategy: impl Strategy<Value = Args>) {
    let written = if database == QUEUE_DB { QUEUE } else { TABLES };
    let log = ServerLog::open();
    let mut client = reconnect_to(database);
    // Small events, so that the size limit is reachable without huge inputs.
    client
        .batch_execute("SET allsource.max_event_bytes = '8kB'")
        .unwrap();
    // A few streams that exist, some deleted, so calls meet every state.
    client
        .batch_execute(
            "SELECT allsource.append('s', 'A', '{}');
             SELECT allsource.append_batch('s-2', '[{\"type\": \"A\", \"payload\": 1}, {\"type\": \"B\", \"payload\": 2}]');
             SELECT allsource.delete_stream('gone')",
        )
        .ok();
    let mut runner = TestRunner::new(cases());
    // The runner takes a shared closure; one case runs at a time.
    let client = std::cell::RefCell::new(client);
    let result = runner.run(&strategy, |args| {
        call(&mut client.borrow_mut(), sql, &args, written)
    });
    if let Err(failure) = result {
        panic!("{sql}: {failure}");
    }
    log.assert_no_crash();
}

/// The part of the server log written since the test began.
struct ServerLog {
    path: String,
    start: u64,
}

impl ServerLog {
    fn open() -> ServerLog {
        let data =
            std::env::var("ALLSOURCE_TEST_PGDATA").expect("ALLSOURCE_TEST_PGDATA is not set");
        let path = format!("{data}/server.log");
        let start = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("cannot read the server log {path}: {e}"))
            .len();
        ServerLog { path, start }
    }

    fn assert_no_crash(&self) {
        let log = std::fs::read(&self.path).unwrap();
        let new = String::from_utf8_lossy(&log[self.start as usize..]);
        for sign in ["PANIC", "terminated by signal", "server process (PID"] {
            assert!(!new.contains(sign), "the server log shows {sign:?}:\n{new}");
        }
    }
}

#[test]
fn props_append() {
    let db = TestDb::new("props_append");
    run(
        db.name(),
        "SELECT * FROM allsource.append($1::text, $2::text, $3::text::jsonb, $4::text::jsonb, $5::text::bigint, $6::text::uuid)",
        (
            maybe(prop_oneof![Just("s".to_string()), Just("gone".to_string()), odd_text()]),
            maybe(odd_text()),
            maybe(odd_json()),
            maybe(odd_json()),
            maybe(odd_number()),
            maybe(prop_oneof![Just("00000000-0000-0000-0000-000000000001".to_string()), "\\PC{0,40}"]),
        )
            .prop_map(|(a, b, c, d, e, f)| vec![a, b, c, d, e, f]),
    );
}

#[test]
fn props_append_batch() {
    let db = TestDb::new("props_append_batch");
    run(
        db.name(),
        "SELECT * FROM allsource.append_batch($1::text, $2::text::jsonb, $3::text::bigint)",
        (
            maybe(prop_oneof![
                Just("s-2".to_string()),
                Just("gone".to_string()),
                odd_text()
            ]),
            maybe(odd_batch()),
            maybe(odd_number()),
        )
            .prop_map(|(a, b, c)| vec![a, b, c]),
    );
}

#[test]
fn props_reads() {
    let db = TestDb::new("props_reads");
    let stream = || maybe(prop_oneof![Just("s-2".to_string()), odd_text()]);
    for (sql, strategy) in [
        (
            "SELECT * FROM allsource.read_stream($1::text, $2::text::bigint, $3::text::int, $4::text::boolean)",
            (stream(), maybe(odd_number()), maybe(odd_number()), maybe(prop_oneof![Just("true".to_string()), odd_text()]))
                .prop_map(|(a, b, c, d)| vec![a, b, c, d])
                .boxed(),
        ),
        (
            "SELECT * FROM allsource.read_all($1::text::bigint, $2::text::int, $3::text::text[], $4::text::int)",
            (maybe(odd_number()), maybe(odd_number()), maybe(prop_oneof![Just("{A,B}".to_string()), odd_text()]), maybe(odd_number()))
                .prop_map(|(a, b, c, d)| vec![a, b, c, d])
                .boxed(),
        ),
        (
            "SELECT * FROM allsource.read_category($1::text, $2::text::bigint, $3::text::int, $4::text::int, $5::text::int)",
            (stream(), maybe(odd_number()), maybe(odd_number()), maybe(odd_number()), maybe(odd_number()))
                .prop_map(|(a, b, c, d, e)| vec![a, b, c, d, e])
                .boxed(),
        ),
        (
            "SELECT allsource.stream_version($1::text), allsource.verify_gapless($1::text), * FROM allsource.load_snapshot($1::text)",
            stream().prop_map(|a| vec![a]).boxed(),
        ),
        (
            "SELECT * FROM allsource.verify_stream($1::text)",
            stream().prop_map(|a| vec![a]).boxed(),
        ),
        (
            "SELECT allsource.partition_for($1::text, $2::text::int)",
            (stream(), maybe(odd_number())).prop_map(|(a, b)| vec![a, b]).boxed(),
        ),
    ] {
        run(db.name(), sql, strategy);
    }
    // And the functions without arguments, on the store the cases left.
    reconnect_to(db.name())
        .batch_execute(
            "SELECT allsource.watermark(); SELECT * FROM allsource.inflight(); SELECT * FROM allsource.verify_all();
             SELECT * FROM allsource.partition_stats(); SELECT * FROM allsource.stats()",
        )
        .unwrap();
}

#[test]
fn props_lifecycle() {
    let db = TestDb::new("props_lifecycle");
    let stream = || {
        maybe(prop_oneof![
            Just("s".to_string()),
            Just("gone".to_string()),
            odd_text()
        ])
    };
    run(
        db.name(),
        "SELECT allsource.save_snapshot($1::text, $2::text::bigint, $3::text::jsonb)",
        (stream(), maybe(odd_number()), maybe(odd_json())).prop_map(|(a, b, c)| vec![a, b, c]),
    );
    run(
        db.name(),
        "SELECT allsource.delete_stream($1::text, $2::text::boolean)",
        (
            stream(),
            maybe(prop_oneof![
                Just("false".to_string()),
                Just("true".to_string()),
                odd_text()
            ]),
        )
            .prop_map(|(a, b)| vec![a, b]),
    );
    // Deletions may have written (that is what they do); the store stays sound.
    let failing: i64 = reconnect_to(db.name())
        .query_one("SELECT count(*) FROM allsource.verify_all()", &[])
        .unwrap()
        .get(0);
    assert_eq!(failing, 0);
}

#[test]
fn queue_props_enqueue_and_await_ticket() {
    drop(fresh_queue_db());
    run(
        QUEUE_DB,
        "SELECT allsource.enqueue($1::text, $2::text, $3::text::jsonb, $4::text::jsonb, $5::text::bigint, $6::text::uuid)",
        (
            maybe(prop_oneof![Just("s".to_string()), odd_text()]),
            maybe(odd_text()),
            maybe(odd_json()),
            maybe(odd_json()),
            maybe(odd_number()),
            maybe("\\PC{0,40}"),
        )
            .prop_map(|(a, b, c, d, e, f)| vec![a, b, c, d, e, f]),
    );
    run(
        QUEUE_DB,
        "SELECT * FROM allsource.await_ticket($1::text::bigint, $2::text::int)",
        (
            maybe(odd_number()),
            maybe(prop_oneof![Just("10".to_string()), odd_number()]),
        )
            .prop_map(|(a, b)| vec![a, b]),
    );
    let mut client = reconnect_to(QUEUE_DB);
    let failing: i64 = client
        .query_one("SELECT count(*) FROM allsource.verify_all()", &[])
        .unwrap()
        .get(0);
    assert_eq!(failing, 0, "what the workers appended verifies");
}
