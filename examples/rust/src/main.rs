//! AllSource from Rust with tokio-postgres: append with an expected version,
//! retry on a conflict, batches, a read_all subscriber, LISTEN, and a rollback.
//! Every step checks its result: the program exits non-zero at the first surprise.
//!
//! Run it against a server with AllSource preloaded (scripts/run.sh starts one):
//!
//! ```sh
//! DATABASE_URL=postgresql://postgres@localhost:25432/allsource cargo run -p allsource-example
//! ```
//!
//! (scripts/test_clients.sh runs it, and the Python and Node.js examples.)

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::{stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, GenericClient, NoTls, Notification};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// Returns an error from the enclosing function when a check fails.
macro_rules! check {
    ($ok:expr, $($what:tt)+) => {
        if !$ok {
            return Err(format!($($what)+).into());
        }
    };
}

/// AllSource's SQLSTATE for an optimistic concurrency conflict.
fn wrong_expected_version() -> SqlState {
    SqlState::from_code("ZA001")
}

/// Appends one event; returns its (version, position).
async fn append(
    db: &impl GenericClient,
    stream: &str,
    event_type: &str,
    payload: Value,
    expected_version: i64,
) -> Result<(i64, i64), tokio_postgres::Error> {
    let row = db
        .query_one(
            "SELECT version, position FROM allsource.append(stream_id => $1, event_type => $2,
               payload => $3, expected_version => $4)",
            &[&stream, &event_type, &payload, &expected_version],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

async fn stream_version(db: &impl GenericClient, stream: &str) -> Result<i64> {
    let row = db.query_one("SELECT allsource.stream_version($1)", &[&stream]).await?;
    Ok(row.get(0))
}

async fn event_types(db: &impl GenericClient, stream: &str) -> Result<Vec<String>> {
    let rows = db.query("SELECT event_type FROM allsource.read_stream($1)", &[&stream]).await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Appends at the version the caller decided on; on a conflict, re-reads the
/// stream and tries again at its current version. Returns (version, position, conflicts).
async fn append_with_retry(
    db: &Client,
    stream: &str,
    event_type: &str,
    payload: Value,
    mut expected_version: i64,
) -> Result<(i64, i64, u32)> {
    for conflicts in 0..5 {
        match append(db, stream, event_type, payload.clone(), expected_version).await {
            Ok((version, position)) => return Ok((version, position, conflicts)),
            Err(e) if e.code() == Some(&wrong_expected_version()) => {
                let message = e.as_db_error().map_or("", |db| db.message());
                println!("   conflict ZA001: {message}; re-reading {stream}");
                // A real handler would rebuild its state from read_stream and decide again.
                expected_version = stream_version(db, stream).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err("still conflicting after 5 attempts".into())
}

/// Connects, and forwards the connection's notifications to the returned channel.
async fn connect(url: &str) -> Result<(Client, mpsc::UnboundedReceiver<Notification>)> {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls).await?;
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let _ = sender.send(n);
            }
        }
    });
    Ok((client, receiver))
}

