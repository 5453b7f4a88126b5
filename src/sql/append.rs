//! `allsource.append` and `allsource.append_batch`, and the path they share
//! with the ingest workers.
//!
//! The stream row is the lock. Under it: the idempotency check, the expected
//! version ([`allsource_core::plan`] decides both), positions from the sequence, one
//! multi-row insert for every stream, and the stream rows' new versions and
//! last checksums.
//! Versions are gapless because only the lock holder advances them and a
//! rollback undoes them.

use crate::settings;
use crate::sql::guard::WriteGuard;
use crate::sql::jsonb::JsonbText;
use crate::sql::raise::or_raise;
use crate::sql::standby::refuse_on_standby;
use crate::sql::stats::{self, Call};
use crate::sql::tenant;
use crate::sql::{notify, watermark};
use crate::sql::{oid, spi, GenericPlans};
use allsource_core::batch::{parse_batch_text, Appended, NewEvent};
use allsource_core::boundary::{self, array_literal};
use allsource_core::checksum::{self, GENESIS};
use allsource_core::error::{Error, Result};
use allsource_core::idempotency::StoredEvent;
use allsource_core::plan::{self, Refused, Request, Row, StreamHead};
use allsource_core::validate::{self, ExpectedVersion};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use pgrx::{direct_function_call, IntoDatum, PgOid, Uuid};
use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// Appends one event to a stream; returns its version and global position.
/// Runs as the extension's owner: callers need EXECUTE, not table rights.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn append(
    stream_id: Option<&str>,
    event_type: Option<&str>,
    payload: Option<JsonbText>,
    metadata: default!(Option<JsonbText>, "NULL"),
    expected_version: default!(Option<i64>, "NULL"),
    event_id: default!(Option<Uuid>, "NULL"),
    tags: default!(Option<Vec<Option<String>>>, "NULL"),
) -> TableIterator<'static, (name!(version, i64), name!(position, i64))> {
    let started = Instant::now();
    let result = (|| {
        refuse_on_standby("allsource.append()")?;
        let (stream_id, mut event) = new_event(stream_id, event_type, payload, metadata, event_id)?;
        let tags: Vec<Option<&str>> = tags.iter().flatten().map(Option::as_deref).collect();
        event.tags = boundary::tags("tags", &tags)?;
        let expected = ExpectedVersion::from_arg(expected_version)?;
        append_one(stream_id, &[event], expected)
    })();
    let appended = or_raise(stats::direct_append(result, Call::Append, started));
    TableIterator::once((appended.first_version, appended.first_position))
}

/// Appends a JSON array of events to one stream, all or nothing.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn append_batch(
    stream_id: Option<&str>,
    events: Option<JsonbText>,
    expected_version: default!(Option<i64>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(first_version, i64),
        name!(last_version, i64),
        name!(first_position, i64),
        name!(last_position, i64),
    ),
> {
    let started = Instant::now();
    let result = (|| {
        refuse_on_standby("allsource.append_batch()")?;
        let stream_id = validate::name("stream_id", stream_id)?;
        let events = parse_batch_text(
            &validate::required("events", events)?.0,
            settings::max_event_bytes(),
        )?;
        let expected = ExpectedVersion::from_arg(expected_version)?;
        append_one(stream_id, &events, expected)
    })();
    let a = or_raise(stats::direct_append(result, Call::AppendBatch, started));
    TableIterator::once((
        a.first_version,
        a.last_version,
        a.first_position,
        a.last_position,
    ))
}

/// Checks the arguments that describe one event (`append` and `enqueue`).
pub(crate) fn new_event<'a>(
    stream_id: Option<&'a str>,
    event_type: Option<&str>,
    payload: Option<JsonbText>,
    metadata: Option<JsonbText>,
    event_id: Option<Uuid>,
) -> Result<(&'a str, NewEvent)> {
    let stream_id = validate::name("stream_id", stream_id)?;
    let event_type = validate::name("event_type", event_type)?.to_string();
    let payload = validate::required("payload", payload)?.0;
    let metadata = metadata.map(|m| m.0);
    let event = NewEvent {
        event_type,
        event_id: event_id.map(|id| uuid::Uuid::from_bytes(*id.as_bytes())),
        payload,
        metadata,
        tags: Vec::new(),
    };
    validate::event_size("event", event.size(), settings::max_event_bytes())?;
    Ok((stream_id, event))
}

pub(crate) fn append_one(
    stream_id: &str,
    events: &[NewEvent],
    expected: ExpectedVersion,
) -> Result<Appended> {
    let tenant = tenant::session_tenant()?;
    let request = Request {
        stream_id,
        events,
        expected,
        tenant: tenant.as_deref(),
    };
    append_requests(&[request])?
        .pop()
        .expect("one result per request")
        .map_err(|refused| refused.error)
}

