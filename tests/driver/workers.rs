//! The background workers against other sessions' transactions: a stream
//! locked by an open or prepared transaction stalls only its own events, a
//! batch whose commit failed never reports `committed` after its worker
//! exits, an appending transaction open too long is cancelled, and the
//! workers' writes reach PostgreSQL's statistics. They use the queue's
//! database, so they run in the `queue_` phase, one at a time.

use crate::queue::{
    assert_store_is_sound, await_ticket, count, fresh_queue_db, queue_session, Reloaded,
};
use crate::{restart_server, server_url, sqlstate};
use postgres::{Client, NoTls};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

fn enqueue(client: &mut Client, stream: &str) -> i64 {
    client
        .query_one("SELECT allsource.enqueue($1, 'T', '{}')", &[&stream])
        .unwrap()
        .get(0)
}

/// A session on the queue database that keeps the NOTICEs it receives.
fn session_with_notices() -> (Client, Arc<Mutex<Vec<String>>>) {
    let notices = Arc::new(Mutex::new(Vec::new()));
    let kept = notices.clone();
    let client = postgres::Config::from_str(&format!(
        "{} dbname={}",
        server_url(),
        crate::queue::QUEUE_DB
    ))
    .unwrap()
    .notice_callback(move |notice| kept.lock().unwrap().push(notice.message().to_string()))
    .connect(NoTls)
    .unwrap();
    (client, notices)
}

/// What `ingest_workers()` says about the last lock the worker gave up on.
fn last_blocker(client: &mut Client) -> (i64, Option<i32>, Option<i64>) {
    let row = client
        .query_one(
            "SELECT lock_timeouts, blocked_by, blocked_by_xid FROM allsource.ingest_workers() WHERE worker = 0",
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

#[test]
fn queue_a_stream_locked_by_an_open_transaction_stalls_only_its_own_events() {
    let (mut client, notices) = session_with_notices();
    drop(fresh_queue_db());
    client
        .query_one("SELECT allsource.append('held', 'T', '{}')", &[])
        .unwrap();
    // What the issue reproduced: a snapshot saved in an open transaction
    // (the stream's row locked), and an enqueue from that same session.
    let mut holder = queue_session();
    let holder_pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    holder
        .batch_execute("BEGIN; SELECT allsource.save_snapshot('held', 1, '{}')")
        .unwrap();
    let mut held = vec![enqueue(&mut holder, "held")];
    let mut others = Vec::new();
    for i in 0..30 {
        others.push(enqueue(&mut client, &format!("free-{}", i % 10)));
        if i % 10 == 0 {
            held.push(enqueue(&mut client, "held"));
        }
    }
    let started = Instant::now();
    for &ticket in &others {
        assert_eq!(
            await_ticket(&mut client, ticket, 10_000).status,
            "committed",
            "another stream's event waits for nobody"
        );
    }
    println!(
        "the other streams' 30 events committed in {:?} while 'held' was locked",
        started.elapsed()
    );
    for &ticket in &held {
        assert_eq!(await_ticket(&mut client, ticket, 10_000).status, "rejected");
    }
    assert!(
        notices
            .lock()
            .unwrap()
            .iter()
            .any(|n| n.contains("SQLSTATE 55P03") && n.contains("ingest_lock_timeout_ms")),
        "the NOTICE says why: {:?}",
        notices.lock().unwrap()
    );
    let (timeouts, blocked_by, xid) = last_blocker(&mut client);
    assert!(timeouts >= 1);
    assert_eq!(
        blocked_by,
        Some(holder_pid),
        "ingest_workers() names the holder"
    );
    assert!(xid.is_some());

    holder.batch_execute("COMMIT").unwrap();
    let after = enqueue(&mut client, "held");
    assert_eq!(await_ticket(&mut client, after, 10_000).status, "committed");
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM allsource.events WHERE stream_id = 'held'"
        ),
        2,
        "the first append and the one after the lock"
    );
    assert_store_is_sound(&mut client);
}

