//! `allsource.verify_stream`, `verify_all`, `verify_all_tenants` and
//! `verify_anchor`: stream events out of the tables through SPI cursors, in
//! chunks freed as they are consumed, into the pure [`allsource_core::verify`]
//! checker. Memory stays flat whatever the store's size. (`verify_gapless` and
//! `stream_head` are SQL, in sql/finalize/reads.sql.)

use crate::sql::raise::or_raise;
use crate::sql::spi;
use allsource_core::checksum::unix_micros_from_postgres;
use allsource_core::checksum::CHECKSUM_LEN;
use allsource_core::error::Error;
use allsource_core::partition;
use allsource_core::validate;
use allsource_core::verify::{
    registry_problem, Deletion, ErasedDigests, EventRow, Registered, StreamRow, StreamVerifier,
    Verdict,
};
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiTupleTable};
use pgrx::Uuid;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Rows fetched per cursor round trip.
const CHUNK: i64 = 1000;
/// How often `verify_all` reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// An event, what `event_ids` says of its id (0 missing, 1 this event,
/// 2 another), and once a hard delete erased it, the digests kept in its place.
const EVENT_COLUMNS: &str =
    "e.version, e.event_type, e.event_id, e.payload::text, e.metadata::text, \
     e.created_at, e.checksum, x.payload_digest, x.metadata_digest, e.position, e.tenant_id, e.tags";
const EVENT_JOINS: &str = "LEFT JOIN allsource.erased_events x \
     ON x.partition_id = e.partition_id AND x.position = e.position";
/// The id registry per event, for one stream (`verify_all` checks the whole
/// registry in one join instead: a probe per event would cost it a third of
/// its speed, so its events take 1, "registered here").
const REGISTRY_COLUMN: &str = "CASE WHEN i.event_id IS NULL THEN 0 \
     WHEN i.partition_id = e.partition_id AND i.position = e.position THEN 1 ELSE 2 END";
const REGISTRY_JOIN: &str = "LEFT JOIN allsource.event_ids i ON i.event_id = e.event_id";
/// The stream row's columns a verdict needs.
const HEAD_COLUMNS: &str = "s.partition_id, s.version, s.last_checksum, \
     CASE WHEN s.erased_at IS NOT NULL THEN pg_catalog.format('erased at %s by %s', s.erased_at, s.erased_by) END, \
     s.tenant_id, s.deleted_at, s.deleted_by, s.tombstone_checksum";

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
        let partitions = Partitions::read(client);
        let head = stream_head(client, stream_id);
        verify_one(client, &partitions, stream_id, head.as_ref(), None)
    });
    TableIterator::once((
        verdict.ok,
        verdict.events_checked,
        verdict.first_bad_version,
        verdict.problem,
    ))
}

/// Verifies one stream as `verify_stream` does, and that it still holds an
/// anchor recorded earlier (`stream_head`): `checksum` at `version`.
#[pg_extern(stable, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn verify_anchor(
    stream_id: Option<&str>,
    version: Option<i64>,
    checksum: Option<Vec<u8>>,
) -> TableIterator<
    'static,
    (
        name!(ok, bool),
        name!(events_checked, i64),
        name!(first_bad_version, Option<i64>),
        name!(problem, Option<String>),
    ),
> {
    let (stream_id, version, checksum) = or_raise((|| {
        let stream_id = validate::name("stream_id", stream_id)?;
        let version = version
            .filter(|&v| v >= 0)
            .ok_or_else(|| Error::invalid_argument("version", "must be 0 or more"))?;
        let checksum = checksum
            .filter(|c| c.len() == CHECKSUM_LEN)
            .ok_or_else(|| {
                Error::invalid_argument("checksum", "must be 32 bytes, as stream_head returns it")
            })?;
        Ok((stream_id, version, checksum))
    })());
    let verdict = Spi::connect(|client| {
        let partitions = Partitions::read(client);
        let head = stream_head(client, stream_id);
        verify_one(
            client,
            &partitions,
            stream_id,
            head.as_ref(),
            Some((version, &checksum)),
        )
    });
    TableIterator::once((
        verdict.ok,
        verdict.events_checked,
        verdict.first_bad_version,
        verdict.problem,
    ))
}

/// Verifies every stream of the session's tenant, and the store's shared
/// parts (partitions, event id registry); one row per stream that fails
/// (`stream_id` NULL for the shared parts), none when all hold.
#[pg_extern(stable, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn verify_all() -> TableIterator<
    'static,
    (
        name!(stream_id, Option<String>),
        name!(first_bad_version, Option<i64>),
        name!(problem, Option<String>),
    ),
> {
    let failures = verify_store(Scope::Tenant);
    TableIterator::new(
        failures
            .into_iter()
            .map(|f| (f.stream_id, f.version, Some(f.problem))),
    )
}

/// `verify_all` over every tenant, for auditors: executable by the
/// extension's owner and the roles granted `allsource_auditor` only.
// pgrx reads the column names from the signature, so no alias for the type.
#[allow(clippy::type_complexity)]
#[pg_extern(stable, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn verify_all_tenants() -> TableIterator<
    'static,
    (
        name!(tenant_id, Option<String>),
        name!(stream_id, Option<String>),
        name!(first_bad_version, Option<i64>),
        name!(problem, Option<String>),
    ),
