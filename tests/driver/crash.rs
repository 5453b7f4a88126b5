//! A backend killed with SIGKILL while it holds a slot: PostgreSQL restarts
//! every process and re-creates shared memory, and the watermark must not be
//! stuck afterwards. Kills the whole server's sessions, so scripts/test.sh
//! runs it alone, after the other driver tests.

use crate::watermark::{holder, inflight_count};
use crate::TestDb;
use postgres::Client;
use std::thread;
use std::time::{Duration, Instant};

fn reconnect(db: &TestDb) -> Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match std::panic::catch_unwind(|| db.connect()) {
            Ok(client) => return client,
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(200)),
            Err(e) => std::panic::resume_unwind(e),
        }
    }
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

    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success(), "kill -9 {pid}");
    drop(victim);
    drop(observer);
    thread::sleep(Duration::from_millis(500));

    let mut client = reconnect(&db);
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
