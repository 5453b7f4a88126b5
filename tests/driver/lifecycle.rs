//! Roles, tenants and pg_dump as users meet them: through logins that are
//! not superusers (row-level security applies to those only), direct SQL on
//! the tables, and the real pg_dump and pg_restore.

use crate::{server_url, sqlstate, Login, TestDb};
use postgres::{Client, NoTls};
use std::process::Command;

/// A session of `role` on `db`.
fn connect_as(db: &TestDb, role: &str) -> Client {
    Client::connect(
        &format!("{} dbname={} user={role}", server_url(), db.name()),
        NoTls,
    )
    .unwrap_or_else(|e| panic!("connect as {role}: {e}"))
}

fn refused(client: &mut Client, sql: &str) -> String {
    match client.batch_execute(sql) {
        Ok(()) => panic!("{sql} should have been refused"),
        Err(e) => sqlstate(&e),
    }
}

const DIRECT_WRITES: [&str; 6] = [
    "INSERT INTO allsource.events (position, partition_id, stream_id, version, event_id, event_type, payload, created_at, checksum) \
     VALUES (999999, 0, 'forged', 1, gen_random_uuid(), 'F', '{}', now(), '\\x00')",
    "UPDATE allsource.streams SET version = 99",
    "DELETE FROM allsource.events",
    "TRUNCATE allsource.events",
    "INSERT INTO allsource.event_ids VALUES (gen_random_uuid(), 0, 1)",
    "DELETE FROM allsource.snapshots",
];

const WRITE_CALLS: [&str; 5] = [
    "SELECT allsource.append('roles-1', 'A', '{}')",
    "SELECT allsource.append_batch('roles-1', '[{\"type\": \"A\", \"payload\": 1}]')",
    "SELECT allsource.delete_stream('roles-1')",
    "SELECT allsource.save_snapshot('roles-1', 1, '{}')",
    "SELECT allsource.enqueue('roles-1', 'A', '{}')",
];

#[test]
fn roles_grant_just_what_their_names_say() {
    let db = TestDb::new("roles");
    let writer = Login::new(db.name(), "writer", Some("allsource_writer"));
    let reader = Login::new(db.name(), "reader", Some("allsource_reader"));
    let nobody = Login::new(db.name(), "nobody", None);

    let mut w = connect_as(&db, &writer.name);
    w.batch_execute("SELECT allsource.append('roles-1', 'A', '{\"n\": 1}')")
        .unwrap();
    w.batch_execute("SELECT allsource.save_snapshot('roles-1', 1, '{}')")
        .unwrap();
    for sql in DIRECT_WRITES {
        assert_eq!(refused(&mut w, sql), "42501", "writer: {sql}");
    }

    let mut r = connect_as(&db, &reader.name);
    for sql in [
        "SELECT count(*) FROM allsource.read_stream('roles-1')",
        "SELECT count(*) FROM allsource.read_all()",
        "SELECT count(*) FROM allsource.read_category('roles')",
        "SELECT events_checked FROM allsource.verify_stream('roles-1')",
    ] {
        let read: i64 = r.query_one(sql, &[]).unwrap().get(0);
        assert_eq!(read, 1, "a reader reads: {sql}");
    }
    let direct: i64 = r
        .query_one("SELECT count(*) FROM allsource.events", &[])
        .unwrap()
        .get(0);
    assert_eq!(direct, 1, "also the tables");
    for sql in WRITE_CALLS.iter().chain(&DIRECT_WRITES) {
        assert_eq!(refused(&mut r, sql), "42501", "reader: {sql}");
    }

    let mut n = connect_as(&db, &nobody.name);
    for sql in [
        "SELECT count(*) FROM allsource.events",
        "SELECT count(*) FROM allsource.read_stream('roles-1')",
    ] {
        assert_eq!(refused(&mut n, sql), "42501", "no role: {sql}");
    }
    // Superusers are refused direct writes too (the guard triggers).
    let mut admin = db.connect();
    for sql in DIRECT_WRITES {
        assert_eq!(refused(&mut admin, sql), "42501", "superuser: {sql}");
    }
    drop((w, r, n));
}

