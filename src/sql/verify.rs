//! `allsource.verify_stream` and `allsource.verify_all`: stream events out of
//! the tables through SPI cursors, in chunks freed as they are consumed, into
//! the pure [`crate::verify`] checker. Memory stays flat whatever the store's size.

use crate::checksum::unix_micros_from_postgres;
use crate::checksum::CHECKSUM_LEN;
use crate::sql::raise::or_raise;
use crate::sql::spi;
use crate::validate;
use crate::verify::{ErasedDigests, EventRow, StreamRow, StreamVerifier, Verdict};
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiTupleTable};
use pgrx::Uuid;
use std::time::{Duration, Instant};

/// Rows fetched per cursor round trip.
const CHUNK: i64 = 1000;
/// How often `verify_all` reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// An event and, once a hard delete erased it, the digests kept in its place.
const EVENT_COLUMNS: &str =
    "e.version, e.event_type, e.event_id, e.payload::text, e.metadata::text, \
     e.created_at, e.checksum, x.payload_digest, x.metadata_digest";
const ERASED_JOIN: &str = "LEFT JOIN allsource.erased_events x \
     ON x.partition_id = e.partition_id AND x.position = e.position";
/// The stream row's columns a verdict needs.
const HEAD_COLUMNS: &str = "partition_id, version, last_checksum, \
     CASE WHEN erased_at IS NOT NULL THEN pg_catalog.format('erased at %s by %s', erased_at, erased_by) END";

/// Verifies one stream: gapless versions 1..version, the stream row, the hash chain.
/// Runs as the extension's owner (it reads the erased events' digests, which
/// readers cannot); scoped to the session's tenant.
#[pg_extern(stable, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn verify_stream(
    stream_id: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(ok, bool),
        name!(events_checked, i64),
        name!(first_bad_version, Option<i64>),
        name!(problem, Option<String>),
    ),
> {
    let stream_id = or_raise(validate::name("stream_id", stream_id));
    let verdict = Spi::connect(|client| {
        let head = stream_head(client, stream_id);
        verify_one(client, stream_id, head.as_ref())
    });
    TableIterator::once((
        verdict.ok,
        verdict.events_checked,
        verdict.first_bad_version,
        verdict.problem,
    ))
}

/// Verifies every stream; one row per stream that fails, none when all hold.
#[pg_extern(stable, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn verify_all() -> TableIterator<
    'static,
    (
        name!(stream_id, String),
        name!(first_bad_version, Option<i64>),
        name!(problem, Option<String>),
    ),
> {
    let started = Instant::now();
    let mut last_report = started;
    let (mut streams, mut events) = (0u64, 0u64);
    let mut failures = vec![];
    Spi::connect(|client| {
        let mut cursor = spi(client.try_open_cursor(
            &format!(
                "SELECT stream_id, {HEAD_COLUMNS} FROM allsource.streams WHERE allsource._in_tenant(tenant_id) ORDER BY stream_id"
            ),
            &[],
        ));
        loop {
            let heads: Vec<(String, Head)> = consume(spi(cursor.fetch(CHUNK)), |row| {
                (
                    spi(row.get(1)).expect("NOT NULL"),
                    Head {
                        partition_id: spi(row.get(2)).expect("NOT NULL"),
                        row: StreamRow {
                            version: spi(row.get(3)).expect("NOT NULL"),
                            last_checksum: spi(row.get(4)),
                        },
                        erased: spi(row.get(5)),
                    },
                )
            });
            if heads.is_empty() {
                break;
            }
            for (stream_id, head) in &heads {
                check_for_interrupts!();
                let verdict = verify_one(client, stream_id, Some(head));
                streams += 1;
                events += verdict.events_checked as u64;
                if !verdict.ok {
                    failures.push((
                        stream_id.clone(),
                        verdict.first_bad_version,
                        verdict.problem,
                    ));
                }
                if last_report.elapsed() >= PROGRESS_EVERY {
                    last_report = Instant::now();
                    notice!("{}", progress(streams, events, failures.len(), started));
                }
            }
        }
        drop(cursor);
        // Events whose stream row is gone altogether.
        let orphans = spi(client.select(
            "SELECT DISTINCT e.stream_id FROM allsource.events e
             WHERE allsource._in_tenant(e.tenant_id)
               AND NOT EXISTS (SELECT 1 FROM allsource.streams s WHERE s.stream_id = e.stream_id)",
            None,
            &[],
        ));
        failures.extend(consume(orphans, |row| {
            (
                spi(row.get::<String>(1)).expect("NOT NULL"),
                Some(1),
                Some("events exist but the stream row is missing".to_string()),
            )
        }));
    });
    if started.elapsed() >= PROGRESS_EVERY {
        notice!(
            "{} (done)",
            progress(streams, events, failures.len(), started)
        );
    }
    failures.sort();
    TableIterator::new(failures)
}

