//! Workers for every database: with `allsource.database` empty, the
//! launcher starts the publisher and the ingest workers of every database
//! where the extension is created, each with its own lane group. These
//! tests restart the server with that setting (and put it back), so they
//! run in the `queue_` phase, one at a time.

use crate::queue::{assert_store_is_sound, await_ticket, count, reconfigure, try_await_ticket};
use crate::{connect_to, sqlstate, TestDb};
use postgres::Client;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// The server restarted with `allsource.database` empty (and `settings`)
/// for as long as this lives.
struct EveryDatabase(Vec<&'static str>);

impl EveryDatabase {
    fn with(settings: &[(&'static str, &str)]) -> EveryDatabase {
        let mut all = vec![("allsource.database", Some(""))];
        all.extend(settings.iter().map(|&(name, value)| (name, Some(value))));
        reconfigure(&all);
        EveryDatabase(all.iter().map(|&(name, _)| name).collect())
    }
}

impl Drop for EveryDatabase {
    fn drop(&mut self) {
        let reset: Vec<_> = self.0.iter().map(|&name| (name, None)).collect();
        reconfigure(&reset);
    }
}

/// Waits up to `seconds` for `check` to hold.
fn eventually(what: &str, seconds: u64, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {seconds} s");
        thread::sleep(Duration::from_millis(50));
    }
}

/// The pids of the workers of `client`'s database, by kind.
fn workers(client: &mut Client, kind: &str) -> Vec<i32> {
    client
        .query(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = $1 AND datname = current_database() ORDER BY pid",
            &[&kind],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// The published watermark has caught up with the watermark.
fn published_is_current(client: &mut Client) -> bool {
    count(
        client,
        "SELECT ((SELECT position FROM allsource.published_watermark) = allsource.watermark() AND allsource.watermark() > 0)::int::bigint",
    ) == 1
}

/// Enqueues `n` events into `client`'s database and awaits them: every
/// ticket committed. Returns the tickets.
fn enqueue_and_await(client: &mut Client, prefix: &str, n: usize) -> Vec<i64> {
    let tickets: Vec<i64> = (0..n)
        .map(|i| {
            client
                .query_one(
                    "SELECT allsource.enqueue($1, 'Queued', '{}')",
                    &[&format!("{prefix}-{}", i % 7)],
                )
                .unwrap()
                .get(0)
        })
        .collect();
    for &ticket in &tickets {
        assert_eq!(await_ticket(client, ticket, 10_000).status, "committed");
    }
    tickets
}

/// Appends and enqueues in `db` until `stop`, some in transactions that
/// roll back; returns the positions committed.
fn write(db: String, stop: Arc<AtomicBool>, seed: usize) -> Vec<i64> {
    let mut client = connect_to(&db);
    let mut committed = vec![];
    let mut tickets = vec![];
    let mut n = seed;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let stream = format!("w{seed}-{}", n % 11);
        match n % 4 {
            0 => tickets.push(
                client
                    .query_one("SELECT allsource.enqueue($1, 'Q', '{}')", &[&stream])
                    .unwrap()
                    .get::<_, i64>(0),
            ),
            1 => {
                let mut tx = client.transaction().unwrap();
                tx.query_one("SELECT allsource.append($1, 'R', '{}')", &[&stream])
                    .unwrap();
                thread::sleep(Duration::from_millis(3));
                tx.rollback().unwrap();
            }
            _ => committed.push(
                client
                    .query_one(
                        "SELECT position FROM allsource.append($1, 'A', '{}')",
                        &[&stream],
                    )
                    .unwrap()
                    .get::<_, i64>(0),
            ),
        }
    }
    for ticket in tickets {
        let outcome = await_ticket(&mut client, ticket, 10_000);
        assert_eq!(outcome.status, "committed");
        committed.push(outcome.position.unwrap());
    }
    committed
}

/// Follows `read_all` (which stops at the watermark) until `stop` and then
/// to the end; returns every position, in the order read.
fn follow(db: String, stop: Arc<AtomicBool>) -> Vec<i64> {
    let mut client = connect_to(&db);
    let mut seen = vec![];
    let mut cursor = 0i64;
    let mut quiet_after_stop = 0;
    while quiet_after_stop < 20 {
        let rows = client
            .query(
                "SELECT position FROM allsource.read_all($1, 100)",
                &[&cursor],
            )
            .unwrap();
        for row in &rows {
            let position: i64 = row.get(0);
            assert!(position > cursor, "{position} after {cursor}");
            cursor = position;
            seen.push(position);
        }
        if rows.is_empty() {
            if stop.load(Ordering::SeqCst) {
                quiet_after_stop += 1;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
    seen
}

#[test]
fn queue_three_databases_each_have_their_queue_publisher_and_followers() {
    let _every = EveryDatabase::with(&[("allsource.ingest_workers", "2")]);
    let dbs: Vec<TestDb> = ["three_a", "three_b", "three_c"]
        .iter()
        .map(|name| TestDb::new(name))
        .collect();
    let mut clients: Vec<Client> = dbs.iter().map(|db| db.connect()).collect();

    // A queue in each: tickets commit there, and each database stores only its own events.
    let tickets: Vec<Vec<i64>> = clients
        .iter_mut()
        .enumerate()
        .map(|(i, client)| enqueue_and_await(client, &format!("db{i}"), 40))
        .collect();
    for (i, client) in clients.iter_mut().enumerate() {
        assert_eq!(count(client, "SELECT count(*) FROM allsource.events"), 40);
        assert_eq!(
            count(
                client,
                &format!(
                    "SELECT count(*) FROM allsource.events WHERE stream_id NOT LIKE 'db{i}-%'"
                )
            ),
            0,
            "only its own database's events"
        );
        // Every lane of this database has its own running worker.
        eventually("two ingest workers per database", 10, || {
            count(
                client,
                "SELECT count(*) FROM allsource.ingest_workers() WHERE pid IS NOT NULL",
            ) == 2
        });
        assert_store_is_sound(client);
    }
    let mut all_tickets: Vec<i64> = tickets.iter().flatten().copied().collect();
    all_tickets.sort_unstable();
    all_tickets.dedup();
    assert_eq!(
        all_tickets.len(),
        120,
        "tickets are unique across databases"
    );
    let mut pids: Vec<i32> = clients
        .iter_mut()
        .flat_map(|c| workers(c, "allsource ingest worker"))
        .collect();
    assert_eq!(pids.len(), 6, "two ingest workers in each database");
    pids.dedup();
    assert_eq!(pids.len(), 6);

    // A ticket of one database is unknown in another.
    for (i, client) in clients.iter_mut().enumerate() {
        for (j, theirs) in tickets.iter().enumerate().filter(|&(j, _)| j != i) {
            let error = try_await_ticket(client, theirs[0], 0).unwrap_err();
            assert_eq!(
                sqlstate(&error),
                "22023",
                "db{j}'s ticket in db{i}: {error}"
            );
        }
    }

    // A publisher in each, and a follower in each while writers append,
    // enqueue and roll back in all three: every committed event once, in order.
    for client in clients.iter_mut() {
        eventually("a publisher in each database", 5, || {
            workers(client, "allsource watermark publisher").len() == 1
        });
        eventually("the watermark published", 5, || {
            published_is_current(client)
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let followers: Vec<_> = dbs
        .iter()
        .map(|db| {
            let (db, stop) = (db.name().to_string(), stop.clone());
            thread::spawn(move || follow(db, stop))
        })
        .collect();
    let writers: Vec<_> = dbs
        .iter()
        .flat_map(|db| (0..2).map(move |w| (db.name().to_string(), w)))
        .map(|(db, w)| {
            let stop = stop.clone();
            thread::spawn(move || (db.clone(), write(db, stop, w)))
        })
        .collect();
    thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    let mut committed: Vec<Vec<i64>> = vec![vec![]; 3];
    for writer in writers {
        let (db, positions) = writer.join().unwrap();
        let i = dbs.iter().position(|d| d.name() == db).unwrap();
        committed[i].extend(positions);
    }
    for ((i, follower), client) in followers.into_iter().enumerate().zip(&mut clients) {
        let seen = follower.join().unwrap();
        let mut expected: Vec<i64> = client
            .query(
                "SELECT position FROM allsource.events ORDER BY position",
                &[],
            )
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(
            seen, expected,
            "db{i}'s follower saw every event once, in order"
        );
        expected.retain(|p| !committed[i].contains(p));
        assert_eq!(
            expected.len(),
            40,
            "db{i}: the writers' events, and the first 40"
        );
        assert_store_is_sound(client);
        eventually("the watermark published", 5, || {
            published_is_current(client)
        });
    }
}

#[test]
fn queue_a_database_created_while_running_is_served_and_can_be_dropped() {
    // Three lane groups: the queue tests' database takes one, the third
    // database created here waits for another to be freed.
    let _every = EveryDatabase::with(&[("allsource.max_databases", "3")]);
    let mut queue_db = crate::queue::queue_session();
    queue_db
        .batch_execute("CREATE EXTENSION IF NOT EXISTS allsource")
        .unwrap();
    enqueue_and_await(&mut queue_db, "queue-db", 1);
    let first = TestDb::new("late_first");
    let second = TestDb::empty("late_second");
    let mut client = first.connect();
    enqueue_and_await(&mut client, "first", 5);

    // A database without the extension (anyone with CREATEDB can make one)
    // gets no lanes and no ingest worker: the publisher the launcher starts
    // there only looks and leaves.
    let mut late = second.connect();
    for _ in 0..15 {
        assert!(
            workers(&mut late, "allsource ingest worker").is_empty(),
            "no ingest worker where the extension is not created"
        );
        thread::sleep(Duration::from_millis(100));
    }

    // CREATE EXTENSION while the server runs: the queue works at once, the
    // publisher starts within seconds.
    late.batch_execute("CREATE EXTENSION allsource").unwrap();
    enqueue_and_await(&mut late, "late", 5);
    eventually("the publisher of a new database", 5, || {
        workers(&mut late, "allsource watermark publisher").len() == 1
    });
    eventually("the watermark published", 5, || {
        published_is_current(&mut late)
    });

    // Every group is taken: a third database is refused, naming the limit.
    let third = TestDb::new("late_third");
    let mut waiting = third.connect();
    let error = waiting
        .query("SELECT allsource.enqueue('s', 'T', '{}')", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&error), "55000", "{error}");
    let message = error.as_db_error().unwrap().message();
    assert!(message.contains("max_databases"), "{message}");

    // DROP DATABASE (without FORCE) of a database with running workers
    // stops them first; it does not wait for them to leave, nor fail.
    drop(late);
    let name = second.name().to_string();
    let mut admin = connect_to("postgres");
    let started = Instant::now();
    admin
        .batch_execute(&format!("DROP DATABASE {name}"))
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "DROP DATABASE took {:?}",
        started.elapsed()
    );

    // Its group is freed: the third database gets it, and its queue works.
    eventually("a lane group for the third database", 10, || {
        waiting
            .query("SELECT allsource.enqueue('s', 'T', '{}')", &[])
            .is_ok()
    });
    enqueue_and_await(&mut waiting, "third", 5);
    eventually("the publisher of the third database", 5, || {
        workers(&mut waiting, "allsource watermark publisher").len() == 1
    });
    // The first was served throughout.
    enqueue_and_await(&mut client, "first-again", 5);

    // CREATE DATABASE … TEMPLATE a served database needs it to itself too:
    // its workers stop for the copy and start again after it.
    drop(client);
    let copy = format!("{}_copy", first.name());
    let started = Instant::now();
    admin
        .batch_execute(&format!("CREATE DATABASE {copy} TEMPLATE {}", first.name()))
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "CREATE DATABASE … TEMPLATE took {:?}",
        started.elapsed()
    );
    admin
        .batch_execute(&format!("DROP DATABASE {copy}"))
        .unwrap();
    let mut client = first.connect();
    eventually("the first database's workers back", 10, || {
        count(
            &mut client,
            "SELECT count(*) FROM allsource.ingest_workers() WHERE pid IS NULL",
        ) == 0
            && workers(&mut client, "allsource watermark publisher").len() == 1
    });
    enqueue_and_await(&mut client, "first-after-copy", 5);
}
