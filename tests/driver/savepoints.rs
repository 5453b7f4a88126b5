//! Appends rolled back to a savepoint are gone: `stats()` does not count
//! them, no notification announces them, and they do not stop the
//! transaction from being prepared. What a released savepoint appended
//! counts like the rest of the transaction.

use crate::watermark::notifications;
use crate::{sqlstate, TestDb};
use postgres::Client;
use std::time::Duration;

fn events_appended(client: &mut Client) -> (i64, i64, i64) {
    let row = client
        .query_one(
            "SELECT events_appended, appends, batches FROM allsource.stats()",
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

const THREE: &str =
    r#"'[{"type": "T", "payload": 1}, {"type": "T", "payload": 2}, {"type": "T", "payload": 3}]'"#;

/// `stats()` is the server's: `queue_` runs this test alone (scripts/test.sh).
#[test]
fn queue_stats_do_not_count_appends_rolled_back_to_a_savepoint() {
    let db = TestDb::new("savepoint_stats");
    let mut client = db.connect();
    let before = events_appended(&mut client);
    client
        .batch_execute(&format!(
            "BEGIN; SAVEPOINT s; SELECT allsource.append_batch('sp', {THREE}); ROLLBACK TO s; COMMIT"
        ))
        .unwrap();
    assert_eq!(events_appended(&mut client), before, "rolled back to s");
    let version: i64 = client
        .query_one("SELECT allsource.stream_version('sp')", &[])
        .unwrap()
        .get(0);
    assert_eq!(version, 0);

    // Nested: the inner savepoint is released into the outer, which rolls
    // back; then a released one and the top level count.
    client
        .batch_execute(&format!(
            "BEGIN; SAVEPOINT a; SAVEPOINT b; SELECT allsource.append('sp', 'T', '1');
             RELEASE b; SELECT allsource.append_batch('sp', {THREE}); ROLLBACK TO a;
             SAVEPOINT c; SELECT allsource.append_batch('sp', {THREE}); RELEASE c;
             SELECT allsource.append('sp', 'T', '2');
             SAVEPOINT d; SELECT allsource.append('sp', 'T', '3'); ROLLBACK TO d;
             COMMIT"
        ))
        .unwrap();
    let (events, appends, batches) = events_appended(&mut client);
    assert_eq!(
        (events - before.0, appends - before.1, batches - before.2),
        (4, 1, 1),
        "only what committed counts"
    );
    let version: i64 = client
        .query_one("SELECT allsource.stream_version('sp')", &[])
        .unwrap()
        .get(0);
    assert_eq!(version, 4);

    // A PL/pgSQL exception block is a savepoint too.
    client
        .batch_execute(
            "DO $$ BEGIN
               BEGIN PERFORM allsource.append('sp', 'T', '4'); RAISE EXCEPTION 'undo'; EXCEPTION WHEN OTHERS THEN NULL; END;
             END $$",
        )
        .unwrap();
    assert_eq!(events_appended(&mut client).0 - before.0, 4);
}

/// Two streams in different partitions.
fn two_partitions(client: &mut Client) -> [(String, i32); 2] {
    let partition = |client: &mut Client, stream: &str| -> i32 {
        client
            .query_one("SELECT allsource.partition_for($1)", &[&stream])
            .unwrap()
            .get(0)
    };
    let first = ("gone-0".to_string(), partition(client, "gone-0"));
    let second = (1..)
        .map(|i| format!("kept-{i}"))
        .map(|s| {
            let p = partition(client, &s);
            (s, p)
        })
        .find(|(_, p)| *p != first.1)
        .unwrap();
    [first, second]
}

#[test]
fn appends_rolled_back_to_a_savepoint_are_not_notified() {
    let db = TestDb::new("savepoint_notify");
    let mut listener = db.connect();
    listener.batch_execute("LISTEN allsource_events").unwrap();
    let mut writer = db.connect();
    let [(gone, _), (kept, kept_partition)] = two_partitions(&mut writer);

    let mut tx = writer.transaction().unwrap();
    tx.batch_execute("SAVEPOINT s").unwrap();
    tx.execute("SELECT allsource.append($1, 'T', '{}')", &[&gone])
        .unwrap();
    tx.batch_execute("ROLLBACK TO s").unwrap();
    let kept_position: i64 = tx
        .query_one(
            "SELECT position FROM allsource.append($1, 'T', '{}')",
            &[&kept],
        )
        .unwrap()
        .get(0);
    tx.commit().unwrap();
    assert_eq!(
        notifications(&mut listener, Duration::from_millis(500)),
        vec![format!(
            r#"{{"partition_id": {kept_partition}, "last_position": {kept_position}}}"#
        )],
        "the committed append only"
    );

    // Released savepoints are notified with their transaction.
    let mut tx = writer.transaction().unwrap();
    tx.batch_execute("SAVEPOINT s").unwrap();
    let released: i64 = tx
        .query_one(
            "SELECT position FROM allsource.append($1, 'T', '{}')",
            &[&kept],
        )
        .unwrap()
        .get(0);
    tx.batch_execute("RELEASE s").unwrap();
    tx.commit().unwrap();
    assert_eq!(
        notifications(&mut listener, Duration::from_millis(500)),
        vec![format!(
            r#"{{"partition_id": {kept_partition}, "last_position": {released}}}"#
        )]
    );
}

#[test]
fn a_transaction_whose_appends_were_rolled_back_can_be_prepared() {
    let db = TestDb::new("savepoint_prepare");
    let mut client = db.connect();
    let error = client
        .batch_execute(
            "BEGIN; SAVEPOINT s; SELECT allsource.append('p', 'T', '{}'); RELEASE s;
             PREPARE TRANSACTION 'released_append'",
        )
        .unwrap_err();
    assert_eq!(sqlstate(&error), "0A000", "a released append still refuses");
    client.batch_execute("ROLLBACK").ok();

    client
        .batch_execute(&format!(
            "BEGIN; SAVEPOINT s; SELECT allsource.append('p', 'T', '{{}}'); ROLLBACK TO s;
             PREPARE TRANSACTION '{}'",
            db.name()
        ))
        .unwrap();
    client
        .batch_execute(&format!("COMMIT PREPARED '{}'", db.name()))
        .unwrap();
    let version: i64 = client
        .query_one("SELECT allsource.stream_version('p')", &[])
        .unwrap()
        .get(0);
    assert_eq!(version, 0);
}
