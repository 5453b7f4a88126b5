//! `allsource.stats()` and `stats_reset()`: the counters of [`allsource_core::stats`]
//! in shared memory. Appends count when their transaction commits (those
//! rolled back to a savepoint do not); conflicts and rejections when they
//! happen.

use crate::savepoints::Nested;
use crate::sql::backend::{self, current_subtransaction};
use crate::sql::preload::{self, require_preloaded};
use crate::sql::queue;
use crate::sql::raise::or_raise;
use crate::sql::{committed_state, end_of_subtransaction};
use allsource_core::batch::Appended;
use allsource_core::error::{sqlstate, Error, Result};
use allsource_core::stats::Counters;
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgAtomic};
use std::cell::RefCell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The counters in shared memory (a type of this crate, so that it may be shared).
#[repr(transparent)]
#[derive(Default)]
struct SharedCounters(Counters);

// SAFETY: plain atomics, no pointers.
unsafe impl PGRXSharedMemory for SharedCounters {}

// SAFETY: no other shared memory is named so.
static COUNTERS: PgAtomic<SharedCounters> = unsafe { PgAtomic::new(c"allsource_stats") };

/// Counts of this transaction, published when it commits.
#[derive(Clone, Copy, Default)]
struct Uncommitted {
    events: u64,
    appends: u64,
    batches: u64,
}

thread_local! {
    static UNCOMMITTED: RefCell<Nested<Uncommitted>> = const {
        RefCell::new(Nested::new(Uncommitted { events: 0, appends: 0, batches: 0 }))
    };
}

/// From `_PG_init`.
pub fn init() {
    if backend::preloading() {
        pg_shmem_init!(
            COUNTERS = {
                let counters = SharedCounters::default();
                counters.0.reset(backend::clock_timestamp());
                counters
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

/// Changes this transaction's counts.
fn count(change: impl FnOnce(&mut Uncommitted)) {
    let sub = current_subtransaction();
    UNCOMMITTED.with(|u| u.borrow_mut().change(sub, change));
}

/// The counters, when preloaded.
pub fn counters() -> Option<&'static Counters> {
    preload::is_preloaded().then(|| &COUNTERS.get().0)
}

fn add(counter: impl Fn(&Counters) -> &AtomicU64, n: u64) {
    if let Some(counters) = counters() {
        Counters::add(counter(counters), n);
    }
}

/// Which SQL function appended.
#[derive(Clone, Copy)]
pub enum Call {
    Append,
    AppendBatch,
}

/// Records an `append` or `append_batch` call that took since `started`.
pub fn direct_append(result: Result<Appended>, call: Call, started: Instant) -> Result<Appended> {
    if let Some(counters) = counters() {
        counters
            .append_latency
            .record(started.elapsed().as_micros() as u64);
    }
    match &result {
        Ok(_) => count(|counts| match call {
            Call::Append => counts.appends += 1,
            Call::AppendBatch => counts.batches += 1,
        }),
        Err(error) => refused(error),
    }
    result
}

/// Counts an append refused by the store's rules (not a bad argument).
pub fn refused(error: &Error) {
    match error.sqlstate {
        sqlstate::WRONG_EXPECTED_VERSION => add(|c| &c.conflicts, 1),
        sqlstate::STREAM_DELETED | sqlstate::EVENT_ID_REUSED => add(|c| &c.rejects, 1),
        _ => {}
    }
}

/// Counts a worker's rejection that is not one of the store's rules.
pub fn worker_rejected() {
    add(|c| &c.rejects, 1);
}

/// Counts `events` rows written by the current transaction.
pub fn appended_in_transaction(events: u64) {
    count(|counts| counts.events += events);
}

/// Counts `events` handed to a consumer or a handler.
pub fn delivered(events: u64) {
    add(|c| &c.delivered, events);
}

/// Counts `events` acknowledged by a transaction that committed.
pub fn acked(events: u64) {
    add(|c| &c.acked, events);
}

/// Counts `events` parked by a transaction that committed.
pub fn parked(events: u64) {
    add(|c| &c.parked, events);
}

pub fn enqueued() {
    add(|c| &c.enqueued, 1);
}

pub fn worker_committed() {
    add(|c| &c.worker_commits, 1);
}

pub fn ticket_finished(micros: u64) {
    if let Some(counters) = counters() {
        counters.ticket_latency.record(micros);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_transaction_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut c_void,
) {
    let Some(counts) = UNCOMMITTED.with(|u| committed_state(u, event)) else {
        return;
    };
    if counts.events > 0 || counts.appends > 0 || counts.batches > 0 {
        add(|c| &c.events_appended, counts.events);
        add(|c| &c.appends, counts.appends);
        add(|c| &c.batches, counts.batches);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subtransaction_event(
    event: pg_sys::SubXactEvent::Type,
    sub: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut c_void,
) {
    UNCOMMITTED.with(|u| end_of_subtransaction(u, event, sub, parent));
}

/// Counters since the last reset, the queue's depth and the workers running.
#[pg_extern(volatile, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)]
fn stats() -> TableIterator<
    'static,
    (
        name!(events_appended, i64),
        name!(appends, i64),
        name!(batches, i64),
        name!(enqueued, i64),
        name!(conflicts, i64),
        name!(rejects, i64),
        name!(queue_depth, i64),
        name!(worker_commits, i64),
        name!(workers_running, i32),
        name!(append_p50_us, Option<i64>),
        name!(append_p99_us, Option<i64>),
        name!(ticket_p50_us, Option<i64>),
        name!(ticket_p99_us, Option<i64>),
        name!(delivered, i64),
        name!(acked, i64),
        name!(parked, i64),
        name!(since, TimestampWithTimeZone),
    ),
> {
    or_raise(require_preloaded("allsource.stats()"));
    let c = &COUNTERS.get().0;
    let n = |counter: &AtomicU64| counter.load(Ordering::Relaxed) as i64;
    let since = TimestampWithTimeZone::try_from(c.since.load(Ordering::Relaxed))
        .expect("a valid timestamp");
    TableIterator::once((
        n(&c.events_appended),
        n(&c.appends),
        n(&c.batches),
        n(&c.enqueued),
        n(&c.conflicts),
        n(&c.rejects),
        queue::queued_events() as i64,
        n(&c.worker_commits),
        queue::workers_running() as i32,
        c.append_latency.quantile(0.5).map(|v| v as i64),
        c.append_latency.quantile(0.99).map(|v| v as i64),
        c.ticket_latency.quantile(0.5).map(|v| v as i64),
        c.ticket_latency.quantile(0.99).map(|v| v as i64),
        n(&c.delivered),
        n(&c.acked),
        n(&c.parked),
        since,
    ))
}

/// Sets every counter and histogram of `stats()` to zero.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn stats_reset() {
    or_raise(require_preloaded("allsource.stats_reset()"));
    COUNTERS.get().0.reset(backend::clock_timestamp());
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::test_support::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn stats_count_conflicts_as_they_happen() {
        let conflicts = || one::<i64>("SELECT conflicts FROM allsource.stats()");
        let before = conflicts();
        assert_fails(
            "SELECT allsource.append('stats-conflict', 'T', '{}', expected_version => 5)",
            "ZA001",
            "stats-conflict",
        );
        // Other tests run at the same time and may conflict too.
        assert!(conflicts() > before);
        let workers: i64 = one("SELECT count(*) FROM allsource.ingest_workers()");
        assert_eq!(workers, 1, "allsource.ingest_workers defaults to 1");
    }
}
