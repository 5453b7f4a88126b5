//! Subscriptions with pull consumers: leases held by one session at a time
//! and handed over when it ends, checkpoints that move in the caller's
//! transaction, the watermark, retries and parking, tenants and roles.

use crate::{sqlstate, Login, TestDb};
use postgres::Client;
use std::time::{Duration, Instant};

fn positions(client: &mut Client, sql: &str) -> Vec<i64> {
    client
        .query(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|row| row.get("position"))
        .collect()
}

fn refused(client: &mut Client, sql: &str) -> postgres::Error {
    match client.batch_execute(sql) {
        Ok(()) => panic!("{sql} should have been refused"),
        Err(e) => e,
    }
}

fn append(client: &mut Client, stream: &str, n: usize) {
    for i in 0..n {
        client
            .execute(
                "SELECT allsource.append($1, 'Happened', pg_catalog.jsonb_build_object('n', $2::int))",
                &[&stream, &(i as i32)],
            )
            .unwrap();
    }
}

fn backend_pid(client: &mut Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0)
}

#[test]
fn a_member_is_held_by_one_session_and_handed_over_when_it_ends() {
    let db = TestDb::new("sub_lease");
    let mut first = db.connect();
    append(&mut first, "order-1", 3);
    first
        .batch_execute("SELECT allsource.create_subscription('orders')")
        .unwrap();
    assert_eq!(
        positions(&mut first, "SELECT * FROM allsource.receive('orders')"),
        [1, 2, 3]
    );
    let holder = backend_pid(&mut first);

    let mut second = db.connect();
    let error = refused(&mut second, "SELECT * FROM allsource.receive('orders')");
    assert_eq!(sqlstate(&error), "55006");
    let message = error.as_db_error().unwrap().message().to_string();
    assert!(message.contains(&holder.to_string()), "{message}");
    let error = refused(&mut second, "SELECT allsource.ack('orders', 1)");
    assert_eq!(sqlstate(&error), "55006", "ack takes the lease too");
    let listed: Option<i32> = second
        .query_one("SELECT holder_pid FROM allsource.subscriptions()", &[])
        .unwrap()
        .get(0);
    assert_eq!(listed, Some(holder));

    // The holder acks part and goes away without a word: the lease ends with it.
    first
        .batch_execute("SELECT allsource.ack('orders', 2)")
        .unwrap();
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    let taken = loop {
        match second.query("SELECT * FROM allsource.receive('orders')", &[]) {
            Ok(rows) => break rows.iter().map(|r| r.get("position")).collect::<Vec<i64>>(),
            Err(e) if sqlstate(&e) == "55006" && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("the lease was not handed over: {e}"),
        }
    };
    assert_eq!(taken, [3], "the next consumer goes on from the checkpoint");

    // release() lets it go at once.
    second
        .batch_execute("SELECT allsource.release('orders')")
        .unwrap();
    let mut third = db.connect();
    assert_eq!(
        positions(&mut third, "SELECT * FROM allsource.receive('orders')"),
        [3]
    );
}

