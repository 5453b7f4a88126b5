//! The watermark through a real driver: followers never skip or repeat an
//! event while writers commit out of order, roll back, and die.

use crate::{connect_to, sqlstate, TestDb};
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, Transaction};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const CATEGORIES: usize = 4;
const STREAMS_PER_CATEGORY: usize = 250;

/// Appends 1–8 events to a random stream inside `tx`; returns (position, stream) of each.
fn random_append(
    tx: &mut Transaction,
    rng: &mut StdRng,
) -> Result<Vec<(i64, String)>, postgres::Error> {
    let stream = format!(
        "cat{}-{}",
        rng.gen_range(0..CATEGORIES),
        rng.gen_range(0..STREAMS_PER_CATEGORY)
    );
    let count: i32 = rng.gen_range(1..=8);
    let first: i64 = if count == 1 {
        tx.query_one(
            "SELECT position FROM allsource.append($1, 'Tick', '{\"n\": 1}')",
            &[&stream],
        )?
        .get(0)
    } else {
        tx.query_one(
            "SELECT first_position FROM allsource.append_batch($1,
                 (SELECT jsonb_agg(jsonb_build_object('type', 'Tick', 'payload', i)) FROM generate_series(1, $2) i))",
            &[&stream, &count],
        )?
        .get(0)
    };
    // A batch's positions increase with its versions; read them back to be exact.
    Ok(tx
        .query(
            "SELECT position FROM allsource.events WHERE stream_id = $1 AND position >= $2 ORDER BY position LIMIT $3",
            &[&stream, &first, &i64::from(count)],
        )?
        .iter()
        .map(|r| (r.get(0), stream.clone()))
        .collect())
}

/// One transaction of 1–3 appends, some inside a savepoint that rolls back,
/// with a random pause before the end; 15% are rolled back whole. Returns
/// the events it committed.
fn random_transaction(
    client: &mut Client,
    rng: &mut StdRng,
) -> Result<Vec<(i64, String)>, postgres::Error> {
    let mut tx = client.transaction()?;
    let mut mine = vec![];
    for _ in 0..rng.gen_range(1..=3) {
        if rng.gen_bool(0.2) {
            let mut savepoint = tx.transaction()?;
            random_append(&mut savepoint, rng)?;
            savepoint.rollback()?;
        } else {
            mine.extend(random_append(&mut tx, rng)?);
        }
    }
    thread::sleep(Duration::from_micros(rng.gen_range(0..2000)));
    if rng.gen_bool(0.15) {
        tx.rollback()?;
        return Ok(vec![]);
    }
    tx.commit()?;
    Ok(mine)
}

fn writer(
    db: &TestDb,
    seed: u64,
    committed: &Mutex<BTreeMap<i64, String>>,
    total: &AtomicU64,
    enough: &dyn Fn(u64) -> bool,
) {
    let mut client = db.connect();
    let mut rng = StdRng::seed_from_u64(seed);
    while !enough(total.load(Ordering::Relaxed)) {
        match random_transaction(&mut client, &mut rng) {
            Ok(mine) => {
                total.fetch_add(mine.len() as u64, Ordering::Relaxed);
                committed.lock().unwrap().extend(mine);
            }
            // Transactions that lock several streams in random order can deadlock: one of them rolls back.
            Err(e) if sqlstate(&e) == "40P01" => {}
            Err(e) => panic!("writer: {e:?}"),
        }
    }
}

