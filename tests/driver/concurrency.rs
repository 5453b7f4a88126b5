//! Many sessions appending to one stream at once.

use crate::{sqlstate, TestDb};
use postgres::Client;
use std::collections::HashSet;
use std::sync::{Arc, Barrier};
use std::thread;

const SESSIONS: usize = 64;

/// Runs `work` in `sessions` connections that all start at the same moment;
/// `work` gets its client, its session number and the shared barrier.
fn in_sessions<T: Send + 'static>(
    db: &Arc<TestDb>,
    sessions: usize,
    work: impl Fn(&mut Client, usize, &Barrier) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let start = Arc::new(Barrier::new(sessions));
    let work = Arc::new(work);
    let workers: Vec<_> = (0..sessions)
        .map(|session| {
            let (db, start, work) = (db.clone(), start.clone(), work.clone());
            thread::spawn(move || {
                let mut client = db.connect();
                start.wait();
                work(&mut client, session, &start)
            })
        })
        .collect();
    workers.into_iter().map(|w| w.join().unwrap()).collect()
}

/// Checks the stream's versions are exactly 1..=n, positions unique and
/// increasing with the version, and the stream row agrees.
fn assert_gapless(db: &TestDb, stream: &str, n: i64) {
    let mut client = db.connect();
    let rows = client
        .query(
            "SELECT version, position FROM allsource.events WHERE stream_id = $1 ORDER BY version",
            &[&stream],
        )
        .unwrap();
    let versions: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        versions,
        (1..=n).collect::<Vec<_>>(),
        "versions of {stream} are 1..={n}"
    );
    let positions: Vec<i64> = rows.iter().map(|r| r.get(1)).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions increase with versions"
    );
    let version: i64 = client
        .query_one("SELECT allsource.stream_version($1)", &[&stream])
        .unwrap()
        .get(0);
    assert_eq!(version, n);
}

#[test]
fn sessions_appending_without_expected_version_stay_gapless() {
    let db = Arc::new(TestDb::new("gapless"));
    let per_session = 20;
    let results = in_sessions(&db, SESSIONS, move |client, session, _| {
        (0..per_session)
            .map(|i| {
                let row = client
                    .query_one(
                        "SELECT version, position FROM allsource.append('hot', 'Tick', jsonb_build_object('session', $1::int, 'i', $2::int))",
                        &[&(session as i32), &(i as i32)],
                    )
                    .unwrap();
                (row.get::<_, i64>(0), row.get::<_, i64>(1))
            })
            .collect::<Vec<_>>()
    });
    let mut seen = HashSet::new();
    for mine in results {
        assert!(
            mine.windows(2).all(|w| w[0].0 < w[1].0),
            "a session's own versions increase"
        );
        for (version, _) in mine {
            assert!(seen.insert(version), "version {version} was returned twice");
        }
    }
    assert_gapless(&db, "hot", (SESSIONS * per_session) as i64);
}

#[test]
fn exactly_one_writer_wins_each_expected_version() {
    let db = Arc::new(TestDb::new("one_winner"));
    let rounds = 15i64;
    let wins = in_sessions(&db, SESSIONS, move |client, session, everyone| {
        let mut wins = vec![];
        for round in 0..rounds {
            // Everyone tries the same expected version at the same moment.
            everyone.wait();
            let attempt = client.query_one(
                "SELECT version FROM allsource.append('contested', 'Claim', jsonb_build_object('session', $1::int), expected_version => $2)",
                &[&(session as i32), &round],
            );
            match attempt {
                Ok(row) => {
                    assert_eq!(row.get::<_, i64>(0), round + 1);
                    wins.push(round);
                }
                Err(e) => assert_eq!(sqlstate(&e), "ZA001", "{e}"),
            }
            everyone.wait();
        }
        wins
    });
    let mut winners_per_round = vec![0; rounds as usize];
    for round in wins.into_iter().flatten() {
        winners_per_round[round as usize] += 1;
    }
    assert_eq!(
        winners_per_round,
        vec![1; rounds as usize],
        "one winner per expected version"
    );
    assert_gapless(&db, "contested", rounds);
}

#[test]
fn batches_and_single_appends_interleave_without_gaps() {
    let db = Arc::new(TestDb::new("mixed"));
    let batch = 5;
    let per_session = 6;
    let ranges = in_sessions(&db, SESSIONS, move |client, session, _| {
        (0..per_session)
            .map(|_| {
                if session % 2 == 0 {
                    let row = client
                        .query_one(
                            "SELECT first_version, last_version FROM allsource.append_batch('mixed',
                                 (SELECT jsonb_agg(jsonb_build_object('type', 'B', 'payload', i)) FROM generate_series(1, $1) i))",
                            &[&batch],
                        )
                        .unwrap();
                    (row.get::<_, i64>(0), row.get::<_, i64>(1))
                } else {
                    let v: i64 = client
                        .query_one("SELECT version FROM allsource.append('mixed', 'S', '1')", &[])
                        .unwrap()
                        .get(0);
                    (v, v)
                }
            })
            .collect::<Vec<_>>()
    });
    let mut ranges: Vec<(i64, i64)> = ranges.into_iter().flatten().collect();
    ranges.sort();
    // The returned ranges tile 1..=total with no overlap: each batch got consecutive versions.
    let mut next = 1;
    for (first, last) in &ranges {
        assert_eq!(*first, next, "ranges {ranges:?}");
        next = last + 1;
    }
    let total = (SESSIONS / 2 * per_session * batch as usize + SESSIONS / 2 * per_session) as i64;
    assert_eq!(next - 1, total);
    assert_gapless(&db, "mixed", total);
}

