//! An ingest worker: takes batches from its lane, appends each in one
//! transaction through `append_batch`'s path, publishes every ticket's
//! result, and takes over what a predecessor that died left in the lane.

use crate::settings;
use crate::sql::append::append_requests;
use crate::sql::backend;
use crate::sql::background::{self, report, session};
use crate::sql::queue::{Lane, Queue, APPENDING, DRAINING, IDLE, STOPPED};
use crate::sql::{spi, stats, wake};
use allsource_core::error::{sqlstate, SqlState};
use allsource_core::ingest::{Lookup, QueuedEvent, ResultCell, Status, TicketPlace};
use allsource_core::plan::Request;
use allsource_core::ring::{Ring, Taken};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::PgTryBuilder;
use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A batch that failed is retried event by event; an event that failed for
/// a reason of the moment (a deadlock, a serialization failure, a lock or
/// statement timeout, a cancel) is tried this often, [`RETRY_AFTER`] apart.
const RETRIES: u32 = 3;
const RETRY_AFTER: Duration = Duration::from_millis(100);
/// Events of a stream whose row another transaction held past the lock
/// timeout (`allsource.ingest_lock_timeout_ms`) are tried this often, and
/// once only while the server stops.
const LOCK_ATTEMPTS: u32 = 2;

/// Starts the worker of lane `lane` of group `group` (from the launcher).
/// False if no worker slot was free.
pub fn start(group: u32, lane: u32) -> bool {
    background::Worker {
        name: &format!("allsource ingest worker {lane} of lane group {group}"),
        kind: "allsource ingest worker",
        function: "allsource_ingest_main",
        argument: pg_sys::Datum::from(group << 8 | lane),
        // The launcher starts it again while its database is served.
        restart_after: None,
    }
    .start()
}

/// A queued event a worker holds.
struct Held {
    taken: Taken,
    ticket: i64,
    /// `None` if the entry's bytes did not decode (never expected).
    event: Option<QueuedEvent>,
}

/// An ingest worker: drains its lane until told to stop, then drains it dry.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn allsource_ingest_main(argument: pg_sys::Datum) {
    let (group, lane_no) = (argument.value() as u32 >> 8, argument.value() as u32 & 0xff);
    let queue = Queue::group(group).expect("workers start only when preloaded");
    let database = queue.database();
    background::connect(background::Database::Oid(database));
    // The group may have been paused, or freed and claimed again, meanwhile.
    if !queue.serves(database) || lane_no >= queue.header().lanes {
        return;
    }
    let lane = queue.lane(lane_no);
    // One worker per lane: a launcher that restarted may start a second.
    let running = lane.worker_pid.load(Ordering::SeqCst);
    if backend::is_running(running)
        || lane
            .worker_pid
            .compare_exchange(
                running,
                backend::process_id(),
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_err()
    {
        return;
    }
    let database = background::transaction(|| backend::database_name(database)).unwrap_or_default();
    let worker = Worker {
        queue,
        lane_no,
        lane,
        ring: queue.ring(lane_no),
        stopping: Cell::new(false),
    };
    apply_lock_timeout();
    lane.worker.store(
        backend::procno().expect("a worker has a PGPROC") + 1,
        Ordering::SeqCst,
    );
    log!(
        "allsource ingest worker {lane_no} started in database \"{database}\" (lane group {group})"
    );

    worker.recover();
    let mut idle = false;
    loop {
        let signals = background::signals();
        if signals.reloaded {
            apply_lock_timeout();
        }
        if signals.stop {
            worker.stopping.set(true);
        }
        let stopping = worker.stopping.get();
        let batch = worker.take_batch(stopping);
        if !batch.is_empty() {
            idle = false;
            worker.append(batch);
            continue;
        }
        if stopping && worker.ring.is_empty() && lane.producers.load(Ordering::SeqCst) == 0 {
            break;
        }
        lane.state
            .store(if stopping { DRAINING } else { IDLE }, Ordering::SeqCst);
        if !idle {
            // The last statistics would otherwise wait for the next batch.
            report::report_stats(true);
            report::report_idle("waiting for queued events");
            idle = true;
        }
        worker.sleep(Duration::from_secs(1));
    }
    lane.state.store(STOPPED, Ordering::SeqCst);
    lane.worker.store(0, Ordering::SeqCst);
    lane.worker_pid.store(0, Ordering::SeqCst);
    log!("allsource ingest worker {lane_no} stopped with its lane empty");
}

