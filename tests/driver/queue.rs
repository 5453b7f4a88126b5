//! The ingest queue through a real driver: `enqueue`, the workers,
//! `await_ticket` and `stats()`. The workers append in one database
//! (`allsource.database`, set by scripts/test.sh), and the counters of
//! `stats()` are the server's, so these tests share that database and run
//! one at a time (`queue_` phase of scripts/test.sh); some restart the server.

use crate::{reconnect_to, restart_server, sqlstate, TestDb};
use postgres::Client;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The database the workers append in (scripts/test.sh sets allsource.database).
pub const QUEUE_DB: &str = "allsource_queue";

/// A session on the queue database (waiting while the server restarts).
pub fn queue_session() -> Client {
    reconnect_to(QUEUE_DB)
}

/// Empties the queue database: the extension dropped and created again,
/// counters reset, and every worker running.
pub fn fresh_queue_db() -> Client {
    let mut client = queue_session();
    client
        .batch_execute(
            "DROP EXTENSION IF EXISTS allsource CASCADE; CREATE EXTENSION allsource;
             SELECT allsource.stats_reset();",
        )
        .unwrap();
    wait_for_workers(&mut client);
    client
}

fn wait_for_workers(client: &mut Client) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let missing: i64 = client
            .query_one(
                "SELECT count(*) FROM allsource.ingest_workers() WHERE pid IS NULL",
                &[],
            )
            .unwrap()
            .get(0);
        if missing == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "ingest workers did not start");
        thread::sleep(Duration::from_millis(100));
    }
}

/// A ticket's final result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: String,
    pub version: Option<i64>,
    pub position: Option<i64>,
}

pub fn await_ticket(client: &mut Client, ticket: i64, timeout_ms: i32) -> Outcome {
    try_await_ticket(client, ticket, timeout_ms).unwrap()
}

pub fn try_await_ticket(
    client: &mut Client,
    ticket: i64,
    timeout_ms: i32,
) -> Result<Outcome, postgres::Error> {
    let row = client.query_one(
        "SELECT status, version, position FROM allsource.await_ticket($1, $2)",
        &[&ticket, &timeout_ms],
    )?;
    Ok(Outcome {
        status: row.get(0),
        version: row.get(1),
        position: row.get(2),
    })
}

pub fn count(client: &mut Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).unwrap().get(0)
}

fn stats(client: &mut Client) -> HashMap<String, i64> {
    let row = client
        .query_one(
            "SELECT events_appended, appends, batches, enqueued, conflicts, rejects, queue_depth, worker_commits
             FROM allsource.stats()",
            &[],
        )
        .unwrap();
    row.columns()
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name().to_string(), row.get::<_, i64>(i)))
        .collect()
}

/// No problem from verify_all() and verify_gapless().
pub fn assert_store_is_sound(client: &mut Client) {
    assert_eq!(
        count(client, "SELECT count(*) FROM allsource.verify_all()"),
        0,
        "verify_all"
    );
    assert_eq!(
        count(
            client,
            "SELECT count(*) FROM allsource.streams WHERE NOT allsource.verify_gapless(stream_id)"
        ),
        0,
        "verify_gapless"
    );
}

/// One event a session enqueued, and what it expected.
#[derive(Debug, Clone)]
struct Sent {
    session: usize,
    stream: String,
    event_id: Uuid,
    payload: String,
    /// Deliberately impossible: must end in `conflict`.
    doomed: bool,
    ticket: i64,
}

