//! State shared by the writers, the readers and the conductor.

use crate::ledger::Ledger;
use crate::reader::Reader;
use crate::server::Server;
use crate::subscriber::Subscriptions;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

/// Event counts by outcome, for the progress line and the summary.
#[derive(Default)]
pub struct Counters {
    pub conflicts: AtomicU64,
    pub rollbacks: AtomicU64,
    pub deadlocks: AtomicU64,
    pub queue_full: AtomicU64,
    pub lost_connections: AtomicU64,
    pub long_transactions: AtomicU64,
    pub tickets: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// How often each kind of trouble is asked for, per operation.
pub struct Mix {
    pub conflict_rate: f64,
    pub rollback_rate: f64,
    pub long_rate: f64,
}

pub struct Shared {
    pub server: Server,
    /// Random per run: event ids of this run carry it.
    pub run: u64,
    /// Hot streams first, then cold ones.
    pub streams: Vec<String>,
    pub hot: usize,
    pub mix: Mix,
    pub ledger: Mutex<Ledger>,
    /// Writers hold it shared for each operation; a check takes it
    /// exclusively, so it sees no operation half done.
    pub gate: RwLock<()>,
    pub readers: Vec<Reader>,
    /// `None` with `--no-subscriptions`.
    pub subscriptions: Option<Subscriptions>,
    pub counters: Counters,
    /// The backend of writer 0, whose memory the run watches.
    pub probe_pid: AtomicI32,
    stop: AtomicBool,
    anomaly: Mutex<Option<String>>,
}

impl Shared {
    pub fn new(
        server: Server,
        run: u64,
        streams: Vec<String>,
        hot: usize,
        mix: Mix,
        readers: Vec<Reader>,
        subscriptions: Option<Subscriptions>,
    ) -> Shared {
        Shared {
            server,
            run,
            streams,
            hot,
            mix,
            ledger: Mutex::new(Ledger::default()),
            gate: RwLock::new(()),
            readers,
            subscriptions,
            counters: Counters::default(),
            probe_pid: AtomicI32::new(0),
            stop: AtomicBool::new(false),
            anomaly: Mutex::new(None),
        }
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Records the first anomaly and stops the run.
    pub fn anomaly(&self, what: String) {
        let mut first = self.anomaly.lock().unwrap();
        if first.is_none() {
            eprintln!("ANOMALY: {what}");
            *first = Some(what);
        }
        self.stop();
    }

    pub fn first_anomaly(&self) -> Option<String> {
        self.anomaly.lock().unwrap().clone()
    }
}
