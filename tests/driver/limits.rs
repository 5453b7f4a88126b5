//! Work at the size limits stays linear: the largest `append_batch`
//! (100,000 events, with or without ids, and with a duplicate id found at
//! its very end) and an ingest worker's batch of events for as many
//! streams. Times are printed, not asserted. And a payload as large as
//! PostgreSQL stores out of line, passed from a table.

use crate::queue::{await_ticket, fresh_queue_db, queue_session};
use crate::{sqlstate, TestDb};
use std::time::{Duration, Instant};

const MAX_BATCH: i32 = 100_000;

/// `append_batch` of `MAX_BATCH` events built by the server; `ids` is the
/// SQL of each event's id (`i` is its number).
fn big_batch(
    client: &mut postgres::Client,
    stream: &str,
    ids: &str,
) -> Result<i64, postgres::Error> {
    client
        .query_one(
            &format!(
                "SELECT last_version FROM allsource.append_batch($1,
                   (SELECT jsonb_agg(jsonb_build_object('type', 'T', 'payload', i, 'id', {ids}) ORDER BY i)
                    FROM generate_series(1, $2) i))"
            ),
            &[&stream, &MAX_BATCH],
        )
        .map(|row| row.get(0))
}

#[test]
fn the_largest_append_batch_is_linear_with_and_without_ids() {
    let db = TestDb::new("limits_batch");
    let mut client = db.connect();
    let timed = |client: &mut postgres::Client, stream: &str, ids: &str| {
        let started = Instant::now();
        let result = big_batch(client, stream, ids);
        (result, started.elapsed())
    };

    let (result, took) = timed(&mut client, "no-ids", "NULL");
    assert_eq!(result.unwrap(), i64::from(MAX_BATCH));
    println!("append_batch of {MAX_BATCH} events without ids: {took:?}");

    let (result, took) = timed(&mut client, "ids", "gen_random_uuid()");
    assert_eq!(result.unwrap(), i64::from(MAX_BATCH));
    println!("append_batch of {MAX_BATCH} events with distinct ids: {took:?}");

    // The last event repeats the first one's id: found after every other id.
    let (result, took) = timed(
        &mut client,
        "duplicate",
        &format!(
            "CASE WHEN i IN (1, {MAX_BATCH}) THEN '00000000-0000-0000-0000-00000000000d'::uuid \
             ELSE gen_random_uuid() END"
        ),
    );
    let error = result.unwrap_err();
    assert_eq!(sqlstate(&error), "22023");
    let message = error.as_db_error().unwrap().message().to_string();
    assert!(
        message.contains(&format!("events[{}].id", MAX_BATCH - 1)) && message.contains("events[0]"),
        "{message}"
    );
    println!("append_batch of {MAX_BATCH} events refused for a duplicate id at the end: {took:?}");
    let version: i64 = client
        .query_one("SELECT allsource.stream_version('duplicate')", &[])
        .unwrap()
        .get(0);
    assert_eq!(version, 0, "the refused batch wrote nothing");
}

/// One worker transaction for `EVENTS` queued events of as many streams.
/// The queue is the server's: `queue_` runs this test alone.
#[test]
fn queue_a_worker_batch_of_many_streams_is_linear() {
    const EVENTS: i32 = 30_000;
    let mut admin = fresh_queue_db();
    // The worker waits for the locked stream without limit while the queue fills.
    let _waits = crate::queue::worker_waits_for_locks();
    admin
        .batch_execute("ALTER SYSTEM SET allsource.batch_max = 100000")
        .unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    let result = std::panic::catch_unwind(|| {
        let mut client = queue_session();
        // The worker waits for a locked stream while the queue fills behind it.
        let mut blocker = queue_session();
        blocker
            .batch_execute(
                "SELECT allsource.append('wide-block', 'T', '{}');
                 BEGIN; SELECT version FROM allsource.streams WHERE stream_id = 'wide-block' FOR UPDATE",
            )
            .unwrap();
        let blocked: i64 = client
            .query_one("SELECT allsource.enqueue('wide-block', 'T', '{}')", &[])
            .unwrap()
            .get(0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while client
            .query_one(
                "SELECT count(*) FROM allsource.ingest_workers() WHERE state = 'appending'",
                &[],
            )
            .unwrap()
            .get::<_, i64>(0)
            == 0
        {
            assert!(
                Instant::now() < deadline,
                "the worker never took the blocked event"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        client
            .query_one(
                "SELECT count(allsource.enqueue('wide-' || i, 'T', '{}')) FROM generate_series(1, $1) i",
                &[&EVENTS],
            )
            .unwrap();
        let started = Instant::now();
        blocker.batch_execute("COMMIT").unwrap();
        assert_eq!(
            await_ticket(&mut client, blocked, 60_000).status,
            "committed"
        );
        let appended = |client: &mut postgres::Client| -> i64 {
            client
                .query_one(
                    "SELECT count(*) FROM allsource.streams WHERE stream_id LIKE 'wide-%' AND version = 1",
                    &[],
                )
                .unwrap()
                .get(0)
        };
        let deadline = Instant::now() + Duration::from_secs(600);
        while appended(&mut client) < i64::from(EVENTS) {
            assert!(
                Instant::now() < deadline,
                "the queued events were not appended"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let took = started.elapsed();
        let batch: i32 = client
            .query_one(
                "SELECT max(last_batch_size) FROM allsource.ingest_workers()",
                &[],
            )
            .unwrap()
            .get(0);
        println!(
            "{EVENTS} queued events for {EVENTS} streams appended in {took:?} (largest last worker batch: {batch} events)"
        );
    });
    admin
        .batch_execute("ALTER SYSTEM RESET allsource.batch_max")
        .unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// `append` stores a jsonb argument's datum as passed: one read from a
/// table, where it is stored out of line (TOAST), is stored whole, and reads
/// back the same after that table is gone.
#[test]
fn a_payload_passed_from_a_toasted_column_is_stored_whole() {
    let db = TestDb::new("toasted");
    let mut client = db.connect();
    client
        .batch_execute(
            "CREATE TABLE big (payload jsonb);
             INSERT INTO big SELECT jsonb_build_object('noise', string_agg(md5(i::text), ''))
             FROM generate_series(1, 6000) i;
             SELECT allsource.append('toasted', 'T', payload, metadata => payload) FROM big;
             CREATE TABLE expected AS SELECT md5(payload::text) AS digest, pg_column_size(payload) AS size FROM big;
             DROP TABLE big;",
        )
        .unwrap();
    let mut fresh = db.connect();
    let row = fresh
        .query_one(
            "SELECT md5(e.payload::text) = x.digest AND md5(e.metadata::text) = x.digest, x.size
             FROM allsource.read_stream('toasted') e, expected x",
            &[],
        )
        .unwrap();
    assert!(
        row.get::<_, bool>(0),
        "the payload and metadata read back whole"
    );
    assert!(
        row.get::<_, i32>(1) > 2000,
        "the source was stored out of line"
    );
    let ok: bool = fresh
        .query_one("SELECT ok FROM allsource.verify_stream('toasted')", &[])
        .unwrap()
        .get(0);
    assert!(ok);
}