/// Rolls the prepared transaction back however the test ends: it would
/// block every later test on its stream.
struct Prepared(&'static str);

impl Drop for Prepared {
    fn drop(&mut self) {
        let mut admin = queue_session();
        let _ = admin.batch_execute(&format!("ROLLBACK PREPARED '{}'", self.0));
    }
}

#[test]
fn queue_a_stream_held_by_a_prepared_transaction_stalls_nothing_and_a_fast_stop_finishes() {
    let mut client = fresh_queue_db();
    client
        .query_one("SELECT allsource.append('prepared', 'T', '{}')", &[])
        .unwrap();
    let mut holder = queue_session();
    holder
        .batch_execute(
            "BEGIN; SELECT allsource.save_snapshot('prepared', 1, '{}');
             PREPARE TRANSACTION 'allsource_driver_hold'",
        )
        .unwrap();
    let _prepared = Prepared("allsource_driver_hold");
    let xid: i64 = client
        .query_one(
            "SELECT transaction::text::bigint FROM pg_prepared_xacts WHERE gid = 'allsource_driver_hold'",
            &[],
        )
        .unwrap()
        .get(0);

    // A fast stop while the worker meets the lock: it drains the lane and exits.
    for i in 0..20 {
        enqueue(&mut client, &format!("before-stop-{}", i % 5));
        enqueue(&mut client, "prepared");
    }
    drop(client);
    let stopping = Instant::now();
    restart_server();
    println!(
        "fast restart with a prepared transaction holding a queued stream: {:?}",
        stopping.elapsed()
    );
    let mut client = queue_session();
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM allsource.events WHERE stream_id LIKE 'before-stop-%'"
        ),
        20,
        "the other streams' queued events were appended before the stop"
    );

    // The prepared transaction survived the restart: still only its stream waits.
    let others: Vec<i64> = (0..10)
        .map(|i| enqueue(&mut client, &format!("after-restart-{i}")))
        .collect();
    let stuck = enqueue(&mut client, "prepared");
    for ticket in others {
        assert_eq!(
            await_ticket(&mut client, ticket, 10_000).status,
            "committed"
        );
    }
    assert_eq!(await_ticket(&mut client, stuck, 10_000).status, "rejected");
    let (_, blocked_by, blocked_xid) = last_blocker(&mut client);
    assert_eq!(blocked_by, None, "a prepared transaction has no pid");
    assert_eq!(
        blocked_xid,
        Some(xid),
        "its xid finds it in pg_prepared_xacts"
    );

    client
        .batch_execute("ROLLBACK PREPARED 'allsource_driver_hold'")
        .unwrap();
    let after = enqueue(&mut client, "prepared");
    assert_eq!(await_ticket(&mut client, after, 10_000).status, "committed");
    assert_store_is_sound(&mut client);
}

/// A batch's commit fails (its transaction outlived
/// `allsource.max_append_transaction_ms`, held up by a trigger, so the commit
/// is refused; the triggers are on writes an append still makes with SQL
/// statements: the registration of a caller's event ids, the row of a new
/// stream), so its results were staged and its events are retried one by
/// one; the first retry commits, the second makes the worker exit with FATAL
/// (`exit_on_error`, set by a trigger). The next worker must append the rest
/// again, not report them committed on the strength of the first retry's
/// commit. (A deferred trigger cannot stand in: the workers write in a
/// security-restricted operation, where PostgreSQL refuses to queue one.)
#[test]
fn queue_a_batch_whose_commit_failed_is_never_reported_committed_by_the_next_worker() {
    let _settings = Reloaded::with(&[
        ("allsource.flush_interval_ms", "300"),
        ("allsource.max_append_transaction_ms", "200"),
    ]);
    let mut client = fresh_queue_db();
    client
        .batch_execute(
            "DROP SEQUENCE IF EXISTS public.commit_checks, public.insert_checks;
             CREATE SEQUENCE public.commit_checks;
             CREATE SEQUENCE public.insert_checks;
             -- The triggers run as the role the workers write as.
             GRANT USAGE ON SEQUENCE public.commit_checks, public.insert_checks TO allsource_worker;
             CREATE OR REPLACE FUNCTION public.outlive_first_commit() RETURNS trigger
             LANGUAGE plpgsql AS $$
             BEGIN
                 IF nextval('public.commit_checks') = 1 THEN
                     PERFORM pg_sleep(1);  -- past the limit: the commit is refused
                 END IF;
                 RETURN NULL;
             END $$;
             CREATE OR REPLACE FUNCTION public.exit_on_second_insert() RETURNS trigger
             LANGUAGE plpgsql AS $$
             BEGIN
                 IF nextval('public.insert_checks') = 2 THEN
                     PERFORM set_config('exit_on_error', 'on', false);
                     RAISE EXCEPTION 'the worker exits with FATAL';
                 END IF;
                 RETURN NULL;
             END $$;
             CREATE TRIGGER outlive_first_commit AFTER INSERT ON allsource.event_ids
                 FOR EACH ROW EXECUTE FUNCTION public.outlive_first_commit();
             CREATE TRIGGER exit_on_second_insert AFTER INSERT ON allsource.streams
                 FOR EACH ROW WHEN (NEW.stream_id = 'fatal-b')
                 EXECUTE FUNCTION public.exit_on_second_insert();",
        )
        .unwrap();
    let old_pid: i32 = client
        .query_one(
            "SELECT pid FROM allsource.ingest_workers() WHERE worker = 0",
            &[],
        )
        .unwrap()
        .get(0);
    // One batch (the worker waits 300 ms for it to fill): a, b, c.
    let tickets: Vec<(String, i64)> = ["fatal-a", "fatal-b", "fatal-c"]
        .iter()
        .map(|s| {
            let ticket = client
                .query_one(
                    "SELECT allsource.enqueue($1, 'T', '{}', event_id => gen_random_uuid())",
                    &[s],
                )
                .unwrap()
                .get(0);
            (s.to_string(), ticket)
        })
        .collect();
    for (stream, ticket) in &tickets {
        let outcome = await_ticket(&mut client, *ticket, 30_000);
        let stored = count(
            &mut client,
            &format!("SELECT count(*) FROM allsource.events WHERE stream_id = '{stream}'"),
        );
        if outcome.status == "committed" {
            assert_eq!(stored, 1, "{stream} reported committed: {outcome:?}");
        }
        assert_ne!(outcome.status, "pending", "{stream}");
    }
    let new_pid: Option<i32> = client
        .query_one(
            "SELECT pid FROM allsource.ingest_workers() WHERE worker = 0",
            &[],
        )
        .unwrap()
        .get(0);
    assert_ne!(
        new_pid,
        Some(old_pid),
        "the worker exited as the test intends"
    );
    assert_store_is_sound(&mut client);
}

