//! Only the extension's own functions write its tables. They hold a
//! [`WriteGuard`] while they do; the statement trigger `refuse_direct_write`
//! refuses every other INSERT, UPDATE, DELETE and TRUNCATE, superusers'
//! included. The flag is backend-local memory no SQL can set.
//!
//! One write is let through: a client's `COPY allsource.<table> FROM STDIN`
//! into exactly that table, which is how a dump (pg_restore, or psql on a
//! plain dump) loads the tables. It cannot happen by accident the way an
//! `INSERT` or `UPDATE` can, only their owner or a superuser may run it, and
//! `verify_all()` checks what it loaded (docs/operations.md, "Backup").

use crate::sql::raise::raise;
use allsource_core::error::{sqlstate, Error};
use pgrx::prelude::*;
use pgrx::{is_a, PgList};
use std::cell::Cell;
use std::ffi::CStr;

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

/// Whether the statement the client sent is `COPY schema.table FROM STDIN`
/// naming this very table (schema-qualified, as pg_dump writes it). A COPY
/// from a server file or a program, or a write nested in another statement,
/// is not a restore.
fn restoring(schema: &str, table: &str) -> bool {
    // SAFETY: ActivePortal is null or the portal running the client's
    // statement; its statement list and their nodes live while it runs, and
    // every pointer is checked for null and node type before it is read.
    unsafe {
        let portal = pg_sys::ActivePortal;
        if portal.is_null() || (*portal).commandTag != pg_sys::CommandTag::CMDTAG_COPY {
            return false;
        }
        let statements = PgList::<pg_sys::PlannedStmt>::from_pg((*portal).stmts);
        let Some(planned) = statements.head() else {
            return false;
        };
        if !is_a(planned.cast(), pg_sys::NodeTag::T_PlannedStmt)
            || !is_a((*planned).utilityStmt, pg_sys::NodeTag::T_CopyStmt)
        {
            return false;
        }
        let copy = &*(*planned).utilityStmt.cast::<pg_sys::CopyStmt>();
        if !copy.is_from || copy.is_program || !copy.filename.is_null() || copy.relation.is_null() {
            return false;
        }
        let relation = &*copy.relation;
        !relation.schemaname.is_null()
            && CStr::from_ptr(relation.schemaname).to_bytes() == schema.as_bytes()
            && CStr::from_ptr(relation.relname).to_bytes() == table.as_bytes()
    }
}

/// Why this statement may not write, or `None` when it may.
fn refusal(trigger: &PgTrigger) -> Result<Option<Error>, PgTriggerError> {
    if writing() {
        return Ok(None);
    }
    let (schema, table, operation) = (
        trigger.table_schema()?,
        trigger.table_name()?,
        trigger.op()?,
    );
    if matches!(operation, PgTriggerOperation::Insert) && restoring(&schema, &table) {
        return Ok(None);
    }
    Ok(Some(
        Error::new(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            format!("direct {operation} on {schema}.{table} is not allowed"),
        )
        .with_detail("AllSource's tables are written only by its functions, so versions, positions and checksums stay consistent.")
        .with_hint("Use allsource.append or allsource.append_batch to write events. A dump restores with pg_restore or psql as it is (docs/operations.md, \"Backup\")."),
    ))
}

/// Statement trigger on every table of the extension.
#[pg_trigger]
fn refuse_direct_write<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgTriggerError> {
    // Every value with a destructor is gone before raise() jumps.
    match refusal(trigger)? {
        None => Ok(None),
        Some(error) => raise(error),
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::test_support::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn direct_writes_are_refused_even_for_superusers() {
        assert!(one::<bool>(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ));
        Spi::run("SELECT allsource.append('direct-writes-are/s', 'T', '1')").unwrap();
        let partition: i32 = one("SELECT allsource.partition_for('direct-writes-are/s')");
        let part = format!("allsource.events_p{partition}");
        let statements = [
            "INSERT INTO allsource.events SELECT * FROM allsource.events".to_string(),
            format!("INSERT INTO {part} SELECT * FROM {part}"),
            "UPDATE allsource.events SET payload = '2'".to_string(),
            format!("UPDATE {part} SET payload = '2'"),
            "DELETE FROM allsource.events".to_string(),
            format!("DELETE FROM {part}"),
            "TRUNCATE allsource.events".to_string(),
            format!("TRUNCATE {part}"),
            "INSERT INTO allsource.streams (stream_id, partition_id) VALUES ('x', 0)".to_string(),
            "UPDATE allsource.streams SET version = 9".to_string(),
            "DELETE FROM allsource.streams".to_string(),
            "TRUNCATE allsource.streams".to_string(),
            "DELETE FROM allsource.event_ids".to_string(),
            "TRUNCATE allsource.event_ids".to_string(),
        ];
        for statement in &statements {
            assert_fails(statement, "42501", "is not allowed");
        }
        assert_eq!(event_count(), 1);
        assert_eq!(
            one::<String>("SELECT payload::text FROM allsource.events"),
            "1"
        );
    }
}
