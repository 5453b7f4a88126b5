//! The watermark on hot standbys. A standby replays the primary's WAL but sees none of its
//! in-flight transactions, so it cannot compute a watermark of its own: the
//! primary's watermark publisher writes the watermark into
//! `allsource.published_watermark` whenever it moves (at most every
//! `allsource.watermark_publish_interval_ms`), and `watermark()` on a standby
//! returns the last value replayed. Every commit at or below that value
//! precedes its publication in the WAL, so the standby has replayed it too.
//!
//! This module is both ends: the publisher (a worker on the primary, one per
//! database, started by the launcher) and `published_watermark()` (what a
//! standby's `watermark()` returns). The publisher is also what the launcher
//! starts first in a database: it looks whether the extension is created
//! there and, if it is, claims the database's lane group of the ingest
//! queue, whose workers the launcher then starts.

use super::{cancel_long_appends, local_watermark};
use crate::settings;
use crate::sql::backend;
use crate::sql::background::{self, report, session};
use crate::sql::guard::WriteGuard;
use crate::sql::queue::{Claim, Queue};
use crate::sql::select_one;
use allsource_core::error::{sqlstate, Error, Result};
use pgrx::prelude::*;
use std::time::Duration;

/// Starts the publisher of `database` (from the launcher). False if no
/// worker slot was free.
pub fn start(database: pg_sys::Oid) -> bool {
    background::Worker {
        name: &format!(
            "allsource watermark publisher for database {}",
            database.to_u32()
        ),
        kind: "allsource watermark publisher",
        function: "allsource_publisher_main",
        argument: pg_sys::Datum::from(database.to_u32()),
        // The launcher starts it again if it dies and its database is still there.
        restart_after: None,
    }
    .start()
}

/// The primary's watermark as this standby last replayed it.
pub fn published_watermark() -> Result<i64> {
    if let Some(database) = settings::database() {
        // None: this database was dropped on the primary, and replaying
        // that is about to end this session.
        let here = backend::database_name(backend::database_id());
        if here.as_deref() != Some(database.as_str()) {
            return Err(Error::new(
                sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("on a hot standby, the watermark is known only in database \"{database}\""),
            )
            .with_detail("The primary publishes the watermark of allsource.database only.")
            .with_hint("Read in that database, or set allsource.database to this one, or empty for every database, on the primary and the standby."));
        }
    }
    Ok(select_one::<i64>("SELECT position FROM allsource.published_watermark").unwrap_or(0))
}

/// The publisher of one database, on the primary. Each round it also
/// cancels appending transactions open too long
/// (`allsource.max_append_transaction_ms`).
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn allsource_publisher_main(argument: pg_sys::Datum) {
    let database = pg_sys::Oid::from(argument.value() as u32);
    background::connect(background::Database::Oid(database));
    // Only where the extension is created, which takes privileges: a
    // database someone else created is served only once its owner (or a
    // superuser) created the extension in it.
    let installed = background::transaction(|| {
        select_one::<bool>(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_extension \
             WHERE extname OPERATOR(pg_catalog.=) 'allsource')",
        )
    });
    // A served database's publisher stays, as its ingest workers do, also
    // after a DROP EXTENSION (it then publishes nothing).
    if installed != Some(true) && Queue::of_database(database).is_none() {
        return;
    }
    let name = background::transaction(|| backend::database_name(database)).unwrap_or_default();
    let queue = match Queue::claim(database, backend::process_id()) {
        Claim::Mine(queue) => queue,
        // A publisher a moment older runs here already.
        Claim::Taken => return,
        Claim::Full => {
            if crate::sql::launcher::may_warn_full() {
                warning!(
                "allsource: every one of the allsource.max_databases ({}) lane groups serves another database: database \"{name}\" gets no ingest queue and no published watermark",
                settings::MAX_DATABASES.get()
                );
            }
            return;
        }
    };
    log!(
        "allsource watermark publisher started in database \"{name}\" (lane group {})",
        queue.number()
    );
    let mut published = None;
    // A paused group's database is being dropped: leave it.
    while !background::signals().stop && queue.serves(database) {
        cancel_long_appends();
        let interval = settings::WATERMARK_PUBLISH_INTERVAL_MS.get();
        if interval > 0 {
            report::report_running("publishing the watermark for hot standbys");
            published = background::transaction(|| publish(published));
            report::report_idle("waiting for the next watermark publication");
        }
        background::sleep(Duration::from_millis(if interval > 0 {
            interval as u64
        } else {
            1000
        }));
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
    let written = session::as_worker_role(|| {
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