> {
    let failures = verify_store(Scope::Everyone);
    TableIterator::new(
        failures
            .into_iter()
            .map(|f| (f.tenant, f.stream_id, f.version, Some(f.problem))),
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// The session's tenant's streams.
    Tenant,
    /// Every stream.
    Everyone,
}

impl Scope {
    /// A condition on a row's `tenant_id` column `column`.
    fn filter(self, column: &str) -> String {
        match self {
            Scope::Tenant => {
                format!("{column} IS NOT DISTINCT FROM (SELECT allsource.current_tenant())")
            }
            Scope::Everyone => "true".into(),
        }
    }
}

/// One row of `verify_all`'s answer.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Failure {
    tenant: Option<String>,
    stream_id: Option<String>,
    version: Option<i64>,
    problem: String,
}

fn verify_store(scope: Scope) -> Vec<Failure> {
    let started = Instant::now();
    let mut last_report = started;
    let (mut streams, mut events_checked) = (0u64, 0u64);
    let mut failures = vec![];
    Spi::connect(|client| {
        let partitions = Partitions::read(client);
        failures.extend(partitions.problems.iter().map(|problem| Failure {
            tenant: None,
            stream_id: None,
            version: None,
            problem: problem.clone(),
        }));
        // Each attached partition in one statement: its streams joined with
        // their events, in stream and version order. A query per stream
        // would be planned 40,000 times for 40,000 small streams.
        let mut attached: Vec<i32> = partitions.attached.iter().copied().collect();
        attached.sort_unstable();
        for &partition_id in &attached {
            let mut rows = PartitionRows::open(client, partition_id, scope);
            while let Some((stream_id, head, first_event)) = rows.next_stream() {
                check_for_interrupts!();
                let events = first_event
                    .into_iter()
                    .chain(std::iter::from_fn(|| rows.next_event()));
                let verdict = match partitions.problem(&stream_id, partition_id) {
                    Some(problem) => Verdict::bad(0, None, problem),
                    None => verify_events(client, &stream_id, Some(&head), None, events),
                };
                streams += 1;
                events_checked += verdict.events_checked as u64;
                if !verdict.ok {
                    failures.push(Failure {
                        tenant: head.row.tenant.clone(),
                        stream_id: Some(stream_id.clone()),
                        version: verdict.first_bad_version,
                        problem: verdict.problem.unwrap_or_default(),
                    });
                }
                if last_report.elapsed() >= PROGRESS_EVERY {
                    last_report = Instant::now();
                    notice!(
                        "{}",
                        progress(streams, events_checked, failures.len(), started)
                    );
                }
            }
        }
        // Stream rows that name a partition that is not attached.
        let elsewhere = spi(client.select(
            &format!(
                "SELECT s.stream_id, s.partition_id, s.tenant_id FROM allsource.streams s \
                 WHERE NOT (s.partition_id OPERATOR(pg_catalog.=) ANY ($1)) AND {}",
                scope.filter("s.tenant_id")
            ),
            None,
            &[attached.into()],
        ));
        for (stream_id, partition_id, tenant) in consume(elsewhere, |row| {
            (
                spi::<Option<String>>(row.get(1)).expect("NOT NULL"),
                spi::<Option<i32>>(row.get(2)).expect("NOT NULL"),
                spi::<Option<String>>(row.get(3)),
            )
        }) {
            streams += 1;
            let problem = partitions
                .problem(&stream_id, partition_id)
                .expect("not attached");
            failures.push(Failure {
                tenant,
                stream_id: Some(stream_id),
                version: None,
                problem,
            });
        }
        // Events without their stream row; for a tenant, also its events
        // under another tenant's stream row (which it cannot see).
        let (orphans, problem) = match scope {
            Scope::Everyone => (
                "SELECT DISTINCT e.stream_id, e.tenant_id FROM allsource.events e \
                 WHERE NOT EXISTS (SELECT 1 FROM allsource.streams s WHERE s.stream_id = e.stream_id)",
                "events exist but the stream row is missing",
            ),
            Scope::Tenant => (
                "SELECT DISTINCT e.stream_id, e.tenant_id FROM allsource.events e \
                 WHERE e.tenant_id IS NOT DISTINCT FROM (SELECT allsource.current_tenant()) AND NOT EXISTS (SELECT 1 FROM allsource.streams s \
                   WHERE s.stream_id = e.stream_id AND s.tenant_id IS NOT DISTINCT FROM e.tenant_id)",
                "events exist but the stream row is missing or another tenant's",
            ),
        };
        let orphans = spi(client.select(orphans, None, &[]));
        failures.extend(consume(orphans, |row| Failure {
            stream_id: Some(spi(row.get::<String>(1)).expect("NOT NULL")),
            tenant: spi(row.get(2)),
            version: Some(1),
            problem: problem.to_string(),
        }));
        // The id registry in one pass: each event's id registered, pointing
        // at it, and no row pointing at no event with its id (such an id is
        // refused as if it had been used). No tenant owns those rows: only
        // the auditor is told which ids.
        let registry = spi(client.select(
            &format!(
                "SELECT e.stream_id, e.version, i.event_id IS NULL, coalesce(e.event_id, i.event_id)::text, e.tenant_id \
                 FROM allsource.events e FULL JOIN allsource.event_ids i ON i.event_id = e.event_id \
                 WHERE (i.event_id IS NULL OR e.event_id IS NULL \
                        OR i.partition_id <> e.partition_id OR i.position <> e.position) \
                   AND (e.event_id IS NULL OR {})",
                scope.filter("e.tenant_id")
            ),
            None,
            &[],
        ));
        let (mut dangling, mut first_dangling) = (0u64, None::<String>);
        for (stream_id, version, missing, id, tenant) in consume(registry, |row| {
            (
                spi::<Option<String>>(row.get(1)),
                spi::<Option<i64>>(row.get(2)),
                spi::<Option<bool>>(row.get(3)).expect("computed"),
                spi::<Option<String>>(row.get(4)).expect("an id"),
                spi::<Option<String>>(row.get(5)),
            )
        }) {
            let (Some(stream_id), Some(version)) = (stream_id, version) else {
                dangling += 1;
                first_dangling = Some(first_dangling.map_or(id.clone(), |first| first.min(id)));
                continue;
            };
            let registered = if missing {
                Registered::Missing
            } else {
                Registered::Elsewhere
            };
            let problem = registry_problem(version, &id.parse().expect("a uuid"), registered)
                .expect("a registry problem");
            failures.push(Failure {
                tenant,
                stream_id: Some(stream_id),
                version: Some(version),
                problem,
            });
        }
        if dangling > 0 {
            let which = match (scope, first_dangling) {
                (Scope::Everyone, Some(id)) => format!(" (the first: {id})"),
                _ => String::new(),
            };
            failures.push(Failure {
                tenant: None,
                stream_id: None,
                version: None,
                problem: format!(
                    "{dangling} rows of allsource.event_ids point at no event with their id{which}: those ids are refused as if used"
                ),
            });
        }
        // The tag index in one pass: each tag of each event has its row in
        // allsource.event_tags, as the event has it, and each row its event's
        // tag. A missing row hides the event from conditions and read_query;
        // a forged one fails conditions it matches.
        let tag_index = spi(client.select(
            &format!(
                "WITH stored AS ( \
                   SELECT e.stream_id, e.version, e.tenant_id, t.tag, coalesce(e.tenant_id, '') AS tenant, \
                          e.position, e.partition_id, e.event_id, e.event_type, e.tags \
                   FROM allsource.events e, pg_catalog.unnest(e.tags) AS t(tag) \
                   WHERE e.tags IS NOT NULL AND {}) \
                 SELECT s.stream_id, s.version, s.tenant_id \
                 FROM stored s FULL JOIN allsource.event_tags r \
                   ON r.tag OPERATOR(pg_catalog.=) s.tag AND r.tenant OPERATOR(pg_catalog.=) s.tenant \
                  AND r.position OPERATOR(pg_catalog.=) s.position \
                 WHERE (s.tag IS NULL OR r.tag IS NULL OR r.partition_id OPERATOR(pg_catalog.<>) s.partition_id \
                        OR r.event_id OPERATOR(pg_catalog.<>) s.event_id OR r.event_type OPERATOR(pg_catalog.<>) s.event_type \
                        OR r.tags OPERATOR(pg_catalog.<>) s.tags) \
                   AND (s.tag IS NOT NULL OR {})",
                scope.filter("e.tenant_id"),
                scope.filter("nullif(r.tenant, '')")
            ),
            None,
            &[],
        ));
        let mut forged_tags = 0u64;
        for (stream_id, version, tenant) in consume(tag_index, |row| {
            (
                spi::<Option<String>>(row.get(1)),
                spi::<Option<i64>>(row.get(2)),
                spi::<Option<String>>(row.get(3)),
            )
        }) {
            let (Some(stream_id), Some(version)) = (stream_id, version) else {
                forged_tags += 1;
                continue;
            };
            failures.push(Failure {
                tenant,
                stream_id: Some(stream_id),
                version: Some(version),
                problem: format!("version {version}'s tags are not in allsource.event_tags as the event has them: append_if's conditions and read_query could miss it"),
            });
        }
        if forged_tags > 0 {
            failures.push(Failure {
                tenant: None,
                stream_id: None,
                version: None,
                problem: format!(
                    "{forged_tags} rows of allsource.event_tags are no event's tag: conditions that match them fail"
                ),
            });
        }
    });
    if started.elapsed() >= PROGRESS_EVERY {
        notice!(
            "{} (done)",
            progress(streams, events_checked, failures.len(), started)
        );
    }
    // One row per stream: the first problem in version order (a problem of
    // the stream row, version NULL, only when its events hold).
    failures.sort_by(|a, b| {
        (&a.tenant, &a.stream_id, a.version.is_none(), a.version).cmp(&(
            &b.tenant,
            &b.stream_id,
            b.version.is_none(),
            b.version,
        ))
    });
    failures
        .dedup_by(|later, first| later.stream_id.is_some() && later.stream_id == first.stream_id);
    failures
}