#[test]
fn queue_workers_report_statistics_so_autoanalyze_runs() {
    let _autovacuum = Reloaded::with(&[("autovacuum_naptime", "1s")]);
    let mut client = fresh_queue_db();
    let events: i32 = 3000;
    let last: i64 = client
        .query_one(
            "SELECT max(allsource.enqueue('stats-' || (i % 100), 'T', '{}')) FROM generate_series(1, $1) AS i",
            &[&events],
        )
        .unwrap()
        .get(0);
    assert_eq!(await_ticket(&mut client, last, 60_000).status, "committed");
    let tables = "FROM pg_stat_user_tables WHERE schemaname = 'allsource' \
                  AND (relname LIKE 'events_p%' OR relname = 'streams')";
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let row = client
            .query_one(
                &format!(
                    "SELECT coalesce(sum(n_tup_ins) FILTER (WHERE relname <> 'streams'), 0)::bigint,
                            count(*) FILTER (WHERE last_autoanalyze IS NOT NULL AND n_live_tup > 0),
                            coalesce(sum(n_mod_since_analyze), 0)::bigint {tables}"
                ),
                &[],
            )
            .unwrap();
        let (inserted, analyzed, unanalyzed): (i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2));
        if inserted >= i64::from(events) && analyzed > 0 {
            println!(
                "pg_stat_user_tables: {inserted} events inserted, {analyzed} tables autoanalyzed, {unanalyzed} changes since"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no autoanalyze: {inserted} inserts counted, {analyzed} tables analyzed"
        );
        thread::sleep(Duration::from_millis(500));
    }
    let activity: Vec<(String, String)> = client
        .query(
            "SELECT state, query FROM pg_stat_activity WHERE backend_type = 'allsource ingest worker'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        activity
            .iter()
            .any(|(state, query)| state == "idle" && query.contains("queued events")),
        "pg_stat_activity shows what the worker does: {activity:?}"
    );
}

#[test]
fn queue_an_appending_transaction_open_too_long_is_cancelled() {
    let _limit = Reloaded::with(&[("allsource.max_append_transaction_ms", "500")]);
    let mut client = fresh_queue_db();
    let mut long = queue_session();
    let long_pid: i32 = long
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    long.batch_execute("BEGIN").unwrap();
    let held: i64 = long
        .query_one(
            "SELECT position FROM allsource.append('long', 'T', '{}')",
            &[],
        )
        .unwrap()
        .get(0);
    let holders = |client: &mut Client| {
        count(
            client,
            &format!("SELECT count(*) FROM allsource.inflight() WHERE pid = {long_pid}"),
        )
    };
    assert_eq!(holders(&mut client), 1, "inflight() shows the holder");
    let later: i64 = client
        .query_one(
            "SELECT position FROM allsource.append('short', 'T', '{}')",
            &[],
        )
        .unwrap()
        .get(0);
    let mark = |client: &mut Client| -> i64 {
        client
            .query_one("SELECT allsource.watermark()", &[])
            .unwrap()
            .get(0)
    };
    assert!(
        mark(&mut client) < held,
        "held back while the transaction is young"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while mark(&mut client) < later {
        assert!(
            Instant::now() < deadline,
            "the long transaction was never cancelled"
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        holders(&mut client),
        0,
        "no longer holds the watermark back"
    );
    let error = long
        .query_one("SELECT allsource.append('long', 'T', '{}')", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&error), "25P04", "{error}");
    long.batch_execute("ROLLBACK").unwrap();

    // Idle in the transaction past the limit: its COMMIT fails, nothing is stored.
    long.batch_execute("BEGIN; SELECT allsource.append('idle', 'T', '{}')")
        .unwrap();
    thread::sleep(Duration::from_millis(1500));
    let error = long.batch_execute("COMMIT").unwrap_err();
    assert_eq!(sqlstate(&error), "25P04", "{error}");
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM allsource.events WHERE stream_id IN ('long', 'idle')"
        ),
        0
    );
    // A short one commits, and the session lives on.
    long.query_one("SELECT allsource.append('idle', 'T', '{}')", &[])
        .unwrap();
    assert_eq!(
        count(
            &mut long,
            "SELECT count(*) FROM allsource.events WHERE stream_id = 'idle'"
        ),
        1
    );
}