fn progress(streams: u64, events: u64, failing: usize, started: Instant) -> String {
    let seconds = started.elapsed().as_secs_f64();
    format!(
        "allsource.verify_all: {streams} streams, {events} events checked, {failing} failing, {seconds:.0} s ({:.0} events/s)",
        events as f64 / seconds.max(1e-9)
    )
}

/// A stream row and where its events live.
struct Head {
    partition_id: i32,
    row: StreamRow,
    /// When and by whom a hard delete erased the stream's payloads.
    erased: Option<String>,
}

fn stream_head(client: &SpiClient, stream_id: &str) -> Option<Head> {
    let table = spi(client.select(
        &format!(
            "SELECT {HEAD_COLUMNS} FROM allsource.streams WHERE stream_id = $1 AND allsource._in_tenant(tenant_id)"
        ),
        None,
        &[stream_id.into()],
    ));
    consume(table, |row| Head {
        partition_id: spi(row.get(1)).expect("NOT NULL"),
        row: StreamRow {
            version: spi(row.get(2)).expect("NOT NULL"),
            last_checksum: spi(row.get(3)),
        },
        erased: spi(row.get(4)),
    })
    .pop()
}

/// Streams the stream's events through a verifier.
fn verify_one(client: &SpiClient, stream_id: &str, head: Option<&Head>) -> Verdict {
    // With a stream row, read its partition only; without one, look everywhere.
    let query = match head {
        Some(head) => format!(
            "SELECT {EVENT_COLUMNS} FROM allsource.events_p{} e {ERASED_JOIN} \
             WHERE e.stream_id = $1 AND allsource._in_tenant(e.tenant_id) ORDER BY e.version",
            head.partition_id
        ),
        None => format!(
            "SELECT {EVENT_COLUMNS} FROM allsource.events e {ERASED_JOIN} \
             WHERE e.stream_id = $1 AND allsource._in_tenant(e.tenant_id) ORDER BY e.version"
        ),
    };
    let mut verifier = StreamVerifier::new(stream_id);
    let mut cursor = spi(client.try_open_cursor(&query, &[stream_id.into()]));
    'rows: loop {
        let rows = consume(spi(cursor.fetch(CHUNK)), event_row);
        if rows.is_empty() {
            break;
        }
        for row in rows {
            if !verifier.push(row) {
                break 'rows;
            }
        }
    }
    drop(cursor);
    if let Some((version, checksum)) = verifier.mismatched_checksum() {
        let source = spi(client.select(
            "SELECT version FROM allsource.events WHERE stream_id = $1 AND checksum = $2 AND version <> $3 LIMIT 1",
            None,
            &[stream_id.into(), checksum.to_vec().into(), version.into()],
        ));
        if let Some(source) = consume(source, |row| spi(row.get::<i64>(1)).expect("NOT NULL")).pop()
        {
            verifier.copied_from(source);
        }
    }
    let mut verdict = verifier.finish(head.map(|h| &h.row));
    // Sound but erased: say so, so that nobody mistakes the payloads for lost.
    if let (true, Some(erased)) = (verdict.ok, head.and_then(|h| h.erased.clone())) {
        verdict.problem = Some(erased);
    }
    verdict
}

fn event_row(row: pgrx::spi::SpiHeapTupleData) -> EventRow {
    let event_id: Uuid = spi(row.get(3)).expect("NOT NULL");
    let created_at: TimestampWithTimeZone = spi(row.get(6)).expect("NOT NULL");
    EventRow {
        version: spi(row.get(1)).expect("NOT NULL"),
        event_type: spi(row.get(2)).expect("NOT NULL"),
        event_id: *event_id.as_bytes(),
        payload: spi(row.get(4)).expect("NOT NULL"),
        metadata: spi(row.get(5)),
        created_at_unix_micros: unix_micros_from_postgres(created_at.into_inner()),
        checksum: spi(row.get(7)).expect("NOT NULL"),
        erased: spi::<Option<Vec<u8>>>(row.get(8)).map(|payload| ErasedDigests {
            payload: digest_bytes(payload),
            metadata: spi::<Option<Vec<u8>>>(row.get(9)).map(digest_bytes),
        }),
    }
}

/// A stored digest; a wrong length cannot verify, so zeros stand in for it.
fn digest_bytes(bytes: Vec<u8>) -> [u8; CHECKSUM_LEN] {
    bytes.try_into().unwrap_or([0; CHECKSUM_LEN])
}

/// Converts every row of an SPI result into Rust values, then frees the
/// result: SPI keeps results until the function returns otherwise, which
/// would make verify_all's memory grow with the store.
fn consume<T>(
    table: SpiTupleTable,
    convert: impl FnMut(pgrx::spi::SpiHeapTupleData) -> T,
) -> Vec<T> {
    let values = table.into_iter().map(convert).collect();
    // SAFETY: SPI_tuptable is the result just consumed (no SPI call ran since),
    // and nothing refers to it any more.
    unsafe { pg_sys::SPI_freetuptable(pg_sys::SPI_tuptable) };
    values
}