fn progress(streams: u64, events: u64, failing: usize, started: Instant) -> String {
    let seconds = started.elapsed().as_secs_f64();
    format!(
        "allsource.verify_all: {streams} streams, {events} events checked, {failing} failing, {seconds:.0} s ({:.0} events/s)",
        events as f64 / seconds.max(1e-9)
    )
}

/// The partitions of `allsource.events` as they must be: `events_p0` …
/// `events_p{N-1}` of schema allsource, each for its own partition id, and
/// no table of that name left detached.
struct Partitions {
    count: u32,
    attached: HashSet<i32>,
    problems: Vec<String>,
}

impl Partitions {
    fn read(client: &SpiClient) -> Partitions {
        let rows = spi(client.select(
            "SELECT n.nspname::text, c.relname::text, pg_catalog.pg_get_expr(c.relpartbound, c.oid) \
             FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE i.inhparent = 'allsource.events'::pg_catalog.regclass",
            None,
            &[],
        ));
        let found: Vec<(String, String, String)> = consume(rows, |row| {
            (
                spi(row.get(1)).expect("NOT NULL"),
                spi(row.get(2)).expect("NOT NULL"),
                spi::<Option<String>>(row.get(3)).unwrap_or_default(),
            )
        });
        let count = found.len() as u32;
        let mut attached = HashSet::new();
        let mut problems = vec![];
        for (schema, table, bound) in &found {
            let id = table
                .strip_prefix("events_p")
                .and_then(|k| k.parse::<i32>().ok())
                .filter(|&k| {
                    schema == "allsource"
                        && (k as u32) < count
                        && *bound == format!("FOR VALUES IN ({k})")
                        && *table == format!("events_p{k}")
                });
            match id {
                Some(id) => {
                    attached.insert(id);
                }
                None => problems.push(format!(
                    "{schema}.{table} ({bound}) is a partition of allsource.events that AllSource did not create"
                )),
            }
        }
        for k in 0..count as i32 {
            if !attached.contains(&k) {
                problems.push(format!(
                    "allsource.events_p{k} is not attached to allsource.events: its events are invisible"
                ));
            }
        }
        let detached = spi(client.select(
            "SELECT c.relname::text FROM pg_catalog.pg_class c \
             WHERE c.relnamespace = 'allsource'::pg_catalog.regnamespace AND c.relkind OPERATOR(pg_catalog.=) 'r' \
               AND NOT c.relispartition AND c.relname OPERATOR(pg_catalog.~) '^events_p[0-9]+$' ORDER BY 1",
            None,
            &[],
        ));
        for table in consume(detached, |row| {
            spi::<Option<String>>(row.get(1)).expect("NOT NULL")
        }) {
            problems.push(format!(
                "allsource.{table} exists but is not attached to allsource.events: a partition was detached"
            ));
        }
        problems.sort();
        problems.dedup();
        Partitions {
            count,
            attached,
            problems,
        }
    }