#[test]
fn a_tenant_cannot_reach_another_tenants_streams() {
    let db = TestDb::new("tenants");
    let login = Login::new(db.name(), "app", Some("allsource_writer"));
    let mut app = connect_as(&db, &login.name);
    app.batch_execute(
        "SET allsource.tenant = 'acme';
         SELECT allsource.append('acme-1', 'A', '{\"secret\": 1}');
         SELECT allsource.append('acme-1', 'B', '{\"secret\": 2}');
         SELECT allsource.save_snapshot('acme-1', 2, '{\"secret\": 3}');
         SET allsource.tenant = 'globex';
         SELECT allsource.append('globex-1', 'A', '{}')",
    )
    .unwrap();

    let count = |app: &mut Client, sql: &str| -> i64 { app.query_one(sql, &[]).unwrap().get(0) };
    for sql in [
        "SELECT count(*) FROM allsource.events WHERE stream_id = 'acme-1'",
        "SELECT count(*) FROM allsource.streams WHERE stream_id = 'acme-1'",
        "SELECT count(*) FROM allsource.snapshots WHERE stream_id = 'acme-1'",
        "SELECT count(*) FROM allsource.events WHERE tenant_id IS DISTINCT FROM 'globex'",
        "SELECT count(*) FROM allsource.read_stream('acme-1')",
        "SELECT count(*) FROM allsource.load_snapshot('acme-1')",
        "SELECT allsource.stream_version('acme-1')",
        "SELECT events_checked FROM allsource.verify_stream('acme-1')",
        "SELECT count(*) FROM allsource.verify_all()",
        "SELECT count(*) FROM allsource.read_all(0, 1000) WHERE tenant_id IS DISTINCT FROM 'globex'",
        "SELECT count(*) FROM allsource.read_category('acme')",
        "SELECT count(*) FROM allsource.verify_gapless('acme-1') WHERE NOT verify_gapless",
    ] {
        assert_eq!(count(&mut app, sql), 0, "globex: {sql}");
    }
    assert_eq!(
        count(&mut app, "SELECT count(*) FROM allsource.events"),
        1,
        "globex sees its own event"
    );
    for sql in &WRITE_CALLS[..4] {
        let sql = sql.replace("roles-1", "acme-1");
        assert_eq!(refused(&mut app, &sql), "42501", "globex: {sql}");
    }
    // Without a tenant: only rows without one, which here is none.
    app.batch_execute("RESET allsource.tenant").unwrap();
    assert_eq!(count(&mut app, "SELECT count(*) FROM allsource.events"), 0);
    app.batch_execute("SET allsource.tenant = 'acme'").unwrap();
    assert_eq!(
        count(&mut app, "SELECT allsource.stream_version('acme-1')"),
        2
    );
    let (ok, checked): (bool, i64) = {
        let row = app
            .query_one(
                "SELECT ok, events_checked FROM allsource.verify_stream('acme-1')",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(ok && checked == 2, "acme verifies its own stream");
}

/// A command-line tool's arguments to reach the test server as postgres.
fn connection_args() -> [String; 5] {
    let url = server_url();
    let setting = |key: &str| {
        url.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key} in ALLSOURCE_TEST_URL"))
            .to_string()
    };
    [
        "--host".into(),
        setting("host"),
        "--port".into(),
        setting("port"),
        "--username=postgres".into(),
    ]
}

/// pg_dump, pg_restore or psql from the server's own binaries, or those in
/// `ALLSOURCE_TEST_PG_DUMP_BIN` (PostgreSQL 13's and 14's own pg_dump crash on
/// partitions that are extension configuration tables: docs/operations.md, "Backup").
/// No options beyond the connection: a restore must work as it comes.
fn pg_tool(tool: &str, args: &[&str]) {
    let bin = std::env::var("ALLSOURCE_TEST_PG_DUMP_BIN")
        .or_else(|_| std::env::var("ALLSOURCE_TEST_PG_BIN"))
        .expect("ALLSOURCE_TEST_PG_BIN is not set");
    let output = Command::new(format!("{bin}/{tool}"))
        .env_remove("PGOPTIONS")
        .args(connection_args())
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{tool} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Everything a dump must carry, as text rows.
fn contents(client: &mut Client) -> Vec<String> {
    let mut rows = vec![];
    for sql in [
        "SELECT format('%s', e) FROM allsource.events e ORDER BY position",
        "SELECT format('%s', s) FROM allsource.streams s ORDER BY stream_id",
        "SELECT format('%s', s) FROM allsource.snapshots s ORDER BY stream_id",
        "SELECT format('%s', x) FROM allsource.erased_events x ORDER BY position",
        "SELECT format('%s', i) FROM allsource.event_ids i ORDER BY position",
        "SELECT format('last position %s', last_value) FROM allsource.event_position",
        "SELECT format('%s', s) FROM allsource.subscriptions s ORDER BY subscription_id",
        "SELECT format('%s', m) FROM allsource.subscription_members m ORDER BY subscription_id, member",
        "SELECT format('%s', a) FROM allsource.subscription_attempts a ORDER BY subscription_id, position",
        "SELECT format('%s', p) FROM allsource.parked_events p ORDER BY subscription_id, position",
        "SELECT format('last subscription %s', last_value) FROM allsource.subscription_id",
    ] {
        for row in client.query(sql, &[]).unwrap() {
            rows.push(row.get(0));
        }
    }
    rows
}

/// A database restored from a dump of `expected`'s store: the same rows,
/// clean for every tenant, and writable where the original left off.
fn assert_restored(restored: &mut Client, expected: &[String], last_position: i64, how: &str) {
    assert_eq!(contents(restored), expected, "{how}: every row restored");
    for tenant in ["", "acme"] {
        restored
            .batch_execute(&format!("SET allsource.tenant = '{tenant}'"))
            .unwrap();
        let failing: i64 = restored
            .query_one("SELECT count(*) FROM allsource.verify_all()", &[])
            .unwrap()
            .get(0);
        assert_eq!(failing, 0, "{how}: verify_all clean for tenant {tenant:?}");
    }
    restored.batch_execute("RESET allsource.tenant").unwrap();
    let row = restored
        .query_one("SELECT version, position FROM allsource.append('kept-1', 'C', '{}', expected_version => 2)", &[])
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 3, "{how}: versions continue");
    assert!(
        row.get::<_, i64>(1) > last_position,
        "{how}: positions continue past the restored ones"
    );
    for stream in ["tombstone-1", "erased-1"] {
        assert_eq!(
            refused(
                restored,
                &format!("SELECT allsource.append('{stream}', 'A', '{{}}')")
            ),
            "ZA002",
            "{how}: {stream} stays deleted"
        );
    }
    let (ok, problem): (bool, Option<String>) = {
        let row = restored
            .query_one(
                "SELECT ok, problem FROM allsource.verify_stream('erased-1')",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(ok && problem.is_some_and(|p| p.starts_with("erased at")));
    // The guard is back for everything but a restore.
    for sql in DIRECT_WRITES {
        assert_eq!(refused(restored, sql), "42501", "{how}: {sql}");
    }
}

/// A superuser's emergency restore: pg_dump in each of its formats, then
/// pg_restore (or psql for a plain dump) into a new database, no options.
#[test]
fn every_dump_format_restores_with_the_standard_tools_and_no_options() {
    let source = TestDb::new("dump_source");
    let mut client = source.connect();
    client
        .batch_execute(
            "SELECT allsource.append_batch('kept-1', '[{\"type\": \"A\", \"payload\": {\"n\": 1, \"k\": \"ü€\"}, \"metadata\": {\"by\": \"me\"}},
                                                       {\"type\": \"B\", \"payload\": {\"n\": 2}}]');
             SELECT allsource.save_snapshot('kept-1', 2, '{\"sum\": 3}');
             SELECT allsource.append('tombstone-1', 'A', '{}');
             SELECT allsource.delete_stream('tombstone-1');
             SELECT allsource.append('erased-1', 'A', '{\"name\": \"Ada\"}', '{\"ip\": \"10.0.0.1\"}');
             SELECT allsource.delete_stream('erased-1', hard => true);
             SET allsource.tenant = 'acme';
             SELECT allsource.append('acme-1', 'A', '{}');
             RESET allsource.tenant",
        )
        .unwrap();
    // Subscriptions with checkpoints, an attempt and a parked event (a
    // transaction of their own: the appends' claim held the watermark back).
    client
        .batch_execute(
            "SELECT allsource.create_subscription('kept', members => 2, max_attempts => 1);
             SELECT allsource.create_subscription('waiting', ARRAY['kept'], ARRAY['B'], start_after => 1);
             SELECT allsource.ack('kept', 1, allsource.partition_for('kept-1', 2));
             SELECT allsource.nack('kept', 2, 'bad', allsource.partition_for('kept-1', 2));
             SELECT allsource.nack('waiting', 2, 'once')",
        )
        .unwrap();
    let expected = contents(&mut client);
    let last_position: i64 = client
        .query_one("SELECT max(position) FROM allsource.events", &[])
        .unwrap()
        .get(0);
    for format in ["custom", "directory", "tar", "plain"] {
        let dump = std::env::temp_dir().join(format!("{}.{format}", source.name()));
        let dump = dump.to_str().unwrap();
        pg_tool(
            "pg_dump",
            &[
                "--format",
                format,
                "--file",
                dump,
                "--dbname",
                source.name(),
            ],
        );
        let target = TestDb::empty(&format!("restored_{format}"));
        if format == "plain" {
            // ON_ERROR_STOP only makes a failed statement fail the test.
            let args = [
                "--no-psqlrc",
                "--set=ON_ERROR_STOP=1",
                "--dbname",
                target.name(),
                "--file",
                dump,
            ];
            pg_tool("psql", &args);
        } else {
            pg_tool("pg_restore", &["--dbname", target.name(), dump]);
        }
        if format == "directory" {
            std::fs::remove_dir_all(dump).unwrap();
        } else {
            std::fs::remove_file(dump).unwrap();
        }
        assert_restored(&mut target.connect(), &expected, last_position, format);
    }
}

/// The guard lets a client's `COPY allsource.<table> FROM STDIN` through
/// (what a restore runs) and nothing else; what such a COPY loads is
/// checked by verify_all like any other row.
#[test]
fn only_a_copy_from_stdin_gets_past_the_guard_and_verify_checks_what_it_loaded() {
    let db = TestDb::new("copy_guard");
    let mut client = db.connect();
    client
        .batch_execute("SELECT allsource.append('honest-1', 'A', '{}')")
        .unwrap();
    let partition: i32 = client
        .query_one("SELECT allsource.partition_for('forged-1')", &[])
        .unwrap()
        .get(0);
    for sql in [
        format!("COPY allsource.events_p{partition} FROM '/dev/null'"),
        "COPY allsource.streams FROM PROGRAM 'true'".to_string(),
        // Unqualified, it is not what a dump writes.
        "SET search_path = allsource; COPY streams FROM PROGRAM 'true'".to_string(),
    ] {
        assert_eq!(refused(&mut client, &sql), "42501", "{sql}");
    }
    client.batch_execute("RESET search_path").unwrap();
    let mut copy = client
        .copy_in(
            "COPY allsource.streams (stream_id, partition_id, version, last_checksum) FROM STDIN",
        )
        .unwrap();
    std::io::Write::write_all(
        &mut copy,
        format!("forged-1\t{partition}\t1\t\\\\x00\n").as_bytes(),
    )
    .unwrap();
    copy.finish().unwrap();
    let mut copy = client
        .copy_in(&format!(
            "COPY allsource.events_p{partition} (position, partition_id, stream_id, version, event_id, event_type, payload, created_at, checksum) FROM STDIN"
        ))
        .unwrap();
    std::io::Write::write_all(
        &mut copy,
        format!(
            "1000\t{partition}\tforged-1\t1\t{}\tA\t{{}}\t2026-01-01 00:00:00+00\t\\\\x00\n",
            uuid::Uuid::new_v4()
        )
        .as_bytes(),
    )
    .unwrap();
    copy.finish().unwrap();
    let failing: Vec<String> = client
        .query("SELECT stream_id FROM allsource.verify_all()", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        failing,
        ["forged-1"],
        "verify_all finds the forgery a COPY loaded"
    );
}

/// SQL cannot carry a string that is not UTF-8 into a UTF-8 database, but a
/// connection's startup options can: psql with `allsource.tenant` set to
/// `acme` and a stray byte. Every write and read refuses it (22023) rather
/// than storing `acme\u{FFFD}` or comparing the raw bytes.
#[test]
fn a_tenant_that_is_not_utf8_is_refused_by_writes_and_reads() {
    use std::os::unix::ffi::OsStrExt;
    let db = TestDb::new("tenant_utf8");
    db.connect()
        .batch_execute(
            "SET allsource.tenant = 'acme';
             SELECT allsource.append('acme-1', 'A', '{}');
             SELECT allsource.save_snapshot('acme-1', 1, '{}')",
        )
        .unwrap();
    let bin = std::env::var("ALLSOURCE_TEST_PG_BIN").expect("ALLSOURCE_TEST_PG_BIN is not set");
    for sql in [
        "SELECT allsource.append('acme-1', 'A', '{}')",
        "SELECT allsource.append('acme-2', 'A', '{}')",
        "SELECT allsource.append_batch('acme-2', '[{\"type\": \"A\", \"payload\": 1}]')",
        "SELECT allsource.enqueue('acme-2', 'A', '{}')",
        "SELECT allsource.save_snapshot('acme-1', 1, '{}')",
        "SELECT allsource.delete_stream('acme-1')",
        "SELECT allsource.current_tenant()",
        "SELECT allsource.stream_version('acme-1')",
        "SELECT * FROM allsource.read_stream('acme-1')",
        "SELECT * FROM allsource.read_all()",
        "SELECT * FROM allsource.read_category('acme')",
        "SELECT * FROM allsource.load_snapshot('acme-1')",
        "SELECT * FROM allsource.verify_stream('acme-1')",
        "SELECT * FROM allsource.verify_all()",
    ] {
        let output = Command::new(format!("{bin}/psql"))
            .env(
                "PGOPTIONS",
                std::ffi::OsStr::from_bytes(b"-c allsource.tenant=acme\xff"),
            )
            .args(connection_args())
            .args([
                "--no-psqlrc",
                "--set=VERBOSITY=verbose",
                "--dbname",
                db.name(),
                "--command",
                sql,
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success()
                && stderr.contains("ERROR:  22023")
                && stderr.contains("UTF-8"),
            "{sql}: {stderr}"
        );
    }
    let mut client = db.connect();
    let rows: Vec<(String, Option<String>, i64)> = client
        .query(
            "SELECT stream_id, tenant_id, version FROM allsource.streams",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert_eq!(
        rows,
        [("acme-1".to_string(), Some("acme".to_string()), 1)],
        "nothing written"
    );
}

/// A database that is not UTF-8 refuses CREATE EXTENSION (0A000), with the
/// way out in the hint, and is left without any of the extension.
#[test]
fn create_extension_in_a_database_that_is_not_utf8_is_refused() {
    let db = TestDb::with_options(
        "latin1",
        "ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
    );
    let mut client = db.connect();
    let error = client
        .batch_execute("CREATE EXTENSION allsource")
        .unwrap_err();
    assert_eq!(sqlstate(&error), "0A000");
    let db_error = error.as_db_error().unwrap();
    assert!(
        db_error.message().contains("UTF8"),
        "{}",
        db_error.message()
    );
    assert!(db_error.hint().unwrap().contains("ENCODING 'UTF8'"));
    let leftovers: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = 'allsource')
                  + (SELECT count(*) FROM pg_extension WHERE extname = 'allsource')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(leftovers, 0);
}

/// scripts/run.sh runs scripts/demo.sql on every start, in the database it
/// tells users to connect to: a second run must keep what is there, the
/// first run's streams and the user's alike, and still tour afresh.
#[test]
fn running_the_demo_twice_keeps_every_event() {
    let db = TestDb::empty("demo_twice");
    let bin = std::env::var("ALLSOURCE_TEST_PG_BIN").expect("ALLSOURCE_TEST_PG_BIN is not set");
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo.sql");
    let run_demo = || {
        let output = Command::new(format!("{bin}/psql"))
            .args(connection_args())
            .args([
                "--no-psqlrc",
                "--quiet",
                "--dbname",
                db.name(),
                "--file",
                demo,
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run_demo();
    let mut client = db.connect();
    client
        .batch_execute("SELECT allsource.append('mine-1', 'A', '{\"keep\": true}')")
        .unwrap();
    let before = contents(&mut client);
    run_demo();
    let after = contents(&mut client);
    assert!(
        before
            .iter()
            .all(|row| row.starts_with("last position") || after.contains(row)),
        "every row before the second run is still there"
    );
    let versions: Vec<(String, i64)> = client
        .query(
            "SELECT stream_id, version FROM allsource.streams WHERE stream_id LIKE 'order-demo%' OR stream_id = 'mine-1' ORDER BY stream_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(
        versions,
        [
            ("mine-1".to_string(), 1),
            ("order-demo1".to_string(), 4),
            ("order-demo2".to_string(), 4)
        ],
        "the second run toured a stream of its own"
    );
    let failing: i64 = client
        .query_one("SELECT count(*) FROM allsource.verify_all()", &[])
        .unwrap()
        .get(0);
    assert_eq!(failing, 0);
}
