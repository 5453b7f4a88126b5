//! Hot standbys: whether this server is one, and the refusal of writes
//! there and in read-only transactions (25006). The ingest workers, the notifier and the publisher start
//! only once recovery has finished (after a promotion).

use allsource_core::error::{sqlstate, Error, Result};
use pgrx::pg_sys;

/// Whether this server is in recovery: a hot standby, until promoted.
pub fn is_standby() -> bool {
    // SAFETY: reads the recovery state in shared memory, which every
    // process that runs SQL is attached to.
    unsafe { pg_sys::RecoveryInProgress() }
}

/// 25006 on a hot standby: `function` writes, and only the primary can.
pub fn refuse_on_standby(function: &str) -> Result<()> {
    if !is_standby() {
        return Ok(());
    }
    Err(Error::new(sqlstate::READ_ONLY_SQL_TRANSACTION, format!("{function} cannot run on a hot standby"))
        .with_detail("This server replays the primary's WAL and is read-only.")
        .with_hint("Send writes to the primary. A standby serves read_stream, read_all, read_category, stream_version, watermark, verify_* and stats."))
}

/// 25006 in a read-only transaction: the executor's check, which the
/// append's writes below SQL do not pass through.
pub fn refuse_in_read_only_transaction() -> Result<()> {
    // SAFETY: a plain global of this backend, set by SET TRANSACTION.
    if !unsafe { pg_sys::XactReadOnly } {
        return Ok(());
    }
    Err(Error::new(
        sqlstate::READ_ONLY_SQL_TRANSACTION,
        "cannot append in a read-only transaction",
    )
    .with_hint("Append in a READ WRITE transaction (see default_transaction_read_only)."))
}