/// One append's events have consecutive positions, whatever runs beside it:
/// batches into different streams (as the workers and `append_if` write
/// them), at once, never interleave.
#[test]
fn a_batch_takes_consecutive_positions_beside_concurrent_batches() {
    let db = Arc::new(TestDb::new("consecutive"));
    let per_session = 20;
    let ranges = in_sessions(&db, 16, move |client, session, _| {
        (0..per_session)
            .map(|n| {
                let size = 2 + (session + n) % 9;
                let row = client
                    .query_one(
                        "SELECT first_position, last_position, $2::int FROM allsource.append_batch($1,
                             (SELECT jsonb_agg(jsonb_build_object('type', 'B', 'payload', i)) FROM generate_series(1, $2) i))",
                        &[&format!("consecutive-{session}-{n}"), &(size as i32)],
                    )
                    .unwrap();
                (row.get::<_, i64>(0), row.get::<_, i64>(1), row.get::<_, i32>(2))
            })
            .collect::<Vec<_>>()
    });
    let mut ranges: Vec<(i64, i64, i32)> = ranges.into_iter().flatten().collect();
    ranges.sort();
    for (first, last, size) in &ranges {
        assert_eq!(
            last - first + 1,
            i64::from(*size),
            "a batch's positions were split: {ranges:?}"
        );
    }
    for pair in ranges.windows(2) {
        assert!(pair[0].1 < pair[1].0, "two batches overlap: {pair:?}");
    }
}

#[test]
fn concurrent_retries_of_one_event_store_it_once() {
    let db = Arc::new(TestDb::new("idempotent"));
    let results: HashSet<(i64, i64)> = in_sessions(&db, 16, |client, _, _| {
        let row = client
            .query_one(
                "SELECT version, position FROM allsource.append('once', 'T', '{\"a\": 1}',
                     event_id => '00000000-0000-0000-0000-000000000001')",
                &[],
            )
            .unwrap();
        (row.get::<_, i64>(0), row.get::<_, i64>(1))
    })
    .into_iter()
    .collect();
    assert_eq!(
        results.len(),
        1,
        "every retry got the original back: {results:?}"
    );
    assert_gapless(&db, "once", 1);

    // The same new id sent to different streams at once: one stream gets it, the others ZA003.
    let outcomes = in_sessions(&db, 16, |client, i, _| {
        client
            .query_one(
                "SELECT version FROM allsource.append($1, 'T', '1', event_id => '00000000-0000-0000-0000-000000000002')",
                &[&format!("stream-{i}")],
            )
            .map(|_| ())
            .map_err(|e| sqlstate(&e))
    });
    assert_eq!(
        outcomes.iter().filter(|o| o.is_ok()).count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .filter_map(|o| o.as_ref().err())
            .all(|code| code == "ZA003"),
        "{outcomes:?}"
    );
    let stored: i64 = db
        .connect()
        .query_one(
            "SELECT count(*) FROM allsource.events WHERE event_id = '00000000-0000-0000-0000-000000000002'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(stored, 1);
}