#[test]
fn queue_64_sessions_enqueue_100k_events_into_1000_streams() {
    const SESSIONS: usize = 64;
    const EVENTS: usize = 100_000;
    const STREAMS: usize = 1_000;
    let mut admin = fresh_queue_db();
    let start = Arc::new(Barrier::new(SESSIONS));
    let sessions: Vec<_> = (0..SESSIONS)
        .map(|session| {
            let start = start.clone();
            thread::spawn(move || {
                let mut client = queue_session();
                // A full queue waits for room instead of failing.
                client.batch_execute("SET allsource.enqueue_timeout_ms = 60000").unwrap();
                let enqueue = client
                    .prepare(
                        "SELECT allsource.enqueue($1, 'Tested', $2::text::jsonb, expected_version => $3, event_id => $4)",
                    )
                    .unwrap();
                start.wait();
                let mut sent = Vec::new();
                let mine = (session..EVENTS).step_by(SESSIONS);
                for n in mine {
                    let stream = format!("load-{}", (n * 7919) % STREAMS);
                    let doomed = n % 20 == 0;
                    let expected: Option<i64> = doomed.then_some(1_000_000);
                    let event_id = Uuid::new_v4();
                    let payload = format!(r#"{{"n": {n}, "pad": "{}"}}"#, "x".repeat(n % 300));
                    let ticket: i64 = client
                        .query_one(&enqueue, &[&stream, &payload, &expected, &event_id])
                        .unwrap()
                        .get(0);
                    sent.push(Sent { session, stream, event_id, payload, doomed, ticket });
                }
                let outcomes: Vec<Outcome> = sent
                    .iter()
                    .map(|s| await_ticket(&mut client, s.ticket, 120_000))
                    .collect();
                (sent, outcomes)
            })
        })
        .collect();
    let results: Vec<(Sent, Outcome)> = sessions
        .into_iter()
        .flat_map(|s| {
            let (sent, outcomes) = s.join().unwrap();
            sent.into_iter().zip(outcomes)
        })
        .collect();
    assert_eq!(results.len(), EVENTS);

    let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
    for (sent, outcome) in &results {
        *by_status.entry(outcome.status.as_str()).or_default() += 1;
        assert_ne!(
            outcome.status, "pending",
            "ticket {} never settled",
            sent.ticket
        );
        if sent.doomed {
            assert_eq!(outcome.status, "conflict", "an impossible expected version");
        } else {
            assert_eq!(outcome.status, "committed", "{sent:?}");
        }
    }
    println!("ticket outcomes: {by_status:?}");

    // Every committed ticket is exactly its row, and nothing else is stored.
    let rows = admin
        .query(
            "SELECT event_id, stream_id, version, position, payload::text FROM allsource.events",
            &[],
        )
        .unwrap();
    let stored: HashMap<Uuid, (String, i64, i64, String)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4))))
        .collect();
    let committed: Vec<&(Sent, Outcome)> = results
        .iter()
        .filter(|(_, o)| o.status == "committed")
        .collect();
    assert_eq!(stored.len(), committed.len(), "committed tickets = rows");
    for (sent, outcome) in &committed {
        let (stream, version, position, payload) = &stored[&sent.event_id];
        assert_eq!(stream, &sent.stream);
        assert_eq!(Some(*version), outcome.version);
        assert_eq!(Some(*position), outcome.position);
        let expected: serde_json::Value = serde_json::from_str(&sent.payload).unwrap();
        let actual: serde_json::Value = serde_json::from_str(payload).unwrap();
        assert_eq!(actual, expected);
    }
    // One session's events to one stream keep their enqueue order.
    let mut last: HashMap<(usize, &str), i64> = HashMap::new();
    for (sent, outcome) in &committed {
        let version = outcome.version.unwrap();
        if let Some(previous) = last.insert((sent.session, sent.stream.as_str()), version) {
            assert!(
                previous < version,
                "{} reordered within session {}",
                sent.stream,
                sent.session
            );
        }
    }
    assert_store_is_sound(&mut admin);

    let stats = stats(&mut admin);
    println!("stats: {stats:?}");
    assert_eq!(stats["events_appended"], stored.len() as i64);
    assert_eq!(stats["enqueued"], EVENTS as i64);
    assert_eq!(stats["conflicts"], by_status["conflict"] as i64);
    assert_eq!(
        stats["rejects"],
        *by_status.get("rejected").unwrap_or(&0) as i64
    );
    assert_eq!(stats["queue_depth"], 0);
    assert!(
        stats["worker_commits"] > 0 && stats["worker_commits"] < EVENTS as i64,
        "events were batched"
    );
    assert_eq!(
        stats["appends"] + stats["batches"],
        0,
        "no direct appends here"
    );
}

