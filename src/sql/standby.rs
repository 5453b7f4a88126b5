//! Hot standbys. A standby replays the primary's WAL but sees none of its
//! in-flight transactions, so it cannot compute a watermark of its own: the
//! primary's watermark publisher writes the watermark into
//! `allsource.published_watermark` whenever it moves (at most every
//! `allsource.watermark_publish_interval_ms`), and `watermark()` on a standby
//! returns the last value replayed. Every commit at or below that value
//! precedes its publication in the WAL, so the standby has replayed it too.
//!
//! Writes on a standby raise 25006; the ingest workers, the notifier and the
//! publisher start only once recovery has finished (after a promotion).

use crate::settings;
use crate::sql::guard::WriteGuard;
use crate::sql::select_one;
use crate::sql::watermark::{cancel_long_appends, local_watermark};
use crate::sql::{worker, worker_session};
use allsource_core::error::{Error, Result};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;
use std::time::Duration;

/// How long the postmaster waits before restarting a publisher that died.
const RESTART_AFTER: Duration = Duration::from_secs(1);

/// From `_PG_init`, when preloading: registers the publisher.
pub fn init() {
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    BackgroundWorkerBuilder::new("allsource watermark publisher")
        .set_type("allsource watermark publisher")
        .set_library("allsource")
        .set_function("allsource_publisher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(RESTART_AFTER))
        .load();
}

/// Whether this server is in recovery: a hot standby, until promoted.
pub fn is_standby() -> bool {
    unsafe { pg_sys::RecoveryInProgress() }
}

/// 25006 on a hot standby: `function` writes, and only the primary can.
pub fn refuse_on_standby(function: &str) -> Result<()> {
    if !is_standby() {
        return Ok(());
    }
    Err(Error::new("25006", format!("{function} cannot run on a hot standby"))
        .with_detail("This server replays the primary's WAL and is read-only.")
        .with_hint("Send writes to the primary. A standby serves read_stream, read_all, read_category, stream_version, watermark, verify_* and stats."))
}

/// The primary's watermark as this standby last replayed it.
pub fn published_watermark() -> Result<i64> {
    let database = settings::database();
    let here = unsafe { std::ffi::CStr::from_ptr(pg_sys::get_database_name(pg_sys::MyDatabaseId)) };
    if here.to_bytes() != database.as_bytes() {
        return Err(Error::new(
            "55000",
            format!("on a hot standby, the watermark is known only in database \"{database}\""),
        )
        .with_detail("The primary publishes the watermark of allsource.database only.")
        .with_hint("Read in that database, or set allsource.database to this one on the primary and the standby."));
    }
    Ok(select_one::<i64>("SELECT position FROM allsource.published_watermark").unwrap_or(0))
}

/// The publisher: one per server, in `allsource.database`, on the primary.
/// Each round it also cancels appending transactions open too long
/// (`allsource.max_append_transaction_ms`).
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn allsource_publisher_main(_argument: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(Some(&settings::database()), None);
    worker_session::pin_search_path();
    let mut published = None;
    loop {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        if BackgroundWorker::sigterm_received() {
            break;
        }
        cancel_long_appends();
        let interval = settings::WATERMARK_PUBLISH_INTERVAL_MS.get();
        if interval > 0 {
            worker::report_running("publishing the watermark for hot standbys");
            published = BackgroundWorker::transaction(|| publish(published));
            worker::report_stats(false);
            worker::report_idle("waiting for the next watermark publication");
        }
        let nap = Duration::from_millis(if interval > 0 { interval as u64 } else { 1000 });
        if !BackgroundWorker::wait_latch(Some(nap)) {
            break;
        }
    }
}

/// Writes the watermark if it moved since `published`; returns what is published.
fn publish(published: Option<i64>) -> Option<i64> {
    // The extension may not be created in this database (yet).
    let installed = select_one::<bool>(
        "SELECT pg_catalog.to_regclass('allsource.published_watermark') IS NOT NULL",
    );
    if installed != Some(true) {
        return None;
    }
    let mark = local_watermark();
    if published == Some(mark) {
        return published;
    }
    let _writing = WriteGuard::new();
    let written = worker_session::as_worker_role(|| {
        // Flushed at once, as walsenders ship flushed WAL only (asynchronously
        // committed, an idle primary's update waited ~200 ms for the WAL writer);
        // no waiting for a synchronous standby: losing the last publication in a
        // crash only leaves the standby a little behind.
        Spi::run("SET LOCAL synchronous_commit = local").expect("synchronous_commit is settable");
        // Never backwards, also when the sequence restarts lower after a crash.
        Spi::run_with_args(
            "UPDATE allsource.published_watermark SET position = $1, published_at = pg_catalog.now() \
             WHERE position OPERATOR(pg_catalog.<) $1",
            &[mark.into()],
        )
        .expect("the publisher's UPDATE");
    });
    match written {
        Ok(()) => Some(mark),
        Err(error) => {
            // Once per process: it would repeat every interval.
            if !MISSING_ROLE_REPORTED.replace(true) {
                warning!(
                    "allsource watermark publisher: {} ({})",
                    error.message,
                    error.hint.unwrap_or_default()
                );
            }
            None
        }
    }
}

thread_local! {
    static MISSING_ROLE_REPORTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}
