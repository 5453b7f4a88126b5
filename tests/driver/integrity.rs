//! Tampering that needs the tables to itself: a superuser who disables the
//! guard trigger, writes, and enables it again. Committed, then verified.

use crate::TestDb;

#[test]
fn tampering_with_the_guard_trigger_disabled_is_found() {
    let db = TestDb::new("trigger_off");
    let mut client = db.connect();
    client
        .batch_execute(
            r#"SELECT allsource.append_batch('victim', '[{"type": "A", "payload": 1}, {"type": "B", "payload": 2}, {"type": "C", "payload": 3}]');
               SELECT allsource.append('bystander', 'A', '{}');"#,
        )
        .unwrap();
    let partition: i32 = client
        .query_one("SELECT allsource.partition_for('victim')", &[])
        .unwrap()
        .get(0);
    client
        .batch_execute(&format!(
            "BEGIN;
             ALTER TABLE allsource.events_p{partition} DISABLE TRIGGER refuse_direct_write;
             UPDATE allsource.events_p{partition} SET payload = '20' WHERE stream_id = 'victim' AND version = 2;
             ALTER TABLE allsource.events_p{partition} ENABLE TRIGGER refuse_direct_write;
             COMMIT;"
        ))
        .unwrap();
    let row = client
        .query_one(
            "SELECT ok, first_bad_version, problem FROM allsource.verify_stream('victim')",
            &[],
        )
        .unwrap();
    assert!(!row.get::<_, bool>(0));
    assert_eq!(row.get::<_, Option<i64>>(1), Some(2));
    assert!(row.get::<_, String>(2).contains("content of version 2"));
    let failing: Vec<(String, i64)> = client
        .query(
            "SELECT stream_id, first_bad_version FROM allsource.verify_all()",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(failing, vec![("victim".to_string(), 2)]);
    // The guard is back: a direct write fails again.
    let error = client
        .batch_execute("DELETE FROM allsource.events")
        .unwrap_err();
    assert_eq!(crate::sqlstate(&error), "42501");
}
