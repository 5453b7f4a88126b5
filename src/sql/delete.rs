//! `allsource.delete_stream`.
//!
//! A soft delete leaves a tombstone: the stream row keeps its version and
//! says when and by whom, sealed into the hash chain (`tombstone_checksum`).
//! A hard delete also erases every event's payload and metadata; what the
//! hash chain covers of them, their SHA-256 digests, moves to
//! `allsource.erased_events`, so `verify_*` still proves the chain and
//! reports the stream as erased.

use crate::sql::backend;
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
                let role = backend::calling_role();
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
        &[stream_id.into(), backend::calling_role().into()],
    ));
    Ok(())
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::test_support::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn a_soft_delete_leaves_a_tombstone() {
        Spi::run("SELECT allsource.append_batch('soft-delete/s', '[{\"type\": \"A\", \"payload\": 1}, {\"type\": \"B\", \"payload\": 2}]')").unwrap();
        let version: i64 = one("SELECT allsource.delete_stream('soft-delete/s')");
        assert_eq!(version, 2);
        assert_fails(
            "SELECT allsource.append('soft-delete/s', 'C', '3')",
            "ZA002",
            "is deleted",
        );
        let read: i64 = one("SELECT count(*) FROM allsource.read_stream('soft-delete/s')");
        assert_eq!(read, 0, "read_stream returns nothing");
        let version: i64 = one("SELECT allsource.stream_version('soft-delete/s')");
        assert_eq!(version, 2, "stream_version keeps the last version");
        let by: String =
            one("SELECT deleted_by FROM allsource.streams WHERE stream_id = 'soft-delete/s'");
        assert_eq!(by, one::<String>("SELECT current_user::text"));
        let stored: String = one("SELECT payload::text FROM allsource.events WHERE stream_id = 'soft-delete/s' AND version = 2");
        assert_eq!(stored, "2", "a soft delete keeps the payloads");
        // A stream never written gets a tombstone too.
        let version: i64 = one("SELECT allsource.delete_stream('soft-delete/never')");
        assert_eq!(version, 0);
        assert_fails(
            "SELECT allsource.append('soft-delete/never', 'C', '3')",
            "ZA002",
            "is deleted",
        );
        assert_fails(
            "SELECT allsource.delete_stream('soft-delete/s', NULL)",
            "22023",
            "hard",
        );
    }

    #[pg_test]
    fn a_hard_delete_erases_content_and_the_chain_still_verifies() {
        Spi::run("SELECT allsource.append('hard-delete/s', 'A', '{\"name\": \"Ada\"}', '{\"ip\": \"10.0.0.1\"}')").unwrap();
        Spi::run("SELECT allsource.append('hard-delete/s', 'B', '{\"name\": \"Ada L.\"}')")
            .unwrap();
        Spi::run("SELECT allsource.save_snapshot('hard-delete/s', 2, '{\"name\": \"Ada L.\"}')")
            .unwrap();
        let version: i64 = one("SELECT allsource.delete_stream('hard-delete/s', hard => true)");
        assert_eq!(version, 2);
        let left: i64 = one(
            "SELECT count(*) FROM allsource.events WHERE stream_id = 'hard-delete/s' \
             AND (payload <> 'null' OR metadata IS NOT NULL)",
        );
        assert_eq!(left, 0, "payload and metadata are gone");
        let digests: i64 = one(
            "SELECT count(*) FROM allsource.erased_events x JOIN allsource.events e USING (partition_id, position) \
             WHERE e.stream_id = 'hard-delete/s' AND (e.version = 1) = (x.metadata_digest IS NOT NULL)",
        );
        assert_eq!(
            digests, 2,
            "digests of both payloads, metadata only where there was one"
        );
        let (ok, checked) = Spi::get_two::<bool, i64>(
            "SELECT ok, events_checked FROM allsource.verify_stream('hard-delete/s')",
        )
        .unwrap();
        assert_eq!((ok, checked), (Some(true), Some(2)));
        let problem: String = one("SELECT problem FROM allsource.verify_stream('hard-delete/s')");
        assert!(problem.starts_with("erased at "), "{problem}");
        let failing: i64 =
            one("SELECT count(*) FROM allsource.verify_all() WHERE stream_id = 'hard-delete/s'");
        assert_eq!(failing, 0, "erased is not corrupt");
        let snapshots: i64 = one("SELECT count(*) FROM allsource.load_snapshot('hard-delete/s')");
        assert_eq!(snapshots, 0, "the snapshot goes with the payloads");
        // A forged digest is still caught.
        Spi::run(
            "SET LOCAL session_replication_role = replica;
             UPDATE allsource.erased_events SET payload_digest = sha256('x')
             WHERE position = (SELECT position FROM allsource.events WHERE stream_id = 'hard-delete/s' AND version = 2);
             SET LOCAL session_replication_role = origin",
        )
        .unwrap();
        let (ok, bad) = Spi::get_two::<bool, i64>(
            "SELECT ok, first_bad_version FROM allsource.verify_stream('hard-delete/s')",
        )
        .unwrap();
        assert_eq!((ok, bad), (Some(false), Some(2)));
    }
}
