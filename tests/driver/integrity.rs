//! Tampering that needs the tables to itself: a superuser who gets past the
//! guard trigger (disabled, or `session_replication_role = replica`), writes,
//! and commits. Each forgery below changes rows without recomputing the hash
//! chain; `verify_*`, `verify_all_tenants` and `scripts/audit_checksums.py`
//! must find every one.

use crate::{server_url, sqlstate, try_connect_to, TestDb};
use postgres::{Client, NoTls};
use std::process::Command;

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

/// Runs `sql` as a forger: a superuser past the guard triggers, committed.
fn forge(client: &mut Client, sql: &str) {
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL session_replication_role = replica; {sql}; COMMIT;"
        ))
        .unwrap_or_else(|e| panic!("forging {sql}: {e}"));
}

/// `verify_stream`'s verdict: (ok, first_bad_version, problem).
fn verdict(client: &mut Client, stream: &str) -> (bool, Option<i64>, String) {
    let row = client
        .query_one(
            "SELECT ok, first_bad_version, coalesce(problem, '') FROM allsource.verify_stream($1)",
            &[&stream],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// `verify_all`'s rows: (stream_id, first_bad_version, problem).
fn failures(client: &mut Client) -> Vec<(Option<String>, Option<i64>, String)> {
    client
        .query(
            "SELECT stream_id, first_bad_version, problem FROM allsource.verify_all()",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// `verify_all_tenants`'s rows: (tenant_id, stream_id, first_bad_version, problem).
type TenantFailure = (Option<String>, Option<String>, Option<i64>, String);

fn all_tenant_failures(client: &mut Client) -> Vec<TenantFailure> {
    client
        .query(
            "SELECT tenant_id, stream_id, first_bad_version, problem FROM allsource.verify_all_tenants()",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

fn assert_found(verdict: (bool, Option<i64>, String), version: Option<i64>, words: &str) {
    assert!(!verdict.0, "not found: {verdict:?}");
    assert_eq!(verdict.1, version, "{verdict:?}");
    assert!(
        verdict.2.contains(words),
        "{:?} should mention {words:?}",
        verdict.2
    );
}

/// Whether `scripts/audit_checksums.py` finds the store sound.
fn audit_passes(db: &TestDb) -> bool {
    let bin = std::env::var("ALLSOURCE_TEST_PG_BIN").expect("ALLSOURCE_TEST_PG_BIN is not set");
    let path = format!("{bin}:{}", std::env::var("PATH").unwrap_or_default());
    let output = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/audit_checksums.py"
        ))
        .arg(format!("--dbname={} dbname={}", server_url(), db.name()))
        .env("PATH", path)
        .output()
        .expect("python3 runs");
    let code = output.status.code();
    assert!(
        matches!(code, Some(0 | 1)),
        "the audit failed to run: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    code == Some(0)
}

fn append_three(client: &mut Client, stream: &str) {
    client
        .execute(
            r#"SELECT allsource.append_batch($1, '[{"type": "A", "payload": {"n": 1}}, {"type": "B", "payload": {"n": 2}, "metadata": {"m": 2}}, {"type": "C", "payload": {"n": 3}}]')"#,
            &[&stream],
        )
        .unwrap();
}

/// Item 5: digests stand in for content only where a hard delete erased it.
#[test]
fn forged_erased_digests_hide_no_change() {
    let db = TestDb::new("forged_digests");
    let mut client = db.connect();
    for stream in ["changed", "live-digest", "erased"] {
        append_three(&mut client, stream);
    }
    client
        .batch_execute("SELECT allsource.delete_stream('erased', hard => true)")
        .unwrap();
    assert!(failures(&mut client).is_empty());
    assert!(audit_passes(&db));
    let digests_of = |stream: &str, version: i64| {
        format!(
            "INSERT INTO allsource.erased_events (partition_id, position, payload_digest, metadata_digest)
             SELECT partition_id, position, pg_catalog.sha256(convert_to(payload::text, 'UTF8')),
                    pg_catalog.sha256(convert_to(metadata::text, 'UTF8'))
             FROM allsource.events WHERE stream_id = '{stream}' AND version = {version}"
        )
    };
    // The digests of version 2's content, then a new content.
    forge(
        &mut client,
        &format!(
            "{}; UPDATE allsource.events SET payload = '{{\"n\": 20}}' WHERE stream_id = 'changed' AND version = 2",
            digests_of("changed", 2)
        ),
    );
    assert_found(verdict(&mut client, "changed"), Some(2), "erased");
    // A digest row for a live event, content untouched, is a finding too.
    forge(&mut client, &digests_of("live-digest", 3));
    assert_found(verdict(&mut client, "live-digest"), Some(3), "erased");
    // An erased stream's event given a content again, digests kept.
    forge(
        &mut client,
        "UPDATE allsource.events SET payload = '{\"n\": 1}' WHERE stream_id = 'erased' AND version = 1",
    );
    assert_found(verdict(&mut client, "erased"), Some(1), "erased");
    let found: Vec<(Option<String>, Option<i64>)> = failures(&mut client)
        .into_iter()
        .map(|(s, v, _)| (s, v))
        .collect();
    assert_eq!(
        found,
        [
            (Some("changed".into()), Some(2)),
            (Some("erased".into()), Some(1)),
            (Some("live-digest".into()), Some(3)),
        ]
    );
    assert!(!audit_passes(&db), "the audit trusted forged digests");
}

/// Item 6a: a truncated tail verifies by itself; an anchor kept from before catches it.
#[test]
fn a_truncated_tail_is_caught_by_a_recorded_head() {
    let db = TestDb::new("truncated_tail");
    let mut client = db.connect();
    append_three(&mut client, "s");
    let head = client
        .query_one(
            "SELECT version, checksum FROM allsource.stream_head('s')",
            &[],
        )
        .unwrap();
    let (version, checksum): (i64, Vec<u8>) = (head.get(0), head.get(1));
    assert_eq!(version, 3);
    let anchor = |client: &mut Client, version: i64, checksum: &[u8]| {
        let row = client
            .query_one(
                "SELECT ok, first_bad_version, coalesce(problem, '') FROM allsource.verify_anchor('s', $1, $2)",
                &[&version, &checksum],
            )
            .unwrap();
        (
            row.get::<_, bool>(0),
            row.get::<_, Option<i64>>(1),
            row.get::<_, String>(2),
        )
    };
    assert!(anchor(&mut client, 3, &checksum).0);
    let second: Vec<u8> = client
        .query_one(
            "SELECT checksum FROM allsource.events WHERE stream_id = 's' AND version = 2",
            &[],
        )
        .unwrap()
        .get(0);
    // Drop version 3 and make the stream row end at version 2.
    forge(
        &mut client,
        "DELETE FROM allsource.event_ids WHERE event_id = (SELECT event_id FROM allsource.events WHERE stream_id = 's' AND version = 3);
         DELETE FROM allsource.events WHERE stream_id = 's' AND version = 3;
         UPDATE allsource.streams SET version = 2, last_checksum = (SELECT checksum FROM allsource.events WHERE stream_id = 's' AND version = 2)
         WHERE stream_id = 's'",
    );
    assert_found(
        anchor(&mut client, 3, &checksum),
        Some(3),
        "ends at version 2",
    );
    assert!(
        anchor(&mut client, 2, &second).0,
        "an older anchor still holds"
    );
    // A wrong anchor is refused, not mistaken for damage.
    let error = client
        .query(
            "SELECT * FROM allsource.verify_anchor('s', 1, '\\x00')",
            &[],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&error), "22023");
    // A rewritten version: the anchor's checksum is no longer there.
    forge(
        &mut client,
        "UPDATE allsource.events SET checksum = '\\x0000000000000000000000000000000000000000000000000000000000000000' WHERE stream_id = 's' AND version = 2",
    );
    assert!(!anchor(&mut client, 2, &second).0);
}

/// Item 6b: positions must increase with versions.
#[test]
fn swapped_positions_are_found() {
    let db = TestDb::new("swapped_positions");
    let mut client = db.connect();
    append_three(&mut client, "s");
    forge(
        &mut client,
        "CREATE TEMP TABLE p AS SELECT version, position FROM allsource.events WHERE stream_id = 's';
         UPDATE allsource.events SET position = -position WHERE stream_id = 's' AND version IN (1, 2);
         UPDATE allsource.events e SET position = (SELECT position FROM p WHERE version = 3 - e.version)
          WHERE stream_id = 's' AND version IN (1, 2);
         UPDATE allsource.event_ids i SET position = e.position FROM allsource.events e
          WHERE e.event_id = i.event_id AND e.stream_id = 's'",
    );
    assert_found(verdict(&mut client, "s"), Some(2), "position");
    assert_eq!(failures(&mut client).len(), 1);
}

/// Items 6c, 6d and 7: a stream moved between tenants, whole or its row only.
#[test]
fn a_stream_moved_to_another_tenant_is_found_by_both_tenants_and_the_auditor() {
    let db = TestDb::new("moved_tenant");
    let mut client = db.connect();
    client
        .batch_execute("SET allsource.tenant = 'acme'")
        .unwrap();
    append_three(&mut client, "whole");
    append_three(&mut client, "row-only");
    client
        .batch_execute("SET allsource.tenant = 'initech'")
        .unwrap();
    append_three(&mut client, "sound");
    client.batch_execute("RESET allsource.tenant").unwrap();
    assert!(all_tenant_failures(&mut client).is_empty());
    assert!(audit_passes(&db));
    forge(
        &mut client,
        "UPDATE allsource.streams SET tenant_id = 'globex' WHERE stream_id IN ('whole', 'row-only');
         UPDATE allsource.events SET tenant_id = 'globex' WHERE stream_id = 'whole'",
    );
    // Without a tenant the session sees no tenant's streams.
    assert!(failures(&mut client).is_empty());
    client
        .batch_execute("SET allsource.tenant = 'globex'")
        .unwrap();
    assert_found(verdict(&mut client, "whole"), Some(1), "");
    assert_found(verdict(&mut client, "row-only"), Some(1), "tenant");
    let globex: Vec<Option<String>> = failures(&mut client).into_iter().map(|f| f.0).collect();
    assert_eq!(globex, [Some("row-only".into()), Some("whole".into())]);
    // acme's events under globex's stream row: acme sees that too.
    client
        .batch_execute("SET allsource.tenant = 'acme'")
        .unwrap();
    let acme: Vec<Option<String>> = failures(&mut client).into_iter().map(|f| f.0).collect();
    assert_eq!(acme, [Some("row-only".into())]);
    client.batch_execute("RESET allsource.tenant").unwrap();
    let audited: Vec<(Option<String>, Option<String>)> = all_tenant_failures(&mut client)
        .into_iter()
        .map(|f| (f.0, f.1))
        .collect();
    assert_eq!(
        audited,
        [
            (Some("globex".into()), Some("row-only".into())),
            (Some("globex".into()), Some("whole".into())),
        ]
    );
    assert!(
        !audit_passes(&db),
        "the audit missed a stream moved to another tenant"
    );
}

/// Item 6e: every event has its event_ids row, and every row its event.
#[test]
fn a_damaged_event_id_registry_is_found() {
    let db = TestDb::new("event_ids");
    let mut client = db.connect();
    for stream in ["missing", "moved", "sound"] {
        append_three(&mut client, stream);
    }
    forge(
        &mut client,
        "DELETE FROM allsource.event_ids WHERE event_id = (SELECT event_id FROM allsource.events WHERE stream_id = 'missing' AND version = 2);
         UPDATE allsource.event_ids SET position = position + 1000000
          WHERE event_id = (SELECT event_id FROM allsource.events WHERE stream_id = 'moved' AND version = 3)",
    );
    assert_found(verdict(&mut client, "missing"), Some(2), "event_ids");
    assert_found(verdict(&mut client, "moved"), Some(3), "event_ids");
    // A row that points at no event at all.
    forge(
        &mut client,
        "INSERT INTO allsource.event_ids VALUES ('00000000-0000-4000-8000-00000000dead', 0, 987654321)",
    );
    let found = failures(&mut client);
    let streams: Vec<Option<String>> = found.iter().map(|f| f.0.clone()).collect();
    assert_eq!(
        streams,
        [None, Some("missing".into()), Some("moved".into())],
        "{found:?}"
    );
    assert!(found[0].2.contains("event_ids"), "{found:?}");
    // The id that row holds is refused as if it had been used.
    let audited = all_tenant_failures(&mut client);
    assert!(
        audited[0]
            .3
            .contains("00000000-0000-4000-8000-00000000dead"),
        "{audited:?}"
    );
}

/// The tag index: every tag of every event has its row, as the event has
/// it, and every row is an event's tag.
#[test]
fn a_damaged_tag_index_is_found() {
    let db = TestDb::new("event_tags");
    let mut client = db.connect();
    for stream in ["untagged", "dropped", "retyped", "sound"] {
        client
            .execute(
                "SELECT allsource.append($1, 'Tagged', '{}', tags => ARRAY['course:7', $1])",
                &[&stream],
            )
            .unwrap();
    }
    assert!(failures(&mut client).is_empty());
    forge(
        &mut client,
        "DELETE FROM allsource.event_tags WHERE tag = 'dropped';
         UPDATE allsource.event_tags SET event_type = 'Other' WHERE tag = 'course:7'
          AND position = (SELECT position FROM allsource.events WHERE stream_id = 'retyped')",
    );
    let found = failures(&mut client);
    assert_eq!(found.len(), 2, "{found:?}");
    for ((stream, version, problem), damaged) in found.iter().zip(["dropped", "retyped"]) {
        assert_eq!((stream.as_deref(), *version), (Some(damaged), Some(1)));
        assert!(problem.contains("allsource.event_tags"), "{problem}");
    }
    // Rows of no event's tag: one line that counts them.
    forge(
        &mut client,
        "INSERT INTO allsource.event_tags VALUES ('course:7', '', 987654321, 0, '00000000-0000-4000-8000-00000000dead', 'Forged', '{course:7}'),
                                                 ('course:8', '', 987654322, 0, '00000000-0000-4000-8000-00000000beef', 'Forged', '{course:8}')",
    );
    let found = failures(&mut client);
    let streams: Vec<Option<String>> = found.iter().map(|f| f.0.clone()).collect();
    assert_eq!(
        streams,
        [None, Some("dropped".into()), Some("retyped".into())],
        "{found:?}"
    );
    assert!(
        found[0].2.contains("2 rows of allsource.event_tags"),
        "{found:?}"
    );
}

/// Item 6f: a deleted stream that comes back.
#[test]
fn a_cleared_tombstone_is_found() {
    let db = TestDb::new("tombstone");
    let mut client = db.connect();
    append_three(&mut client, "deleted");
    append_three(&mut client, "erased");
    client
        .batch_execute(
            "SELECT allsource.delete_stream('deleted');
             SELECT allsource.delete_stream('erased', hard => true);
             SELECT allsource.delete_stream('never-written')",
        )
        .unwrap();
    assert!(failures(&mut client).is_empty());
    let head: Vec<u8> = client
        .query_one("SELECT checksum FROM allsource.stream_head('deleted')", &[])
        .unwrap()
        .get(0);
    forge(
        &mut client,
        "UPDATE allsource.streams SET deleted_at = NULL, deleted_by = NULL WHERE stream_id IN ('deleted', 'never-written');
         UPDATE allsource.streams SET deleted_at = NULL, erased_at = NULL WHERE stream_id = 'erased'",
    );
    assert_found(verdict(&mut client, "deleted"), None, "tombstone");
    assert_found(verdict(&mut client, "never-written"), None, "tombstone");
    assert_found(verdict(&mut client, "erased"), Some(1), "erased");
    assert_eq!(failures(&mut client).len(), 3);
    // Its tombstone's checksum removed as well: whoever kept the head finds it.
    forge(
        &mut client,
        "UPDATE allsource.streams SET tombstone_checksum = NULL WHERE stream_id = 'deleted'",
    );
    let row = client
        .query_one(
            "SELECT ok FROM allsource.verify_anchor('deleted', 3, $1)",
            &[&head],
        )
        .unwrap();
    assert!(!row.get::<_, bool>(0));
    // And a stream deleted by a forger, not by delete_stream.
    append_three(&mut client, "live");
    forge(
        &mut client,
        "UPDATE allsource.streams SET deleted_at = now(), deleted_by = 'nobody' WHERE stream_id = 'live'",
    );
    assert_found(verdict(&mut client, "live"), None, "tombstone");
}

/// Item 6g: the partitions are all there and attached.
#[test]
fn a_detached_partition_is_found() {
    let db = TestDb::new("detached");
    let mut client = db.connect();
    append_three(&mut client, "s");
    append_three(&mut client, "t");
    let partition: i32 = client
        .query_one("SELECT allsource.partition_for('s')", &[])
        .unwrap()
        .get(0);
    let last: i32 = client
        .query_one("SELECT allsource.partition_count() - 1", &[])
        .unwrap()
        .get(0);
    let (s_partition, other) = (partition, if partition == 0 { 1 } else { 0 });
    let t_partition: i32 = client
        .query_one("SELECT allsource.partition_for('t')", &[])
        .unwrap()
        .get(0);
    client
        .batch_execute(&format!(
            "ALTER TABLE allsource.events DETACH PARTITION allsource.events_p{s_partition}"
        ))
        .unwrap();
    let found = failures(&mut client);
    assert!(
        found
            .iter()
            .any(|f| f.0.is_none() && f.2.contains(&format!("events_p{s_partition}"))),
        "{found:?}"
    );
    assert!(
        found.iter().any(|f| f.0.as_deref() == Some("s")),
        "{found:?}"
    );
    assert_found(verdict(&mut client, "s"), None, "partition");
    // The last partition, with nothing in it, detached.
    let db = TestDb::new("detached_last");
    let mut client = db.connect();
    append_three(&mut client, "t");
    let empty = if t_partition == last { other } else { last };
    client
        .batch_execute(&format!(
            "ALTER TABLE allsource.events DETACH PARTITION allsource.events_p{empty}"
        ))
        .unwrap();
    let found = failures(&mut client);
    assert!(
        found
            .iter()
            .any(|f| f.0.is_none() && f.2.contains(&format!("events_p{empty}"))),
        "{found:?}"
    );
}

/// Item 7: one call verifies every tenant, for the owner and the roles it grants.
#[test]
fn the_auditor_verifies_every_tenant_and_nobody_else_may() {
    let db = TestDb::new("auditor");
    let mut client = db.connect();
    for tenant in ["acme", "globex"] {
        client
            .batch_execute(&format!("SET allsource.tenant = '{tenant}'"))
            .unwrap();
        append_three(&mut client, &format!("{tenant}-1"));
    }
    client.batch_execute("RESET allsource.tenant").unwrap();
    append_three(&mut client, "untenanted");
    forge(
        &mut client,
        "UPDATE allsource.events SET payload = '{\"n\": 0}' WHERE version = 2",
    );
    let audited: Vec<(Option<String>, Option<String>, Option<i64>)> =
        all_tenant_failures(&mut client)
            .into_iter()
            .map(|f| (f.0, f.1, f.2))
            .collect();
    assert_eq!(
        audited,
        [
            (None, Some("untenanted".into()), Some(2)),
            (Some("acme".into()), Some("acme-1".into()), Some(2)),
            (Some("globex".into()), Some("globex-1".into()), Some(2)),
        ]
    );
    // verify_all() as SPEC has it: the session's tenant only.
    assert_eq!(failures(&mut client).len(), 1);
    let roles = format!("{}_auditor, {0}_writer", db.name());
    let mut admin = try_connect_to("postgres").unwrap();
    admin
        .batch_execute(&format!(
            "CREATE ROLE {}_auditor LOGIN IN ROLE allsource_auditor; CREATE ROLE {0}_writer LOGIN IN ROLE allsource_writer",
            db.name()
        ))
        .unwrap();
    let connect_as = |role: &str| {
        Client::connect(
            &format!(
                "{} dbname={} user={}_{role}",
                server_url(),
                db.name(),
                db.name()
            ),
            NoTls,
        )
        .unwrap()
    };
    let result = std::panic::catch_unwind(|| {
        let mut auditor = connect_as("auditor");
        assert_eq!(all_tenant_failures(&mut auditor).len(), 3);
        let mut writer = connect_as("writer");
        let error = writer
            .query("SELECT * FROM allsource.verify_all_tenants()", &[])
            .unwrap_err();
        assert_eq!(sqlstate(&error), "42501");
        writer
            .batch_execute("SET allsource.tenant = 'acme'")
            .unwrap();
        assert_eq!(failures(&mut writer).len(), 1);
    });
    admin
        .batch_execute(&format!("DROP ROLE IF EXISTS {roles}"))
        .ok();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