#[test]
fn queue_repeats_conflicts_and_refusals_settle_each_ticket_alone() {
    let mut client = fresh_queue_db();
    let id = Uuid::new_v4();
    let enqueue = |client: &mut Client,
                   stream: &str,
                   expected: Option<i64>,
                   id: Option<Uuid>,
                   payload: &str|
     -> i64 {
        client
            .query_one(
                "SELECT allsource.enqueue($1, 'T', $2::text::jsonb, expected_version => $3, event_id => $4)",
                &[&stream, &payload, &expected, &id],
            )
            .unwrap()
            .get(0)
    };
    // Queued back to back, likely one batch: each is decided on its own.
    let first = enqueue(&mut client, "alone-1", Some(0), Some(id), "1");
    let repeat = enqueue(&mut client, "alone-1", Some(0), Some(id), "1");
    let conflict = enqueue(&mut client, "alone-1", Some(0), None, "2");
    let reused = enqueue(&mut client, "alone-2", None, Some(id), "1");
    let next = enqueue(&mut client, "alone-1", Some(1), None, "3");
    let first = await_ticket(&mut client, first, 30_000);
    assert_eq!(
        (first.status.as_str(), first.version),
        ("committed", Some(1))
    );
    assert_eq!(
        await_ticket(&mut client, repeat, 30_000),
        first,
        "a repeat returns the original"
    );
    let conflict = await_ticket(&mut client, conflict, 30_000);
    assert_eq!(
        (
            conflict.status.as_str(),
            conflict.version,
            conflict.position
        ),
        ("conflict", Some(1), None)
    );
    assert_eq!(await_ticket(&mut client, reused, 30_000).status, "rejected");
    assert_eq!(await_ticket(&mut client, next, 30_000).version, Some(2));
    assert_eq!(
        count(&mut client, "SELECT count(*) FROM allsource.events"),
        2
    );

    // Not transactional: queued even though the caller rolls back.
    client.batch_execute("BEGIN").unwrap();
    let kept = enqueue(&mut client, "alone-3", None, None, "4");
    client.batch_execute("ROLLBACK").unwrap();
    assert_eq!(await_ticket(&mut client, kept, 30_000).status, "committed");

    // A ticket never issued, and one from before the server started.
    for ticket in [kept + 1_000_000, 1] {
        let error = client
            .query_one("SELECT * FROM allsource.await_ticket($1)", &[&ticket])
            .unwrap_err();
        assert_eq!(sqlstate(&error), "22023", "{error}");
    }
    assert_store_is_sound(&mut client);
}

/// Holds `stream`'s row lock so the worker blocks on it mid-batch.
pub fn block_stream(stream: &str) -> Client {
    let mut blocker = queue_session();
    blocker
        .query_one("SELECT allsource.append($1, 'T', '{}')", &[&stream])
        .unwrap();
    blocker.batch_execute("BEGIN").unwrap();
    blocker
        .query_one(
            "SELECT version FROM allsource.streams WHERE stream_id = $1 FOR UPDATE",
            &[&stream],
        )
        .unwrap();
    blocker
}

