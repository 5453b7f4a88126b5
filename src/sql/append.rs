//! `allsource.append` and `allsource.append_batch`: one code path for both.
//!
//! The stream row is the lock. Under it: the idempotency check, the expected
//! version, positions from the sequence, the chained checksums, one
//! multi-row insert, and the stream row's new version and last checksum.
//! Versions are gapless because only the lock holder advances them and a
//! rollback undoes them.

use crate::batch::{parse_batch, replay_of, Appended, NewEvent, StoredEvent};
use crate::checksum::{self, EventFields, CHECKSUM_LEN, GENESIS};
use crate::error::{Error, Result};
use crate::jsontext::jsonb_text;
use crate::settings;
use crate::sql::guard::WriteGuard;
use crate::sql::raise::or_raise;
use crate::sql::{notify, watermark};
use crate::sql::{oid, spi};
use crate::validate::{self, ExpectedVersion};
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use pgrx::{JsonB, PgOid, Uuid};
use std::cell::OnceCell;
use std::collections::HashMap;

/// Appends one event to a stream; returns its version and global position.
#[pg_extern]
fn append(
    stream_id: Option<&str>,
    event_type: Option<&str>,
    payload: Option<JsonB>,
    metadata: default!(Option<JsonB>, "NULL"),
    expected_version: default!(Option<i64>, "NULL"),
    event_id: default!(Option<Uuid>, "NULL"),
) -> TableIterator<'static, (name!(version, i64), name!(position, i64))> {
    let result = (|| {
        let stream_id = validate::name("stream_id", stream_id)?;
        let event_type = validate::name("event_type", event_type)?.to_string();
        let payload = jsonb_text(&validate::required("payload", payload)?.0);
        let metadata = metadata.map(|m| jsonb_text(&m.0));
        let expected = ExpectedVersion::from_arg(expected_version)?;
        let event = NewEvent {
            event_type,
            event_id: event_id.map(|id| uuid::Uuid::from_bytes(*id.as_bytes())),
            payload,
            metadata,
        };
        validate::event_size("payload", event.size(), settings::max_event_bytes())?;
        append_events(stream_id, &[event], expected)
    })();
    let appended = or_raise(result);
    TableIterator::once((appended.first_version, appended.first_position))
}

/// Appends a JSON array of events to one stream, all or nothing.
#[pg_extern]
fn append_batch(
    stream_id: Option<&str>,
    events: Option<JsonB>,
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
    let result = (|| {
        let stream_id = validate::name("stream_id", stream_id)?;
        let events = parse_batch(
            &validate::required("events", events)?.0,
            settings::max_event_bytes(),
        )?;
        let expected = ExpectedVersion::from_arg(expected_version)?;
        append_events(stream_id, &events, expected)
    })();
    let a = or_raise(result);
    TableIterator::once((
        a.first_version,
        a.last_version,
        a.first_position,
        a.last_position,
    ))
}

/// The stream row, locked for this transaction.
struct StreamHead {
    partition_id: i32,
    version: i64,
    last_checksum: [u8; CHECKSUM_LEN],
    deleted: bool,
}