/// Appends each request in the caller's transaction: the one path of
/// `append`, `append_batch` and the ingest workers. Requests are decided
/// before anything is written, so each fails alone; one result per request.
///
/// The outer error means the transaction wrote rows it must not keep (an
/// event id registered by a concurrent transaction): raise it.
pub(crate) fn append_requests(
    requests: &[Request],
) -> Result<Vec<std::result::Result<Appended, Refused>>> {
    let _writing = WriteGuard::new();
    let _generic = GenericPlans::new();
    // Before the stream rows, as append_if takes its own: one lock order.
    crate::sql::boundary::lock(&crate::sql::boundary::writer_locks(requests));
    Spi::connect_mut(|client| {
        let statements = statements(client);
        let mut streams: Vec<&str> = requests.iter().map(|r| r.stream_id).collect();
        streams.sort_unstable();
        streams.dedup();
        let (heads, row_ids, created) = lock_streams(client, statements, &streams, requests);
        let stored = stored_events(client, statements, requests.iter().flat_map(|r| r.events));
        // now(): the transaction's start, which is what created_at stores.
        let created_at =
            checksum::unix_micros_from_postgres(crate::sql::backend::transaction_timestamp());
        // Time-ordered ids: new ones land at the right edge of event_ids' index.
        let plan = plan::plan_requests(requests, heads, stored, created_at, uuid::Uuid::now_v7);
        // A refused request leaves nothing, not even the row of its new stream,
        // which would keep the id from other tenants.
        let touched: HashSet<&str> = plan.rows.iter().map(|row| row.stream_id).collect();
        let unused: Vec<String> = created
            .iter()
            .filter(|stream| !touched.contains(*stream))
            .map(|stream| row_ids[stream].clone())
            .collect();
        if !unused.is_empty() {
            spi(client.update(&statements.forget_streams, None, &[unused.into()]));
        }
        if plan.rows.is_empty() {
            return Ok(plan.results(&[]));
        }

        watermark::before_taking_positions()?;
        let positions = take_positions(plan.rows.len());
        let mut rows = EventRows::with_capacity(plan.rows.len());
        for (row, &position) in plan.rows.iter().zip(&positions) {
            rows.push(position, row);
        }
        // Before the events' insert, which takes the columns.
        if rows.tags.iter().any(Option::is_some) {
            spi(client.update(
                &statements.insert_event_tags,
                None,
                &[
                    rows.positions.clone().into(),
                    rows.partition_ids.clone().into(),
                    rows.event_ids.clone().into(),
                    rows.event_types.clone().into(),
                    rows.tenant_ids.clone().into(),
                    rows.tags.clone().into(),
                ],
            ));
        }
        // Ids we generated are new by construction: only a caller's id can
        // meet a concurrent transaction's, which ON CONFLICT detects.
        let callers_ids = plan.rows.iter().any(|row| row.event.event_id.is_some());
        let (insert, args) = match (plan.rows.len(), callers_ids) {
            (1, true) => (&statements.insert_event, rows.first_row()),
            (1, false) => (&statements.insert_event_with_new_id, rows.first_row()),
            (_, true) => (&statements.insert_events, rows.columns()),
            (_, false) => (&statements.insert_events_with_new_ids, rows.columns()),
        };
        let registered = spi(client.update(insert, None, &args)).len();
        if registered != plan.rows.len() {
            return Err(Error::event_id_reused(
                "of this append",
                "another transaction appended an event with the same id at the same time",
            ));
        }
        for (row, &position) in plan.rows.iter().zip(&positions) {
            notify::appended(row.partition_id, position);
        }

        let (mut ids, mut versions, mut checksums) = (Vec::new(), Vec::new(), Vec::new());
        for (stream_id, head) in plan.touched_heads() {
            ids.push(row_ids[stream_id].clone());
            versions.push(head.version);
            checksums.push(head.last_checksum.to_vec());
        }
        if let ([id], [version], [checksum]) = (&ids[..], &versions[..], &checksums[..]) {
            let args = [
                id.clone().into(),
                (*version).into(),
                checksum.clone().into(),
            ];
            spi(client.update(&statements.update_stream, None, &args));
        } else {
            let args = [ids.into(), versions.into(), checksums.into()];
            spi(client.update(&statements.update_streams, None, &args));
        }
        stats::appended_in_transaction(plan.rows.len() as u64);
        Ok(plan.results(&positions))
    })
}

/// Column arrays for the multi-row insert.
struct EventRows {
    positions: Vec<i64>,
    partition_ids: Vec<i32>,
    stream_ids: Vec<String>,
    versions: Vec<i64>,
    event_ids: Vec<Uuid>,
    event_types: Vec<String>,
    tenant_ids: Vec<Option<String>>,
    payloads: Vec<String>,
    metadata: Vec<Option<String>>,
    checksums: Vec<Vec<u8>>,
    /// Each row's tags as an array literal: one array per row.
    tags: Vec<Option<String>>,
}

impl EventRows {
    fn with_capacity(n: usize) -> Self {
        EventRows {
            positions: Vec::with_capacity(n),
            partition_ids: Vec::with_capacity(n),
            stream_ids: Vec::with_capacity(n),
            versions: Vec::with_capacity(n),
            event_ids: Vec::with_capacity(n),
            event_types: Vec::with_capacity(n),
            tenant_ids: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
            checksums: Vec::with_capacity(n),
            tags: Vec::with_capacity(n),
        }
    }

    /// The arrays, in the multi-row insert's parameter order.
    fn columns(self) -> [DatumWithOid<'static>; 11] {
        [
            self.positions.into(),
            self.partition_ids.into(),
            self.stream_ids.into(),
            self.versions.into(),
            self.event_ids.into(),
            self.event_types.into(),
            self.tenant_ids.into(),
            self.payloads.into(),
            self.metadata.into(),
            self.checksums.into(),
            self.tags.into(),
        ]
    }

