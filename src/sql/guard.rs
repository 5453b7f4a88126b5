//! Only the extension's own functions write its tables. They hold a
//! [`WriteGuard`] while they do; the statement trigger `refuse_direct_write`
//! refuses every other INSERT, UPDATE, DELETE and TRUNCATE, superusers'
//! included. The flag is backend-local memory no SQL can set.

use crate::error::Error;
use crate::sql::raise::raise;
use pgrx::prelude::*;
use std::cell::Cell;

thread_local! {
    static WRITERS: Cell<u32> = const { Cell::new(0) };
}

/// Allows writes to the extension's tables while alive. Dropped on return
/// and on unwinding, so an error cannot leave the door open.
pub struct WriteGuard(());

impl WriteGuard {
    pub fn new() -> Self {
        WRITERS.with(|w| w.set(w.get() + 1));
        WriteGuard(())
    }
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        WRITERS.with(|w| w.set(w.get() - 1));
    }
}

fn writing() -> bool {
    WRITERS.with(|w| w.get() > 0)
}

/// Statement trigger on every table of the extension.
#[pg_trigger]
fn refuse_direct_write<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgTriggerError> {
    if writing() {
        return Ok(None);
    }
    // raise() longjmps past this frame: the Error is its only owned value
    // (the table's name is built and dropped inside `refusal`).
    raise(refusal(trigger)?)
}

/// The error for a direct write to the trigger's table.
fn refusal(trigger: &PgTrigger) -> Result<Error, PgTriggerError> {
    let table = format!("{}.{}", trigger.table_schema()?, trigger.table_name()?);
    let operation = trigger.op()?;
    Ok(Error::new(
        "42501",
        format!("direct {operation} on {table} is not allowed"),
    )
    .with_detail("AllSource's tables are written only by its functions, so versions, positions and checksums stay consistent.")
    .with_hint("Use allsource.append or allsource.append_batch to write events. To restore a dump, run pg_restore or psql as a superuser with PGOPTIONS='-c session_replication_role=replica'."))
}