/// Appends `events` (at least one) to `stream_id` inside the caller's transaction.
fn append_events(
    stream_id: &str,
    events: &[NewEvent],
    expected: ExpectedVersion,
) -> Result<Appended> {
    let _writing = WriteGuard::new();
    Spi::connect_mut(|client| {
        let plans = plans(client);
        let head = lock_stream(client, plans, stream_id);
        if head.deleted {
            return Err(Error::stream_deleted(stream_id));
        }
        if let Some(original) = replay_of(stream_id, events, stored_events(client, plans, events))?
        {
            return Ok(original);
        }
        expected.check(stream_id, head.version)?;

        watermark::before_taking_positions();
        let positions = take_positions(client, plans, events.len());
        // now(): the transaction's start, which is what created_at stores.
        let created_at = checksum::unix_micros_from_postgres(unsafe {
            pg_sys::GetCurrentTransactionStartTimestamp()
        });
        let mut rows = EventRows::with_capacity(events.len());
        let mut previous = head.last_checksum;
        for (offset, (event, &position)) in events.iter().zip(&positions).enumerate() {
            let version = head.version + 1 + offset as i64;
            let event_id = event.event_id.unwrap_or_else(uuid::Uuid::new_v4);
            previous = checksum::checksum(
                &EventFields {
                    stream_id,
                    version,
                    event_type: &event.event_type,
                    event_id: *event_id.as_bytes(),
                    payload: &event.payload,
                    metadata: event.metadata.as_deref(),
                    created_at_unix_micros: created_at,
                },
                &previous,
            );
            rows.push(position, version, event_id, event, previous);
        }

        let registered = spi(client.update(
            &plans.insert_events,
            None,
            &[
                head.partition_id.into(),
                stream_id.into(),
                rows.positions.into(),
                rows.versions.into(),
                rows.event_ids.into(),
                rows.event_types.into(),
                rows.payloads.into(),
                rows.metadata.into(),
                rows.checksums.into(),
            ],
        ));
        if registered.len() != events.len() {
            return Err(Error::event_id_reused(
                "of this append",
                "another transaction appended an event with the same id at the same time",
            ));
        }

        notify::appended(head.partition_id, positions[positions.len() - 1]);
        let last_version = head.version + events.len() as i64;
        spi(client.update(
            &plans.update_stream,
            None,
            &[
                stream_id.into(),
                last_version.into(),
                previous.to_vec().into(),
            ],
        ));
        Ok(Appended {
            first_version: head.version + 1,
            last_version,
            first_position: positions[0],
            last_position: positions[positions.len() - 1],
        })
    })
}

/// Column arrays for the multi-row insert.
struct EventRows {
    positions: Vec<i64>,
    versions: Vec<i64>,
    event_ids: Vec<Uuid>,
    event_types: Vec<String>,
    payloads: Vec<String>,
    metadata: Vec<Option<String>>,
    checksums: Vec<Vec<u8>>,
}

impl EventRows {
    fn with_capacity(n: usize) -> Self {
        EventRows {
            positions: Vec::with_capacity(n),
            versions: Vec::with_capacity(n),
            event_ids: Vec::with_capacity(n),
            event_types: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
            checksums: Vec::with_capacity(n),
        }
    }

    fn push(
        &mut self,
        position: i64,
        version: i64,
        id: uuid::Uuid,
        event: &NewEvent,
        checksum: [u8; CHECKSUM_LEN],
    ) {
        self.positions.push(position);
        self.versions.push(version);
        self.event_ids.push(Uuid::from_bytes(*id.as_bytes()));
        self.event_types.push(event.event_type.clone());
        self.payloads.push(event.payload.clone());
        self.metadata.push(event.metadata.clone());
        self.checksums.push(checksum.to_vec());
    }
}

/// Locks the stream row, creating it (version 0) on first use. A concurrent
/// creator makes our insert a no-op after it commits; then the row is there
/// to lock.
fn lock_stream(client: &mut SpiClient, plans: &Plans, stream_id: &str) -> StreamHead {
    loop {
        for plan in [&plans.lock_stream, &plans.create_stream] {
            let table = spi(client.update(plan, None, &[stream_id.into()]));
            if let Some(row) = table.into_iter().next() {
                let checksum: Option<Vec<u8>> = spi(row.get(3));
                return StreamHead {
                    partition_id: spi(row.get(1)).expect("partition_id is NOT NULL"),
                    version: spi(row.get(2)).expect("version is NOT NULL"),
                    last_checksum: checksum.and_then(|c| c.try_into().ok()).unwrap_or(GENESIS),
                    deleted: spi(row.get(4)).expect("deleted is computed"),
                };
            }
        }
    }
}

/// Looks up the events among `events` whose ids are already stored.
fn stored_events(
    client: &SpiClient,
    plans: &Plans,
    events: &[NewEvent],
) -> impl Fn(&uuid::Uuid) -> Option<StoredEvent> {
    let ids: Vec<Uuid> = events
        .iter()
        .filter_map(|e| e.event_id)
        .map(|id| Uuid::from_bytes(*id.as_bytes()))
        .collect();
    let mut found = HashMap::new();
    if !ids.is_empty() {
        for row in spi(client.select(&plans.find_events, None, &[ids.into()])) {
            let id: Uuid = spi(row.get(1)).expect("event_id is NOT NULL");
            found.insert(
                uuid::Uuid::from_bytes(*id.as_bytes()),
                StoredEvent {
                    stream_id: spi(row.get(2)).expect("NOT NULL"),
                    version: spi(row.get(3)).expect("NOT NULL"),
                    position: spi(row.get(4)).expect("NOT NULL"),
                    event_type: spi(row.get(5)).expect("NOT NULL"),
                    payload: spi(row.get(6)).expect("NOT NULL"),
                },
            );
        }
    }
    move |id| found.get(id).cloned()
}