    /// The one row's values, in the single-row insert's parameter order.
    fn first_row(mut self) -> [DatumWithOid<'static>; 11] {
        [
            self.positions[0].into(),
            self.partition_ids[0].into(),
            self.stream_ids.swap_remove(0).into(),
            self.versions[0].into(),
            self.event_ids[0].into(),
            self.event_types.swap_remove(0).into(),
            self.tenant_ids.swap_remove(0).into(),
            self.payloads.swap_remove(0).into(),
            self.metadata.swap_remove(0).into(),
            self.checksums.swap_remove(0).into(),
            self.tags.swap_remove(0).into(),
        ]
    }

    fn push(&mut self, position: i64, row: &Row) {
        self.positions.push(position);
        self.partition_ids.push(row.partition_id);
        self.stream_ids.push(row.stream_id.to_string());
        self.versions.push(row.version);
        self.event_ids
            .push(Uuid::from_bytes(*row.event_id.as_bytes()));
        self.event_types.push(row.event.event_type.clone());
        self.tenant_ids.push(row.tenant.map(str::to_string));
        self.payloads.push(row.event.payload.clone());
        self.metadata.push(row.event.metadata.clone());
        self.checksums.push(row.checksum.to_vec());
        self.tags.push(row.event.stored_tags().map(array_literal));
    }
}

/// Locks the rows of `streams`, creating missing ones (version 0). Both
/// statements lock in `stream_id` order (`ORDER BY` under `FOR UPDATE`), so
/// two appends never wait for each other's rows in a cycle; a deadlock with a
/// caller's own multi-stream transaction is still possible, and a worker
/// retries it. A concurrent creator
/// makes our insert a no-op after it commits; then the row is there to lock.
/// Also returns each locked row's `ctid`: the final update finds the rows by
/// it, without a second index lookup (no one else can move a row we locked);
/// and the streams whose rows this call created.
fn lock_streams<'a>(
    client: &mut SpiClient,
    statements: &Statements,
    streams: &[&'a str],
    requests: &[Request],
) -> (
    HashMap<&'a str, StreamHead>,
    HashMap<&'a str, String>,
    Vec<&'a str>,
) {
    let mut heads = HashMap::with_capacity(streams.len());
    let mut row_ids = HashMap::with_capacity(streams.len());
    let mut created = Vec::new();
    // A new stream belongs to the tenant of the first request for it.
    let mut tenant_of = HashMap::with_capacity(streams.len());
    for request in requests {
        tenant_of.entry(request.stream_id).or_insert(request.tenant);
    }
    loop {
        for creating in [false, true] {
            let missing: Vec<&str> = streams
                .iter()
                .copied()
                .filter(|s| !heads.contains_key(s))
                .collect();
            let (plan, mut args) = match (creating, missing.as_slice()) {
                (_, []) => return (heads, row_ids, created),
                (false, [one]) => (&statements.lock_stream, vec![(*one).into()]),
                (false, _) => (&statements.lock_streams, vec![missing.clone().into()]),
                (true, _) => (&statements.create_streams, vec![missing.clone().into()]),
            };
            if creating {
                let tenants: Vec<Option<String>> = missing
                    .iter()
                    .map(|s| tenant_of[s].map(str::to_string))
                    .collect();
                args.push(tenants.into());
            }
            for row in spi(client.update(plan, None, &args)) {
                let stream_id: String = spi(row.get(1)).expect("stream_id is NOT NULL");
                let checksum: Option<Vec<u8>> = spi(row.get(4));
                let key = streams[streams
                    .binary_search(&stream_id.as_str())
                    .expect("only asked-for streams come back")];
                heads.insert(
                    key,
                    StreamHead {
                        partition_id: spi(row.get(2)).expect("partition_id is NOT NULL"),
                        version: spi(row.get(3)).expect("version is NOT NULL"),
                        last_checksum: checksum.and_then(|c| c.try_into().ok()).unwrap_or(GENESIS),
                        deleted: spi(row.get(5)).expect("deleted is computed"),
                        tenant: spi(row.get(7)),
                    },
                );
                row_ids.insert(key, spi(row.get(6)).expect("ctid is never NULL"));
                if creating {
                    created.push(key);
                }
            }
        }
    }
}

/// Looks up the events among `events` whose ids are already stored.
fn stored_events<'e>(
    client: &SpiClient,
    statements: &Statements,
    events: impl Iterator<Item = &'e NewEvent>,
) -> impl Fn(&uuid::Uuid) -> Option<StoredEvent> {
    let ids: Vec<Uuid> = events
        .filter_map(|e| e.event_id)
        .map(|id| Uuid::from_bytes(*id.as_bytes()))
        .collect();
    let mut found = HashMap::new();
    if !ids.is_empty() {
        for row in spi(client.select(&statements.find_events, None, &[ids.into()])) {
            let id: Uuid = spi(row.get(1)).expect("event_id is NOT NULL");
            found.insert(
                uuid::Uuid::from_bytes(*id.as_bytes()),
                StoredEvent {
                    stream_id: spi(row.get(2)).expect("NOT NULL"),
                    version: spi(row.get(3)).expect("NOT NULL"),
                    position: spi(row.get(4)).expect("NOT NULL"),
                    event_type: spi(row.get(5)).expect("NOT NULL"),
                    payload: spi(row.get(6)).expect("NOT NULL"),
                    tenant: spi(row.get(7)),
                },
            );
        }
    }
    move |id| found.get(id).cloned()
}