#[test]
fn the_checkpoint_moves_in_the_callers_transaction() {
    let db = TestDb::new("sub_ack_tx");
    let mut client = db.connect();
    append(&mut client, "order-1", 4);
    client
        .batch_execute(
            "CREATE TABLE totals (stream text PRIMARY KEY, seen int NOT NULL);
             SELECT allsource.create_subscription('projection');",
        )
        .unwrap();
    // Receiving again before an ack returns the same events.
    let once = positions(
        &mut client,
        "SELECT * FROM allsource.receive('projection', 2)",
    );
    let again = positions(
        &mut client,
        "SELECT * FROM allsource.receive('projection', 2)",
    );
    assert_eq!(once, [1, 2]);
    assert_eq!(again, once);

    // A rolled-back transaction takes its ack back with its writes.
    client
        .batch_execute(
            "BEGIN;
             INSERT INTO totals SELECT stream_id, count(*) FROM allsource.receive('projection', 2) GROUP BY stream_id;
             SELECT allsource.ack('projection', 2);
             ROLLBACK;",
        )
        .unwrap();
    assert_eq!(
        positions(
            &mut client,
            "SELECT * FROM allsource.receive('projection', 2)"
        ),
        [1, 2]
    );

    // Committed: the read model and the checkpoint together, exactly once.
    for _ in 0..3 {
        client
            .batch_execute(
                "BEGIN;
                 CREATE TEMP TABLE batch ON COMMIT DROP AS SELECT * FROM allsource.receive('projection', 3);
                 INSERT INTO totals SELECT stream_id, count(*) FROM batch GROUP BY stream_id
                   ON CONFLICT (stream) DO UPDATE SET seen = totals.seen + excluded.seen;
                 SELECT allsource.ack('projection', max(position)) FROM batch HAVING count(*) > 0;
                 COMMIT;",
            )
            .unwrap();
    }
    let seen: i32 = client
        .query_one("SELECT seen FROM totals WHERE stream = 'order-1'", &[])
        .unwrap()
        .get(0);
    assert_eq!(seen, 4, "every event applied exactly once");
    let checkpoint: i64 = client
        .query_one("SELECT checkpoint FROM allsource.subscriptions()", &[])
        .unwrap()
        .get(0);
    assert_eq!(checkpoint, 4);
    // At or below the checkpoint nothing happens; above the watermark: 22023.
    client
        .batch_execute("SELECT allsource.ack('projection', 1)")
        .unwrap();
    let error = refused(&mut client, "SELECT allsource.ack('projection', 5)");
    assert_eq!(sqlstate(&error), "22023");
}

#[test]
fn receive_never_passes_the_watermark() {
    let db = TestDb::new("sub_watermark");
    let mut client = db.connect();
    append(&mut client, "order-1", 1);
    client
        .batch_execute("SELECT allsource.create_subscription('follow')")
        .unwrap();
    // An open transaction holds position 2; a later commit takes 3.
    let mut slow = db.connect();
    slow.batch_execute("BEGIN; SELECT allsource.append('order-2', 'Slow', '{}')")
        .unwrap();
    append(&mut client, "order-3", 1);
    assert_eq!(
        positions(&mut client, "SELECT * FROM allsource.receive('follow')"),
        [1],
        "3 is committed but 2 may still appear below it"
    );
    slow.batch_execute("COMMIT").unwrap();
    assert_eq!(
        positions(&mut client, "SELECT * FROM allsource.receive('follow')"),
        [1, 2, 3]
    );
}

