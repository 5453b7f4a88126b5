//! `NOTIFY allsource_events`, coalesced.
//!
//! A transaction that appended records, per partition, the highest position
//! it wrote (forgetting what a subtransaction wrote when it rolls back to a
//! savepoint). Preloaded, its commit publishes those positions to a per-database
//! board in shared memory and wakes that database's notifier, a background
//! worker that sends at most one notification per partition every
//! [`NOTIFY_INTERVAL`], carrying the highest position published since its
//! last round: a burst of committing appends becomes a few notifications, and
//! the last of them is never lost (the notifier takes what is pending each
//! round). A position notified while an earlier transaction still held the
//! watermark below it is notified again once the watermark passes it, so a
//! subscriber that reads to the watermark on each notification is woken when
//! it can read that event, also when the earlier transaction rolls back.
//! Commits never take PostgreSQL's notification lock themselves. The notifier starts
//! on demand and exits after [`NOTIFIER_IDLE_EXIT`] without work, so it does
//! not hold its database open. Without preloading, each transaction sends
//! its own notifications at commit instead.

use crate::savepoints::Nested;
use crate::sql::backend::{self, current_subtransaction};
use crate::sql::background::{self, report};
use crate::sql::preload;
use crate::sql::{end_of_subtransaction, wake};
use allsource_core::partition::MAX_PARTITIONS;
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, IntoDatum, PGRXSharedMemory, PgAtomic};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The shortest time between two notifications for one partition.
pub const NOTIFY_INTERVAL: Duration = Duration::from_millis(10);
/// A notifier with nothing to send for this long exits.
pub const NOTIFIER_IDLE_EXIT: Duration = Duration::from_secs(2);
/// Databases with their own board; beyond that, transactions notify themselves.
const MAX_DATABASES: usize = 64;
/// A notifier registered but not running after this long is started again.
const START_TIMEOUT_MICROS: i64 = 10_000_000;

/// Processes per database that commits wake besides the notifier (the
/// subscription workers).
const MAX_LISTENERS: usize = 64;

/// `notifier` states besides a running worker's `pgprocno + 1`.
const NO_NOTIFIER: i32 = 0;
const STARTING: i32 = -1;

#[repr(C)]
struct DatabaseBoard {
    /// The database's OID; 0 while the board is free.
    database: AtomicU32,
    notifier: AtomicI32,
    /// The running notifier's pid, to tell it from a later user of its PGPROC.
    notifier_pid: AtomicI32,
    /// When `notifier` became STARTING (PostgreSQL timestamp).
    starting_since: AtomicI64,
    /// Highest committed position per partition since the notifier's last
    /// round; 0 when nothing is pending.
    pending: [AtomicI64; MAX_PARTITIONS as usize],
    /// Processes to wake after each commit that appended: `(pgprocno + 1) << 32 | pid`, 0 when free.
    listeners: [AtomicI64; MAX_LISTENERS],
}

#[repr(C)]
struct Boards {
    databases: [DatabaseBoard; MAX_DATABASES],
}

// SAFETY: plain atomics, no pointers.
unsafe impl PGRXSharedMemory for Boards {}

// SAFETY: no other shared memory is named so.
static BOARDS: PgAtomic<Boards> = unsafe { PgAtomic::new(c"allsource_notify_boards") };

thread_local! {
    /// Highest position appended per partition in this transaction.
    static TO_NOTIFY: RefCell<Nested<BTreeMap<i32, i64>>> = const {
        RefCell::new(Nested::new(BTreeMap::new()))
    };
}

