//! The watermark in PostgreSQL: the in-flight registry ([`allsource_core::watermark`])
//! in shared memory, one slot per backend (indexed by `pgprocno`); the
//! transaction callback that empties a slot once its transaction's outcome is
//! visible; `watermark()`, `inflight()`; and the refusal to prepare a
//! transaction that appended (appends rolled back to a savepoint do not count).
//!
//! The slot is emptied in `XACT_EVENT_COMMIT` / `XACT_EVENT_ABORT`, which
//! PostgreSQL (13 to 18) calls after `ProcArrayEndTransaction`: by then new
//! snapshots see the commit. A backend that dies is cleaned up by its abort
//! (FATAL exits abort the open transaction) and, after a crash, by the
//! postmaster re-creating shared memory.

mod publisher;

pub use publisher::start as start_publisher;

use crate::savepoints::Nested;
use crate::sql::backend::{self, current_subtransaction};
use crate::sql::preload::{self, require_preloaded};
use crate::sql::raise::or_raise;
use crate::sql::{end_of_subtransaction, standby};
use allsource_core::error::{sqlstate, Error};
use allsource_core::watermark::{watermark as watermark_of, Claim, ClaimSlot};
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, IntoDatum, PGRXSharedMemory, PgAtomic, PgLogLevel, PgSqlErrorCode};
use std::cell::{Cell, RefCell};
use std::ffi::c_void;

/// Upper bound on `pgprocno` (max_connections + workers + prepared
/// transactions); 64 bytes each, 512 KiB in all.
const MAX_SLOTS: usize = 8192;

#[repr(C)]
struct Registry {
    slots: [ClaimSlot; MAX_SLOTS],
}

// SAFETY: plain atomics, no pointers: valid in any process that maps it.
unsafe impl PGRXSharedMemory for Registry {}

// SAFETY: no other shared memory is named so.
static REGISTRY: PgAtomic<Registry> = unsafe { PgAtomic::new(c"allsource_inflight_registry") };

thread_local! {
    /// This transaction appended: it may not be prepared.
    static APPENDED: RefCell<Nested<bool>> = const { RefCell::new(Nested::new(false)) };
    /// This backend's slot holds a claim (saves touching shared memory at
    /// the end of every transaction that never appended).
    static HOLDING: Cell<bool> = const { Cell::new(false) };
    /// The exit callback is registered (once per backend, on first claim).
    static EXIT_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

/// From `_PG_init`: shared memory when preloading, transaction callbacks always.
pub fn init() {
    if backend::preloading() {
        pg_shmem_init!(
            REGISTRY = Registry {
                slots: std::array::from_fn(|_| ClaimSlot::default())
            }
        );
    }
    // SAFETY: from _PG_init, on the process's one thread; the callbacks are
    // functions of this library, which is never unloaded.
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_transaction_event), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subtransaction_event), std::ptr::null_mut());
    }
}

fn my_slot() -> Option<&'static ClaimSlot> {
    // Only backends have a PGPROC slot to claim; the postmaster has none.
    if !preload::is_preloaded() {
        return None;
    }
    let index = backend::procno()? as usize;
    Some(REGISTRY.get().slots.get(index).unwrap_or_else(|| {
        panic!("backend number {index} exceeds allsource's {MAX_SLOTS} in-flight slots; lower max_connections")
    }))
}

/// Slots that can be in use: one per PGPROC.
fn live_slots() -> &'static [ClaimSlot] {
    // SAFETY: ProcGlobal is created in shared memory before any process
    // that calls this starts (never in the postmaster), and allProcCount
    // never changes after.
    let count = unsafe { (*pg_sys::ProcGlobal).allProcCount } as usize;
    &REGISTRY.get().slots[..count.min(MAX_SLOTS)]
}

/// `allsource.event_position`, found by name: no SPI, no plan.
pub(crate) fn position_sequence() -> pg_sys::Oid {
    // SAFETY: catalog lookups by NUL-terminated names, in the caller's
    // transaction; a missing schema raises.
    let sequence = unsafe {
        let namespace = pg_sys::get_namespace_oid(c"allsource".as_ptr(), false);
        pg_sys::get_relname_relid(c"event_position".as_ptr(), namespace)
    };
    assert!(
        sequence != pg_sys::InvalidOid,
        "allsource.event_position is missing"
    );
    sequence
}