#[test]
fn filters_members_and_start_positions_choose_the_events() {
    let db = TestDb::new("sub_filters");
    let mut client = db.connect();
    append(&mut client, "order-1", 2); // 1, 2
    append(&mut client, "orderly-1", 1); // 3: not the category "order"
    append(&mut client, "user-1", 1); // 4
    client
        .batch_execute("SELECT allsource.append('order-2', 'Cancelled', '{}')") // 5
        .unwrap();
    client
        .batch_execute(
            "SELECT allsource.create_subscription('orders', categories => ARRAY['order']);
             SELECT allsource.create_subscription('cancellations', event_types => ARRAY['Cancelled']);
             SELECT allsource.create_subscription('both', ARRAY['order', 'user'], ARRAY['Happened']);
             SELECT allsource.create_subscription('recent', start_after => 4);
             SELECT allsource.create_subscription('from_now', start_after => allsource.watermark());
             SELECT allsource.create_subscription('grouped', members => 3);",
        )
        .unwrap();
    let all = |c: &mut Client, name: &str| {
        positions(c, &format!("SELECT * FROM allsource.receive('{name}')"))
    };
    assert_eq!(all(&mut client, "orders"), [1, 2, 5]);
    assert_eq!(all(&mut client, "cancellations"), [5]);
    assert_eq!(all(&mut client, "both"), [1, 2, 4]);
    assert_eq!(all(&mut client, "recent"), [5]);
    assert!(all(&mut client, "from_now").is_empty());
    append(&mut client, "order-9", 1); // 6
    assert_eq!(all(&mut client, "from_now"), [6]);

    // Members split the streams, each stream in exactly one member, in order.
    let mut seen = Vec::new();
    for member in 0..3 {
        let rows = client
            .query(
                "SELECT position, stream_id, allsource.partition_for(stream_id, 3) AS hash
                 FROM allsource.receive('grouped', 100, $1)",
                &[&member],
            )
            .unwrap();
        for row in rows {
            assert_eq!(row.get::<_, i32>("hash"), member);
            seen.push(row.get::<_, i64>("position"));
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, [1, 2, 3, 4, 5, 6]);
    let error = refused(
        &mut client,
        "SELECT * FROM allsource.receive('grouped', 10, 3)",
    );
    assert_eq!(sqlstate(&error), "22023");
}

#[test]
fn a_failing_event_is_retried_then_parked_and_put_back_on_request() {
    let db = TestDb::new("sub_parking");
    let mut client = db.connect();
    append(&mut client, "order-1", 3);
    client
        .batch_execute("SELECT allsource.create_subscription('poison', max_attempts => 2)")
        .unwrap();
    let nack = |c: &mut Client, position: i64| -> String {
        c.query_one("SELECT allsource.nack('poison', $1, 'boom')", &[&position])
            .unwrap()
            .get(0)
    };
    assert_eq!(nack(&mut client, 2), "retry");
    assert_eq!(
        positions(&mut client, "SELECT * FROM allsource.receive('poison')"),
        [1, 2, 3],
        "a retry stays in line"
    );
    assert_eq!(nack(&mut client, 2), "parked");
    assert_eq!(
        positions(&mut client, "SELECT * FROM allsource.receive('poison')"),
        [1, 3],
        "the member goes past a parked event"
    );
    let parked = client
        .query_one(
            "SELECT position, attempts, last_reason FROM allsource.parked_events('poison')",
            &[],
        )
        .unwrap();
    assert_eq!(parked.get::<_, i64>(0), 2);
    assert_eq!(parked.get::<_, i32>(1), 2);
    assert_eq!(parked.get::<_, String>(2), "boom");
    client
        .batch_execute("SELECT allsource.ack('poison', 3)")
        .unwrap();
    assert!(positions(&mut client, "SELECT * FROM allsource.receive('poison')").is_empty());

    // Put back: in front, although the checkpoint is past it; acked, it is done.
    let moved: i64 = client
        .query_one("SELECT allsource.retry_parked('poison')", &[])
        .unwrap()
        .get(0);
    assert_eq!(moved, 1);
    append(&mut client, "order-2", 1); // 4
    assert_eq!(
        positions(&mut client, "SELECT * FROM allsource.receive('poison')"),
        [2, 4]
    );
    client
        .batch_execute("SELECT allsource.ack('poison', 2)")
        .unwrap();
    assert_eq!(
        positions(&mut client, "SELECT * FROM allsource.receive('poison')"),
        [4]
    );
    // Not an event the member has to process: 22023.
    let error = refused(&mut client, "SELECT allsource.nack('poison', 1)");
    assert_eq!(sqlstate(&error), "22023");
}

#[test]
fn bad_arguments_and_unknown_names_raise_their_sqlstates() {
    let db = TestDb::new("sub_errors");
    let mut client = db.connect();
    client
        .batch_execute(
            "SELECT allsource.create_subscription('taken');
             CREATE FUNCTION wrong_handler(int) RETURNS void LANGUAGE sql AS '';",
        )
        .unwrap();
    let long = "x".repeat(256);
    for (sql, code) in [
        (
            "SELECT allsource.create_subscription('taken')".to_string(),
            "42710",
        ),
        (
            "SELECT allsource.create_subscription(NULL)".to_string(),
            "22023",
        ),
        (
            "SELECT allsource.create_subscription('')".to_string(),
            "22023",
        ),
        (
            format!("SELECT allsource.create_subscription('{long}')"),
            "22023",
        ),
        (
            "SELECT allsource.create_subscription('m', members => 0)".to_string(),
            "22023",
        ),
        (
            "SELECT allsource.create_subscription('m', members => 1025)".to_string(),
            "22023",
        ),
        (
            "SELECT allsource.create_subscription('m', max_attempts => 0)".to_string(),
            "22023",
        ),
        (
            "SELECT allsource.create_subscription('m', start_after => -1)".to_string(),
            "22023",
        ),
        (
            "SELECT allsource.create_subscription('m', categories => '{}')".to_string(),
            "22023",
        ),
        (
            "SELECT allsource.create_subscription('m', event_types => ARRAY[NULL])".to_string(),
            "22023",
        ),
        (
            "SELECT allsource.create_subscription('m', handler => 'wrong_handler(int)')"
                .to_string(),
            "22023",
        ),
        (
            "SELECT allsource.drop_subscription('nope')".to_string(),
            "42704",
        ),
        (
            "SELECT * FROM allsource.receive('nope')".to_string(),
            "42704",
        ),
        (
            "SELECT * FROM allsource.receive('taken', -1)".to_string(),
            "22023",
        ),
        ("SELECT allsource.ack('nope', 1)".to_string(), "42704"),
        ("SELECT allsource.ack('taken', NULL)".to_string(), "22023"),
        ("SELECT allsource.nack('nope', 1)".to_string(), "42704"),
        ("SELECT allsource.release('nope')".to_string(), "42704"),
        ("SELECT allsource.retry_parked('nope')".to_string(), "42704"),
        (
            "SELECT * FROM allsource.parked_events('nope')".to_string(),
            "42704",
        ),
    ] {
        let error = refused(&mut client, &sql);
        assert_eq!(sqlstate(&error), code, "{sql}: {error}");
    }
    let count: i64 = client
        .query_one("SELECT count(*) FROM allsource.subscriptions()", &[])
        .unwrap()
        .get(0);
    assert_eq!(count, 1, "nothing refused was created");
}

#[test]
fn readers_consume_writers_create_and_tenants_see_their_own() {
    let db = TestDb::new("sub_roles");
    let writer = Login::new(db.name(), "writer", Some("allsource_writer"));
    let reader = Login::new(db.name(), "reader", Some("allsource_reader"));
    let mut acme = writer.connect(db.name(), "options='-c allsource.tenant=acme'");
    let mut globex = writer.connect(db.name(), "options='-c allsource.tenant=globex'");
    append(&mut acme, "order-1", 2);
    append(&mut globex, "order-2", 1);
    acme.batch_execute("SELECT allsource.create_subscription('orders')")
        .unwrap();
    globex
        .batch_execute("SELECT allsource.create_subscription('orders')")
        .unwrap();
    assert_eq!(
        positions(&mut acme, "SELECT * FROM allsource.receive('orders')"),
        [1, 2]
    );
    assert_eq!(
        positions(&mut globex, "SELECT * FROM allsource.receive('orders')"),
        [3],
        "the same name in another tenant is another subscription"
    );
    globex
        .batch_execute("SELECT allsource.drop_subscription('orders')")
        .unwrap();
    let error = refused(&mut globex, "SELECT * FROM allsource.receive('orders')");
    assert_eq!(sqlstate(&error), "42704", "acme's is not globex's to see");

    let mut reading = reader.connect(db.name(), "options='-c allsource.tenant=acme'");
    acme.batch_execute("SELECT allsource.release('orders')")
        .unwrap();
    assert_eq!(
        positions(&mut reading, "SELECT * FROM allsource.receive('orders')"),
        [1, 2]
    );
    reading
        .batch_execute("SELECT allsource.ack('orders', 2)")
        .unwrap();
    let error = refused(&mut reading, "SELECT allsource.create_subscription('mine')");
    assert_eq!(sqlstate(&error), "42501", "readers do not create");
    let error = refused(&mut reading, "SELECT allsource.drop_subscription('orders')");
    assert_eq!(sqlstate(&error), "42501", "nor drop");
}

/// Waits up to a minute until `sql` returns true.
pub fn wait_until(client: &mut Client, sql: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if client.query_one(sql, &[]).unwrap().get::<_, bool>(0) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within a minute");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const PROJECTION: &str = "
    DROP TABLE IF EXISTS public.broken, public.totals;
    CREATE TABLE public.broken (n int);
    INSERT INTO public.broken VALUES (7);
    CREATE TABLE public.totals (stream text PRIMARY KEY, events int NOT NULL, sum int NOT NULL);
    -- Fails on multiples of the numbers in public.broken.
    CREATE FUNCTION public.project(e allsource.events) RETURNS void
    LANGUAGE plpgsql SET search_path = public AS $$
    BEGIN
        IF EXISTS (SELECT FROM broken WHERE (e.payload->>'n')::int % broken.n = 0) THEN
            RAISE EXCEPTION 'cannot project %', e.payload->>'n';
        END IF;
        INSERT INTO totals VALUES (e.stream_id, 1, (e.payload->>'n')::int)
        ON CONFLICT (stream) DO UPDATE SET events = totals.events + 1, sum = totals.sum + excluded.sum;
    END $$;
    -- The same, set-based: one call per batch.
    CREATE FUNCTION public.project_batch(events allsource.events[]) RETURNS void
    LANGUAGE plpgsql SET search_path = public AS $$
    DECLARE
        failing int := (SELECT min((e.payload->>'n')::int) FROM unnest(events) e, broken
                        WHERE (e.payload->>'n')::int % broken.n = 0);
    BEGIN
        IF failing IS NOT NULL THEN
            RAISE EXCEPTION 'cannot project %', failing;
        END IF;
        INSERT INTO totals
        SELECT e.stream_id, count(*), sum((e.payload->>'n')::int) FROM unnest(events) e GROUP BY e.stream_id
        ON CONFLICT (stream) DO UPDATE SET events = totals.events + excluded.events, sum = totals.sum + excluded.sum;
    END $$;";

/// The projection folded afresh from the log: per stream, the events and
/// the sum of n of those the filter keeps.
fn fold(client: &mut Client, keep: &str) -> Vec<(String, i64, i64)> {
    client
        .query(
            &format!(
                "SELECT stream_id, count(*), sum((payload->>'n')::int) FROM allsource.read_all(0, 100000)
                 WHERE {keep} GROUP BY stream_id ORDER BY 1"
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn projected(client: &mut Client) -> Vec<(String, i64, i64)> {
    client
        .query(
            "SELECT stream, events::bigint, sum::bigint FROM public.totals ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[test]
fn queue_handler_projects_every_event_exactly_once_and_parks_what_fails() {
    projects_every_event_exactly_once_and_parks_what_fails("public.project(allsource.events)");
}

#[test]
fn queue_batch_handler_projects_every_event_exactly_once_and_parks_what_fails() {
    projects_every_event_exactly_once_and_parks_what_fails(
        "public.project_batch(allsource.events[])",
    );
}

fn projects_every_event_exactly_once_and_parks_what_fails(handler: &str) {
    let mut client = crate::queue::fresh_queue_db();
    client.batch_execute(PROJECTION).unwrap();
    client
        .batch_execute(&format!(
            "SELECT allsource.create_subscription('projection', categories => ARRAY['acct'],
                 members => 3, handler => '{handler}', max_attempts => 2)"
        ))
        .unwrap();
    // Appends with rollbacks and savepoints in between: only what committed counts.
    for n in 1..=60 {
        let stream = format!("acct-{}", n % 4);
        let sql = match n % 10 {
            3 => format!(
                "BEGIN; SELECT allsource.append('{stream}', 'Gone', '{{\"n\": 1000}}'); ROLLBACK"
            ),
            5 => format!(
                "BEGIN; SAVEPOINT s; SELECT allsource.append('{stream}', 'Gone', '{{\"n\": 1000}}');
                 ROLLBACK TO s; SELECT allsource.append('{stream}', 'Deposited', '{{\"n\": {n}}}'); COMMIT"
            ),
            _ => format!("SELECT allsource.append('{stream}', 'Deposited', '{{\"n\": {n}}}')"),
        };
        client.batch_execute(&sql).unwrap();
        if n == 30 {
            // Another category: the subscription never hands it over.
            client
                .batch_execute("SELECT allsource.append('other-1', 'Deposited', '{\"n\": 7}')")
                .unwrap();
        }
    }
    wait_until(
        &mut client,
        "SELECT sum(lag_events) = 0 AND sum(parked) = 8 FROM allsource.subscriptions()",
        "every event handled or parked",
    );
    assert_eq!(
        projected(&mut client),
        fold(
            &mut client,
            "stream_id LIKE 'acct-%' AND (payload->>'n')::int % 7 <> 0"
        ),
        "every event applied exactly once, the failing ones parked"
    );
    let reasons: Vec<String> = client
        .query(
            "SELECT last_reason FROM allsource.parked_events('projection')",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        reasons.len(),
        8,
        "multiples of 7 among the committed events"
    );
    assert!(reasons[0].starts_with("cannot project 7"), "{reasons:?}");

    // Fixed, and put back: each parked event is applied once.
    client
        .batch_execute("DELETE FROM public.broken; SELECT allsource.retry_parked('projection')")
        .unwrap();
    wait_until(
        &mut client,
        "SELECT sum(lag_events) = 0 AND sum(parked) = 0 FROM allsource.subscriptions()",
        "the parked events handled",
    );
    assert_eq!(
        projected(&mut client),
        fold(&mut client, "stream_id LIKE 'acct-%'")
    );
    // Handler subscriptions are the workers' to consume.
    let error = refused(&mut client, "SELECT * FROM allsource.receive('projection')");
    assert_eq!(sqlstate(&error), "55000");
}

#[test]
fn queue_handler_runs_as_its_owner_and_cannot_take_the_workers_rights() {
    let mut client = crate::queue::fresh_queue_db();
    // What an earlier run left (its role's grants would keep the role alive).
    client
        .batch_execute("DROP TABLE IF EXISTS public.calls")
        .unwrap();
    let owner = Login::new("handler", "owner", Some("allsource_writer"));
    client
        .batch_execute(&format!(
            "CREATE TABLE public.calls (position bigint, by_role text);
             GRANT INSERT ON public.calls TO {0};
             CREATE FUNCTION public.record(e allsource.events) RETURNS void
             LANGUAGE plpgsql SET search_path = public AS $$
             BEGIN
                 INSERT INTO calls VALUES (e.position, current_user);
                 IF e.event_type = 'Escalate' THEN RESET ROLE; END IF;
                 IF e.event_type = 'Become' THEN SET ROLE postgres; END IF;
             END $$;
             GRANT EXECUTE ON FUNCTION public.record(allsource.events) TO {0};",
            owner.name
        ))
        .unwrap();
    let mut as_owner = owner.connect(crate::queue::QUEUE_DB, "");
    as_owner
        .batch_execute(
            "SELECT allsource.create_subscription('audit', handler => 'public.record(allsource.events)', max_attempts => 1);
             SELECT allsource.append('a-1', 'Plain', '{}');
             SELECT allsource.append('a-1', 'Escalate', '{}');
             SELECT allsource.append('a-1', 'Become', '{}');",
        )
        .unwrap();
    wait_until(
        &mut client,
        "SELECT sum(lag_events) = 0 FROM allsource.subscriptions()",
        "every event handled or parked",
    );
    let by: Vec<String> = client
        .query("SELECT by_role FROM public.calls", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        by,
        std::slice::from_ref(&owner.name),
        "run as the owner; the failed attempts left nothing"
    );
    let reasons: Vec<String> = as_owner
        .query(
            "SELECT last_reason FROM allsource.parked_events('audit') ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons.iter().all(|r| r.contains("role")),
        "SET ROLE and RESET ROLE are refused: {reasons:?}"
    );
    // The owner without the right to execute its handler: refused at creation.
    client
        .batch_execute(
            "REVOKE EXECUTE ON FUNCTION public.record(allsource.events) FROM PUBLIC, handler_owner",
        )
        .unwrap();
    let error = refused(
        &mut as_owner,
        "SELECT allsource.create_subscription('again', handler => 'public.record(allsource.events)')",
    );
    assert_eq!(sqlstate(&error), "42501");
    drop(as_owner);
    client
        .batch_execute("DROP TABLE public.calls; DROP FUNCTION public.record(allsource.events)")
        .unwrap();
}

#[test]
fn queue_handler_subscription_dropped_while_its_worker_runs_it() {
    let mut client = crate::queue::fresh_queue_db();
    client.batch_execute(PROJECTION).unwrap();
    client
        .batch_execute(
            "DELETE FROM public.broken;
             SELECT allsource.create_subscription('short_lived', handler => 'public.project(allsource.events)');",
        )
        .unwrap();
    let writer = std::thread::spawn(|| {
        let mut writer = crate::queue::queue_session();
        for n in 0..300 {
            writer
                .execute(
                    "SELECT allsource.append('acct-' || ($1::int % 5), 'Deposited', pg_catalog.jsonb_build_object('n', $1::int))",
                    &[&n],
                )
                .unwrap();
        }
    });
    wait_until(
        &mut client,
        "SELECT count(*) > 0 FROM public.totals",
        "the worker handles events",
    );
    let id: i64 = client
        .query_one(
            "SELECT subscription_id FROM allsource.subscriptions WHERE name = 'short_lived'",
            &[],
        )
        .unwrap()
        .get(0);
    client
        .batch_execute("SELECT allsource.drop_subscription('short_lived')")
        .unwrap();
    writer.join().unwrap();
    let left: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM allsource.subscription_members)
                  + (SELECT count(*) FROM allsource.subscription_attempts)
                  + (SELECT count(*) FROM allsource.parked_events)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "nothing of the subscription is left");
    wait_until(
        &mut client,
        &format!("SELECT allsource._member_holder({id}, 0) IS NULL"),
        "the worker lets the dropped subscription's member go",
    );
    // The workers go on: a new subscription is handled from the start.
    client
        .batch_execute(
            "TRUNCATE public.totals;
             SELECT allsource.create_subscription('next', handler => 'public.project(allsource.events)');",
        )
        .unwrap();
    wait_until(
        &mut client,
        "SELECT sum(lag_events) = 0 FROM allsource.subscriptions()",
        "the new subscription caught up",
    );
    assert_eq!(
        projected(&mut client),
        fold(&mut client, "stream_id LIKE 'acct-%'")
    );
}

/// Alone with the queue's database (a `queue_` test): the server-wide
/// counters move only for this test.
#[test]
fn queue_stats_count_delivered_acked_and_parked_events() {
    let mut client = crate::queue::fresh_queue_db();
    let counters = |client: &mut Client| -> (i64, i64, i64) {
        let row = client
            .query_one(
                "SELECT delivered, acked, parked FROM allsource.stats()",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    append(&mut client, "counted-1", 5);
    client
        .batch_execute("SELECT allsource.create_subscription('counted', max_attempts => 1)")
        .unwrap();
    let first = positions(&mut client, "SELECT * FROM allsource.receive('counted', 3)");
    assert_eq!(counters(&mut client), (3, 0, 0));
    let ack = |position: i64| format!("SELECT allsource.ack('counted', {position})");
    client
        .batch_execute(&format!("BEGIN; {}; ROLLBACK", ack(first[1])))
        .unwrap();
    assert_eq!(
        counters(&mut client),
        (3, 0, 0),
        "a rolled back ack counts nothing"
    );
    client.batch_execute(&ack(first[1])).unwrap();
    assert_eq!(counters(&mut client), (3, 2, 0));
    client
        .batch_execute(&format!("SELECT allsource.nack('counted', {})", first[2]))
        .unwrap();
    assert_eq!(counters(&mut client), (3, 2, 1), "max_attempts 1: parked");
    let rest = positions(&mut client, "SELECT * FROM allsource.receive('counted')");
    assert_eq!(rest.len(), 2);
    client.batch_execute(&ack(rest[1])).unwrap();
    assert_eq!(counters(&mut client), (5, 4, 1));

    // A handler subscription over the same five events.
    client
        .batch_execute(
            "CREATE FUNCTION public.ignore(e allsource.events) RETURNS void LANGUAGE sql AS '';
             SELECT allsource.create_subscription('handled', handler => 'public.ignore(allsource.events)')",
        )
        .unwrap();
    wait_until(
        &mut client,
        "SELECT lag_events = 0 FROM allsource.subscriptions() WHERE name = 'handled'",
        "the handler's events handled",
    );
    assert_eq!(counters(&mut client), (10, 9, 1));
}