#[test]
fn queue_await_times_out_with_pending_and_a_stopped_worker_comes_back() {
    let _waits = worker_waits_for_locks();
    let mut client = fresh_queue_db();
    let blocker = block_stream("blocked");
    let stuck = client
        .query_one("SELECT allsource.enqueue('blocked', 'T', '{}')", &[])
        .unwrap()
        .get(0);
    let started = Instant::now();
    assert_eq!(await_ticket(&mut client, stuck, 300).status, "pending");
    assert!(started.elapsed() >= Duration::from_millis(300));

    // Stopping the worker (SIGTERM) while it is blocked: it finishes its
    // batch once the lock is gone, drains the lane and is started again.
    let old_pid: i32 = client
        .query_one(
            "SELECT pid FROM allsource.ingest_workers() WHERE worker = 0",
            &[],
        )
        .unwrap()
        .get(0);
    client
        .query_one("SELECT pg_terminate_backend($1)", &[&old_pid])
        .unwrap();
    let later = client
        .query_one("SELECT allsource.enqueue('after-stop', 'T', '{}')", &[])
        .unwrap()
        .get(0);
    drop(blocker);
    assert_eq!(await_ticket(&mut client, stuck, 30_000).status, "committed");
    assert_eq!(await_ticket(&mut client, later, 30_000).status, "committed");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pid: Option<i32> = client
            .query_one(
                "SELECT pid FROM allsource.ingest_workers() WHERE worker = 0",
                &[],
            )
            .unwrap()
            .get(0);
        if pid.is_some_and(|p| p != old_pid) {
            break;
        }
        assert!(Instant::now() < deadline, "the worker was not restarted");
        thread::sleep(Duration::from_millis(100));
    }
    let again = client
        .query_one("SELECT allsource.enqueue('after-restart', 'T', '{}')", &[])
        .unwrap()
        .get(0);
    assert_eq!(await_ticket(&mut client, again, 30_000).status, "committed");
}