/// `count` new positions, consecutive: another append's never fall between
/// them (readers of the global order see one append's events together).
fn take_positions(count: usize) -> Vec<i64> {
    // One position is a range already; several are taken under a lock that
    // is held only while they are taken, never until the commit.
    let _range = (count > 1).then(PositionRangeLock::acquire);
    let sequence = watermark::position_sequence();
    (0..count)
        .map(|_| {
            // SAFETY: nextval(regclass) by OID, with its own permission
            // check; it raises rather than return NULL.
            unsafe { direct_function_call::<i64>(pg_sys::nextval_oid, &[sequence.into_datum()]) }
                .expect("nextval is never NULL")
        })
        .collect()
}

/// The database's lock on taking several positions: an advisory lock of
/// AllSource's own class for it, released on drop or, after an error, with
/// the transaction.
struct PositionRangeLock(pg_sys::LOCKTAG);

/// The class (`objsubid` in `pg_locks`) of the position range lock; the
/// boundaries' keys use 0x4153.
const POSITION_RANGE_LOCK_CLASS: u16 = 0x4150;

impl PositionRangeLock {
    fn acquire() -> Self {
        let tag = crate::sql::boundary::advisory_lock_tag(POSITION_RANGE_LOCK_CLASS, 0);
        // SAFETY: a transaction lock on the tag above; errors are raised as
        // PostgreSQL errors (the transaction then releases it).
        unsafe {
            pg_sys::LockAcquire(
                &tag,
                pg_sys::ExclusiveLock as pg_sys::LOCKMODE,
                false,
                false,
            );
        }
        PositionRangeLock(tag)
    }
}

impl Drop for PositionRangeLock {
    fn drop(&mut self) {
        // SAFETY: releases the lock `acquire` took in this transaction.
        unsafe {
            pg_sys::LockRelease(&self.0, pg_sys::ExclusiveLock as pg_sys::LOCKMODE, false);
        }
    }
}

/// The events' columns, in the order of both inserts' parameters.
const EVENT_COLUMNS: &str = "position, partition_id, stream_id, version, event_id, event_type, \
                             tenant_id, payload, metadata, checksum, tags";

/// The multi-row insert's source: the arrays of [`EventRows::columns`].
fn unnested_rows() -> String {
    let unnests: Vec<String> = (1..=11)
        .map(|i| format!("pg_catalog.unnest(${i})"))
        .collect();
    format!(
        "SELECT * FROM ROWS FROM ({}) AS u({EVENT_COLUMNS})",
        unnests.join(", ")
    )
}

/// The single-row insert's source, without the function scans of the
/// arrays (about a quarter of a single event's append).
const ONE_ROW: &str = "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

/// One insert of `rows` into events and event_ids; returns the ids registered.
fn insert_events_sql(rows: &str, on_conflict: &str) -> String {
    format!(
        "WITH inserted AS ( \
         INSERT INTO allsource.events (position, partition_id, stream_id, version, event_id, \
                                       event_type, tenant_id, payload, metadata, created_at, checksum, \
                                       tags) \
         SELECT u.position, u.partition_id, u.stream_id, u.version, u.event_id, u.event_type, \
                u.tenant_id, u.payload::jsonb, u.metadata::jsonb, pg_catalog.now(), u.checksum, \
                u.tags::text[] \
         FROM ({rows}) AS u({EVENT_COLUMNS}) \
         RETURNING event_id, partition_id, position) \
         INSERT INTO allsource.event_ids (event_id, partition_id, position) \
         SELECT event_id, partition_id, position FROM inserted \
         {on_conflict} RETURNING event_id"
    )
}

/// The parameter types of the single-row insert.
fn insert_event_args() -> [PgOid; 11] {
    [
        oid::<i64>(),
        oid::<i32>(),
        oid::<String>(),
        oid::<i64>(),
        oid::<Uuid>(),
        oid::<String>(),
        oid::<String>(),
        oid::<String>(),
        oid::<String>(),
        oid::<Vec<u8>>(),
        oid::<String>(),
    ]
}

/// The parameter types of the multi-row insert.
fn insert_events_args() -> [PgOid; 11] {
    [
        oid::<Vec<i64>>(),
        oid::<Vec<i32>>(),
        oid::<Vec<String>>(),
        oid::<Vec<i64>>(),
        oid::<Vec<Uuid>>(),
        oid::<Vec<String>>(),
        oid::<Vec<Option<String>>>(),
        oid::<Vec<String>>(),
        oid::<Vec<Option<String>>>(),
        oid::<Vec<Vec<u8>>>(),
        oid::<Vec<Option<String>>>(),
    ]
}

/// SPI statements, prepared once per backend.
struct Statements {
    lock_stream: OwnedPreparedStatement,
    lock_streams: OwnedPreparedStatement,
    create_streams: OwnedPreparedStatement,
    find_events: OwnedPreparedStatement,
    insert_event: OwnedPreparedStatement,
    insert_event_with_new_id: OwnedPreparedStatement,
    insert_events: OwnedPreparedStatement,
    insert_events_with_new_ids: OwnedPreparedStatement,
    insert_event_tags: OwnedPreparedStatement,
    update_stream: OwnedPreparedStatement,
    update_streams: OwnedPreparedStatement,
    forget_streams: OwnedPreparedStatement,
}