    /// What is wrong with a stream row's partition, if anything.
    fn problem(&self, stream_id: &str, partition_id: i32) -> Option<String> {
        if !self.attached.contains(&partition_id) {
            return Some(format!(
                "its partition allsource.events_p{partition_id} is not attached to allsource.events"
            ));
        }
        let expected = partition::partition_for(stream_id, self.count) as i32;
        (expected != partition_id).then(|| {
            format!(
                "the stream row says partition {partition_id}, but the stream belongs to partition {expected} of {}",
                self.count
            )
        })
    }
}

/// A stream row and where its events live.
struct StreamToVerify {
    partition_id: i32,
    row: StreamRow,
    /// When and by whom a hard delete erased the stream's payloads.
    erased: Option<String>,
}

/// A [`StreamToVerify`] from `HEAD_COLUMNS`, starting at column `first`.
fn head_row(row: &pgrx::spi::SpiHeapTupleData, first: usize) -> StreamToVerify {
    let erased: Option<String> = spi(row.get(first + 3));
    let deleted_at: Option<TimestampWithTimeZone> = spi(row.get(first + 5));
    StreamToVerify {
        partition_id: spi(row.get(first)).expect("NOT NULL"),
        row: StreamRow {
            version: spi(row.get(first + 1)).expect("NOT NULL"),
            last_checksum: spi(row.get(first + 2)),
            tenant: spi(row.get(first + 4)),
            deletion: deleted_at.map(|at| Deletion {
                at_unix_micros: unix_micros_from_postgres(at.into_inner()),
                by: spi(row.get(first + 6)),
            }),
            erased: erased.is_some(),
            tombstone_checksum: spi(row.get(first + 7)),
        },
        erased,
    }
}

fn stream_head(client: &SpiClient, stream_id: &str) -> Option<StreamToVerify> {
    let table = spi(client.select(
        &format!(
            "SELECT {HEAD_COLUMNS} FROM allsource.streams s WHERE s.stream_id = $1 AND s.tenant_id IS NOT DISTINCT FROM (SELECT allsource.current_tenant())"
        ),
        None,
        &[stream_id.into()],
    ));
    consume(table, |row| head_row(&row, 1)).pop()
}