/// The last position the sequence handed out (0 before the first).
fn last_handed_out(sequence: pg_sys::Oid) -> i64 {
    // SAFETY: pg_sequence_last_value takes a regclass (an OID) and returns an
    // int8, or NULL until the sequence is first used.
    unsafe {
        pgrx::direct_function_call::<i64>(pg_sys::pg_sequence_last_value, &[sequence.into_datum()])
            .unwrap_or(0)
    }
}

/// Flushes the WAL up to the sequence's last record, so that after a crash
/// the sequence resumes above every position handed out so far. A commit
/// flushes it anyway; positions that only rolled-back transactions took have
/// no commit to do it, and a watermark may pass them: without this, a crash
/// right after could hand them out again, below a watermark readers saw.
fn make_handed_out_durable(sequence: pg_sys::Oid) {
    // SAFETY: the sequence's one page, pinned and share-locked while its
    // header is read, as PostgreSQL reads a page LSN. XLogFlush returns at
    // once when the WAL is already flushed that far.
    unsafe {
        let relation = pg_sys::relation_open(sequence, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let buffer = pg_sys::ReadBuffer(relation, 0);
        pg_sys::LockBuffer(buffer, pg_sys::BUFFER_LOCK_SHARE as i32);
        let lsn = (*(pg_sys::BufferGetPage(buffer) as *const pg_sys::PageHeaderData)).pd_lsn;
        pg_sys::UnlockReleaseBuffer(buffer);
        pg_sys::relation_close(relation, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        pg_sys::XLogFlush((u64::from(lsn.xlogid) << 32) | u64::from(lsn.xrecoff));
    }
}

/// Call before taking positions: publishes this transaction's lower bound.
/// Fails if the transaction appended longer ago than
/// `allsource.max_append_transaction_ms` allows.
pub fn before_taking_positions() -> allsource_core::error::Result<()> {
    let sub = current_subtransaction();
    APPENDED.with(|a| a.borrow_mut().change(sub, |a| *a = true));
    if let Some(slot) = my_slot() {
        if HOLDING.with(Cell::get) && slot.is_doomed() {
            return Err(cancelled());
        }
        // A transaction keeps its first claim: the lowest it may commit.
        if !HOLDING.with(Cell::get) {
            if !EXIT_CALLBACK.with(|r| r.replace(true)) {
                // A backend that exits without ending its transaction still frees its slot.
                // SAFETY: on_exit is a function of this library, which is never unloaded.
                unsafe { pg_sys::before_shmem_exit(Some(on_exit), pg_sys::Datum::from(0)) };
            }
            // The slot is ours alone (one per PGPROC); clearing first drops
            // anything a previous owner of this PGPROC could have left.
            slot.release();
            let sequence = position_sequence();
            slot.hold(
                backend::database_id().to_u32(),
                backend::process_id(),
                backend::clock_timestamp(),
                || last_handed_out(sequence) + 1,
            );
            HOLDING.with(|h| h.set(true));
        }
    }
    Ok(())
}

/// The error of a transaction that kept its positions too long.
fn cancelled() -> Error {
    Error::new(
        sqlstate::TRANSACTION_TIMEOUT,
        format!(
            "this transaction appended to allsource more than allsource.max_append_transaction_ms ({} ms) ago and was cancelled",
            crate::settings::MAX_APPEND_TRANSACTION_MS.get()
        ),
    )
    .with_detail("An open appending transaction holds the watermark back for every reader and subscriber; its events are not committed.")
    .with_hint("Roll back and append again in a shorter transaction.")
}

/// Cancels the appending transactions, of any database, that have been open
/// longer than `allsource.max_append_transaction_ms` (0: none): their claims
/// stop holding the watermark back, and their commits fail. Called by the
/// watermark publisher.
pub fn cancel_long_appends() {
    let limit_ms = crate::settings::MAX_APPEND_TRANSACTION_MS.get();
    if limit_ms == 0 || !preload::is_preloaded() {
        return;
    }
    let before = backend::clock_timestamp() - i64::from(limit_ms) * 1000;
    for slot in live_slots() {
        if let Some(claim) = slot.doom_if_older(before) {
            log!(
                "allsource: cancelled the appending transaction of pid {} (open longer than allsource.max_append_transaction_ms, {limit_ms} ms); the watermark moves past position {}",
                claim.pid,
                claim.lowest
            );
        }
    }
}

fn end_of_transaction() {
    if HOLDING.with(|h| h.replace(false)) {
        if let Some(slot) = my_slot() {
            slot.release();
        }
    }
    APPENDED.with(|a| a.borrow_mut().take());
}

#[pg_guard]
unsafe extern "C-unwind" fn on_transaction_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut c_void,
) {
    use pg_sys::XactEvent::*;
    match event {
        // The last moment to refuse: from here on the claim cannot be doomed.
        XACT_EVENT_PRE_COMMIT
            if HOLDING.with(Cell::get) && my_slot().is_some_and(|s| !s.begin_commit()) =>
        {
            crate::sql::raise::raise(cancelled());
        }
        XACT_EVENT_PRE_PREPARE if APPENDED.with(|a| *a.borrow().get()) => {
            pgrx::pg_sys::panic::ErrorReport::new(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                "cannot PREPARE a transaction that appended to allsource",
                "allsource",
            )
            .set_detail("The watermark cannot yet follow a prepared transaction's events.")
            .set_hint("Commit the appends without two-phase commit.")
            .report(PgLogLevel::ERROR);
        }
        XACT_EVENT_COMMIT
        | XACT_EVENT_ABORT
        | XACT_EVENT_PARALLEL_COMMIT
        | XACT_EVENT_PARALLEL_ABORT
        | XACT_EVENT_PREPARE => end_of_transaction(),
        _ => {}
    }
}

/// The claim stays: positions a rolled-back subtransaction took may still
/// be followed by this transaction's, and the claim is only a lower bound.
#[pg_guard]
unsafe extern "C-unwind" fn on_subtransaction_event(
    event: pg_sys::SubXactEvent::Type,
    sub: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut c_void,
) {
    APPENDED.with(|a| end_of_subtransaction(a, event, sub, parent));
}

#[pg_guard]
unsafe extern "C-unwind" fn on_exit(_code: i32, _arg: pg_sys::Datum) {
    end_of_transaction();
}

/// The highest position P such that no event at or below P can still become
/// visible; on a hot standby, the primary's as last replayed.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
pub(crate) fn watermark() -> i64 {
    or_raise(require_preloaded("allsource.watermark()"));
    if standby::is_standby() {
        return or_raise(publisher::published_watermark());
    }
    local_watermark()
}

/// This server's own watermark of the current database (a primary's).
pub fn local_watermark() -> i64 {
    let sequence = position_sequence();
    let last = last_handed_out(sequence);
    let mark = watermark_of(last, live_slots(), backend::database_id().to_u32());
    // After reading `last`: the record read covers it.
    make_handed_out_durable(sequence);
    mark
}

/// The lowest position an open transaction of `database` may still commit.
pub fn lowest_claim(database: u32) -> Option<i64> {
    allsource_core::watermark::lowest_claim(live_slots(), database)
}

/// The transactions holding the watermark back, lowest first.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn inflight() -> TableIterator<
    'static,
    (
        name!(pid, i32),
        name!(lowest_position, i64),
        name!(since, TimestampWithTimeZone),
    ),
> {
    or_raise(require_preloaded("allsource.inflight()"));
    let database = backend::database_id().to_u32();
    let mut claims: Vec<Claim> = live_slots()
        .iter()
        .filter_map(|slot| slot.claim(database))
        .collect();
    claims.sort_by_key(|c| c.lowest);
    TableIterator::new(claims.into_iter().map(|c| {
        let since = TimestampWithTimeZone::try_from(c.since).expect("a valid timestamp");
        (c.pid, c.lowest, since)
    }))
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::test_support::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn an_open_append_holds_the_watermark_below_its_position() {
        let before: i64 = one("SELECT allsource.watermark()");
        let position: i64 = one("SELECT position FROM allsource.append('watermark/own', 'T', '1')");
        assert!(position > before);
        let mark: i64 = one("SELECT allsource.watermark()");
        assert!(
            mark < position,
            "watermark {mark} must stay below our uncommitted position {position}"
        );
        assert!(one::<bool>(&format!(
            "SELECT lowest_position <= {position} AND since BETWEEN now() AND clock_timestamp()
             FROM allsource.inflight() WHERE pid = pg_backend_pid()"
        )));
        // Our own uncommitted event is past the watermark, so read_all does not return it.
        assert_eq!(
            one::<i64>(&format!(
                "SELECT count(*) FROM allsource.read_all({before}) WHERE position = {position}"
            )),
            0
        );
    }
}
