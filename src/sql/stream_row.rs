//! A stream's row in `allsource.streams`, locked for a change that is not
//! an append (`delete_stream`, `save_snapshot`; appends lock theirs in
//! `append`, several at once and in order).

use crate::sql::spi;
use allsource_core::error::{Error, Result};
use pgrx::spi::SpiClient;

/// The locked stream row.
pub(super) struct Stream {
    pub(super) partition_id: i32,
    pub(super) version: i64,
    pub(super) last_checksum: Option<Vec<u8>>,
    pub(super) tenant: Option<String>,
    pub(super) deleted: bool,
    pub(super) erased: bool,
}

/// Locks the stream's row; `None` if it has none. Another tenant's stream
/// is refused.
pub(super) fn lock_stream(
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