const STREAM_HEAD: &str =
    "s.stream_id, s.partition_id, s.version, s.last_checksum, s.deleted_at IS NOT NULL, s.ctid::text, \
     s.tenant_id";

thread_local! {
    static STATEMENTS: OnceCell<&'static Statements> = const { OnceCell::new() };
}

fn statements(client: &SpiClient) -> &'static Statements {
    STATEMENTS.with(|cell| *cell.get_or_init(|| Box::leak(Box::new(Statements::prepare(client)))))
}

impl Statements {
    fn prepare(client: &SpiClient) -> Statements {
        let prepare = |sql: &str, args: &[PgOid]| spi(client.prepare_mut(sql, args)).keep();
        Statements {
            // One stream, the usual case: an equality on the key, whose
            // generic plan is the index scan whatever the table's statistics
            // said when it was made (the join below, planned on an empty
            // table, scans it sequentially for the rest of the session).
            lock_stream: prepare(
                &format!(
                    "SELECT {STREAM_HEAD} FROM allsource.streams s \
                     WHERE s.stream_id OPERATOR(pg_catalog.=) $1 FOR UPDATE OF s"
                ),
                &[oid::<String>()],
            ),
            lock_streams: prepare(
                &format!(
                    "SELECT {STREAM_HEAD} FROM pg_catalog.unnest($1::text[]) AS id \
                     JOIN allsource.streams s ON s.stream_id OPERATOR(pg_catalog.=) id \
                     ORDER BY s.stream_id FOR UPDATE OF s"
                ),
                &[oid::<Vec<String>>()],
            ),
            create_streams: prepare(
                &format!(
                    "INSERT INTO allsource.streams AS s (stream_id, partition_id, tenant_id) \
                     SELECT id, allsource.partition_for(id, (SELECT allsource.partition_count())), tenant \
                     FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[])) AS u(id, tenant) \
                     ORDER BY id \
                     ON CONFLICT (stream_id) DO NOTHING RETURNING {STREAM_HEAD}"
                ),
                &[oid::<Vec<String>>(), oid::<Vec<Option<String>>>()],
            ),
            find_events: prepare(
                "SELECT i.event_id, e.stream_id, e.version, e.position, e.event_type, e.payload::text, e.tenant_id \
                 FROM allsource.event_ids i \
                 JOIN allsource.events e ON e.partition_id OPERATOR(pg_catalog.=) i.partition_id \
                                     AND e.position OPERATOR(pg_catalog.=) i.position \
                 WHERE i.event_id OPERATOR(pg_catalog.=) ANY ($1)",
                &[oid::<Vec<Uuid>>()],
            ),
            insert_event: prepare(
                &insert_events_sql(ONE_ROW, "ON CONFLICT (event_id) DO NOTHING"),
                &insert_event_args(),
            ),
            insert_event_with_new_id: prepare(
                &insert_events_sql(ONE_ROW, ""),
                &insert_event_args(),
            ),
            insert_events: prepare(
                &insert_events_sql(&unnested_rows(), "ON CONFLICT (event_id) DO NOTHING"),
                &insert_events_args(),
            ),
            insert_events_with_new_ids: prepare(
                &insert_events_sql(&unnested_rows(), ""),
                &insert_events_args(),
            ),
            // A row per tag of each tagged event (unnest of NULL: none).
            insert_event_tags: prepare(
                "INSERT INTO allsource.event_tags (tag, tenant, position, partition_id, event_id, event_type, tags) \
                 SELECT t.tag, COALESCE(u.tenant_id, ''), u.position, u.partition_id, u.event_id, \
                        u.event_type, u.tags::text[] \
                 FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3), \
                                 pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6)) \
                      AS u(position, partition_id, event_id, event_type, tenant_id, tags), \
                      pg_catalog.unnest(u.tags::text[]) AS t(tag)",
                &[
                    oid::<Vec<i64>>(),
                    oid::<Vec<i32>>(),
                    oid::<Vec<Uuid>>(),
                    oid::<Vec<String>>(),
                    oid::<Vec<Option<String>>>(),
                    oid::<Vec<Option<String>>>(),
                ],
            ),
            update_stream: prepare(
                "UPDATE allsource.streams s \
                 SET version = $2, last_checksum = $3, updated_at = pg_catalog.now() \
                 WHERE s.ctid OPERATOR(pg_catalog.=) $1::tid",
                &[oid::<String>(), oid::<i64>(), oid::<Vec<u8>>()],
            ),
            update_streams: prepare(
                "UPDATE allsource.streams s \
                 SET version = u.version, last_checksum = u.last_checksum, updated_at = pg_catalog.now() \
                 FROM ROWS FROM (pg_catalog.unnest($1::tid[]), pg_catalog.unnest($2::bigint[]), \
                                 pg_catalog.unnest($3::bytea[])) AS u(row_id, version, last_checksum) \
                 WHERE s.ctid OPERATOR(pg_catalog.=) u.row_id",
                &[oid::<Vec<String>>(), oid::<Vec<i64>>(), oid::<Vec<Vec<u8>>>()],
            ),
            forget_streams: prepare(
                "DELETE FROM allsource.streams s WHERE s.ctid OPERATOR(pg_catalog.=) ANY ($1::tid[])",
                &[oid::<Vec<String>>()],
            ),
        }
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::test_support::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn append_returns_gapless_versions_and_increasing_positions() {
        let mut last_position = 0;
        for expected in 1..=5i64 {
            let (version, position) = Spi::get_two::<i64, i64>(
                "SELECT version, position FROM allsource.append('append-returns-gapless/order-1', 'Placed', '{\"n\": 1}')",
            )
            .unwrap();
            assert_eq!(version, Some(expected));
            assert!(position.unwrap() > last_position);
            last_position = position.unwrap();
        }
        assert_eq!(
            one::<i64>("SELECT allsource.stream_version('append-returns-gapless/order-1')"),
            5
        );
        assert_eq!(
            one::<i64>("SELECT allsource.stream_version('append-returns-gapless/nobody')"),
            0
        );
    }

    #[pg_test]
    fn append_stores_every_field() {
        Spi::run(
            "SELECT allsource.append('cart-7', 'ItemAdded', '{\"sku\": \"A\", \"qty\": 2}',
                 metadata => '{\"by\": \"alice\"}',
                 event_id => '00112233-4455-6677-8899-aabbccddeeff')",
        )
        .unwrap();
        let row = "FROM allsource.events WHERE stream_id = 'cart-7'";
        assert_eq!(
            one::<String>(&format!("SELECT event_type {row}")),
            "ItemAdded"
        );
        assert_eq!(
            one::<String>(&format!("SELECT payload::text {row}")),
            r#"{"qty": 2, "sku": "A"}"#
        );
        assert_eq!(
            one::<String>(&format!("SELECT metadata::text {row}")),
            r#"{"by": "alice"}"#
        );
        assert_eq!(
            one::<String>(&format!("SELECT event_id::text {row}")),
            "00112233-4455-6677-8899-aabbccddeeff"
        );
        assert!(one::<bool>(&format!("SELECT created_at = now() {row}")));
        assert!(one::<bool>(&format!(
            "SELECT octet_length(checksum) = 32 {row}"
        )));
        assert!(one::<bool>(&format!(
            "SELECT partition_id = allsource.partition_for('cart-7') {row}"
        )));
        assert!(one::<bool>(
            "SELECT s.partition_id = allsource.partition_for('cart-7') AND s.version = 1 AND s.deleted_at IS NULL
             FROM allsource.streams s WHERE stream_id = 'cart-7'"
        ));
        assert!(one::<bool>(
            "SELECT e.position = i.position FROM allsource.events e
             JOIN allsource.event_ids i USING (event_id) WHERE e.stream_id = 'cart-7'"
        ));
    }

