//! Tenants under attack: a session bound to its role's tenant cannot act for
//! another; tickets, refusals and errors tell a tenant nothing of another's
//! streams.

use crate::queue::{await_ticket, fresh_queue_db, try_await_ticket};
use crate::{sqlstate, Login, TestDb};
use postgres::Client;

fn refused(client: &mut Client, sql: &str) -> postgres::Error {
    match client.batch_execute(sql) {
        Ok(()) => panic!("{sql} should have been refused"),
        Err(e) => e,
    }
}

#[test]
fn a_session_bound_to_its_roles_tenant_cannot_act_for_another() {
    let db = TestDb::new("bound_tenant");
    let bound = Login::new(db.name(), "acme_app", Some("allsource_writer"));
    let shared = Login::new(db.name(), "shared_app", Some("allsource_writer"));
    db.connect()
        .batch_execute(&format!(
            "ALTER ROLE {} SET allsource.role_tenant = 'acme'",
            bound.name
        ))
        .unwrap();
    // Per request: one login for every tenant, each request sets its own.
    let mut app = shared.connect(db.name(), "");
    app.batch_execute(
        "SET allsource.tenant = 'globex'; SELECT allsource.append('g-1', 'E', '{}');
         SET allsource.tenant = 'acme'; SELECT allsource.append('a-1', 'E', '{}');",
    )
    .unwrap();

    let mut acme = bound.connect(db.name(), "");
    let tenant: Option<String> = acme
        .query_one("SELECT allsource.current_tenant()", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        tenant.as_deref(),
        Some("acme"),
        "bound without setting anything"
    );
    acme.batch_execute("SELECT allsource.append('a-2', 'E', '{}')")
        .unwrap();
    let stored: String = db
        .connect()
        .query_one(
            "SELECT tenant_id FROM allsource.events WHERE stream_id = 'a-2'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(stored, "acme");
    // Repeating the bound tenant is fine; asking for another is refused everywhere.
    acme.batch_execute("SET allsource.tenant = 'acme'; SELECT allsource.append('a-2', 'E', '{}')")
        .unwrap();
    acme.batch_execute("SET allsource.tenant = 'globex'")
        .unwrap();
    for sql in [
        "SELECT allsource.append('g-1', 'E', '{}')",
        "SELECT * FROM allsource.read_stream('g-1')",
        "SELECT * FROM allsource.read_all()",
        "SELECT allsource.stream_version('g-1')",
        "SELECT count(*) FROM allsource.events",
        "SELECT allsource.delete_stream('g-1')",
    ] {
        assert_eq!(sqlstate(&refused(&mut acme, sql)), "42501", "{sql}");
    }
    // The binding itself is out of the session's reach.
    for sql in [
        "SET allsource.role_tenant = 'globex'",
        "SET allsource.role_tenant = ''",
        "RESET allsource.role_tenant",
        "SELECT set_config('allsource.role_tenant', '', false)",
        "ALTER ROLE CURRENT_USER SET allsource.role_tenant = 'globex'",
    ] {
        assert_eq!(sqlstate(&refused(&mut acme, sql)), "42501", "{sql}");
    }
    acme.batch_execute("RESET allsource.tenant; RESET ALL")
        .unwrap();
    let rows = acme
        .query("SELECT DISTINCT tenant_id FROM allsource.events", &[])
        .unwrap();
    let seen: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(seen, ["acme"], "after RESET ALL still acme's rows only");
    let globex_reads: i64 = acme
        .query_one("SELECT count(*) FROM allsource.read_stream('g-1')", &[])
        .unwrap()
        .get(0);
    assert_eq!(globex_reads, 0);
}

#[test]
fn an_event_id_of_another_tenant_is_refused_without_telling_its_stream() {
    let db = TestDb::new("tenant_za003");
    let mut client = db.connect();
    let id = "3a1c7bd2-5e44-4f7e-9d3c-0d8a51f2b9aa";
    client
        .batch_execute(&format!(
            "SET allsource.tenant = 'acme';
             SELECT allsource.append('secret-1', 'E', '{{}}');
             SELECT allsource.append('secret-1', 'E', '{{}}', event_id => '{id}');
             SET allsource.tenant = 'globex';"
        ))
        .unwrap();
    for sql in [
        format!("SELECT allsource.append('mine-1', 'E', '{{}}', event_id => '{id}')"),
        format!(
            r#"SELECT allsource.append_batch('mine-1', '[{{"type": "E", "payload": {{}}}}, {{"type": "E", "payload": {{}}, "id": "{id}"}}]')"#
        ),
    ] {
        let error = refused(&mut client, &sql);
        assert_eq!(sqlstate(&error), "ZA003");
        let detail = error
            .as_db_error()
            .and_then(|e| e.detail())
            .unwrap_or_default()
            .to_string();
        assert!(
            !detail.contains("secret") && !detail.contains("version 2"),
            "the detail describes acme's stream: {detail}"
        );
    }
}

#[test]
fn queue_tickets_answer_only_the_tenant_that_enqueued() {
    let mut acme = fresh_queue_db();
    acme.batch_execute("SET allsource.tenant = 'acme'").unwrap();
    let ticket: i64 = acme
        .query_one("SELECT allsource.enqueue('ticket-1', 'E', '{}')", &[])
        .unwrap()
        .get(0);
    assert_eq!(await_ticket(&mut acme, ticket, 10_000).status, "committed");
    let mut other = crate::queue::queue_session();
    for tenant in ["globex", ""] {
        other
            .batch_execute(&format!("SET allsource.tenant = '{tenant}'"))
            .unwrap();
        let error = try_await_ticket(&mut other, ticket, 0).expect_err("another tenant's ticket");
        assert_eq!(sqlstate(&error), "22023", "tenant {tenant:?}");
    }
}

#[test]
fn queue_a_refused_event_leaves_no_stream_row_behind() {
    let mut acme = fresh_queue_db();
    acme.batch_execute("SET allsource.tenant = 'acme'").unwrap();
    // Refused alone, and refused in one batch with an event that commits.
    let refused: i64 = acme
        .query_one(
            "SELECT allsource.enqueue('squat-1', 'E', '{}', expected_version => 5)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(await_ticket(&mut acme, refused, 10_000).status, "conflict");
    let tickets: Vec<i64> = acme
        .query(
            "SELECT allsource.enqueue(s, 'E', '{}', expected_version => v)
             FROM (VALUES ('squat-2', 3::bigint), ('kept-1', 0)) AS t(s, v)",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let statuses: Vec<String> = tickets
        .iter()
        .map(|&t| await_ticket(&mut acme, t, 10_000).status)
        .collect();
    assert_eq!(statuses, ["conflict", "committed"]);
    let rows: Vec<String> = acme
        .query(
            "SELECT stream_id FROM allsource.streams ORDER BY stream_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows, ["kept-1"], "refused events left stream rows");
    // The ids stay free for another tenant, through append and the queue.
    acme.batch_execute(
        "SET allsource.tenant = 'globex'; SELECT allsource.append('squat-1', 'E', '{}')",
    )
    .unwrap();
    let ticket: i64 = acme
        .query_one("SELECT allsource.enqueue('squat-2', 'E', '{}')", &[])
        .unwrap()
        .get(0);
    assert_eq!(await_ticket(&mut acme, ticket, 10_000).status, "committed");
}