/// Enqueues up to `n` events with known ids: each gets a ticket or `53400`;
/// with `stop_when_full`, the first `53400` ends it.
fn enqueue_or_full(
    client: &mut Client,
    prefix: &str,
    n: usize,
    big_every: usize,
    stop_when_full: bool,
) -> Vec<(Uuid, i64)> {
    let mut accepted = Vec::new();
    for i in 0..n {
        let id = Uuid::new_v4();
        // Some events span many slots.
        let pad = if big_every > 0 && i % big_every == 0 {
            10_000
        } else {
            20
        };
        let payload = format!(r#"{{"i": {i}, "pad": "{}"}}"#, "y".repeat(pad));
        match client.query_one(
            "SELECT allsource.enqueue($1, 'T', $2::text::jsonb, event_id => $3)",
            &[&format!("{prefix}-{}", i % 50), &payload, &id],
        ) {
            Ok(row) => accepted.push((id, row.get(0))),
            Err(e) => {
                assert_eq!(sqlstate(&e), "53400", "{e}");
                if stop_when_full {
                    break;
                }
            }
        }
    }
    accepted
}

fn stored_ids(client: &mut Client) -> std::collections::HashSet<Uuid> {
    client
        .query("SELECT event_id FROM allsource.events", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Sets postgresql.conf settings (or resets them with `None`) and restarts.
pub fn reconfigure(settings: &[(&str, Option<&str>)]) {
    let mut admin = queue_session();
    for (name, value) in settings {
        let sql = match value {
            Some(v) => format!("ALTER SYSTEM SET {name} = '{v}'"),
            None => format!("ALTER SYSTEM RESET {name}"),
        };
        admin.batch_execute(&sql).unwrap();
    }
    drop(admin);
    restart_server();
}

/// Server settings changed with a reload for as long as this lives.
pub struct Reloaded(Vec<String>);

impl Reloaded {
    /// Sets `settings` and reloads; the workers take them at their next round.
    pub fn with(settings: &[(&str, &str)]) -> Reloaded {
        let mut admin = queue_session();
        for (name, value) in settings {
            admin
                .batch_execute(&format!("ALTER SYSTEM SET {name} = '{value}'"))
                .unwrap();
        }
        admin.batch_execute("SELECT pg_reload_conf()").unwrap();
        thread::sleep(Duration::from_secs(1));
        Reloaded(settings.iter().map(|(name, _)| name.to_string()).collect())
    }
}

impl Drop for Reloaded {
    fn drop(&mut self) {
        let mut admin = queue_session();
        for name in &self.0 {
            admin
                .batch_execute(&format!("ALTER SYSTEM RESET {name}"))
                .unwrap();
        }
        admin.batch_execute("SELECT pg_reload_conf()").unwrap();
        thread::sleep(Duration::from_secs(1));
    }
}

/// For tests that stall the worker on a lock: it waits without limit.
pub fn worker_waits_for_locks() -> Reloaded {
    Reloaded::with(&[("allsource.ingest_lock_timeout_ms", "0")])
}

#[test]
fn queue_tiny_queue_under_load_every_enqueue_gets_a_ticket_or_53400() {
    reconfigure(&[
        ("allsource.queue_size", Some("64kB")),
        ("allsource.ingest_lock_timeout_ms", Some("0")),
    ]);
    let result = std::panic::catch_unwind(|| {
        let mut client = fresh_queue_db();
        // The worker stalls on session 0's first stream for 2 s, so the queue
        // fills however fast this machine's worker is; then everything drains.
        let blocker = block_stream("tiny-0-0");
        let blocker_event: Uuid = client
            .query_one(
                "SELECT event_id FROM allsource.events WHERE stream_id = 'tiny-0-0'",
                &[],
            )
            .unwrap()
            .get(0);
        let release = thread::spawn(move || {
            thread::sleep(Duration::from_secs(2));
            drop(blocker);
        });
        let sessions: Vec<_> = (0..16)
            .map(|s| {
                thread::spawn(move || {
                    let mut client = queue_session();
                    let accepted =
                        enqueue_or_full(&mut client, &format!("tiny-{s}"), 1500, 97, false);
                    let outcomes: Vec<String> = accepted
                        .iter()
                        .map(|&(_, t)| await_ticket(&mut client, t, 60_000).status)
                        .collect();
                    (accepted, outcomes)
                })
            })
            .collect();
        let mut accepted_ids = std::collections::HashSet::new();
        let mut refused = 0;
        for session in sessions {
            let (accepted, outcomes) = session.join().unwrap();
            refused += 1500 - accepted.len();
            assert!(
                outcomes.iter().all(|o| o == "committed"),
                "every ticket commits"
            );
            accepted_ids.extend(accepted.into_iter().map(|(id, _)| id));
        }
        release.join().unwrap();
        println!(
            "tiny queue: {} accepted, {refused} refused with 53400",
            accepted_ids.len()
        );
        assert!(refused > 0, "a 64 kB queue under 16 sessions must fill up");
        accepted_ids.insert(blocker_event);
        assert_eq!(
            stored_ids(&mut client),
            accepted_ids,
            "rows = accepted events"
        );
        assert_store_is_sound(&mut client);
    });
    reconfigure(&[
        ("allsource.queue_size", None),
        ("allsource.ingest_lock_timeout_ms", None),
    ]);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn queue_clean_restart_with_a_full_queue_loses_nothing() {
    let _waits = worker_waits_for_locks();
    let mut client = fresh_queue_db();
    // The worker blocks on the first event; the rest fill the queue behind it.
    let blocker = block_stream("restart-0");
    let accepted = enqueue_or_full(&mut client, "restart", 1_000_000, 0, true);
    let depth = count(&mut client, "SELECT queue_depth FROM allsource.stats()");
    println!(
        "queue full with {} events ({depth} waiting)",
        accepted.len()
    );
    assert!(accepted.len() < 1_000_000, "the queue filled up");
    drop(blocker);
    drop(client);
    // A fast shutdown right away: the worker appends everything before it exits.
    restart_server();
    let mut client = queue_session();
    let stored = stored_ids(&mut client);
    let lost: Vec<&(Uuid, i64)> = accepted
        .iter()
        .filter(|(id, _)| !stored.contains(id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} queued events lost in a clean restart",
        lost.len(),
        accepted.len()
    );
    assert_store_is_sound(&mut client);
}

#[test]
fn queue_refuses_bad_input_before_queueing_and_other_databases() {
    let mut client = fresh_queue_db();
    let cases = [
        ("SELECT allsource.enqueue(NULL, 'T', '{}')", "22023"),
        ("SELECT allsource.enqueue('', 'T', '{}')", "22023"),
        ("SELECT allsource.enqueue('s', NULL, '{}')", "22023"),
        ("SELECT allsource.enqueue('s', 'T', NULL)", "22023"),
        (
            "SELECT allsource.enqueue('s', 'T', '{}', expected_version => -2)",
            "22023",
        ),
        (
            "SELECT allsource.enqueue('s', 'T', to_jsonb(repeat('x', 2000000)))",
            "54000",
        ),
        ("SELECT * FROM allsource.await_ticket(NULL)", "22023"),
        ("SELECT * FROM allsource.await_ticket(1, -5)", "22023"),
    ];
    for (sql, code) in cases {
        let error = client.query(sql, &[]).unwrap_err();
        assert_eq!(sqlstate(&error), code, "{sql}: {error}");
    }
    assert_eq!(
        count(&mut client, "SELECT enqueued FROM allsource.stats()"),
        0,
        "nothing queued"
    );

    let elsewhere = TestDb::new("queue_elsewhere");
    let error = elsewhere
        .connect()
        .query("SELECT allsource.enqueue('s', 'T', '{}')", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&error), "55000", "{error}");
    let message = error.as_db_error().unwrap().message();
    assert!(message.contains(QUEUE_DB), "names the database: {message}");
}

#[test]
fn queue_a_cancelled_worker_batch_is_appended_event_by_event() {
    let _waits = worker_waits_for_locks();
    let mut client = fresh_queue_db();
    let blocker = block_stream("cancel-0");
    let tickets: Vec<i64> = (0..20)
        .map(|i| {
            client
                .query_one(
                    "SELECT allsource.enqueue($1, 'T', '{}')",
                    &[&format!("cancel-{}", i % 4)],
                )
                .unwrap()
                .get(0)
        })
        .collect();
    // The worker waits for the lock inside its batch: cancel that statement.
    let worker: i32 = client
        .query_one(
            "SELECT pid FROM allsource.ingest_workers() WHERE worker = 0",
            &[],
        )
        .unwrap()
        .get(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(
        &mut client,
        &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {worker} AND wait_event_type = 'Lock'"),
    ) == 0
    {
        assert!(Instant::now() < deadline, "the worker never waited for the lock");
        thread::sleep(Duration::from_millis(20));
    }
    client
        .query_one("SELECT pg_cancel_backend($1)", &[&worker])
        .unwrap();
    thread::sleep(Duration::from_millis(200));
    drop(blocker);
    for ticket in tickets {
        assert_eq!(
            await_ticket(&mut client, ticket, 30_000).status,
            "committed"
        );
    }
    assert_eq!(
        count(&mut client, "SELECT rejects FROM allsource.stats()"),
        0
    );
    assert_store_is_sound(&mut client);
}

#[test]
fn queue_events_carry_their_sessions_tenant() {
    let mut client = fresh_queue_db();
    client
        .batch_execute("SET allsource.tenant = 'acme'")
        .unwrap();
    let enqueue = |client: &mut Client| -> i64 {
        client
            .query_one("SELECT allsource.enqueue('tenant-1', 'A', '{}')", &[])
            .unwrap()
            .get(0)
    };
    let ticket = enqueue(&mut client);
    assert_eq!(
        await_ticket(&mut client, ticket, 10_000).status,
        "committed"
    );
    let tenant: String = client
        .query_one(
            "SELECT tenant_id FROM allsource.events WHERE stream_id = 'tenant-1'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        tenant, "acme",
        "the worker records the enqueuing session's tenant"
    );
    client
        .batch_execute("SET allsource.tenant = 'globex'")
        .unwrap();
    let ticket = enqueue(&mut client);
    assert_eq!(
        await_ticket(&mut client, ticket, 10_000).status,
        "rejected",
        "another tenant's stream"
    );
    assert_eq!(
        count(
            &mut client,
            "SELECT count(*) FROM allsource.events WHERE stream_id = 'tenant-1'"
        ),
        1
    );
}