/// Streams the stream's events through a verifier; with an anchor, also
/// checks that the stream still holds it.
fn verify_one(
    client: &SpiClient,
    partitions: &Partitions,
    stream_id: &str,
    head: Option<&StreamToVerify>,
    anchor: Option<(i64, &[u8])>,
) -> Verdict {
    // With a stream row, read its partition only (once it is known to be
    // attached: a detached one is no longer the store's), whatever the
    // events' tenant; without one, look everywhere, in the session's tenant.
    // The partition itself, not the parent: planning through the parent
    // costs each stream's query more than reading it.
    let query = match head {
        Some(head) => {
            if let Some(problem) = partitions.problem(stream_id, head.partition_id) {
                return Verdict::bad(0, None, problem);
            }
            format!(
                "SELECT {EVENT_COLUMNS}, {REGISTRY_COLUMN} FROM allsource.events_p{} e {EVENT_JOINS} {REGISTRY_JOIN} \
                 WHERE e.stream_id = $1 ORDER BY e.version",
                head.partition_id
            )
        }
        None => format!(
            "SELECT {EVENT_COLUMNS}, {REGISTRY_COLUMN} FROM allsource.events e {EVENT_JOINS} {REGISTRY_JOIN} \
             WHERE e.stream_id = $1 AND e.tenant_id IS NOT DISTINCT FROM (SELECT allsource.current_tenant()) ORDER BY e.version"
        ),
    };
    let mut cursor = spi(client.try_open_cursor(&query, &[stream_id.into()]));
    // Chunk by chunk, fetched only while the verifier wants more.
    let events = std::iter::from_fn(move || {
        let rows = consume(spi(cursor.fetch(CHUNK)), |row| event_row(&row, 1));
        (!rows.is_empty()).then_some(rows)
    })
    .flatten();
    verify_events(client, stream_id, head, anchor, events)
}

/// The verdict on a stream's events, in version order, until the first
/// that does not verify.
fn verify_events(
    client: &SpiClient,
    stream_id: &str,
    head: Option<&StreamToVerify>,
    anchor: Option<(i64, &[u8])>,
    events: impl Iterator<Item = EventRow>,
) -> Verdict {
    let mut verifier = StreamVerifier::new(stream_id, head.map(|h| &h.row));
    if let Some((version, _)) = anchor {
        verifier.watch(version);
    }
    for event in events {
        if !verifier.push(event) {
            break;
        }
    }
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
    let mut verdict = match anchor {
        Some((version, checksum)) => verifier.finish_against(version, checksum),
        None => verifier.finish(),
    };
    // Sound but erased: say so, so that nobody mistakes the payloads for lost.
    if let (true, Some(erased)) = (verdict.ok, head.and_then(|h| h.erased.clone())) {
        verdict.problem = Some(erased);
    }
    verdict
}

/// Where the event's columns start in a row of [`PartitionRows`]: after the
/// stream id and `HEAD_COLUMNS`.
const MERGED_EVENT_COLUMNS: usize = 10;

/// One partition's stream rows joined with their events, in stream and
/// version order, fetched in chunks: `verify_all`'s read of the store.
struct PartitionRows<'conn> {
    cursor: pgrx::spi::SpiCursor<'conn>,
    buffered: std::collections::VecDeque<MergedRow>,
    last_stream: Option<String>,
    exhausted: bool,
}

/// A row of [`PartitionRows`]: the stream row where a stream starts, and
/// an event unless the stream has none.
struct MergedRow {
    stream_id: String,
    head: Option<StreamToVerify>,
    event: Option<EventRow>,
}

impl<'conn> PartitionRows<'conn> {
    fn open(client: &SpiClient<'conn>, partition_id: i32, scope: Scope) -> Self {
        let query = format!(
            "SELECT s.stream_id, {HEAD_COLUMNS}, {EVENT_COLUMNS}, 1 \
             FROM allsource.streams s LEFT JOIN allsource.events_p{partition_id} e \
               ON e.stream_id OPERATOR(pg_catalog.=) s.stream_id {EVENT_JOINS} \
             WHERE s.partition_id OPERATOR(pg_catalog.=) {partition_id} AND {} ORDER BY s.stream_id, e.version",
            scope.filter("s.tenant_id")
        );
        PartitionRows {
            cursor: spi(client.try_open_cursor(&query, &[])),
            buffered: Default::default(),
            last_stream: None,
            exhausted: false,
        }
    }

    /// The next stream: its id, its row and its first event.
    fn next_stream(&mut self) -> Option<(String, StreamToVerify, Option<EventRow>)> {
        // The rest of the previous stream, if its verifier stopped early.
        while self.next_event().is_some() {}
        self.fill_if_empty();
        let row = self.buffered.pop_front()?;
        Some((
            row.stream_id,
            row.head.expect("a stream starts with its row"),
            row.event,
        ))
    }

    /// The current stream's next event: none once the next row starts
    /// another stream.
    fn next_event(&mut self) -> Option<EventRow> {
        self.fill_if_empty();
        if self.buffered.front()?.head.is_some() {
            return None;
        }
        self.buffered.pop_front()?.event
    }