    #[pg_test]
    fn generated_event_ids_are_distinct() {
        for _ in 0..20 {
            Spi::run("SELECT allsource.append('generated-event-ids/s', 'T', '1')").unwrap();
        }
        assert_eq!(
            one::<i64>("SELECT count(DISTINCT event_id) FROM allsource.events"),
            20
        );
    }

    #[pg_test]
    fn expected_version_modes() {
        // 0: the stream must have no events.
        Spi::run(
            "SELECT allsource.append('expected-version-modes/s', 'T', '1', expected_version => 0)",
        )
        .unwrap();
        assert_fails(
            "SELECT allsource.append('expected-version-modes/s', 'T', '1', expected_version => 0)",
            "ZA001",
            "expected 0 (no stream), actual 1",
        );
        // N: exactly N.
        Spi::run(
            "SELECT allsource.append('expected-version-modes/s', 'T', '1', expected_version => 1)",
        )
        .unwrap();
        assert_fails(
            "SELECT allsource.append('expected-version-modes/s', 'T', '1', expected_version => 1)",
            "ZA001",
            "stream \"expected-version-modes/s\": expected 1, actual 2",
        );
        assert_fails(
            "SELECT allsource.append('expected-version-modes/s', 'T', '1', expected_version => 5)",
            "ZA001",
            "actual 2",
        );
        // -1: the stream must exist.
        Spi::run(
            "SELECT allsource.append('expected-version-modes/s', 'T', '1', expected_version => -1)",
        )
        .unwrap();
        assert_fails(
            "SELECT allsource.append('expected-version-modes/new', 'T', '1', expected_version => -1)",
            "ZA001",
            "expected -1 (stream exists), actual 0",
        );
        // NULL: anything.
        Spi::run("SELECT allsource.append('expected-version-modes/s', 'T', '1', expected_version => NULL)").unwrap();
        assert_eq!(
            one::<i64>("SELECT allsource.stream_version('expected-version-modes/s')"),
            4
        );
        assert_eq!(
            one::<i64>("SELECT allsource.stream_version('expected-version-modes/new')"),
            0
        );
        assert_fails(
            "SELECT allsource.append('expected-version-modes/s', 'T', '1', expected_version => -2)",
            "22023",
            "expected_version",
        );
        assert_eq!(event_count(), 4, "refused appends wrote nothing");
    }

