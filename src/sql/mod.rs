//! The pgrx layer: SQL functions that check arguments, call the core, talk
//! SPI and raise errors with their SQLSTATEs.

mod append;
mod checks;
mod guard;
pub mod notify;
mod partition;
mod raise;
mod verify;
pub mod watermark;

use pgrx::spi::SpiResult;
use pgrx::{IntoDatum, PgOid};

/// SPI's own errors (as opposed to PostgreSQL's, which unwind) mean a bug here.
fn spi<T>(result: SpiResult<T>) -> T {
    result.unwrap_or_else(|e| panic!("allsource internal SPI error: {e}"))
}

/// The type OID of a Rust type, for preparing statements.
fn oid<T: IntoDatum>() -> PgOid {
    PgOid::from(T::type_oid())
}
