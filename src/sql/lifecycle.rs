//! `allsource.delete_stream` and `allsource.save_snapshot`
//! (`load_snapshot` is SQL, in sql/finalize.sql).
//!
//! A soft delete leaves a tombstone: the stream row keeps its version and
//! says when and by whom, sealed into the hash chain (`tombstone_checksum`).
//! A hard delete also erases every event's payload and metadata; what the
//! hash chain covers of them, their SHA-256 digests, moves to
//! `allsource.erased_events`, so `verify_*` still proves the chain and
//! reports the stream as erased.

use crate::sql::guard::WriteGuard;
use crate::sql::jsonb::JsonbText;
use crate::sql::raise::or_raise;
use crate::sql::spi;
use crate::sql::standby::refuse_on_standby;
use crate::sql::tenant;
use allsource_core::checksum::{
    digest, tombstone_checksum, unix_micros_from_postgres, TombstoneFields, CHECKSUM_LEN, GENESIS,
};
use allsource_core::error::{Error, Result};
use allsource_core::validate;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

/// Events erased per round trip.
const CHUNK: i64 = 1000;

/// The locked stream row.
struct Stream {
    partition_id: i32,
    version: i64,
    last_checksum: Option<Vec<u8>>,
    tenant: Option<String>,
    deleted: bool,
    erased: bool,
}

/// Locks the stream's row; `None` if it has none. Another tenant's stream
/// is refused.
fn lock_stream(
    client: &mut SpiClient,
    stream_id: &str,
    tenant: Option<&str>,
) -> Result<Option<Stream>> {
    let rows = spi(client.update(
        "SELECT partition_id, version, tenant_id, deleted_at IS NOT NULL, erased_at IS NOT NULL, last_checksum \
         FROM allsource.streams WHERE stream_id = $1 FOR UPDATE",
        None,
        &[stream_id.into()],
    ));
    let Some(row) = rows.into_iter().next() else {
        return Ok(None);
    };
    let stream = Stream {
        partition_id: spi(row.get(1)).expect("NOT NULL"),
        version: spi(row.get(2)).expect("NOT NULL"),
        tenant: spi(row.get(3)),
        deleted: spi(row.get(4)).expect("computed"),
        erased: spi(row.get(5)).expect("computed"),
        last_checksum: spi(row.get(6)),
    };
    if stream.tenant.as_deref() != tenant {
        return Err(Error::other_tenant(stream_id));
    }
    Ok(Some(stream))
}

/// The role the caller acts as (SET ROLE included), which a SECURITY
/// DEFINER function's `current_user` no longer says.
fn calling_role() -> String {
    // SAFETY: the outer user id is always a valid role of this session.
    unsafe {
        let name = pg_sys::GetUserNameFromId(pg_sys::GetOuterUserId(), false);
        std::ffi::CStr::from_ptr(name)
            .to_string_lossy()
            .into_owned()
    }
}

/// Deletes a stream: a tombstone, or with `hard => true` also erases the
/// payload and metadata of all its events. Returns the stream's last version.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn delete_stream(stream_id: Option<&str>, hard: default!(Option<bool>, false)) -> i64 {
    or_raise((|| {
        refuse_on_standby("allsource.delete_stream()")?;
        let stream_id = validate::name("stream_id", stream_id)?;
        let hard = hard.ok_or_else(|| Error::invalid_argument("hard", "must not be null"))?;
        let tenant = tenant::session_tenant()?;
        let _writing = WriteGuard::new();
        Spi::connect_mut(|client| {
            let stream = match lock_stream(client, stream_id, tenant.as_deref())? {
                Some(stream) => stream,
                // Never written: the tombstone keeps the id from being used.
                // Created as an append creates it: a concurrent first append
                // (or delete) that inserted the row first makes us wait for
                // it, and then lock its row.
                None => {
                    spi(client.update(
                        "INSERT INTO allsource.streams (stream_id, partition_id, tenant_id) \
                         VALUES ($1, allsource.partition_for($1, allsource.partition_count()), $2) \
                         ON CONFLICT (stream_id) DO NOTHING",
                        None,
                        &[stream_id.into(), tenant.clone().into()],
                    ));
                    lock_stream(client, stream_id, tenant.as_deref())?
                        .expect("inserted here, or committed by the transaction we waited for")
                }
            };
            if !stream.deleted {
                let role = calling_role();
                let tombstone = tombstone(stream_id, &stream, &role);
                spi(client.update(
                    "UPDATE allsource.streams SET deleted_at = pg_catalog.now(), deleted_by = $2, tombstone_checksum = $3, \
                     updated_at = pg_catalog.now() WHERE stream_id = $1",
                    None,
                    &[stream_id.into(), role.into(), tombstone.into()],
                ));
            }
            if hard && !stream.erased {
                erase(client, stream_id, &stream)?;
            }
            Ok(stream.version)
        })
    })())
}