/// From `_PG_init`: the boards when preloading, the transaction callback always.
pub fn init() {
    if backend::preloading() {
        pg_shmem_init!(
            BOARDS = Boards {
                databases: std::array::from_fn(|_| DatabaseBoard {
                    database: AtomicU32::new(0),
                    notifier: AtomicI32::new(NO_NOTIFIER),
                    notifier_pid: AtomicI32::new(0),
                    starting_since: AtomicI64::new(0),
                    pending: std::array::from_fn(|_| AtomicI64::new(0)),
                    listeners: std::array::from_fn(|_| AtomicI64::new(0)),
                })
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

/// Records an append for this transaction's notification, unless
/// `allsource.notify` is off.
pub fn appended(partition_id: i32, last_position: i64) {
    if !crate::settings::NOTIFY.get() {
        return;
    }
    let sub = current_subtransaction();
    TO_NOTIFY.with(|n| {
        n.borrow_mut().change(sub, |n| {
            let entry = n.entry(partition_id).or_insert(last_position);
            *entry = (*entry).max(last_position);
        })
    });
}

fn current_database() -> u32 {
    backend::database_id().to_u32()
}

/// This database's board, claimed on first use; `None` without preloading
/// or when every board is taken.
fn board(database: u32) -> Option<&'static DatabaseBoard> {
    if !preload::is_preloaded() {
        return None;
    }
    let boards = &BOARDS.get().databases;
    boards
        .iter()
        .find(|b| b.database.load(Ordering::SeqCst) == database)
        .or_else(|| {
            boards.iter().find(|b| {
                b.database
                    .compare_exchange(0, database, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                    || b.database.load(Ordering::SeqCst) == database
            })
        })
}

#[pg_guard]
unsafe extern "C-unwind" fn on_transaction_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut c_void,
) {
    use pg_sys::XactEvent::*;
    let appended = TO_NOTIFY.with(|n| !n.borrow().get().is_empty());
    match event {
        // Without a board, queue our own notifications; PostgreSQL sends them after the commit.
        XACT_EVENT_PRE_COMMIT if appended && board(current_database()).is_none() => {
            let pending = TO_NOTIFY.with(|n| n.borrow_mut().take());
            for (partition_id, last_position) in pending {
                send(partition_id, last_position);
            }
        }
        // The commit is visible: hand the positions to the notifier.
        XACT_EVENT_COMMIT if appended => {
            let pending = TO_NOTIFY.with(|n| n.borrow_mut().take());
            if let Some(board) = board(current_database()) {
                publish(board, &pending);
            }
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT | XACT_EVENT_PREPARE if appended => {
            TO_NOTIFY.with(|n| n.borrow_mut().take());
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subtransaction_event(
    event: pg_sys::SubXactEvent::Type,
    sub: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut c_void,
) {
    TO_NOTIFY.with(|n| end_of_subtransaction(n, event, sub, parent));
}

/// Publishes committed positions, then makes sure a notifier will see them:
/// wakes the running one or starts one. The notifier, before it exits, clears
/// its state and then looks at `pending` once more, so either it sees these
/// positions or this commit sees it gone and starts another.
fn publish(board: &DatabaseBoard, positions: &BTreeMap<i32, i64>) {
    for (&partition, &position) in positions {
        if let Some(slot) = board.pending.get(partition as usize) {
            slot.fetch_max(position, Ordering::SeqCst);
        }
    }
    for listener in &board.listeners {
        let packed = listener.load(Ordering::SeqCst);
        if packed != 0 {
            wake((packed >> 32) as i32 - 1, Some(packed as i32));
        }
    }
    let notifier = board.notifier.load(Ordering::SeqCst);
    if notifier > 0
        && wake(
            notifier - 1,
            Some(board.notifier_pid.load(Ordering::SeqCst)),
        )
    {
        return;
    }
    let now = backend::clock_timestamp();
    let take_over = |from: i32| {
        board
            .notifier
            .compare_exchange(from, STARTING, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    };
    let start = match notifier {
        NO_NOTIFIER => take_over(NO_NOTIFIER),
        // Registered but never ran (the postmaster could not start it).
        STARTING => now - board.starting_since.load(Ordering::SeqCst) > START_TIMEOUT_MICROS,
        // Died without stepping down (an error ends a worker): replace it.
        running => take_over(running),
    };
    if start {
        board.starting_since.store(now, Ordering::SeqCst);
        start_notifier(board);
    }
}

fn start_notifier(board: &DatabaseBoard) {
    let database = board.database.load(Ordering::SeqCst);
    let name = format!("allsource notifier for database {database}");
    let started = background::Worker {
        name: &name,
        kind: "allsource notifier",
        function: "allsource_notifier_main",
        argument: pg_sys::Datum::from(database),
        restart_after: None,
    }
    .start();
    if !started {
        board.notifier.store(NO_NOTIFIER, Ordering::SeqCst);
        pgrx::warning!(
            "allsource could not start its notifier (max_worker_processes reached?); notifications wait for the next commit"
        );
    }
}

thread_local! {
    /// This process's listener cell, once it listens.
    static LISTENING: std::cell::Cell<Option<(&'static AtomicI64, i64)>> = const { std::cell::Cell::new(None) };
}

/// From now until this process exits, every commit that appends in its
/// database sets its latch. False without preloading or when the database
/// has as many listeners as it can.
pub fn listen() -> bool {
    let (Some(board), Some(procno)) = (board(current_database()), backend::procno()) else {
        return false;
    };
    let me = (i64::from(procno) + 1) << 32 | i64::from(backend::process_id() as u32);
    let Some(cell) = board.listeners.iter().find(|cell| {
        cell.compare_exchange(0, me, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }) else {
        return false;
    };
    LISTENING.with(|l| l.set(Some((cell, me))));
    // SAFETY: stop_listening is a function of this library, which is never unloaded.
    unsafe { pg_sys::before_shmem_exit(Some(stop_listening), pg_sys::Datum::from(0)) };
    true
}

#[pg_guard]
unsafe extern "C-unwind" fn stop_listening(_code: i32, _arg: pg_sys::Datum) {
    if let Some((cell, me)) = LISTENING.with(|l| l.take()) {
        let _ = cell.compare_exchange(me, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// Queues `NOTIFY allsource_events` in the current transaction.
fn send(partition_id: i32, last_position: i64) {
    let payload =
        format!(r#"{{"partition_id": {partition_id}, "last_position": {last_position}}}"#);
    // SAFETY: pg_notify takes two text arguments and returns void.
    unsafe {
        pgrx::direct_function_call_as_datum(
            pg_sys::pg_notify,
            &["allsource_events".into_datum(), payload.into_datum()],
        );
    }
}

/// The notifier: one per database while there is something to send.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn allsource_notifier_main(argument: pg_sys::Datum) {
    let database = argument.value() as u32;
    // It runs no SQL (pg_notify is called directly), so it needs no role of
    // its own; the path is pinned all the same.
    background::connect(background::Database::Oid(pg_sys::Oid::from(database)));
    let Some(board) = board(database) else { return };
    let me = backend::procno().expect("a worker has a PGPROC") + 1;
    board
        .notifier_pid
        .store(backend::process_id(), Ordering::SeqCst);
    board.notifier.store(me, Ordering::SeqCst);

    let pending = || board.pending.iter().any(|p| p.load(Ordering::SeqCst) > 0);
    let mut last_work = Instant::now();
    // Per partition, the last position notified above the watermark of the time.
    let mut above_watermark = BTreeMap::<i32, i64>::new();
    loop {
        // Take what is pending; commits after this start the next round.
        let news: Vec<(i32, i64)> = board
            .pending
            .iter()
            .enumerate()
            .filter(|(_, p)| p.load(Ordering::SeqCst) > 0)
            .map(|(partition, p)| (partition as i32, p.swap(0, Ordering::SeqCst)))
            .filter(|&(_, position)| position > 0)
            .collect();
        if !news.is_empty() || !above_watermark.is_empty() {
            // Readable: below every open transaction's claim (shared memory only).
            let held_from = super::watermark::lowest_claim(database);
            let readable = |position: i64| held_from.is_none_or(|lowest| position < lowest);
            let mut to_send = Vec::new();
            // Notified before, readable now: again (unless newer news covers it).
            above_watermark.retain(|&partition, &mut position| {
                if !readable(position) {
                    return true;
                }
                if !news.iter().any(|&(p, _)| p == partition) {
                    to_send.push((partition, position));
                }
                false
            });
            for &(partition, position) in &news {
                to_send.push((partition, position));
                if !readable(position) {
                    above_watermark.insert(partition, position);
                }
            }
            if !to_send.is_empty() {
                report::report_running("sending NOTIFY allsource_events");
                background::transaction(move || {
                    for (partition, position) in to_send {
                        send(partition, position);
                    }
                });
                report::report_idle("waiting for commits to notify");
            }
            last_work = Instant::now();
        } else if last_work.elapsed() >= NOTIFIER_IDLE_EXIT {
            // Step down, then look once more: a commit that saw us running
            // may have published after our last look.
            board.notifier.store(NO_NOTIFIER, Ordering::SeqCst);
            if !pending()
                || board
                    .notifier
                    .compare_exchange(NO_NOTIFIER, me, Ordering::SeqCst, Ordering::SeqCst)
                    .is_err()
            {
                return;
            }
            last_work = Instant::now();
        }
        // Coalesce: at most one round per interval; a commit's latch wakes us early only after it.
        std::thread::sleep(NOTIFY_INTERVAL);
        // Positions waiting for the watermark: look again soon, nobody wakes us for that.
        let timeout = if above_watermark.is_empty() {
            NOTIFIER_IDLE_EXIT
        } else {
            NOTIFY_INTERVAL
        };
        background::sleep(timeout);
        if background::signals().stop {
            board
                .notifier
                .compare_exchange(me, NO_NOTIFIER, Ordering::SeqCst, Ordering::SeqCst)
                .ok();
            return;
        }
    }
}
