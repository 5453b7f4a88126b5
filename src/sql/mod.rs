//! The SQL surface and PostgreSQL integration: SQL functions that check
//! arguments, call the core, talk SPI and raise errors with their
//! SQLSTATEs; shared memory, transaction callbacks and background workers.
//!
//! - [`append`]: `append`, `append_batch`, and the one append path the ingest workers share.
//! - `checks`: argument checks of the reads written in SQL (`read_all`, `read_category`, …).
//! - `read`: `read_stream`, from the stream's own partition.
//! - `direct_insert`: rows inserted without SPI and a plan (the append's events and ids).
//! - `stream_heads`: the stream rows an append locks and advances, without SPI.
//! - `tables`: the extension's tables as the direct paths open them (names, columns, `XX001`).
//! - `delete`: `delete_stream` (tombstones, erasure).
//! - `snapshot`: `save_snapshot`.
//! - `stream_row`: a stream's row, locked for a change that is not an append.
//! - `partition`: `partition_for`.
//! - `verify`: `verify_stream`, `verify_all`, `verify_all_tenants`, `verify_anchor`.
//! - [`watermark`]: the in-flight registry, `watermark()`, `inflight()`, and its publisher for hot standbys.
//! - [`notify`]: `NOTIFY allsource_events` after commits, and the notifier worker.
//! - [`ingest`]: the ingest queue's functions (`enqueue`, `await_ticket`, `ingest_workers()`) and its workers.
//! - `queue`: the ingest queue's shared memory, which `stats()` also reads.
//! - [`stats`]: `stats()`, `stats_reset()` and the counters behind them.
//! - `subscription`: subscriptions' leases, handler calls and workers, and what `stats()` counts of them (their SQL functions are in sql/finalize/subscriptions.sql).
//! - `tenant`: the session's tenant, `current_tenant()`, `_in_tenant`.
//! - `guard`: the trigger that refuses direct writes.
//! - [`standby`]: whether this server is a hot standby; the refusal of writes there.
//! - [`preload`]: whether the library was preloaded.
//! - `background`: what every background worker does the same way (register, connect, signals, sleep; reports; a safe session).
//! - [`backend`]: what the extension reads of its PostgreSQL process (database, pid, clock, PGPROC).
//! - `jsonb`: `jsonb` arguments as their text.
//! - `raise`: core errors raised as PostgreSQL errors with their SQLSTATEs.

mod append;
pub mod backend;
mod background;
mod boundary;
mod checks;
mod delete;
mod direct_insert;
mod guard;
pub mod ingest;
mod jsonb;
pub mod launcher;
pub mod notify;
mod partition;
pub mod preload;
mod queue;
mod raise;
mod read;
mod snapshot;
pub mod standby;
pub mod stats;
mod stream_heads;
mod stream_row;
pub mod subscription;
mod tables;
mod tag_index;
mod tenant;
mod verify;
pub mod watermark;

use crate::savepoints::Nested;
use pgrx::pg_sys;
use pgrx::spi::SpiResult;
use pgrx::{FromDatum, IntoDatum, PgOid, Spi};
use std::cell::RefCell;

/// SPI's own errors (as opposed to PostgreSQL's, which unwind) mean a bug here.
fn spi<T>(result: SpiResult<T>) -> T {
    result.unwrap_or_else(|e| panic!("allsource internal SPI error: {e}"))
}

/// The first column of the first row of a read-only query. `Spi::get_one`
/// runs its query as read-write, which a hot standby refuses.
fn select_one<T: FromDatum + IntoDatum>(query: &str) -> Option<T> {
    spi(Spi::connect(|client| {
        client.select(query, Some(1), &[])?.first().get_one::<T>()
    }))
}

/// The type OID of a Rust type, for preparing statements.
fn oid<T: IntoDatum>() -> PgOid {
    PgOid::from(T::type_oid())
}

/// Sets the latch of the process at `pgprocno`; with `pid`, only if that
/// PGPROC still belongs to it (returns false otherwise).
fn wake(pgprocno: i32, pid: Option<i32>) -> bool {
    // SAFETY: pgprocno indexes ProcGlobal->allProcs; SetLatch on any PGPROC's
    // latch is what PostgreSQL itself does to wake a process.
    unsafe {
        let count = (*pg_sys::ProcGlobal).allProcCount as i32;
        if !(0..count).contains(&pgprocno) {
            return false;
        }
        let proc = (*pg_sys::ProcGlobal).allProcs.add(pgprocno as usize);
        if pid.is_some_and(|pid| (*proc).pid != pid) {
            return false;
        }
        pg_sys::SetLatch(&raw mut (*proc).procLatch);
    }
    true
}

/// At the end of a transaction (a module's `RegisterXactCallback` callback
/// calls this): `state` as the transaction left it if it committed; at an
/// abort or a PREPARE it is dropped.
fn committed_state<T: Clone + Default>(
    state: &RefCell<Nested<T>>,
    event: pg_sys::XactEvent::Type,
) -> Option<T> {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT => Some(state.borrow_mut().take()),
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT | XACT_EVENT_PREPARE => {
            state.borrow_mut().take();
            None
        }
        _ => None,
    }
}

/// Makes `state` follow the end of subtransaction `sub`: a module's
/// `RegisterSubXactCallback` callback calls this.
fn end_of_subtransaction<T: Clone + Default>(
    state: &RefCell<Nested<T>>,
    event: pg_sys::SubXactEvent::Type,
    sub: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
) {
    match event {
        pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB => {
            state.borrow_mut().commit_sub(sub, parent)
        }
        pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB => state.borrow_mut().abort_sub(sub),
        _ => {}
    }
}

/// Makes the extension's prepared statements run their generic plans while
/// alive. With array parameters the plan cache's cost model keeps choosing a
/// custom plan, i.e. planning again on every call (about a fifth of an
/// append's time); the generic plans are the same index and ctid scans. The
/// mode is restored on return and on unwinding, so the caller's queries keep
/// theirs.
pub(crate) struct GenericPlans(i32);

impl GenericPlans {
    pub(crate) fn new() -> Self {
        // SAFETY: a backend-local GUC variable, read when a cached plan is
        // chosen; this backend runs one thread.
        unsafe {
            let previous = pg_sys::plan_cache_mode;
            pg_sys::plan_cache_mode =
                pg_sys::PlanCacheMode::PLAN_CACHE_MODE_FORCE_GENERIC_PLAN as i32;
            GenericPlans(previous)
        }
    }
}

impl Drop for GenericPlans {
    fn drop(&mut self) {
        // SAFETY: as in `new`.
        unsafe { pg_sys::plan_cache_mode = self.0 }
    }
}