    fn fill_if_empty(&mut self) {
        if !self.buffered.is_empty() || self.exhausted {
            return;
        }
        let last = &mut self.last_stream;
        let rows = consume(spi(self.cursor.fetch(CHUNK)), |row| {
            let stream_id: String = spi(row.get(1)).expect("NOT NULL");
            // The stream row's columns repeat on each event's row: read once.
            let head = (last.as_deref() != Some(stream_id.as_str())).then(|| head_row(&row, 2));
            *last = Some(stream_id.clone());
            let event = spi::<Option<i64>>(row.get(MERGED_EVENT_COLUMNS))
                .is_some()
                .then(|| event_row(&row, MERGED_EVENT_COLUMNS));
            MergedRow {
                stream_id,
                head,
                event,
            }
        });
        self.exhausted = rows.is_empty();
        self.buffered.extend(rows);
    }
}

/// An event from `EVENT_COLUMNS` and the registry column, starting at column `first`.
fn event_row(row: &pgrx::spi::SpiHeapTupleData, first: usize) -> EventRow {
    let event_id: Uuid = spi(row.get(first + 2)).expect("NOT NULL");
    let created_at: TimestampWithTimeZone = spi(row.get(first + 5)).expect("NOT NULL");
    EventRow {
        version: spi(row.get(first)).expect("NOT NULL"),
        event_type: spi(row.get(first + 1)).expect("NOT NULL"),
        event_id: *event_id.as_bytes(),
        payload: spi(row.get(first + 3)).expect("NOT NULL"),
        metadata: spi(row.get(first + 4)),
        created_at_unix_micros: unix_micros_from_postgres(created_at.into_inner()),
        checksum: spi(row.get(first + 6)).expect("NOT NULL"),
        erased: spi::<Option<Vec<u8>>>(row.get(first + 7)).map(|payload| ErasedDigests {
            payload: digest_bytes(payload),
            metadata: spi::<Option<Vec<u8>>>(row.get(first + 8)).map(digest_bytes),
        }),
        position: spi(row.get(first + 9)).expect("NOT NULL"),
        tenant: spi(row.get(first + 10)),
        // A NULL element cannot be appended; as "" it fails to verify.
        tags: spi::<Option<Vec<Option<String>>>>(row.get(first + 11))
            .unwrap_or_default()
            .into_iter()
            .map(Option::unwrap_or_default)
            .collect(),
        registered: match spi::<Option<i32>>(row.get(first + 12)).expect("computed") {
            0 => Registered::Missing,
            1 => Registered::Yes,
            _ => Registered::Elsewhere,
        },
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

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::test_support::*;
    use allsource_core::checksum::{self, Body, EventFields, GENESIS};
    use pgrx::prelude::*;
    use pgrx::Uuid;

    /// The stored checksums are the Rust chain over what SELECT returns: the
    /// jsonb text Rust hashes is exactly PostgreSQL's, for awkward JSON too.
    #[pg_test]
    fn checksums_chain_over_the_stored_text() {
        let payloads = [
            r#"{"b": 1, "a": [1, 2.50, -0.0010, 1e3, 12345678901234567890123]}"#,
            r#""quote \" backslash \\ newline \n tab \t bell \u0007 snowman ☃ emoji 😀""#,
            r#"{"nested": {"deeper": {"deepest": [null, true, false, {}, []]}}, "": ""}"#,
            r#"[1E+2, 0.1e-2, 100.00]"#,
        ];
        for payload in payloads {
            Spi::run(&format!(
                "SELECT allsource.append('chain', 'T', {}, metadata => '{{\"k\": [1, 2]}}')",
                pgrx::spi::quote_literal(payload)
            ))
            .unwrap();
        }
        let mut previous = GENESIS;
        Spi::connect(|client| {
            let rows = client
                .select(
                    "SELECT stream_id, version, event_type, event_id, payload::text, metadata::text,
                            (extract(epoch FROM created_at) * 1000000)::bigint, checksum
                     FROM allsource.events ORDER BY version",
                    None,
                    &[],
                )
                .unwrap();
            assert_eq!(rows.len(), payloads.len());
            for row in rows {
                let stream_id: String = row.get(1).unwrap().unwrap();
                let event_type: String = row.get(3).unwrap().unwrap();
                let event_id: Uuid = row.get(4).unwrap().unwrap();
                let payload: String = row.get(5).unwrap().unwrap();
                let metadata: Option<String> = row.get(6).unwrap();
                let stored: Vec<u8> = row.get(8).unwrap().unwrap();
                let fields = EventFields {
                    stream_id: &stream_id,
                    version: row.get(2).unwrap().unwrap(),
                    event_type: &event_type,
                    event_id: *event_id.as_bytes(),
                    payload: Body::Text(&payload),
                    metadata: metadata.as_deref().map(Body::Text),
                    created_at_unix_micros: row.get(7).unwrap().unwrap(),
                    tenant: None,
                    tags: &[],
                };
                let expected = checksum::checksum(&fields, &previous);
                assert_eq!(
                    stored,
                    expected.to_vec(),
                    "version {} payload {payload}",
                    fields.version
                );
                previous = expected;
            }
        });
        assert_eq!(
            one::<Vec<u8>>("SELECT last_checksum FROM allsource.streams WHERE stream_id = 'chain'"),
            previous.to_vec()
        );
    }

    /// Appends `n` events to `stream` (payload `{"n": i}`, metadata on even versions).
    fn stream_of(stream: &str, n: i64) {
        Spi::run(&format!(
            "SELECT allsource.append_batch('{stream}', (SELECT jsonb_agg(jsonb_build_object(
                 'type', 'T' || i % 3, 'payload', jsonb_build_object('n', i),
                 'metadata', CASE WHEN i % 2 = 0 THEN jsonb_build_object('m', i) END) ORDER BY i)
             FROM generate_series(1, {n}) i))"
        ))
        .unwrap();
    }

    /// Runs `sql` the way a superuser would tamper: around the guard triggers.
    fn tamper(sql: &str) {
        Spi::run("SET LOCAL session_replication_role = replica").unwrap();
        Spi::run(sql).unwrap();
        Spi::run("SET LOCAL session_replication_role = origin").unwrap();
    }

    fn verdict(stream: &str) -> (bool, i64, Option<i64>, Option<String>) {
        Spi::connect(|client| {
            let row = client
                .select(
                    &format!("SELECT * FROM allsource.verify_stream('{stream}')"),
                    None,
                    &[],
                )
                .unwrap()
                .first();
            (
                row.get(1).unwrap().unwrap(),
                row.get(2).unwrap().unwrap(),
                row.get(3).unwrap(),
                row.get(4).unwrap(),
            )
        })
    }

    fn assert_damage(stream: &str, version: i64, words: &str) {
        let (ok, _, first_bad, problem) = verdict(stream);
        assert!(!ok, "{stream}: damage not found");
        assert_eq!(first_bad, Some(version), "{stream}: {problem:?}");
        let problem = problem.unwrap();
        assert!(
            problem.contains(words),
            "{stream}: {problem:?} should mention {words:?}"
        );
    }

    #[pg_test]
    fn a_clean_store_verifies_clean() {
        stream_of("verify-clean/a", 25);
        stream_of("verify-clean/b", 1);
        Spi::run("SELECT allsource.append('verify-clean/a', 'More', '{}')").unwrap();
        assert_eq!(verdict("verify-clean/a"), (true, 26, None, None));
        assert_eq!(verdict("verify-clean/b"), (true, 1, None, None));
        assert_eq!(verdict("verify-clean/unknown"), (true, 0, None, None));
        assert!(one::<bool>(
            "SELECT allsource.verify_gapless('verify-clean/a')"
        ));
        assert!(one::<bool>(
            "SELECT allsource.verify_gapless('verify-clean/unknown')"
        ));
        assert_eq!(one::<i64>("SELECT count(*) FROM allsource.verify_all()"), 0);
        assert_fails(
            "SELECT * FROM allsource.verify_stream('')",
            "22023",
            "\"stream_id\"",
        );
        assert_fails(
            "SELECT allsource.verify_gapless(NULL)",
            "22023",
            "\"stream_id\"",
        );
    }

    #[pg_test]
    fn every_kind_of_damage_is_found_at_its_version() {
        let at = |stream: &str, version: i64| {
            format!("FROM allsource.events WHERE stream_id = '{stream}' AND version = {version}")
        };
        let cases: Vec<(&str, String, i64, &str)> = vec![
            ("payload", "UPDATE allsource.events SET payload = '{\"n\": 999}' WHERE (stream_id, version) = ('tamper/payload', 3)".into(), 3, "content of version 3"),
            ("metadata", "UPDATE allsource.events SET metadata = NULL WHERE (stream_id, version) = ('tamper/metadata', 4)".into(), 4, "content of version 4"),
            ("type", "UPDATE allsource.events SET event_type = 'Forged' WHERE (stream_id, version) = ('tamper/type', 1)".into(), 1, "content of version 1"),
            ("event-id", "UPDATE allsource.events SET event_id = gen_random_uuid() WHERE (stream_id, version) = ('tamper/event-id', 5)".into(), 5, "content of version 5"),
            ("created-at", "UPDATE allsource.events SET created_at = created_at + interval '1 microsecond' WHERE (stream_id, version) = ('tamper/created-at', 2)".into(), 2, "content of version 2"),
            ("removed", "DELETE FROM allsource.events WHERE (stream_id, version) = ('tamper/removed', 3)".into(), 3, "version 3 is missing"),
            ("removed-last", "DELETE FROM allsource.events WHERE (stream_id, version) = ('tamper/removed-last', 6)".into(), 6, "events end at version 5"),
            ("swapped", "UPDATE allsource.events SET version = -2 WHERE (stream_id, version) = ('tamper/swapped', 2);
                         UPDATE allsource.events SET version = 2 WHERE (stream_id, version) = ('tamper/swapped', 5);
                         UPDATE allsource.events SET version = 5 WHERE (stream_id, version) = ('tamper/swapped', -2)".into(), 2, "swapped"),
            ("swapped-content", "UPDATE allsource.events e SET payload = o.payload, metadata = o.metadata, event_type = o.event_type,
                                        event_id = o.event_id, created_at = o.created_at
                                 FROM allsource.events o
                                 WHERE e.stream_id = 'tamper/swapped-content' AND o.stream_id = e.stream_id
                                   AND (e.version, o.version) IN ((3, 4), (4, 3))".into(), 3, "holds the content of version 4"),
            ("copied", format!("UPDATE allsource.events SET checksum = (SELECT checksum {}) WHERE (stream_id, version) = ('tamper/copied', 5)", at("tamper/copied", 1)), 5, "copy of version 1"),
            ("stream-row", "UPDATE allsource.streams SET version = 9 WHERE stream_id = 'tamper/stream-row'".into(), 7, "says version 9"),
        ];
        for (name, sql, _, _) in &cases {
            stream_of(&format!("tamper/{name}"), 6);
            tamper(sql);
        }

        for (name, _, version, words) in &cases {
            assert_damage(&format!("tamper/{name}"), *version, words);
        }

        // verify_all reports each damaged stream once, at the same version,
        // and the registry rows left pointing at no event with their id:
        // those of the two removed events and of the changed id.
        let reported: String = one(
            "SELECT string_agg(format('%s@%s', stream_id, first_bad_version), ' ')
             FROM allsource.verify_all() WHERE stream_id IS NOT NULL",
        );
        assert_eq!(
            one::<String>("SELECT problem FROM allsource.verify_all() WHERE stream_id IS NULL"),
            "3 rows of allsource.event_ids point at no event with their id: those ids are refused as if used"
        );
        let mut reported: Vec<&str> = reported.split(' ').collect();
        reported.sort();
        let mut expected: Vec<String> = cases
            .iter()
            .map(|(n, _, v, _)| format!("tamper/{n}@{v}"))
            .collect();
        expected.sort();
        assert_eq!(reported, expected);

        assert!(!one::<bool>(
            "SELECT allsource.verify_gapless('tamper/removed')"
        ));
        assert!(!one::<bool>(
            "SELECT allsource.verify_gapless('tamper/stream-row')"
        ));
        assert!(
            one::<bool>("SELECT allsource.verify_gapless('tamper/payload')"),
            "content damage keeps versions gapless"
        );
    }

    #[pg_test]
    fn orphaned_events_are_reported() {
        stream_of("orphan/a", 2);
        tamper("DELETE FROM allsource.streams WHERE stream_id = 'orphan/a'");
        assert_damage("orphan/a", 1, "stream row is missing");
        assert_eq!(
            one::<String>(
                "SELECT format('%s@%s', stream_id, first_bad_version) FROM allsource.verify_all()"
            ),
            "orphan/a@1"
        );
    }

    /// Random streams in the database, one random damage each, found at the right version.
    #[pg_test]
    fn random_damage_is_always_found() {
        // A fixed-seed xorshift: the extension build has no dev-dependencies.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = |bound: i64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % bound as u64) as i64
        };
        for case in 0..40 {
            let stream = format!("random-damage/{case}");
            let n = 2 + next(30);
            stream_of(&stream, n);
            let k = 1 + next(n);
            let row = format!("WHERE (stream_id, version) = ('{stream}', {k})");
            let (sql, expected) = match next(6) {
                0 => (format!("UPDATE allsource.events SET payload = payload || '{{\"x\": 1}}' {row}"), k),
                1 => (format!("UPDATE allsource.events SET event_type = event_type || '!' {row}"), k),
                2 => (format!("DELETE FROM allsource.events {row}"), k),
                3 => {
                    let j = if k == n { 1 } else { k + 1 };
                    (format!(
                        "UPDATE allsource.events SET checksum = (SELECT checksum FROM allsource.events
                             WHERE (stream_id, version) = ('{stream}', {j})) {row}"
                    ), k)
                }
                4 => (format!("UPDATE allsource.events SET created_at = created_at - interval '1 second' {row}"), k),
                _ => {
                    let claimed = n + 1 + next(3);
                    (format!("UPDATE allsource.streams SET version = {claimed} WHERE stream_id = '{stream}'"), n + 1)
                }
            };
            tamper(&sql);
            let (ok, _, first_bad, problem) = verdict(&stream);
            assert!(!ok, "case {case}: {sql}");
            assert_eq!(first_bad, Some(expected), "case {case}: {sql}: {problem:?}");
        }
        // verify_all reads a partition's streams and events in one merged pass,
        // fetched in chunks of 1,000 rows: it agrees with verify_stream on
        // every stream, one longer than a chunk damaged past the first chunk
        // and a sound one beside it included.
        stream_of("random-damage/long", 2500);
        tamper("UPDATE allsource.events SET payload = '{}' WHERE (stream_id, version) = ('random-damage/long', 2200)");
        stream_of("random-damage/sound", 3);
        let by_verify_all: String = one(
            "SELECT string_agg(format('%s@%s', stream_id, first_bad_version), ' ')
             FROM allsource.verify_all() WHERE stream_id LIKE 'random-damage/%'",
        );
        let mut by_stream: Vec<String> = (0..40)
            .map(|case| format!("random-damage/{case}"))
            .chain(["random-damage/long".to_string()])
            .map(|stream| format!("{stream}@{}", verdict(&stream).2.expect("damaged")))
            .collect();
        by_stream.sort();
        let mut by_verify_all: Vec<&str> = by_verify_all.split(' ').collect();
        by_verify_all.sort();
        assert_eq!(by_verify_all, by_stream);
        assert!(verdict("random-damage/sound").0);
    }
}
