//! The launcher: one background worker per server, connected to no
//! database, that starts the workers of every database that has the
//! extension, the way TimescaleDB's launcher starts a scheduler per
//! database. Every second it reads `pg_database` (a shared catalog, so it
//! needs no database) and, for each database it may serve (connectable, not
//! a template, `allsource.database` if set):
//!
//! - without a lane group yet: starts the database's watermark publisher,
//!   which checks `pg_extension` and exits where the extension is not
//!   created, or claims a lane group ([`queue`]) and stays; tried again
//!   every [`PROBE_INTERVAL`], and at once after a `CREATE EXTENSION` or
//!   `CREATE DATABASE` commits ([`utility`]);
//! - with one: starts again, after [`RESTART_AFTER`], its publisher and each
//!   lane's ingest worker that is not running.
//!
//! A group whose database is gone is freed once none of its workers runs;
//! `DROP DATABASE` pauses the group and stops its workers first
//! ([`utility`]), so the drop does not wait for them. The launcher only
//! starts what the extension's own code runs, in databases where the
//! extension is created, which takes privileges a hostile role lacks.

mod utility;

use crate::settings;
use crate::sql::background::{self, report};
use crate::sql::queue::{Queue, FREE, PAUSED};
use crate::sql::{backend, wake, watermark};
use crate::sql::{ingest, subscription};
use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgAtomic};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// How often the launcher reads `pg_database`.
const SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// How often a database without the extension is looked at again.
const PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// How long after a rescan request databases are looked at every second.
const RESCAN_FOR: Duration = Duration::from_secs(3);
/// How long a worker that is not running is given before it is started again.
const RESTART_AFTER: Duration = Duration::from_secs(1);

/// What other processes tell the launcher.
#[repr(C)]
struct Launcher {
    /// The running launcher's `pgprocno + 1` and pid, to wake it.
    procno: AtomicI32,
    pid: AtomicI32,
    /// A database or an extension was created: look at every database now.
    rescan: AtomicBool,
    /// When a publisher last warned that every lane group is taken.
    full_warned_at: AtomicI64,
}

// SAFETY: plain atomics, no pointers.
unsafe impl PGRXSharedMemory for Launcher {}

// SAFETY: no other shared memory is named so.
static LAUNCHER: PgAtomic<Launcher> = unsafe { PgAtomic::new(c"allsource_launcher") };

/// From `_PG_init`: when preloading, registers the launcher and reserves
/// its shared memory; always, the utility hook that pauses a database's
/// workers while it is dropped.
pub fn init() {
    if !backend::preloading() {
        return;
    }
    pg_shmem_init!(
        LAUNCHER = Launcher {
            procno: AtomicI32::new(0),
            pid: AtomicI32::new(0),
            rescan: AtomicBool::new(false),
            full_warned_at: AtomicI64::new(0),
        }
    );
    background::Worker {
        name: "allsource launcher",
        kind: "allsource launcher",
        function: "allsource_launcher_main",
        argument: pg_sys::Datum::from(0),
        restart_after: Some(RESTART_AFTER),
    }
    .register();
    utility::init();
}

/// Asks the launcher to look at every database now (after a commit that
/// created a database or the extension, or a lane group was claimed).
pub(crate) fn rescan_now() {
    let launcher = LAUNCHER.get();
    launcher.rescan.store(true, Ordering::SeqCst);
    let procno = launcher.procno.load(Ordering::SeqCst);
    if procno > 0 {
        wake(procno - 1, Some(launcher.pid.load(Ordering::SeqCst)));
    }
}

/// Whether to warn that every lane group is taken: at most once a minute,
/// while the launcher looks at the database that got none every 10 s.
pub(crate) fn may_warn_full() -> bool {
    let last = &LAUNCHER.get().full_warned_at;
    let (then, now) = (last.load(Ordering::SeqCst), backend::clock_timestamp());
    now - then >= 60_000_000
        && last
            .compare_exchange(then, now, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
}

/// A database of `pg_database`.
struct Database {
    oid: pg_sys::Oid,
    /// Connectable, not a template, and allowed by `allsource.database`.
    servable: bool,
}

/// The launcher's main loop.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn allsource_launcher_main(_argument: pg_sys::Datum) {
    background::connect(background::Database::None);
    let launcher = LAUNCHER.get();
    launcher.pid.store(backend::process_id(), Ordering::SeqCst);
    launcher.procno.store(
        backend::procno().expect("a worker has a PGPROC") + 1,
        Ordering::SeqCst,
    );
    log!("allsource launcher started");
    let mut started = Started::default();
    // After a rescan request, databases without the extension are looked
    // at every second for a while: the request may come before the commit
    // of what the publisher then looks for.
    let mut rescan_until = Instant::now();
    while !background::signals().stop {
        if launcher.rescan.swap(false, Ordering::SeqCst) {
            rescan_until = Instant::now() + RESCAN_FOR;
        }
        let rescan = Instant::now() < rescan_until;
        report::report_running("looking for databases to serve");
        let databases = BackgroundWorker::transaction(databases);
        for database in databases.iter().filter(|d| d.servable) {
            serve(database.oid, rescan, &mut started);
        }
        free_dropped(&databases, &mut started);
        report::report_idle("waiting for the next look at pg_database");
        background::sleep(SCAN_INTERVAL);
    }
    launcher.procno.store(0, Ordering::SeqCst);
}