/// Follows a global read to the end: returns every position it saw, in order.
fn follow(
    db: &TestDb,
    query: &str,
    writers_done: &AtomicBool,
    committed: &Mutex<BTreeMap<i64, String>>,
) -> Vec<(i64, String)> {
    let mut client = db.connect();
    let mut seen: Vec<(i64, String)> = vec![];
    let mut cursor = 0i64;
    // Set once the writers are done and the watermark covers every commit:
    // from then on, a read that comes back empty means the follower is complete.
    let mut caught_up = false;
    loop {
        let rows = client.query(query, &[&cursor]).unwrap();
        for row in &rows {
            let position: i64 = row.get(0);
            assert!(
                position > cursor,
                "positions go forward: {position} after {cursor}"
            );
            cursor = position;
            seen.push((position, row.get(1)));
        }
        if !rows.is_empty() {
            continue;
        }
        if caught_up {
            return seen;
        }
        if writers_done.load(Ordering::SeqCst) {
            let last_committed = committed
                .lock()
                .unwrap()
                .keys()
                .next_back()
                .copied()
                .unwrap_or(0);
            let mark: i64 = client
                .query_one("SELECT allsource.watermark()", &[])
                .unwrap()
                .get(0);
            caught_up = mark >= last_committed;
        } else {
            thread::sleep(Duration::from_millis(1));
        }
    }
}

