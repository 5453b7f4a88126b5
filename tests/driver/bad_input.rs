//! Randomised bad input through the driver: every case gets its documented
//! SQLSTATE, nothing is written, and the server keeps serving.

use crate::{sqlstate, TestDb};
use postgres::types::ToSql;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A bad call: SQL, its text parameters, and the SQLSTATE it must raise.
struct Case {
    sql: &'static str,
    params: Vec<Option<String>>,
    sqlstate: &'static str,
}

fn random_text(rng: &mut StdRng, max_len: usize) -> String {
    let alphabet = [
        'a', 'Z', '-', ' ', 'é', '☃', '😀', '\'', '"', '\\', '\n', '%',
    ];
    let len = rng.gen_range(1..=max_len);
    (0..len)
        .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
        .collect()
}

fn over_long(rng: &mut StdRng) -> String {
    let mut s = random_text(rng, 20);
    while s.len() <= 255 {
        s.push_str(&random_text(rng, 40));
    }
    s
}

fn bad_batch(rng: &mut StdRng) -> String {
    let shapes = [
        "{}".to_string(),
        "[]".to_string(),
        "\"events\"".to_string(),
        "42".to_string(),
        "[1, 2]".to_string(),
        "[null]".to_string(),
        r#"[{"payload": {}}]"#.to_string(),
        r#"[{"type": "", "payload": {}}]"#.to_string(),
        r#"[{"type": 7, "payload": {}}]"#.to_string(),
        r#"[{"type": ["A"], "payload": {}}]"#.to_string(),
        r#"[{"type": "A"}]"#.to_string(),
        r#"[{"type": "A", "payload": 1, "id": "not-a-uuid"}]"#.to_string(),
        r#"[{"type": "A", "payload": 1, "id": 12}]"#.to_string(),
        r#"[{"type": "A", "payload": 1, "color": "red"}]"#.to_string(),
        format!(r#"[{{"type": "{}", "payload": 1}}]"#, "T".repeat(256)),
        r#"[{"type": "A", "payload": 1, "id": "00000000-0000-0000-0000-000000000001"},
            {"type": "A", "payload": 2, "id": "00000000-0000-0000-0000-000000000001"}]"#
            .to_string(),
    ];
    // Good events first, so a bad one late in the batch must undo them.
    let good = rng.gen_range(0..4);
    let bad = &shapes[rng.gen_range(0..shapes.len())];
    if good == 0 || !bad.starts_with('[') || bad == "[]" {
        return bad.clone();
    }
    let prefix: Vec<String> = (0..good)
        .map(|i| format!(r#"{{"type": "Good", "payload": {i}}}"#))
        .collect();
    format!("[{}, {}", prefix.join(", "), &bad[1..])
}

fn random_case(rng: &mut StdRng) -> Case {
    let stream = || Some("stream-1".to_string());
    match rng.gen_range(0..12) {
        0 => Case { sql: "SELECT allsource.append($1, 'T', '{}')", params: vec![None], sqlstate: "22023" },
        1 => Case { sql: "SELECT allsource.append($1, 'T', '{}')", params: vec![Some(String::new())], sqlstate: "22023" },
        2 => Case { sql: "SELECT allsource.append($1, 'T', '{}')", params: vec![Some(over_long(rng))], sqlstate: "22023" },
        3 => Case { sql: "SELECT allsource.append('s', $1, '{}')", params: vec![Some(over_long(rng))], sqlstate: "22023" },
        4 => Case { sql: "SELECT allsource.append('s', $1, '{}')", params: vec![rng.gen_bool(0.5).then(String::new)], sqlstate: "22023" },
        5 => Case { sql: "SELECT allsource.append($1, 'T', NULL)", params: vec![stream()], sqlstate: "22023" },
        6 => Case {
            sql: "SELECT allsource.append($1, 'T', '{}', expected_version => $2::text::bigint)",
            params: vec![stream(), Some(rng.gen_range(i64::MIN..-1).to_string())],
            sqlstate: "22023",
        },
        7 => Case { sql: "SELECT allsource.append_batch($1, $2::text::jsonb)", params: vec![stream(), Some(bad_batch(rng))], sqlstate: "22023" },
        8 => Case { sql: "SELECT allsource.append_batch($1, $2::text::jsonb)", params: vec![stream(), None], sqlstate: "22023" },
        9 => Case {
            // Over the 1 MB default of allsource.max_event_bytes.
            sql: "SELECT allsource.append($1, 'T', jsonb_build_object('blob', repeat('x', $2::text::int)))",
            params: vec![stream(), Some(rng.gen_range(1_048_577..3_000_000).to_string())],
            sqlstate: "54000",
        },
        10 => Case {
            sql: "SELECT allsource.append_batch($1, jsonb_build_array(jsonb_build_object('type', 'T', 'payload', 1), jsonb_build_object('type', 'T', 'payload', repeat('x', $2::text::int))))",
            params: vec![stream(), Some(rng.gen_range(1_048_577..2_000_000).to_string())],
            sqlstate: "54000",
        },
        _ => Case {
            // Not JSON at all: PostgreSQL's jsonb input refuses it before AllSource runs.
            sql: "SELECT allsource.append($1, 'T', $2::text::jsonb)",
            params: vec![stream(), Some(format!("{{{}", random_text(rng, 10)))],
            sqlstate: "22P02",
        },
    }
}

#[test]
fn random_bad_input_is_refused_with_documented_sqlstates_and_writes_nothing() {
    let seed: u64 = std::env::var("ALLSOURCE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (rerun with ALLSOURCE_TEST_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let db = TestDb::new("bad_input");
    let mut client = db.connect();
    for i in 0..300 {
        let case = random_case(&mut rng);
        let params: Vec<&(dyn ToSql + Sync)> = case
            .params
            .iter()
            .map(|p| p as &(dyn ToSql + Sync))
            .collect();
        match client.query(case.sql, &params) {
            Ok(_) => panic!("case {i} succeeded: {} {:?}", case.sql, case.params),
            Err(e) => assert_eq!(
                sqlstate(&e),
                case.sqlstate,
                "case {i}: {} {:?}: {e}",
                case.sql,
                case.params
            ),
        }
    }
    let written: i64 = client
        .query_one("SELECT (SELECT count(*) FROM allsource.events) + (SELECT count(*) FROM allsource.streams) + (SELECT count(*) FROM allsource.event_ids)", &[])
        .unwrap()
        .get(0);
    assert_eq!(written, 0, "refused calls wrote nothing");
    // The same session still works, so no backend was lost along the way.
    let version: i64 = client
        .query_one(
            "SELECT version FROM allsource.append('after', 'T', '{}')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(version, 1);
}

#[test]
fn nothing_of_a_failed_batch_is_visible_to_others() {
    let db = TestDb::new("atomic_batch");
    let mut writer = db.connect();
    let error = writer
        .query(
            r#"SELECT allsource.append_batch('s', '[{"type": "A", "payload": 1}, {"type": "A", "payload": 2}, {"type": "", "payload": 3}]')"#,
            &[],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&error), "22023");
    let mut reader = db.connect();
    let version: i64 = reader
        .query_one("SELECT allsource.stream_version('s')", &[])
        .unwrap()
        .get(0);
    assert_eq!(version, 0);
    let events: i64 = reader
        .query_one("SELECT count(*) FROM allsource.events", &[])
        .unwrap()
        .get(0);
    assert_eq!(events, 0);
}