    #[pg_test]
    fn wrong_expected_version_has_detail_and_hint() {
        Spi::run("SELECT allsource.append('wrong-expected-version/s', 'T', '1')").unwrap();
        Spi::run(
            "DO $$ DECLARE d text; h text;
             BEGIN
                 PERFORM allsource.append('wrong-expected-version/s', 'T', '1', expected_version => 7);
             EXCEPTION WHEN SQLSTATE 'ZA001' THEN
                 GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL, h = PG_EXCEPTION_HINT;
                 PERFORM set_config('allsource_test.detail', d || ' | ' || h, true);
             END $$",
        )
        .unwrap();
        let detail: String = one("SELECT current_setting('allsource_test.detail')");
        assert!(
            detail.contains(
                "stream \"wrong-expected-version/s\" is at version 1; the append expected 7"
            ),
            "{detail}"
        );
        assert!(detail.contains("retry"), "{detail}");
    }

    #[pg_test]
    fn idempotent_retries_return_the_original() {
        let append = "SELECT version, position FROM allsource.append('idempotent-retries-return/s', 'T', '{\"a\": 1}',
                          event_id => '00000000-0000-0000-0005-000000000001', expected_version => 0)";
        let first = Spi::get_two::<i64, i64>(append).unwrap();
        Spi::run("SELECT allsource.append('idempotent-retries-return/s', 'Other', '2')").unwrap();
        // The retry carries a now-stale expected version and still gets the original back.
        assert_eq!(Spi::get_two::<i64, i64>(append).unwrap(), first);
        assert_eq!(event_count(), 2);
        assert_eq!(
            one::<i64>("SELECT allsource.stream_version('idempotent-retries-return/s')"),
            2
        );

