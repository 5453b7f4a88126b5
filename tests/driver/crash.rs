//! A backend killed with SIGKILL while it holds a slot: PostgreSQL restarts
//! every process and re-creates shared memory, and the watermark must not be
//! stuck afterwards. Kills the whole server's sessions, so scripts/test.sh
//! runs it alone, after the other driver tests.

use crate::watermark::{holder, inflight_count};
use crate::{reconnect_to, TestDb};
use std::thread;
use std::time::Duration;

/// Kills a server process with SIGKILL: PostgreSQL then restarts every process.
fn kill_9(pid: i32) {
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
