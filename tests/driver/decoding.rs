//! Logical decoding sees appends as ordinary inserts: the append path writes
//! its rows without the executor (src/sql/direct_insert.rs) but with the WAL
//! records the executor writes, so replication and change-data capture see
//! every committed event and stream row change. The server runs
//! with `wal_level = logical` (scripts/test.sh).

use crate::TestDb;
use postgres::Client;

#[test]
fn logical_decoding_sees_appended_events_as_inserts() {
    let db = TestDb::new("decoding");
    let mut client = db.connect();
    let slot = format!("{}_slot", db.name());
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
            &[&slot],
        )
        .unwrap();
    // One statement per call: a simple query of several is one transaction.
    let appended: Result<(), postgres::Error> = [
        r#"SELECT allsource.append('decoded-1', 'Placed', '{"n": 1}')"#,
        r#"SELECT allsource.append_batch('decoded-2', '[{"type": "A", "payload": 2}, {"type": "B", "payload": 3}]')"#,
        r#"SELECT allsource.append('decoded-1', 'Shipped', '{"n": 4}', event_id => '00000000-0000-7000-8000-000000000004')"#,
    ]
    .iter()
    .try_for_each(|statement| client.batch_execute(statement));
    let changes = changes(&mut client, &slot);
    // Before asserting: a slot left behind would keep the database from being dropped.
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .unwrap();
    appended.unwrap();

    let inserts = |table: &str| -> Vec<&String> {
        changes
            .iter()
            .filter(|c| {
                c.starts_with(&format!("table allsource.{table}")) && c.contains(": INSERT: ")
            })
            .collect()
    };
    let events: Vec<&String> = changes
        .iter()
        .filter(|c| c.starts_with("table allsource.events_p") && c.contains(": INSERT: "))
        .collect();
    assert_eq!(events.len(), 4, "{changes:#?}");
    let stored: Vec<(i64, String, i64, String)> = client
        .query(
            "SELECT position, stream_id, version, payload::text FROM allsource.events ORDER BY position",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(stored.len(), 4);
    for ((position, stream_id, version, payload), change) in stored.iter().zip(&events) {
        for column in [
            format!("\"position\"[bigint]:{position} "),
            format!("stream_id[text]:'{stream_id}' "),
            format!("version[bigint]:{version} "),
            format!("payload[jsonb]:'{payload}' "),
        ] {
            assert!(change.contains(&column), "{change} should contain {column}");
        }
    }
    assert_eq!(inserts("event_ids:").len(), 4, "{changes:#?}");
    assert!(inserts("event_ids:")
        .iter()
        .any(|c| c.contains("event_id[uuid]:'00000000-0000-7000-8000-000000000004'")));
    // Two new streams, and an update of its stream row per append.
    assert_eq!(inserts("streams:").len(), 2, "{changes:#?}");
    let updates: Vec<&String> = changes
        .iter()
        .filter(|c| c.starts_with("table allsource.streams: UPDATE: "))
        .collect();
    assert_eq!(updates.len(), 3, "{changes:#?}");
    assert!(
        updates[2].contains("stream_id[text]:'decoded-1'")
            && updates[2].contains("version[bigint]:2 "),
        "{updates:#?}"
    );
}

fn changes(client: &mut Client, slot: &str) -> Vec<String> {
    client
        .query(
            "SELECT data FROM pg_logical_slot_get_changes($1, NULL, NULL, 'include-xids', '0')",
            &[&slot],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}