/// The tombstone's link (see [`allsource_core::checksum`]): seals the deletion into
/// the chain, so that clearing `deleted_at` is found by `verify_*`, and
/// by whoever recorded the head (`stream_head`) when the link goes too.
/// `deleted_at` is `now()`, the transaction's start.
fn tombstone(stream_id: &str, stream: &Stream, role: &str) -> Vec<u8> {
    let previous = stream
        .last_checksum
        .as_deref()
        .and_then(|c| <[u8; CHECKSUM_LEN]>::try_from(c).ok())
        .unwrap_or(GENESIS);
    // SAFETY: reads the transaction's start time, which now() returns.
    let now = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    tombstone_checksum(
        &TombstoneFields {
            stream_id,
            version: stream.version,
            tenant: stream.tenant.as_deref(),
            deleted_at_unix_micros: unix_micros_from_postgres(now),
            deleted_by: Some(role),
        },
        &previous,
    )
    .to_vec()
}

/// Replaces every event's payload and metadata of the stream by their digests.
fn erase(client: &mut SpiClient, stream_id: &str, stream: &Stream) -> Result<()> {
    let events = format!("allsource.events_p{}", stream.partition_id);
    let mut after_version = 0i64;
    loop {
        let rows = spi(client.select(
            &format!(
                "SELECT version, position, payload::text, metadata::text FROM {events} \
                 WHERE stream_id = $1 AND version > $2 ORDER BY version LIMIT {CHUNK}"
            ),
            None,
            &[stream_id.into(), after_version.into()],
        ));
        let (mut positions, mut payloads, mut metadata) = (vec![], vec![], vec![]);
        for row in rows {
            after_version = spi(row.get(1)).expect("NOT NULL");
            positions.push(spi(row.get::<i64>(2)).expect("NOT NULL"));
            let payload: String = spi(row.get(3)).expect("NOT NULL");
            payloads.push(digest(&payload).to_vec());
            metadata.push(spi::<Option<String>>(row.get(4)).map(|m| digest(&m).to_vec()));
        }
        if positions.is_empty() {
            break;
        }
        spi(client.update(
            "INSERT INTO allsource.erased_events (partition_id, position, payload_digest, metadata_digest) \
             SELECT $1, u.position, u.payload, u.metadata \
             FROM ROWS FROM (pg_catalog.unnest($2::bigint[]), pg_catalog.unnest($3::bytea[]), \
                             pg_catalog.unnest($4::bytea[])) AS u(position, payload, metadata)",
            None,
            &[
                stream.partition_id.into(),
                positions.into(),
                payloads.into(),
                metadata.into(),
            ],
        ));
    }
    spi(client.update(
        &format!("UPDATE {events} SET payload = 'null', metadata = NULL WHERE stream_id = $1"),
        None,
        &[stream_id.into()],
    ));
    // A snapshot is derived from the payloads: it goes with them.
    spi(client.update(
        "DELETE FROM allsource.snapshots WHERE stream_id = $1",
        None,
        &[stream_id.into()],
    ));
    spi(client.update(
        "UPDATE allsource.streams SET erased_at = pg_catalog.now(), erased_by = $2 WHERE stream_id = $1",
        None,
        &[stream_id.into(), calling_role().into()],
    ));
    Ok(())
}

/// Saves a snapshot of the stream's state at `version`. Only the latest is
/// kept: returns false (and keeps the stored one) when a snapshot of a higher
/// version exists.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn save_snapshot(stream_id: Option<&str>, version: Option<i64>, state: Option<JsonbText>) -> bool {
    or_raise((|| {
        refuse_on_standby("allsource.save_snapshot()")?;
        let stream_id = validate::name("stream_id", stream_id)?;
        let version =
            version.ok_or_else(|| Error::invalid_argument("version", "must not be null"))?;
        let state = validate::required("state", state)?.0;
        if version < 1 {
            return Err(Error::invalid_argument(
                "version",
                format!("must be at least 1, not {version}"),
            ));
        }
        let tenant = tenant::session_tenant()?;
        let _writing = WriteGuard::new();
        Spi::connect_mut(|client| {
            let stream = lock_stream(client, stream_id, tenant.as_deref())?;
            let current = stream.as_ref().map_or(0, |s| s.version);
            if stream.as_ref().is_some_and(|s| s.deleted) {
                return Err(Error::stream_deleted(stream_id));
            }
            if version > current {
                return Err(Error::invalid_argument(
                    "version",
                    format!("is {version}, but stream \"{stream_id}\" is at version {current}"),
                ));
            }
            let stored = spi(client.update(
                "INSERT INTO allsource.snapshots AS s (stream_id, version, state, tenant_id) \
                 VALUES ($1, $2, $3::jsonb, $4) \
                 ON CONFLICT (stream_id) DO UPDATE \
                 SET version = excluded.version, state = excluded.state, created_at = pg_catalog.now() \
                 WHERE s.version <= excluded.version \
                 RETURNING 1",
                None,
                &[
                    stream_id.into(),
                    version.into(),
                    state.into(),
                    tenant.into(),
                ],
            ));
            Ok(!stored.is_empty())
        })
    })())
}
