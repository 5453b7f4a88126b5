//! AllSource's background workers (the launcher, the ingest workers, the
//! notifier, the watermark publisher) are registered, started, signalled and put to sleep
//! the same way: through this module. What they report about themselves is
//! in [`report`]; what makes their SQL safe, in [`session`].

pub mod report;
pub mod session;

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::pg_sys;
use std::time::Duration;

/// A worker to register: it runs `function`, an `extern "C-unwind" fn(Datum)`
/// of this library exported under that name.
pub struct Worker<'a> {
    /// Its name in the server log and `pg_stat_activity.backend_type`'s detail.
    pub name: &'a str,
    /// `pg_stat_activity.backend_type`.
    pub kind: &'a str,
    pub function: &'a str,
    pub argument: pg_sys::Datum,
    /// How long the postmaster waits to restart it after it died; `None`:
    /// never restarted.
    pub restart_after: Option<Duration>,
}

impl Worker<'_> {
    fn builder(&self) -> BackgroundWorkerBuilder {
        BackgroundWorkerBuilder::new(self.name)
            .set_type(self.kind)
            .set_library("allsource")
            .set_function(self.function)
            .set_argument(Some(self.argument))
            .enable_spi_access()
            // Workers write: none runs on a hot standby, all start after a promotion.
            .set_start_time(BgWorkerStartTime::RecoveryFinished)
            .set_restart_time(self.restart_after)
    }

    /// From `_PG_init` while preloading: the postmaster starts it.
    pub fn register(&self) {
        self.builder().load();
    }

    /// From a backend: starts it now. False if the server has no free worker slot.
    pub fn start(&self) -> bool {
        self.builder().load_dynamic().is_ok()
    }
}

/// The database a worker connects to.
pub enum Database {
    Oid(pg_sys::Oid),
    /// None: only the shared catalogs can be read (the launcher).
    None,
}

/// The first thing a worker does: takes SIGHUP and SIGTERM, connects to
/// `database` as the bootstrap superuser, and pins its `search_path`.
pub fn connect(database: Database) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    match database {
        Database::Oid(oid) => BackgroundWorker::connect_worker_to_spi_by_oid(Some(oid), None),
        Database::None => BackgroundWorker::connect_worker_to_spi(None, None),
    }
    session::pin_search_path();
}

/// What arrived since the last look.
pub struct Signals {
    /// SIGHUP: the configuration file was read again (settings may have changed).
    pub reloaded: bool,
    /// SIGTERM: the worker should stop.
    pub stop: bool,
}

/// Call at the top of each round: reloads the configuration after a
/// SIGHUP, says whether SIGTERM came.
pub fn signals() -> Signals {
    let reloaded = BackgroundWorker::sighup_received();
    if reloaded {
        // SAFETY: outside a transaction, as the postmaster's own children do.
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
    }
    Signals {
        reloaded,
        stop: BackgroundWorker::sigterm_received(),
    }
}

/// Sleeps on this process's latch for at most `timeout`, or until a signal
/// or another process sets it. A cancel request then interrupts the
/// worker's next statement, which it catches, instead of its main loop.
/// Barriers (DROP DATABASE waits for every process to absorb one) are
/// absorbed here. Exits if the postmaster died.
pub fn sleep(timeout: Duration) {
    // SAFETY: this process's own latch; a barrier is absorbed where
    // PostgreSQL's CHECK_FOR_INTERRUPTS would absorb it.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            timeout.as_millis().min(i64::MAX as u128) as _,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
        if (&raw const pg_sys::ProcSignalBarrierPending).read_volatile() != 0 {
            pg_sys::ProcessProcSignalBarrier();
        }
    }
}

/// Runs `work` in a transaction of its own, then hands the table statistics over.
pub fn transaction<T>(
    work: impl FnOnce() -> T + std::panic::UnwindSafe + std::panic::RefUnwindSafe,
) -> T {
    let result = BackgroundWorker::transaction(work);
    report::report_stats(false);
    result
}