/// The worker's transactions wait for a lock at most
/// `allsource.ingest_lock_timeout_ms`.
fn apply_lock_timeout() {
    let ms =
        std::ffi::CString::new(settings::INGEST_LOCK_TIMEOUT_MS.get().to_string()).expect("digits");
    // SAFETY: a built-in setting, set for this session outside a transaction.
    unsafe {
        pg_sys::SetConfigOption(
            c"lock_timeout".as_ptr(),
            ms.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
    }
}

/// Why a transaction of a worker failed.
struct Failure {
    message: String,
    sqlstate: SqlState,
    /// Not the events' fault (a deadlock, a timeout, a cancel, a concurrent
    /// id registration): the same events may well succeed on a second try.
    retryable: bool,
}

impl From<CaughtError> for Failure {
    fn from(caught: CaughtError) -> Self {
        let report = match &caught {
            CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
            CaughtError::RustPanic { ereport, .. } => ereport,
        };
        let code = crate::sql::raise::unpack_sqlstate(report.sql_error_code() as i32);
        Failure {
            message: report.message().to_string(),
            sqlstate: code,
            retryable: matches!(
                code,
                sqlstate::DEADLOCK_DETECTED
                    | sqlstate::SERIALIZATION_FAILURE
                    | sqlstate::LOCK_NOT_AVAILABLE
                    | sqlstate::QUERY_CANCELED
            ),
        }
    }
}

struct Worker {
    queue: Queue,
    lane_no: u32,
    lane: &'static Lane,
    ring: Ring<'static>,
    /// SIGTERM arrived: drain the lane, retrying nothing that waits for a lock.
    stopping: Cell<bool>,
}

impl Worker {
    fn ticket(&self, position: u64) -> i64 {
        self.queue.ticket(self.lane_no, position)
    }

    fn cell(&self, position: u64) -> &'static ResultCell {
        self.queue.cell(TicketPlace {
            lane: self.lane_no,
            position,
        })
    }

    fn read(&self, taken: Taken) -> Held {
        let mut bytes = Vec::new();
        self.ring.read(taken, &mut bytes);
        Held {
            taken,
            ticket: self.ticket(taken.position()),
            event: QueuedEvent::decode(&bytes),
        }
    }

    /// Sleeps on the latch until a producer wakes us or `timeout` passes.
    fn sleep(&self, timeout: Duration) {
        self.lane.sleeping.store(true, Ordering::SeqCst);
        // Look once more after announcing: a push before that did not wake
        // us. An entry still being written is a matter of microseconds.
        let nap = if self.ring.is_empty() {
            timeout
        } else {
            timeout.min(Duration::from_millis(1))
        };
        background::sleep(nap);
        self.lane.sleeping.store(false, Ordering::SeqCst);
    }

    /// Takes up to `allsource.batch_max` events, waiting up to
    /// `allsource.flush_interval_ms` for the batch to fill.
    fn take_batch(&self, stopping: bool) -> Vec<Held> {
        let max = settings::BATCH_MAX.get().max(1) as usize;
        let flush = Duration::from_millis(settings::FLUSH_INTERVAL_MS.get() as u64);
        let mut batch = Vec::new();
        let mut first_at = None;
        while batch.len() < max {
            match self.ring.take() {
                Some(taken) => {
                    if batch.is_empty() {
                        self.lane
                            .held_from
                            .store(taken.position(), Ordering::SeqCst);
                        self.lane.held_xid.store(0, Ordering::SeqCst);
                    }
                    self.lane
                        .held_to
                        .store(taken.position() + u64::from(taken.span()), Ordering::SeqCst);
                    self.lane.queued.fetch_sub(1, Ordering::Relaxed);
                    batch.push(self.read(taken));
                    first_at.get_or_insert_with(Instant::now);
                }
                None => {
                    let waited = first_at.map_or(Duration::ZERO, |t: Instant| t.elapsed());
                    if batch.is_empty() || stopping || waited >= flush {
                        break;
                    }
                    self.sleep(flush - waited);
                }
            }
        }
        batch
    }

    /// Appends a batch, publishes every ticket's result, frees the slots.
    fn append(&self, batch: Vec<Held>) {
        self.lane.state.store(APPENDING, Ordering::SeqCst);
        report::report_running(&format!("appending {} queued events", batch.len()));
        self.settle(&batch.iter().collect::<Vec<_>>());
        for held in &batch {
            self.ring.release(held.taken);
        }
        self.lane.held_from.store(0, Ordering::SeqCst);
        self.lane.held_to.store(0, Ordering::SeqCst);
        self.lane.batches.fetch_add(1, Ordering::Relaxed);
        self.lane
            .events
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.lane
            .last_batch
            .store(batch.len() as u32, Ordering::Relaxed);
    }

    /// Gives every event of `batch` its final result: the whole batch in one
    /// transaction, or, if that fails, event by event.
    fn settle(&self, batch: &[&Held]) {
        let events: Vec<&Held> = batch
            .iter()
            .copied()
            .filter(|h| h.event.is_some())
            .collect();
        for undecodable in batch.iter().filter(|h| h.event.is_none()) {
            warning!(
                "allsource ingest worker {}: ticket {} is damaged in the queue",
                self.lane_no,
                undecodable.ticket
            );
            self.finish(
                undecodable,
                Status::Rejected {
                    sqlstate: sqlstate::DATA_CORRUPTED,
                },
            );
        }
        if events.is_empty() {
            return;
        }
        let mut events = events;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match self.commit(&events) {
                Ok(()) => return,
                Err(failure) => failure,
            };
            if failure.sqlstate == sqlstate::LOCK_NOT_AVAILABLE {
                let locked = self.locked_streams(&events);
                if !locked.is_empty() {
                    // The other streams go on; the locked ones' events wait
                    // once more, together and in order, then are rejected.
                    let (stuck, free): (Vec<&Held>, Vec<&Held>) = events
                        .iter()
                        .partition(|h| locked.contains(&stream_of(h).to_string()));
                    if !free.is_empty() {
                        self.settle(&free);
                    }
                    if attempt < LOCK_ATTEMPTS && !self.stopping.get() {
                        background::sleep(RETRY_AFTER);
                        events = stuck;
                        continue;
                    }
                    self.reject_locked(&stuck, &locked);
                    return;
                }
            }
            if events.len() > 1 {
                log!(
                    "allsource ingest worker {}: a batch of {} events failed ({}); appending them one by one",
                    self.lane_no, events.len(), failure.message
                );
                for held in &events {
                    self.settle(&[held]);
                }
                return;
            }
            if failure.retryable && attempt < RETRIES && !self.stopping.get() {
                background::sleep(RETRY_AFTER);
                continue;
            }
            warning!(
                "allsource ingest worker {}: ticket {} rejected: {}",
                self.lane_no,
                events[0].ticket,
                failure.message
            );
            stats::worker_rejected();
            self.finish(
                events[0],
                Status::Rejected {
                    sqlstate: failure.sqlstate,
                },
            );
            return;
        }
    }

    /// Rejects the events of streams that stayed locked, saying by whom.
    fn reject_locked(&self, stuck: &[&Held], locked: &[String]) {
        let pid = self.lane.blocker_pid.load(Ordering::SeqCst);
        let holder = if pid != 0 {
            format!("the transaction of pid {pid}")
        } else {
            format!(
                "transaction {} (a prepared transaction, or one that ended since)",
                self.lane.blocker_xid.load(Ordering::SeqCst)
            )
        };
        warning!(
            "allsource ingest worker {}: {} events rejected with 55P03: {holder} held stream {} longer than allsource.ingest_lock_timeout_ms ({} ms)",
            self.lane_no,
            stuck.len(),
            locked.join(", "),
            settings::INGEST_LOCK_TIMEOUT_MS.get()
        );
        for held in stuck {
            stats::worker_rejected();
            self.finish(
                held,
                Status::Rejected {
                    sqlstate: sqlstate::LOCK_NOT_AVAILABLE,
                },
            );
        }
    }

    /// The streams of `events` whose rows another transaction holds locked
    /// now (found without waiting), and records the first one's holder in the
    /// lane for `ingest_workers()`. Empty if none is, or on any error.
    fn locked_streams(&self, events: &[&Held]) -> Vec<String> {
        let mut streams: Vec<String> = events.iter().map(|h| stream_of(h).to_string()).collect();
        streams.sort_unstable();
        streams.dedup();
        // SAFETY: the worker is between transactions here: it starts one,
        // with the snapshot SPI needs, and commits it; an error unwinds to
        // catch_others, which aborts it.
        let probe = PgTryBuilder::new(AssertUnwindSafe(|| unsafe {
            pg_sys::SetCurrentStatementStartTimestamp();
            pg_sys::StartTransactionCommand();
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            let found = Spi::connect_mut(|client| {
                let free: Vec<String> = spi(client.update(
                    "SELECT s.stream_id FROM pg_catalog.unnest($1::pg_catalog.text[]) AS id \
                     JOIN allsource.streams s ON s.stream_id OPERATOR(pg_catalog.=) id \
                     FOR UPDATE OF s SKIP LOCKED",
                    None,
                    &[streams.clone().into()],
                ))
                .filter_map(|row| spi(row.get::<String>(1)))
                .collect();
                spi(client.select(
                    "SELECT s.stream_id, s.xmax::pg_catalog.text FROM allsource.streams s \
                     WHERE s.stream_id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[]) ORDER BY 1",
                    None,
                    &[streams.clone().into()],
                ))
                .filter_map(|row| {
                    let stream: String = spi(row.get(1))?;
                    let xmax: String = spi(row.get(2))?;
                    (!free.contains(&stream)).then(|| (stream, xmax.parse::<u32>().unwrap_or(0)))
                })
                .collect::<Vec<(String, u32)>>()
            });
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
            found
        }))
        .catch_others(|_| {
            // SAFETY: ends the transaction the error left open (or aborted).
            unsafe { pg_sys::AbortCurrentTransaction() };
            Vec::new()
        })
        .execute();
        report::report_stats(false);
        if let Some(&(_, xid)) = probe.first() {
            // A row's xmax is the transaction locking it (unless several share it).
            // SAFETY: looks the xid up in the proc array under its lock; any
            // xid is accepted (0: no backend runs it).
            let pid = unsafe { pg_sys::BackendXidGetPid(pg_sys::TransactionId::from_inner(xid)) };
            self.lane.blocker_pid.store(pid, Ordering::SeqCst);
            self.lane.blocker_xid.store(xid, Ordering::SeqCst);
            self.lane
                .blocked_at
                .store(backend::clock_timestamp(), Ordering::SeqCst);
            self.lane.lock_timeouts.fetch_add(1, Ordering::Relaxed);
        }
        probe.into_iter().map(|(stream, _)| stream).collect()
    }

    /// Appends `events` in one transaction and publishes their results.
    fn commit(&self, events: &[&Held]) -> std::result::Result<(), Failure> {
        let queued: Vec<&QueuedEvent> = events
            .iter()
            .map(|h| h.event.as_ref().expect("only decoded events are appended"))
            .collect();
        let requests: Vec<Request> = queued
            .iter()
            .map(|q| Request {
                stream_id: &q.stream_id,
                events: std::slice::from_ref(&q.event),
                expected: q.expected,
                tenant: q.tenant.as_deref(),
            })
            .collect();
        // The closure only reads shared memory through atomics and the ring.
        // SAFETY: the worker is between transactions here: it starts one,
        // with the snapshot SPI needs, and commits or aborts it; an error
        // unwinds to catch_others and is aborted below.
        let attempt = PgTryBuilder::new(AssertUnwindSafe(|| unsafe {
            pg_sys::SetCurrentStatementStartTimestamp();
            pg_sys::StartTransactionCommand();
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            match session::as_worker_role(|| append_requests(&requests, None, None)).and_then(|r| r)
            {
                Ok(results) => {
                    for (held, result) in events.iter().zip(&results) {
                        if let Ok(appended) = result {
                            self.cell(held.taken.position())
                                .stage(appended.first_version, appended.first_position);
                        }
                    }
                    // If we die after this commit, our successor sees it committed.
                    let xid = pg_sys::GetTopTransactionIdIfAny().into_inner();
                    self.lane.held_xid.store(xid, Ordering::SeqCst);
                    pg_sys::PopActiveSnapshot();
                    pg_sys::CommitTransactionCommand();
                    Ok(results)
                }
                Err(race) => {
                    pg_sys::AbortCurrentTransaction();
                    Err(Failure {
                        message: race.message,
                        sqlstate: race.sqlstate,
                        retryable: true,
                    })
                }
            }
        }))
        .catch_others(|caught| Err(Failure::from(caught)))
        .execute();
        let results = match attempt {
            Ok(results) => results,
            Err(failure) => {
                // SAFETY: after a caught error the transaction is still open
                // (or already aborted, which this also handles).
                unsafe { pg_sys::AbortCurrentTransaction() };
                report::report_stats(false);
                // The commit failed: what it staged is not true. A successor
                // (if we exit before a retry settles them) must append these
                // again, whatever a later attempt's xid says.
                for held in events {
                    self.cell(held.taken.position()).unstage();
                }
                return Err(failure);
            }
        };
        report::report_stats(false);
        stats::worker_committed();
        for (held, result) in events.iter().zip(results) {
            let status = match result {
                Ok(a) => Status::Committed {
                    version: a.first_version,
                    position: a.first_position,
                },
                Err(refused) => {
                    stats::refused(&refused.error);
                    if refused.error.sqlstate == sqlstate::WRONG_EXPECTED_VERSION {
                        Status::Conflict {
                            actual: refused.stream_version,
                        }
                    } else {
                        Status::Rejected {
                            sqlstate: refused.error.sqlstate,
                        }
                    }
                }
            };
            self.finish(held, status);
        }
        Ok(())
    }

    /// Publishes a ticket's final result and wakes its waiter.
    fn finish(&self, held: &Held, status: Status) {
        let cell = self.cell(held.taken.position());
        if cell.ticket() != held.ticket {
            return;
        }
        if let Some(waiter) = cell.publish(status) {
            wake(waiter, None);
        }
        if let Some(event) = &held.event {
            stats::ticket_finished((backend::clock_timestamp() - event.enqueued_at).max(0) as u64);
        }
    }

    /// Settles what a worker before us took and did not finish: it left its
    /// entries in the ring. If its transaction committed, the staged results
    /// are true; every other entry is appended again.
    fn recover(&self) {
        let (from, to) = (
            self.lane.held_from.load(Ordering::SeqCst),
            self.lane.held_to.load(Ordering::SeqCst),
        );
        if from >= to {
            return;
        }
        report::report_running("taking over the events of a worker that stopped mid-batch");
        let xid = pg_sys::TransactionId::from_inner(self.lane.held_xid.load(Ordering::SeqCst));
        let committed = xid != pg_sys::TransactionId::INVALID
            // SAFETY: a commit-log lookup inside a transaction, of a normal
            // xid this server assigned since it started (shared memory
            // starts empty), whose status it still keeps.
            && background::transaction(|| unsafe { pg_sys::TransactionIdDidCommit(xid) });
        let mut held = Vec::new();
        let mut again = Vec::new();
        let mut position = from;
        while let Some(taken) = (position < to)
            .then(|| self.ring.taken_at(position))
            .flatten()
        {
            let entry = self.read(taken);
            let cell = self.cell(taken.position());
            if cell.lookup(entry.ticket) == Lookup::Found(Status::Pending) {
                if committed && cell.is_staged() {
                    if let Some(waiter) = cell.commit() {
                        wake(waiter, None);
                    }
                } else {
                    again.push(held.len());
                }
            }
            position += u64::from(taken.span());
            held.push(entry);
        }
        log!(
            "allsource ingest worker {}: took over {} events from a worker that stopped mid-batch; appending {} again",
            self.lane_no,
            held.len(),
            again.len()
        );
        self.settle(&again.iter().map(|&i| &held[i]).collect::<Vec<_>>());
        for entry in &held {
            self.ring.release(entry.taken);
        }
        self.lane.held_from.store(0, Ordering::SeqCst);
        self.lane.held_to.store(0, Ordering::SeqCst);
    }
}

fn stream_of<'h>(held: &'h &Held) -> &'h str {
    &held
        .event
        .as_ref()
        .expect("only decoded events are appended")
        .stream_id
}