/// `count` new positions, ascending.
fn take_positions(client: &SpiClient, plans: &Plans, count: usize) -> Vec<i64> {
    let table = spi(client.select(&plans.take_positions, None, &[(count as i32).into()]));
    let mut positions: Vec<i64> = table
        .into_iter()
        .map(|row| spi(row.get(1)).expect("nextval is never NULL"))
        .collect();
    positions.sort_unstable();
    positions
}

/// SPI statements, prepared once per backend.
struct Plans {
    lock_stream: OwnedPreparedStatement,
    create_stream: OwnedPreparedStatement,
    find_events: OwnedPreparedStatement,
    take_positions: OwnedPreparedStatement,
    insert_events: OwnedPreparedStatement,
    update_stream: OwnedPreparedStatement,
}

const STREAM_HEAD: &str = "partition_id, version, last_checksum, deleted_at IS NOT NULL";

thread_local! {
    static PLANS: OnceCell<&'static Plans> = const { OnceCell::new() };
}

fn plans(client: &SpiClient) -> &'static Plans {
    PLANS.with(|cell| *cell.get_or_init(|| Box::leak(Box::new(Plans::prepare(client)))))
}

impl Plans {
    fn prepare(client: &SpiClient) -> Plans {
        let prepare = |sql: &str, args: &[PgOid]| spi(client.prepare_mut(sql, args)).keep();
        Plans {
            lock_stream: prepare(
                &format!("SELECT {STREAM_HEAD} FROM allsource.streams WHERE stream_id = $1 FOR UPDATE"),
                &[oid::<String>()],
            ),
            create_stream: prepare(
                &format!(
                    "INSERT INTO allsource.streams (stream_id, partition_id) \
                     VALUES ($1, allsource.partition_for($1, allsource.partition_count())) \
                     ON CONFLICT (stream_id) DO NOTHING RETURNING {STREAM_HEAD}"
                ),
                &[oid::<String>()],
            ),
            find_events: prepare(
                "SELECT i.event_id, e.stream_id, e.version, e.position, e.event_type, e.payload::text \
                 FROM allsource.event_ids i \
                 JOIN allsource.events e ON e.partition_id = i.partition_id AND e.position = i.position \
                 WHERE i.event_id = ANY ($1)",
                &[oid::<Vec<Uuid>>()],
            ),
            take_positions: prepare(
                "SELECT nextval('allsource.event_position') FROM generate_series(1, $1)",
                &[oid::<i32>()],
            ),
            insert_events: prepare(
                "WITH inserted AS ( \
                   INSERT INTO allsource.events (position, partition_id, stream_id, version, event_id, \
                                                 event_type, payload, metadata, created_at, checksum) \
                   SELECT u.position, $1, $2, u.version, u.event_id, u.event_type, \
                          u.payload::jsonb, u.metadata::jsonb, now(), u.checksum \
                   FROM unnest($3, $4, $5, $6, $7, $8, $9) \
                        AS u(position, version, event_id, event_type, payload, metadata, checksum) \
                   RETURNING event_id, position) \
                 INSERT INTO allsource.event_ids (event_id, partition_id, position) \
                 SELECT event_id, $1, position FROM inserted \
                 ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
                &[
                    oid::<i32>(),
                    oid::<String>(),
                    oid::<Vec<i64>>(),
                    oid::<Vec<i64>>(),
                    oid::<Vec<Uuid>>(),
                    oid::<Vec<String>>(),
                    oid::<Vec<String>>(),
                    oid::<Vec<Option<String>>>(),
                    oid::<Vec<Vec<u8>>>(),
                ],
            ),
            update_stream: prepare(
                "UPDATE allsource.streams SET version = $2, last_checksum = $3, updated_at = now() \
                 WHERE stream_id = $1",
                &[oid::<String>(), oid::<i64>(), oid::<Vec<u8>>()],
            ),
        }
    }
}