/// When the launcher last started each worker.
#[derive(Default)]
struct Started {
    publishers: HashMap<pg_sys::Oid, Instant>,
    lanes: HashMap<(u32, u32), Instant>,
    subscribers: HashMap<(u32, u32), Instant>,
    /// The last start failed for want of a worker slot (warned once).
    short_of_slots: bool,
}

impl Started {
    /// Warns once when starting workers begins to fail, until one starts.
    fn record(&mut self, started: bool) {
        if !started && !self.short_of_slots {
            warning!("allsource launcher: no free background worker slot; raise max_worker_processes (each database the workers serve takes one for its publisher, one per ingest worker and one per subscription worker)");
        }
        self.short_of_slots = !started;
    }

    /// Records a start now if the last was at least `after` ago.
    fn due<K: std::hash::Hash + Eq>(
        map: &mut HashMap<K, Instant>,
        key: K,
        after: Duration,
    ) -> bool {
        let now = Instant::now();
        match map.get(&key) {
            Some(last) if now.duration_since(*last) < after => false,
            _ => {
                map.insert(key, now);
                true
            }
        }
    }
}

/// Starts what `database` needs and does not run.
fn serve(database: pg_sys::Oid, rescan: bool, started: &mut Started) {
    let group = Queue::groups().find(|q| q.state() != FREE && q.database() == database);
    let Some(group) = group else {
        // Not served yet: the publisher looks whether the extension is there.
        let after = if rescan {
            RESTART_AFTER
        } else {
            PROBE_INTERVAL
        };
        if Started::due(&mut started.publishers, database, after) {
            started.record(watermark::start_publisher(database));
        }
        return;
    };
    if group.state() == PAUSED {
        group.resume_if_abandoned();
        return;
    }
    let publisher = group.workers().next().unwrap_or(0);
    if !backend::is_running(publisher)
        && Started::due(&mut started.publishers, database, RESTART_AFTER)
    {
        started.record(watermark::start_publisher(database));
    }
    for (lane_no, lane) in group.lanes().take(settings::INGEST_WORKERS.get() as usize) {
        if !backend::is_running(lane.worker_pid.load(Ordering::SeqCst))
            && Started::due(&mut started.lanes, (group.number(), lane_no), RESTART_AFTER)
        {
            started.record(ingest::start_worker(group.number(), lane_no));
        }
    }
    for (n, pid) in group
        .header()
        .subscribers
        .iter()
        .enumerate()
        .take(settings::SUBSCRIPTION_WORKERS.get() as usize)
    {
        if !backend::is_running(pid.load(Ordering::SeqCst))
            && Started::due(
                &mut started.subscribers,
                (group.number(), n as u32),
                RESTART_AFTER,
            )
        {
            started.record(subscription::start_worker(group.number(), n as u32));
        }
    }
}

/// Frees the groups of databases that no longer exist, once their workers are gone.
fn free_dropped(databases: &[Database], started: &mut Started) {
    for group in Queue::groups().filter(|q| q.state() != FREE) {
        let database = group.database();
        if databases.iter().any(|d| d.oid == database) {
            continue;
        }
        if group.free_if_idle(database) {
            log!(
                "allsource launcher: database {database:?} is gone; its lane group {} is free",
                group.number()
            );
            started.publishers.remove(&database);
            started.lanes.retain(|(g, _), _| *g != group.number());
            started.subscribers.retain(|(g, _), _| *g != group.number());
        }
    }
}

/// Every database of `pg_database`, read with a catalog scan (inside a transaction).
fn databases() -> Vec<Database> {
    let mut found = Vec::new();
    // SAFETY: inside a transaction; pg_database is a shared catalog, which
    // a process connected to no database may scan; each tuple is read as
    // pg_database's fixed-width prefix, valid until the next heap_getnext.
    unsafe {
        let relation = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as _);
        let scan = pg_sys::table_beginscan_catalog(relation, 0, std::ptr::null_mut());
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let row = &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
            let name = pg_sys::name_data_to_str(&row.datname);
            // -2: a database whose DROP was interrupted, which cannot be connected to.
            let connectable = row.datallowconn && row.datconnlimit != -2;
            found.push(Database {
                oid: row.oid,
                servable: connectable && !row.datistemplate && settings::serves_database(name),
            });
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(relation, pg_sys::AccessShareLock as _);
    }
    found
}