async fn run() -> Result<()> {
    let url = std::env::var("DATABASE_URL")
        .map_err(|_| "set DATABASE_URL, e.g. postgresql://postgres@localhost:25432/allsource")?;
    let run = format!("{:08x}", rand::random::<u32>()); // unique stream ids: the example can run again
    let [order, cart, invoice, shipment] =
        ["order", "cart", "invoice", "shipment"].map(|n| format!("{n}-{run}"));

    let (mut db, _) = connect(&url).await?;
    let (listener, mut notifications) = connect(&url).await?;
    db.batch_execute("CREATE EXTENSION IF NOT EXISTS allsource").await?;
    println!("1. connected; streams of this run end in -{run}");

    // 2. Appends with an expected version: 0 means "the stream must not exist yet".
    let (v1, p1) = append(&db, &order, "OrderPlaced", json!({"total": 42}), 0).await?;
    let (v2, p2) = append(&db, &order, "OrderPaid", json!({"amount": 42}), 1).await?;
    check!((v1, v2) == (1, 2), "versions 1 and 2, got {v1} and {v2}");
    check!(p2 > p1, "positions increase, got {p1} then {p2}");
    println!("2. {order}: OrderPlaced at version 1 (position {p1}), OrderPaid at 2 ({p2})");

    // 3. Optimistic concurrency: an append at a stale version fails with ZA001 and writes nothing...
    match append(&db, &order, "OrderShipped", json!({}), 1).await {
        Ok(_) => check!(false, "an append with a stale expected version succeeded"),
        Err(e) => check!(e.code() == Some(&wrong_expected_version()), "SQLSTATE ZA001, got {e:?}"),
    }
    check!(stream_version(&db, &order).await? == 2, "the refused append wrote nothing");
    // ... and the retry loop re-reads the stream and succeeds.
    let (version, p3, conflicts) =
        append_with_retry(&db, &order, "OrderShipped", json!({"carrier": "post"}), 1).await?;
    check!(
        (version, conflicts) == (3, 1),
        "version 3 after one conflict, got {version} after {conflicts}"
    );
    let types = event_types(&db, &order).await?;
    check!(
        types == ["OrderPlaced", "OrderPaid", "OrderShipped"],
        "read_stream({order}) = {types:?}"
    );
    println!(
        "3. stale expected version refused with ZA001; retried: OrderShipped at version {version}"
    );

    // 4. append_batch to several streams in one statement: one round trip, all or nothing.
    let batches = json!({
        &cart: [{"type": "ItemAdded", "payload": {"sku": "A-1"}},
                {"type": "ItemAdded", "payload": {"sku": "B-7"}},
                {"type": "CheckedOut", "payload": {}, "metadata": {"ip": "10.0.0.1"}}],
        &invoice: [{"type": "InvoiceIssued", "payload": {"total": 42}},
                   {"type": "InvoiceSent", "payload": {"to": "alice@example.com"}}],
        &shipment: [{"type": "ShipmentBooked", "payload": {"parcels": 1}}],
    });
    let rows = db
        .query(
            "SELECT s.stream_id, b.* FROM jsonb_each($1) AS s(stream_id, events),
               LATERAL allsource.append_batch(s.stream_id, s.events, expected_version => 0) AS b",
            &[&batches],
        )
        .await?;
    // stream → (first_version, last_version, first_position, last_position)
    let ranges: BTreeMap<String, (i64, i64, i64, i64)> =
        rows.iter().map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4)))).collect();
    let sizes = BTreeMap::from([(cart.clone(), 3), (invoice.clone(), 2), (shipment.clone(), 1)]);
    check!(
        rows.len() == 3 && ranges.keys().eq(sizes.keys()),
        "one result per stream, got {ranges:?}"
    );
    for (stream, &n) in &sizes {
        let (first_v, last_v, first_p, last_p) = ranges[stream];
        check!((first_v, last_v) == (1, n), "{stream}: versions 1..{n}, got {first_v}..{last_v}");
        check!(last_p - first_p >= n - 1, "{stream}: positions {first_p}..{last_p} for {n} events");
        check!(stream_version(&db, stream).await? == n, "{stream}: stream_version");
    }
    let summary: Vec<String> = ranges.iter().map(|(s, r)| format!("{s} v1..{}", r.1)).collect();
    println!("4. append_batch: {}", summary.join(", "));

    // 5. A subscriber: read_all from a cursor, a page at a time, until a page comes back short.
    let mut expected = BTreeMap::from([
        ((order.clone(), 1), p1),
        ((order.clone(), 2), p2),
        ((order.clone(), 3), p3),
    ]);
    for (stream, &n) in &sizes {
        let (_, _, first_p, last_p) = ranges[stream];
        expected.insert((stream.clone(), 1), first_p);
        expected.insert((stream.clone(), n), last_p);
    }
    let (page_size, mut cursor, mut last_position, mut pages) = (3i32, p1 - 1, 0i64, 0);
    let mut seen: BTreeMap<(String, i64), i64> = BTreeMap::new();
    loop {
        let page = db
            .query(
                "SELECT position, stream_id, version
                   FROM allsource.read_all(after_position => $1, max_count => $2)",
                &[&cursor, &page_size],
            )
            .await?;
        pages += 1;
        for row in &page {
            let (position, stream, version): (i64, String, i64) =
                (row.get(0), row.get(1), row.get(2));
            check!(
                position > last_position,
                "read_all in ascending position: {position} after {last_position}"
            );
            last_position = position;
            if stream.ends_with(&format!("-{run}")) {
                let first = seen.insert((stream.clone(), version), position).is_none();
                check!(first, "{stream} version {version} read twice");
            }
        }
        if let Some(last) = page.last() {
            cursor = last.get(0); // the subscriber's cursor: the last position it processed
        }
        if page.len() < page_size as usize {
            break; // caught up with the watermark
        }
    }
    let mut versions = sizes.clone();
    versions.insert(order.clone(), 3);
    let wanted: BTreeSet<(String, i64)> =
        versions.iter().flat_map(|(s, &n)| (1..=n).map(move |v| (s.clone(), v))).collect();
    check!(seen.keys().eq(&wanted), "read_all returned {seen:?}, expected {wanted:?}");
    for (key, position) in &expected {
        check!(
            seen.get(key) == Some(position),
            "{key:?} at {:?}, append said {position}",
            seen.get(key)
        );
    }
    println!(
        "5. read_all: {} events of this run once each, in position order, {pages} pages of {page_size}",
        seen.len()
    );

    // 6. LISTEN: after a commit, a notification names the partition and its last committed position.
    listener.batch_execute("LISTEN allsource_events").await?;
    let partition: i32 =
        db.query_one("SELECT allsource.partition_for($1)", &[&order]).await?.get(0);
    let (_, delivered_at) = append(&db, &order, "OrderDelivered", json!({}), 3).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let received = loop {
        let Ok(Some(n)) = timeout_at(deadline, notifications.recv()).await else {
            return Err(format!(
                "no notification for partition {partition} up to {delivered_at} within 10 s"
            )
            .into());
        };
        let payload: Value = serde_json::from_str(n.payload())?;
        if payload["partition_id"] == partition
            && payload["last_position"].as_i64() >= Some(delivered_at)
        {
            break payload;
        }
    };
    println!("6. LISTEN allsource_events: got {received} after OrderDelivered at {delivered_at}");

    // 7. Appends are transactional: roll back, and neither stream has the events.
    let before = (stream_version(&db, &order).await?, stream_version(&db, &cart).await?);
    let tx = db.transaction().await?;
    let (refund_v, _) =
        append(&tx, &order, "OrderRefunded", json!({"amount": 42}), before.0).await?;
    let (reopen_v, _) = append(&tx, &cart, "CartReopened", json!({}), before.1).await?;
    check!((refund_v, reopen_v) == (before.0 + 1, before.1 + 1), "versions inside the transaction");
    tx.rollback().await?; // e.g. the payment provider refused the refund
    let after = (stream_version(&db, &order).await?, stream_version(&db, &cart).await?);
    check!(after == before, "stream versions after the rollback: {after:?}, before: {before:?}");
    let order_types = event_types(&db, &order).await?;
    let cart_types = event_types(&db, &cart).await?;
    check!(
        !order_types.contains(&"OrderRefunded".to_string())
            && !cart_types.contains(&"CartReopened".to_string()),
        "rolled-back events are not in read_stream"
    );
    let (order_v, cart_v) = before;
    println!(
        "7. rolled back appends to {order} and {cart}: still at versions {order_v} and {cart_v}"
    );
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("FAILED: {e}");
        std::process::exit(1);
    }
    println!("rust example: all checks passed");
}
