//! A backend killed with SIGKILL while it holds a slot: PostgreSQL restarts
//! every process and re-creates shared memory, and the watermark must not be
//! stuck afterwards. Kills the whole server's sessions, so scripts/test.sh
//! runs it alone, after the other driver tests.

use crate::watermark::{holder, inflight_count};
use crate::{reconnect_to, TestDb};
use std::thread;
use std::time::Duration;

/// Kills a server process with SIGKILL: PostgreSQL then restarts every process.
pub(crate) fn kill_9(pid: i32) {
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success(), "kill -9 {pid}");
}

#[test]
fn crash_of_a_backend_holding_a_slot_does_not_stick_the_watermark() {
    let db = TestDb::new("crash");
    let mut observer = db.connect();
    observer
        .batch_execute("SELECT allsource.append('before', 'T', '{}')")
        .unwrap();
    // Holds a slot (holder asserts it) in an open transaction appending to 'held'.
    let (victim, pid) = holder(&db, &mut observer);

    kill_9(pid);
    drop(victim);
    drop(observer);
    thread::sleep(Duration::from_millis(500));

    let mut client = reconnect_to(db.name());
    assert_eq!(
        inflight_count(&mut client),
        0,
        "no slot survives the restart"
    );
    let (mark, last): (i64, i64) = {
        let row = client
            .query_one(
                "SELECT allsource.watermark(), (SELECT last_value FROM allsource.event_position)",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(
        mark, last,
        "the watermark is the last position, not held back"
    );
    let lost: i64 = client
        .query_one(
            "SELECT count(*) FROM allsource.read_all() WHERE stream_id = 'held'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(lost, 0, "the killed transaction's event never appears");
    let after: i64 = client
        .query_one(
            "SELECT position FROM allsource.append('after', 'T', '{}')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(after > mark, "appends continue above the watermark");
}

#[test]
fn crash_kill_9_of_an_ingest_worker_mid_batch_loses_no_committed_ticket() {
    use crate::queue::{await_ticket, fresh_queue_db, queue_session, try_await_ticket};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use uuid::Uuid;

    let mut admin = fresh_queue_db();
    let crashed = Arc::new(AtomicBool::new(false));
    // Sessions keep the worker busy: ten events in flight each, then their results.
    let sessions: Vec<_> = (0..16)
        .map(|s| {
            let crashed = crashed.clone();
            thread::spawn(move || {
                let mut client = queue_session();
                let mut committed = Vec::new();
                'run: while !crashed.load(Ordering::SeqCst) {
                    let mut in_flight = Vec::new();
                    for i in 0..10 {
                        let id = Uuid::new_v4();
                        match client.query_one(
                            "SELECT allsource.enqueue($1, 'T', '{\"n\": 1}', event_id => $2)",
                            &[&format!("kill-{s}-{}", i % 3), &id],
                        ) {
                            Ok(row) => in_flight.push((id, row.get::<_, i64>(0))),
                            Err(_) => break 'run,
                        }
                    }
                    for (id, ticket) in in_flight {
                        match try_await_ticket(&mut client, ticket, 30_000) {
                            Ok(outcome) if outcome.status == "committed" => committed.push(id),
                            Ok(outcome) => panic!("unexpected {outcome:?}"),
                            Err(_) => break 'run, // the connection died with the server
                        }
                    }
                }
                committed
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(1500));
    let worker: i32 = admin
        .query_one(
            "SELECT pid FROM allsource.ingest_workers() WHERE worker = 0",
            &[],
        )
        .unwrap()
        .get(0);
    kill_9(worker);
    crashed.store(true, Ordering::SeqCst);
    let committed: Vec<Uuid> = sessions
        .into_iter()
        .flat_map(|s| s.join().unwrap())
        .collect();
    drop(admin);
    assert!(
        !committed.is_empty(),
        "the worker committed before it was killed"
    );

    let mut client = queue_session();
    let stored: std::collections::HashSet<Uuid> = client
        .query("SELECT event_id FROM allsource.events", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let missing = committed.iter().filter(|id| !stored.contains(id)).count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} committed tickets missing after the crash",
        committed.len()
    );
    let problems: i64 = client
        .query_one("SELECT count(*) FROM allsource.verify_all()", &[])
        .unwrap()
        .get(0);
    assert_eq!(problems, 0);
    // A new worker runs after the restart.
    let ticket: i64 = client
        .query_one("SELECT allsource.enqueue('after-kill', 'T', '{}')", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        await_ticket(&mut client, ticket, 30_000).status,
        "committed"
    );
}

/// Positions that only a rolled-back transaction took leave no commit to
/// flush the sequence's WAL record, so a crash right after could restart the
/// sequence below them. A watermark that passed them must stay valid: after
/// the crash, new appends get positions above it.
#[test]
fn crash_right_after_a_rollback_hands_out_no_position_at_or_below_the_watermark() {
    let db = TestDb::new("crash_rollback");
    let mut client = db.connect();
    client
        .batch_execute("SELECT allsource.append('before', 'T', '{}')")
        .unwrap();
    // Many positions (several WAL records of the sequence), then rolled back.
    client
        .batch_execute(
            "BEGIN; SELECT allsource.append('rolled-' || i, 'T', '{}') FROM generate_series(1, 200) i; ROLLBACK",
        )
        .unwrap();
    let (mark, pid): (i64, i32) = {
        let row = client
            .query_one("SELECT allsource.watermark(), pg_backend_pid()", &[])
            .unwrap();
        (row.get(0), row.get(1))
    };
    // At once, before the WAL writer's next round: PostgreSQL restarts every
    // process and replays what reached the WAL files.
    kill_9(pid);
    drop(client);
    thread::sleep(Duration::from_millis(500));

    let mut client = reconnect_to(db.name());
    let after: i64 = client
        .query_one(
            "SELECT position FROM allsource.append('after', 'T', '{}')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        after > mark,
        "position {after} handed out after the crash, at or below the watermark {mark} seen before it"
    );
}

/// kill -9 of the postmaster and then of every process it had started (as a
/// power cut would), then a fresh start, which runs crash recovery.
fn kill_9_postmaster() {
    let pid_file = std::fs::read_to_string(format!("{}/postmaster.pid", crate::server_data()))
        .expect("postmaster.pid");
    let postmaster: i32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
    // Stopped first, so that it starts nothing new while its children are listed.
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &postmaster.to_string()])
        .status()
        .unwrap();
    assert!(stopped.success(), "kill -STOP {postmaster}");
    let children = std::process::Command::new("pgrep")
        .args(["-P", &postmaster.to_string()])
        .output()
        .unwrap();
    let pids: Vec<i32> = std::iter::once(postmaster)
        .chain(
            String::from_utf8_lossy(&children.stdout)
                .lines()
                .filter_map(|line| line.trim().parse().ok()),
        )
        .collect();
    for &pid in &pids {
        kill_9(pid);
    }
    // A new postmaster refuses to start while a process of the old one lives.
    while pids
        .iter()
        .any(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
    {
        thread::sleep(Duration::from_millis(50));
    }
    crate::start_server();
}

/// The pid of a process of the queue database, waiting for one while the
/// server comes back from a crash.
fn pid_of(what: &str, sql: &str) -> i32 {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut client = crate::queue::queue_session();
        if let Ok(Some(row)) = client.query_opt(sql, &[]) {
            return row.get(0);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {what} within a minute"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Exactly once through crashes: 16 writers append (random delays, rollbacks,
/// savepoints rolled back to) while a handler subscription projects every
/// event into a table, and the subscription worker, a random backend and the
/// postmaster are killed with SIGKILL, twice each. Once the lag is 0, the
/// projection equals a fresh fold over read_all: every committed event
/// applied exactly once. The handler raises unless an event is its stream's
/// next version, so a duplicate, a gap or a reordering would park an event:
/// none is parked.
#[test]
fn crash_a_handler_subscription_applies_every_event_exactly_once_through_kill_9s() {
    use crate::queue::{fresh_queue_db, queue_session};
    use crate::subscriptions::wait_until;
    use rand::Rng;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let mut admin = fresh_queue_db();
    admin
        .batch_execute(
            "DROP TABLE IF EXISTS public.crash_totals;
             CREATE TABLE public.crash_totals (stream text PRIMARY KEY, events bigint NOT NULL,
                                               sum bigint NOT NULL, last_version bigint NOT NULL);
             CREATE FUNCTION public.crash_project(e allsource.events) RETURNS void
             LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
             DECLARE
                 previous bigint;
             BEGIN
                 SELECT t.last_version INTO previous FROM public.crash_totals t WHERE t.stream = e.stream_id;
                 IF coalesce(previous, 0) + 1 <> e.version THEN
                     RAISE EXCEPTION 'stream % version % handed over after version %', e.stream_id, e.version, previous;
                 END IF;
                 INSERT INTO public.crash_totals AS t VALUES (e.stream_id, 1, (e.payload ->> 'n')::bigint, e.version)
                 ON CONFLICT (stream) DO UPDATE
                 SET events = t.events + 1, sum = t.sum + excluded.sum, last_version = excluded.last_version;
             END $$;
             SELECT allsource.create_subscription('crash_projection',
                 handler => 'public.crash_project(allsource.events)', max_attempts => 3);",
        )
        .unwrap();
    drop(admin);

    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let (stop, committed) = (stop.clone(), committed.clone());
            thread::spawn(move || {
                let mut rng = rand::thread_rng();
                let mut client = queue_session();
                while !stop.load(Ordering::Relaxed) {
                    let stream = format!("crash-{}", rng.gen_range(0..24));
                    let n: i64 = rng.gen_range(1..100);
                    let append =
                        format!("SELECT allsource.append('{stream}', 'Counted', '{{\"n\": {n}}}')");
                    let gone =
                        format!("SELECT allsource.append('{stream}', 'Gone', '{{\"n\": 100000}}')");
                    let (sql, commits) = match rng.gen_range(0..10) {
                        0 => (format!("BEGIN; {append}; {gone}; ROLLBACK"), 0),
                        1 => (
                            format!("BEGIN; SAVEPOINT s; {gone}; ROLLBACK TO s; {append}; COMMIT"),
                            1,
                        ),
                        2 => (format!("BEGIN; {append}; {append}; COMMIT"), 2),
                        _ => (append, 1),
                    };
                    match client.batch_execute(&sql) {
                        Ok(()) => {
                            committed.fetch_add(commits, Ordering::Relaxed);
                        }
                        // The server crashed under it (57P01, 57P02, 57P03, or
                        // no error code: the connection is gone).
                        Err(e) if e.code().is_none_or(|c| c.code().starts_with("57P")) => {
                            client = queue_session();
                        }
                        Err(e) => panic!("writer {w}: {e}"),
                    }
                    thread::sleep(Duration::from_millis(rng.gen_range(0..20)));
                }
            })
        })
        .collect();

    const WORKER: &str =
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'allsource subscription worker'";
    const BACKEND: &str = "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' \
                           AND datname = current_database() AND pid <> pg_backend_pid() ORDER BY random() LIMIT 1";
    let mut faults = Vec::new();
    for round in 0..2 {
        for fault in ["subscription worker", "backend", "postmaster"] {
            // Events committed since the last crash, so the worker has work.
            let before = committed.load(Ordering::Relaxed);
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while committed.load(Ordering::Relaxed) < before + 200 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "round {round}: the writers are stuck after {faults:?}"
                );
                thread::sleep(Duration::from_millis(100));
            }
            match fault {
                "subscription worker" => kill_9(pid_of(fault, WORKER)),
                "backend" => kill_9(pid_of(fault, BACKEND)),
                _ => kill_9_postmaster(),
            }
            faults.push(fault);
        }
    }
    // Some more after the last crash.
    let before = committed.load(Ordering::Relaxed);
    while committed.load(Ordering::Relaxed) < before + 200 {
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().unwrap();
    }

    let mut client = queue_session();
    wait_until(
        &mut client,
        "SELECT lag_events = 0 FROM allsource.subscriptions() WHERE name = 'crash_projection'",
        "the projection caught up",
    );
    let parked: Vec<(i64, String)> = client
        .query(
            "SELECT position, last_reason FROM allsource.parked_events('crash_projection')",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        parked,
        [],
        "no event handed over twice, skipped or out of order"
    );
    let fold: Vec<(String, i64, i64, i64)> = client
        .query(
            "SELECT stream_id, count(*), sum((payload ->> 'n')::bigint)::bigint, max(version)
             FROM allsource.read_all(0, 1000000) GROUP BY stream_id ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let projected: Vec<(String, i64, i64, i64)> = client
        .query(
            "SELECT stream, events, sum, last_version FROM public.crash_totals ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let events: i64 = fold.iter().map(|f| f.1).sum();
    assert!(
        events as u64 >= committed.load(Ordering::Relaxed),
        "every acknowledged commit is in the log ({events} events, {} acknowledged)",
        committed.load(Ordering::Relaxed)
    );
    assert_eq!(
        projected, fold,
        "the projection equals the fold of the log after {faults:?}"
    );
    let gone: i64 = client
        .query_one(
            "SELECT count(*) FROM allsource.read_all(0, 1000000) WHERE event_type = 'Gone'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(gone, 0, "what was rolled back is not in the log");
}
