//! `allsource.delete_stream`.
//!
//! A soft delete leaves a tombstone: the stream row keeps its version and
//! says when and by whom, sealed into the hash chain (`tombstone_checksum`).
//! A hard delete also erases every event's payload and metadata; what the
//! hash chain covers of them, their SHA-256 digests, moves to
//! `allsource.erased_events`, so `verify_*` still proves the chain and
//! reports the stream as erased.

use crate::sql::guard::WriteGuard;
use crate::sql::raise::or_raise;
use crate::sql::spi;
use crate::sql::standby::refuse_on_standby;
use crate::sql::stream_row::{lock_stream, Stream};
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
    let now = crate::sql::backend::transaction_timestamp();
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