#[test]
fn followers_see_every_committed_event_once_in_order() {
    let target: u64 = std::env::var("ALLSOURCE_WATERMARK_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let seconds: Option<u64> = std::env::var("ALLSOURCE_WATERMARK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok());
    let started = Instant::now();
    let enough = move |events: u64| match seconds {
        Some(s) => started.elapsed() >= Duration::from_secs(s),
        None => events >= target,
    };
    let seed: u64 = rand::random();
    println!("seed {seed}");

    let db = Arc::new(TestDb::new("watermark_follow"));
    let committed = Arc::new(Mutex::new(BTreeMap::<i64, String>::new()));
    let total = Arc::new(AtomicU64::new(0));
    let writers_done = Arc::new(AtomicBool::new(false));

    // Each reader: its query, and the (position, stream) pairs it received.
    type Reader = (String, thread::JoinHandle<Vec<(i64, String)>>);
    let readers: Vec<Reader> = [
        "SELECT position, stream_id FROM allsource.read_all($1, 500)".to_string(),
        "SELECT position, stream_id FROM allsource.read_all($1, 37)".to_string(),
        "SELECT position, stream_id FROM allsource.read_category('cat1', $1, 200)".to_string(),
        "SELECT position, stream_id FROM allsource.read_category('cat2', $1, 200, 0, 2)"
            .to_string(),
        "SELECT position, stream_id FROM allsource.read_category('cat2', $1, 200, 1, 2)"
            .to_string(),
    ]
    .into_iter()
    .map(|query| {
        let (db, done, committed) = (db.clone(), writers_done.clone(), committed.clone());
        let q = query.clone();
        (
            query,
            thread::spawn(move || follow(&db, &q, &done, &committed)),
        )
    })
    .collect();

    let writers: Vec<_> = (0..12)
        .map(|w| {
            let (db, committed, total) = (db.clone(), committed.clone(), total.clone());
            thread::spawn(move || writer(&db, seed.wrapping_add(w), &committed, &total, &enough))
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    writers_done.store(true, Ordering::SeqCst);

    let committed = committed.lock().unwrap().clone();
    let results: Vec<(String, Vec<(i64, String)>)> = readers
        .into_iter()
        .map(|(q, r)| (q, r.join().unwrap()))
        .collect();
    println!(
        "{} events committed in {:.1} s; readers saw {:?}",
        committed.len(),
        started.elapsed().as_secs_f64(),
        results
            .iter()
            .map(|(_, seen)| seen.len())
            .collect::<Vec<_>>()
    );
    assert!(seconds.is_some() || committed.len() as u64 >= target);

    let expect = |pred: &dyn Fn(&str) -> bool| -> Vec<(i64, String)> {
        committed
            .iter()
            .filter(|(_, s)| pred(s))
            .map(|(p, s)| (*p, s.clone()))
            .collect()
    };
    // read_all: every committed event exactly once, in position order, nothing else.
    for (query, seen) in &results[..2] {
        assert!(
            seen == &expect(&|_| true),
            "{query}: saw {} of {} committed",
            seen.len(),
            committed.len()
        );
    }
    assert!(
        results[2].1 == expect(&|s| s.starts_with("cat1-")),
        "read_category cat1"
    );
    // A consumer group of two splits cat2 by stream, with nothing lost or doubled.
    let (member0, member1) = (&results[3].1, &results[4].1);
    let streams0: BTreeSet<&String> = member0.iter().map(|(_, s)| s).collect();
    let streams1: BTreeSet<&String> = member1.iter().map(|(_, s)| s).collect();
    assert!(
        streams0.is_disjoint(&streams1),
        "a stream belongs to one member"
    );
    let mut union: Vec<(i64, String)> = member0.iter().chain(member1).cloned().collect();
    union.sort();
    assert!(
        union == expect(&|s| s.starts_with("cat2-")),
        "the members together read all of cat2"
    );
}

pub fn inflight_count(client: &mut Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM allsource.inflight()", &[])
        .unwrap()
        .get(0)
}

fn wait_until_free(client: &mut Client, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while inflight_count(client) > 0 {
        assert!(Instant::now() < deadline, "{what}: the slot was not freed");
        thread::sleep(Duration::from_millis(20));
    }
    let mark: i64 = client
        .query_one("SELECT allsource.watermark()", &[])
        .unwrap()
        .get(0);
    let last: i64 = client
        .query_one(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM allsource.event_position",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        mark, last,
        "{what}: the watermark caught up with the last position"
    );
}

/// A session that appended and is left open: returns it and its pid.
pub fn holder(db: &TestDb, observer: &mut Client) -> (Client, i32) {
    let mut client = db.connect();
    client
        .batch_execute("BEGIN; SELECT allsource.append('held', 'T', '{}')")
        .unwrap();
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let held: i64 = observer
        .query_one(
            "SELECT count(*) FROM allsource.inflight() WHERE pid = $1",
            &[&pid],
        )
        .unwrap()
        .get(0);
    assert_eq!(held, 1, "the open append holds a slot");
    (client, pid)
}

#[test]
fn a_slot_is_freed_however_its_session_ends() {
    let db = TestDb::new("watermark_slots");
    let mut observer = db.connect();

    let (mut client, _) = holder(&db, &mut observer);
    client.batch_execute("COMMIT").unwrap();
    wait_until_free(&mut observer, "commit");

    let (mut client, _) = holder(&db, &mut observer);
    client.batch_execute("ROLLBACK").unwrap();
    wait_until_free(&mut observer, "rollback");

    let (mut client, _) = holder(&db, &mut observer);
    assert_eq!(
        sqlstate(&client.batch_execute("SELECT 1/0").unwrap_err()),
        "22012"
    );
    wait_until_free(&mut observer, "an error");
    client.batch_execute("ROLLBACK").unwrap();

    let (mut client, pid) = holder(&db, &mut observer);
    let sleeper = thread::spawn(move || {
        client
            .batch_execute("SELECT pg_sleep(30)")
            .map_err(|e| sqlstate(&e))
    });
    thread::sleep(Duration::from_millis(200));
    observer
        .execute("SELECT pg_cancel_backend($1)", &[&pid])
        .unwrap();
    assert_eq!(sleeper.join().unwrap(), Err("57014".to_string()));
    wait_until_free(&mut observer, "a cancel");

    let (_client, pid) = holder(&db, &mut observer);
    observer
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    wait_until_free(&mut observer, "pg_terminate_backend");

    let (client, _) = holder(&db, &mut observer);
    drop(client);
    wait_until_free(&mut observer, "a disconnect");
}

#[test]
fn a_transaction_that_appended_cannot_be_prepared() {
    let db = TestDb::new("watermark_prepare");
    let mut client = db.connect();
    let error = client
        .batch_execute(
            "BEGIN; SELECT allsource.append('p', 'T', '{}'); PREPARE TRANSACTION 'with_append'",
        )
        .unwrap_err();
    assert_eq!(sqlstate(&error), "0A000");
    assert!(
        error.as_db_error().is_some_and(|e| e
            .message()
            .contains("cannot PREPARE a transaction that appended")),
        "{error}"
    );
    client.batch_execute("ROLLBACK").ok();
    assert_eq!(inflight_count(&mut client), 0);
    // Transactions that only read still can.
    client
        .batch_execute(&format!(
            "BEGIN; SELECT allsource.stream_version('p'); PREPARE TRANSACTION '{}'",
            db.name()
        ))
        .unwrap();
    client
        .batch_execute(&format!("COMMIT PREPARED '{}'", db.name()))
        .unwrap();
}

/// Notifications received within `wait` after a round trip.
pub fn notifications(listener: &mut Client, wait: Duration) -> Vec<String> {
    listener.batch_execute("SELECT 1").unwrap();
    let mut notes = listener.notifications();
    let mut iter = notes.timeout_iter(wait);
    let mut payloads = vec![];
    while let Some(note) = iter.next().unwrap() {
        payloads.push(note.payload().to_string());
    }
    payloads
}

/// A commit notified while an earlier transaction holds the watermark below
/// it cannot be read yet; when that transaction rolls back, the position is
/// notified again, so a subscriber reading to the watermark on each
/// notification gets the event without waiting for another append.
#[test]
fn a_position_is_notified_again_when_a_rollback_lets_the_watermark_pass_it() {
    let db = TestDb::new("notify_rollback");
    let mut listener = db.connect();
    listener.batch_execute("LISTEN allsource_events").unwrap();
    let mut holder = db.connect();
    let mut holding = holder.transaction().unwrap();
    holding
        .execute("SELECT allsource.append('held-1', 'T', '{}')", &[])
        .unwrap();
    let (partition, position): (i32, i64) = {
        let row = db
            .connect()
            .query_one(
                "SELECT allsource.partition_for('free-1'), position FROM allsource.append('free-1', 'T', '{}')",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    let expected = format!(r#"{{"partition_id": {partition}, "last_position": {position}}}"#);
    let watermark = |client: &mut Client| -> i64 {
        client
            .query_one("SELECT allsource.watermark()", &[])
            .unwrap()
            .get(0)
    };
    assert!(notifications(&mut listener, Duration::from_millis(300)).contains(&expected));
    assert!(
        watermark(&mut listener) < position,
        "held back by the open append"
    );
    assert!(
        notifications(&mut listener, Duration::from_millis(300)).is_empty(),
        "nothing new while the watermark is held"
    );

    holding.rollback().unwrap();
    assert!(
        notifications(&mut listener, Duration::from_millis(500)).contains(&expected),
        "no notification after the rollback let the watermark pass {position}"
    );
    assert!(watermark(&mut listener) >= position);
    let read: Vec<i64> = listener
        .query(
            "SELECT position FROM allsource.read_all($1, 10)",
            &[&(position - 1)],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(read, vec![position]);
}

#[test]
fn a_burst_of_commits_is_coalesced_and_its_last_position_notified() {
    let db = Arc::new(TestDb::new("notify_burst"));
    let mut listener = db.connect();
    listener.batch_execute("LISTEN allsource_events").unwrap();
    let partition: i32 = listener
        .query_one("SELECT allsource.partition_for('burst-0')", &[])
        .unwrap()
        .get(0);
    // Streams of one partition, so every commit concerns the same notification.
    let streams: Vec<String> = listener
        .query(
            "SELECT s FROM (SELECT 'burst-' || i AS s FROM generate_series(0, 2000) i) c
             WHERE allsource.partition_for(s) = $1 LIMIT 8",
            &[&partition],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let writers: Vec<_> = streams
        .into_iter()
        .map(|stream| {
            let db = db.clone();
            thread::spawn(move || {
                let mut client = db.connect();
                (0..50)
                    .map(|_| {
                        client
                            .query_one(
                                "SELECT position FROM allsource.append($1, 'T', '{}')",
                                &[&stream],
                            )
                            .unwrap()
                            .get::<_, i64>(0)
                    })
                    .max()
                    .unwrap()
            })
        })
        .collect();
    let last = writers
        .into_iter()
        .map(|w| w.join().unwrap())
        .max()
        .unwrap();
    let received = notifications(&mut listener, Duration::from_millis(500));
    let commits = 8 * 50;
    assert!(!received.is_empty());
    assert!(
        received.len() < commits / 4,
        "{} notifications for {commits} commits: not coalesced",
        received.len()
    );
    assert_eq!(
        received.last().unwrap(),
        &format!(r#"{{"partition_id": {partition}, "last_position": {last}}}"#),
        "the last notification carries the last committed position"
    );
}

#[test]
fn the_notifier_lets_its_database_be_dropped() {
    let db = TestDb::new("notify_drop");
    let name = format!("{}_victim", db.name());
    let mut admin = db.connect();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    let mut client = connect_to(&name);
    client
        .batch_execute("CREATE EXTENSION allsource; SELECT allsource.append('s', 'T', '{}')")
        .unwrap();
    drop(client);
    // The notifier exits after two idle seconds; DROP DATABASE waits up to five for other sessions.
    admin
        .batch_execute(&format!("DROP DATABASE {name}"))
        .unwrap();
}

#[test]
fn one_notification_per_partition_per_transaction_after_commit() {
    let db = TestDb::new("watermark_notify");
    let mut listener = db.connect();
    listener.batch_execute("LISTEN allsource_events").unwrap();
    let mut writer = db.connect();
    let drain = |listener: &mut Client| notifications(listener, Duration::from_millis(300));

    let mut tx = writer.transaction().unwrap();
    let mut last = 0i64;
    for _ in 0..20 {
        last = tx
            .query_one(
                "SELECT position FROM allsource.append('n-1', 'T', '{}')",
                &[],
            )
            .unwrap()
            .get(0);
    }
    assert!(
        drain(&mut listener).is_empty(),
        "nothing is sent before the commit"
    );
    tx.commit().unwrap();
    let partition: i32 = writer
        .query_one("SELECT allsource.partition_for('n-1')", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        drain(&mut listener),
        vec![format!(
            r#"{{"partition_id": {partition}, "last_position": {last}}}"#
        )],
        "twenty appends, one notification"
    );

    writer
        .batch_execute(
            r#"BEGIN; SELECT allsource.append_batch('n-1', '[{"type": "T", "payload": 1}, {"type": "T", "payload": 2}]');
               SELECT allsource.append('n-2', 'T', '{}'); COMMIT"#,
        )
        .unwrap();
    let partitions: BTreeSet<i32> = writer
        .query(
            "SELECT allsource.partition_for(s) FROM unnest(ARRAY['n-1', 'n-2']) s",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        drain(&mut listener).len(),
        partitions.len(),
        "one per partition touched"
    );

    writer
        .batch_execute("BEGIN; SELECT allsource.append('n-1', 'T', '{}'); ROLLBACK")
        .unwrap();
    assert!(
        drain(&mut listener).is_empty(),
        "a rollback notifies nobody"
    );

    writer
        .batch_execute("SET allsource.notify = off; SELECT allsource.append('n-1', 'T', '{}'); RESET allsource.notify")
        .unwrap();
    assert!(
        drain(&mut listener).is_empty(),
        "allsource.notify = off sends nothing"
    );

    // Positions restart with a new extension: notifications follow them.
    writer
        .batch_execute(
            "DROP EXTENSION allsource; CREATE EXTENSION allsource; SELECT allsource.append('n-1', 'T', '{}')",
        )
        .unwrap();
    assert_eq!(
        drain(&mut listener),
        vec![format!(
            r#"{{"partition_id": {partition}, "last_position": 1}}"#
        )]
    );
}