        let id = "'00000000-0000-0000-0005-000000000001'";
        assert_fails(
            &format!("SELECT allsource.append('idempotent-retries-return/s', 'T', '{{\"a\": 2}}', event_id => {id})"),
            "ZA003",
            "00000000-0000-0000-0005-000000000001",
        );
        assert_fails(
            &format!("SELECT allsource.append('idempotent-retries-return/s', 'U', '{{\"a\": 1}}', event_id => {id})"),
            "ZA003",
            "different event",
        );
        assert_fails(
            &format!("SELECT allsource.append('idempotent-retries-return/t', 'T', '{{\"a\": 1}}', event_id => {id})"),
            "ZA003",
            "different event",
        );
        assert_eq!(event_count(), 2);
    }

    #[pg_test]
    fn append_batch_appends_all_in_order() {
        Spi::run("SELECT allsource.append('append-batch-appends/s', 'First', '0')").unwrap();
        let (first, last) = Spi::get_two::<i64, i64>(
            r#"SELECT first_version, last_version FROM allsource.append_batch('append-batch-appends/s', '[
                {"type": "A", "payload": {"i": 1}},
                {"type": "B", "payload": {"i": 2}, "metadata": {"m": true}},
                {"type": "C", "payload": {"i": 3}, "id": "00000000-0000-0000-0006-0000000000cc"}
            ]', expected_version => 1)"#,
        )
        .unwrap();
        assert_eq!((first, last), (Some(2), Some(4)));
        assert!(one::<bool>(
            "SELECT bool_and(position > lag) FROM (
                 SELECT position, lag(position, 1, 0::bigint) OVER (ORDER BY version) AS lag
                 FROM allsource.events WHERE stream_id = 'append-batch-appends/s') p"
        ));
        assert_eq!(
            one::<String>(
                "SELECT string_agg(event_type, ',' ORDER BY version) FROM allsource.events"
            ),
            "First,A,B,C"
        );
        assert_eq!(
            one::<String>("SELECT event_id::text FROM allsource.events WHERE version = 4"),
            "00000000-0000-0000-0006-0000000000cc"
        );
        assert_eq!(
            one::<String>("SELECT metadata::text FROM allsource.events WHERE version = 3"),
            r#"{"m": true}"#
        );
    }

    #[pg_test]
    fn append_batch_is_all_or_nothing() {
        assert_fails(
            r#"SELECT allsource.append_batch('append-batch-is/s', '[{"type": "A", "payload": 1}, {"type": "", "payload": 2}]')"#,
            "22023",
            "events[1].type",
        );
        assert_fails(
            r#"SELECT allsource.append_batch('append-batch-is/s', '[{"type": "A", "payload": 1}]', expected_version => 3)"#,
            "ZA001",
            "actual 0",
        );
        assert_fails(
            r#"SELECT allsource.append_batch('append-batch-is/s', '{"type": "A"}')"#,
            "22023",
            "JSON array",
        );
        assert_fails(
            r#"SELECT allsource.append_batch('append-batch-is/s', '[]')"#,
            "22023",
            "at least one event",
        );
        assert_fails(
            "SELECT allsource.append_batch('append-batch-is/s', NULL)",
            "22023",
            "\"events\": must not be null",
        );
        assert_eq!(event_count(), 0);
        assert_eq!(
            one::<i64>("SELECT count(*) FROM allsource.streams"),
            0,
            "no stream row is left behind"
        );
    }

    #[pg_test]
    fn append_batch_replays_idempotently() {
        let batch = r#"SELECT first_version, last_position FROM allsource.append_batch('append-batch-replays/s', '[
            {"type": "A", "payload": 1, "id": "00000000-0000-0000-0008-00000000000a"},
            {"type": "B", "payload": 2, "id": "00000000-0000-0000-0008-00000000000b"}
        ]', expected_version => 0)"#;
        let original = Spi::get_two::<i64, i64>(batch).unwrap();
        assert_eq!(Spi::get_two::<i64, i64>(batch).unwrap(), original);
        assert_eq!(event_count(), 2);
        // One known id beside a new one is not a retry.
        assert_fails(
            r#"SELECT allsource.append_batch('append-batch-replays/s', '[
                {"type": "A", "payload": 1, "id": "00000000-0000-0000-0008-00000000000a"},
                {"type": "C", "payload": 3}]')"#,
            "ZA003",
            "00000000-0000-0000-0008-00000000000a",
        );
        assert_eq!(event_count(), 2);
    }

    #[pg_test]
    fn bad_arguments_raise_22023_and_name_the_argument() {
        let long = "x".repeat(256);
        let cases = [
            ("SELECT allsource.append(NULL, 'T', '1')".to_string(), "\"stream_id\""),
            ("SELECT allsource.append('', 'T', '1')".to_string(), "\"stream_id\""),
            (format!("SELECT allsource.append('{long}', 'T', '1')"), "\"stream_id\""),
            ("SELECT allsource.append('bad-arguments-raise/s', NULL, '1')".to_string(), "\"event_type\""),
            ("SELECT allsource.append('bad-arguments-raise/s', '', '1')".to_string(), "\"event_type\""),
            (format!("SELECT allsource.append('bad-arguments-raise/s', '{long}', '1')"), "\"event_type\""),
            ("SELECT allsource.append('bad-arguments-raise/s', 'T', NULL)".to_string(), "\"payload\""),
            ("SELECT allsource.append_batch('', '[]')".to_string(), "\"stream_id\""),
            (r#"SELECT allsource.append_batch('bad-arguments-raise/s', '[{"type": "T", "payload": 1, "id": "x"}]')"#.to_string(), "events[0].id"),
            (r#"SELECT allsource.append_batch('bad-arguments-raise/s', '[{"type": "T", "payload": 1, "extra": 1}]')"#.to_string(), "unknown key"),
            ("SELECT * FROM allsource.read_stream('')".to_string(), "\"stream_id\""),
            ("SELECT * FROM allsource.read_stream('bad-arguments-raise/s', -1)".to_string(), "\"from_version\""),
            ("SELECT * FROM allsource.read_stream('bad-arguments-raise/s', 1, -5)".to_string(), "\"max_count\""),
            ("SELECT * FROM allsource.read_stream('bad-arguments-raise/s', NULL)".to_string(), "\"from_version\""),
            ("SELECT allsource.stream_version('')".to_string(), "\"stream_id\""),
            ("SELECT allsource.partition_for('')".to_string(), "\"stream_id\""),
            ("SELECT allsource.partition_for('bad-arguments-raise/s', 0)".to_string(), "\"partition_count\""),
            ("SELECT allsource.partition_for('bad-arguments-raise/s', -3)".to_string(), "\"partition_count\""),
        ];
        for (query, words) in &cases {
            assert_fails(query, "22023", words);
        }
        // 255 bytes is allowed.
        Spi::run(&format!(
            "SELECT allsource.append('{}', 'T', '1')",
            &long[1..]
        ))
        .unwrap();
        assert_eq!(event_count(), 1);
    }

    #[pg_test]
    fn oversized_events_raise_54000() {
        Spi::run("SET LOCAL allsource.max_event_bytes = 100").unwrap();
        let big = format!("'{{\"x\": \"{}\"}}'", "y".repeat(100));
        assert_fails(
            &format!("SELECT allsource.append('oversized-events-raise/s', 'T', {big})"),
            "54000",
            "100",
        );
        assert_fails(
            &format!(
                "SELECT allsource.append('oversized-events-raise/s', 'T', '1', metadata => {big})"
            ),
            "54000",
            "100",
        );
        assert_fails(
            &format!("SELECT allsource.append_batch('oversized-events-raise/s', jsonb_build_array(jsonb_build_object('type', 'T', 'payload', {big}::jsonb)))"),
            "54000",
            "events[0]",
        );
        Spi::run("SELECT allsource.append('oversized-events-raise/s', 'T', '\"small\"')").unwrap();
        assert_eq!(event_count(), 1);
    }

    #[pg_test]
    fn appending_to_a_deleted_stream_raises_za002() {
        Spi::run("SELECT allsource.append('appending-to-a/s', 'T', '1')").unwrap();
        // Until delete_stream exists, mark the tombstone the way it will.
        Spi::run("SET LOCAL session_replication_role = replica").unwrap();
        Spi::run(
            "UPDATE allsource.streams SET deleted_at = now() WHERE stream_id = 'appending-to-a/s'",
        )
        .unwrap();
        Spi::run("SET LOCAL session_replication_role = origin").unwrap();
        assert_fails(
            "SELECT allsource.append('appending-to-a/s', 'T', '1')",
            "ZA002",
            "stream \"appending-to-a/s\" is deleted",
        );
        assert_eq!(
            one::<i64>("SELECT count(*) FROM allsource.read_stream('appending-to-a/s')"),
            0
        );
        assert_eq!(
            one::<i64>("SELECT allsource.stream_version('appending-to-a/s')"),
            1
        );
    }
}