/// Waits until the session `pid` waits for a lock.
fn wait_for_lock_wait(client: &mut Client, pid: i32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while client
        .query_one(
            "SELECT wait_event_type IS DISTINCT FROM 'Lock' FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .unwrap()
        .get::<_, bool>(0)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "session {pid} never waited"
        );
        thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `delete_stream` of a stream whose first write is still open waits for it
/// (an append's, or another delete's), then deletes what it finds: the
/// committed row, or, after a rollback, a stream never written.
#[test]
fn deleting_a_new_stream_waits_for_its_first_write() {
    let db = Arc::new(TestDb::new("delete_race"));
    for (stream, first_write, commit, expected_version) in [
        (
            "appended",
            "SELECT allsource.append('appended', 'T', '{}')",
            true,
            1i64,
        ),
        (
            "rolled-back",
            "SELECT allsource.append('rolled-back', 'T', '{}')",
            false,
            0,
        ),
        (
            "deleted",
            "SELECT allsource.delete_stream('deleted')",
            true,
            0,
        ),
    ] {
        let mut first = db.connect();
        first.batch_execute("BEGIN").unwrap();
        first.batch_execute(first_write).unwrap();
        let (pid_tx, pid_rx) = std::sync::mpsc::channel();
        let deleter = {
            let db = db.clone();
            thread::spawn(move || {
                let mut client = db.connect();
                let pid: i32 = client
                    .query_one("SELECT pg_backend_pid()", &[])
                    .unwrap()
                    .get(0);
                pid_tx.send(pid).unwrap();
                client
                    .query_one("SELECT allsource.delete_stream($1)", &[&stream])
                    .map(|row| row.get::<_, i64>(0))
                    .map_err(|e| format!("{} {e}", sqlstate(&e)))
            })
        };
        let mut observer = db.connect();
        let deleter_pid = pid_rx.recv().unwrap();
        wait_for_lock_wait(&mut observer, deleter_pid);
        first
            .batch_execute(if commit { "COMMIT" } else { "ROLLBACK" })
            .unwrap();
        let deleted = deleter.join().unwrap();
        assert_eq!(deleted, Ok(expected_version), "{stream}");
        let tombstone: bool = observer
            .query_one(
                "SELECT deleted_at IS NOT NULL FROM allsource.streams WHERE stream_id = $1",
                &[&stream],
            )
            .unwrap()
            .get(0);
        assert!(tombstone, "{stream} is deleted");
    }
}

/// An append that waits for another's stream row goes on, in READ
/// COMMITTED, from the version the other committed; in REPEATABLE READ the
/// row changed after its snapshot was taken, so it fails to serialize
/// (`40001`) and writes nothing, as `SELECT … FOR UPDATE` would. A row that
/// was only locked (a snapshot saved) is no conflict in either.
#[test]
fn an_append_behind_a_concurrent_one_follows_it_or_fails_to_serialize() {
    let db = Arc::new(TestDb::new("lock_follow"));
    let append = "SELECT version FROM allsource.append($1, 'T', '{}')";
    let lock_only = "SELECT allsource.save_snapshot($1, 1, '{}')";
    for (case, isolation, holder, expected, final_version) in [
        ("rc", "READ COMMITTED", append, Ok(3i64), 3i64),
        ("rr", "REPEATABLE READ", append, Err("40001".to_string()), 2),
        ("rr-locked", "REPEATABLE READ", lock_only, Ok(2), 2),
    ] {
        let stream = format!("follow-{case}");
        db.connect().execute(append, &[&stream]).unwrap();
        let mut first = db.connect();
        first.batch_execute("BEGIN").unwrap();
        first.query_one(holder, &[&stream]).unwrap();
        let (pid_tx, pid_rx) = std::sync::mpsc::channel();
        let second = {
            let (db, stream) = (db.clone(), stream.clone());
            thread::spawn(move || {
                let mut client = db.connect();
                // The snapshot is taken by the first statement.
                client
                    .batch_execute(&format!("BEGIN ISOLATION LEVEL {isolation}; SELECT 1"))
                    .unwrap();
                let pid: i32 = client
                    .query_one("SELECT pg_backend_pid()", &[])
                    .unwrap()
                    .get(0);
                pid_tx.send(pid).unwrap();
                let appended = client
                    .query_one(append, &[&stream])
                    .map(|row| row.get::<_, i64>(0))
                    .map_err(|e| sqlstate(&e));
                client
                    .batch_execute(if appended.is_ok() {
                        "COMMIT"
                    } else {
                        "ROLLBACK"
                    })
                    .unwrap();
                appended
            })
        };
        let mut observer = db.connect();
        wait_for_lock_wait(&mut observer, pid_rx.recv().unwrap());
        first.batch_execute("COMMIT").unwrap();
        assert_eq!(second.join().unwrap(), expected, "{case}");
        assert_gapless(&db, &stream, final_version);
    }
}

/// An append that gives up waiting for a stream row (`lock_timeout`) raises
/// `55P03`, writes nothing, and leaves the session as it was: its next
/// append works, and a direct write is still refused.
#[test]
fn an_append_that_times_out_on_a_stream_row_leaves_the_guard_closed() {
    let db = TestDb::new("lock_timeout");
    let mut holder = db.connect();
    // save_snapshot locks the stream row and nothing else an append takes.
    holder
        .batch_execute("SELECT allsource.append('held', 'T', '{}')")
        .unwrap();
    holder
        .batch_execute("BEGIN; SELECT allsource.save_snapshot('held', 1, '{}')")
        .unwrap();
    let mut client = db.connect();
    client.batch_execute("SET lock_timeout = '100ms'").unwrap();
    let timed_out = client
        .query_one(
            "SELECT version FROM allsource.append('held', 'T', '{}')",
            &[],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&timed_out), "55P03", "{timed_out}");
    let refused = client
        .batch_execute("INSERT INTO allsource.event_ids SELECT event_id, partition_id, position FROM allsource.events LIMIT 1")
        .unwrap_err();
    assert_eq!(sqlstate(&refused), "42501", "{refused}");
    assert!(
        format!("{refused:?}").contains("direct INSERT on allsource.event_ids is not allowed"),
        "a direct write is still refused: {refused:?}"
    );
    holder.batch_execute("COMMIT").unwrap();
    let version: i64 = client
        .query_one(
            "SELECT version FROM allsource.append('held', 'T', '{}')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(version, 2);
    assert_gapless(&db, "held", 2);
}
