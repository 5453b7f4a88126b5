//! The ingest queue in PostgreSQL: `enqueue`, `await_ticket`,
//! `ingest_workers()` and the workers that append queued events.
//!
//! Shared memory, sized at server start from `allsource.queue_size` and
//! `allsource.ingest_workers`, holds one lane per worker: a lock-free ring
//! ([`allsource_core::ring`]) of encoded events ([`allsource_core::ingest::QueuedEvent`]) and
//! a table of ticket results ([`allsource_core::ingest::ResultCell`]). A stream's
//! events always go to the same lane, so one worker appends them in order.
//!
//! A worker takes a batch, appends it in one transaction through the path of
//! `append_batch` ([`super::append::append_requests`]), where each event is
//! decided alone, stages the results, commits, then publishes them and wakes
//! the waiters. The batch's ring slots are freed only after that: a worker
//! that dies mid-batch leaves its events in the ring, and its successor
//! either confirms them (the transaction committed) or appends them again.

use crate::settings;
use crate::sql::append::{append_requests, new_event};
use crate::sql::jsonb::JsonbText;
use crate::sql::raise::or_raise;
use crate::sql::standby::refuse_on_standby;
use crate::sql::tenant;
use crate::sql::watermark::require_preloaded;
use crate::sql::{spi, stats, wake, worker, worker_session};
use allsource_core::error::{Error, Result};
use allsource_core::ingest::{
    tenant_tag, Lookup, QueuedEvent, ResultCell, Status, TicketPlace, Tickets,
};
use allsource_core::partition::stable_hash;
use allsource_core::plan::Request;
use allsource_core::ring::{PushError, Ring, RingHeader, Slot, Taken, SLOT_BYTES};
use allsource_core::validate::ExpectedVersion;
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::{PgTryBuilder, Uuid};
use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, Ordering,
};
use std::time::{Duration, Instant};

/// A worker's state, as `ingest_workers()` shows it.
const STOPPED: u32 = 0;
const IDLE: u32 = 1;
const APPENDING: u32 = 2;
const DRAINING: u32 = 3;

fn state_name(state: u32) -> &'static str {
    match state {
        IDLE => "idle",
        APPENDING => "appending",
        DRAINING => "draining",
        _ => "stopped",
    }
}

/// How long the postmaster waits before restarting a worker that died.
const RESTART_AFTER: Duration = Duration::from_secs(1);
/// A batch that failed is retried event by event; an event that failed for
/// a reason of the moment (a deadlock, a serialization failure, a lock or
/// statement timeout, a cancel) is tried this often, [`RETRY_AFTER`] apart.
const RETRIES: u32 = 3;
const RETRY_AFTER: Duration = Duration::from_millis(100);
/// Events of a stream whose row another transaction held past the lock
/// timeout (`allsource.ingest_lock_timeout_ms`) are tried this often, and
/// once only while the server stops.
const LOCK_ATTEMPTS: u32 = 2;
const LOCK_NOT_AVAILABLE: [u8; 5] = *b"55P03";

#[repr(C, align(64))]
struct QueueHeader {
    lanes: u32,
    slots_per_lane: u64,
    cells_per_lane: u64,
    tickets: Tickets,
    /// The OID of `allsource.database`, published by the first worker that
    /// connects (0 until then), so `enqueue` needs no catalog lookup.
    database: AtomicU32,
}

#[repr(C, align(64))]
struct Lane {
    ring: RingHeader,
    /// Backends inside `enqueue` right now: a stopping worker waits for them.
    producers: AtomicU32,
    /// The running worker's `pgprocno + 1`, 0 when none.
    worker: AtomicI32,
    worker_pid: AtomicI32,
    /// The worker waits on its latch: producers set it.
    sleeping: AtomicBool,
    state: AtomicU32,
    /// Ring positions the worker has taken and not yet released.
    held_from: AtomicU64,
    held_to: AtomicU64,
    /// The transaction id of the worker's last commit attempt (0: none).
    held_xid: AtomicU32,
    /// Events enqueued and not yet taken.
    queued: AtomicI64,
    batches: AtomicU64,
    events: AtomicU64,
    last_batch: AtomicU32,
    /// Times the worker gave up waiting for a stream's row lock, and the
    /// transaction that held the last one: its pid (0 if prepared), xid, when.
    lock_timeouts: AtomicU64,
    blocker_pid: AtomicI32,
    blocker_xid: AtomicU32,
    blocked_at: AtomicI64,
}

/// The queue's shared memory: a header, the lanes, then each lane's slots and cells.
struct Layout {
    lanes: u32,
    slots_per_lane: u64,
    cells_per_lane: u64,
}

impl Layout {
    fn from_settings() -> Layout {
        let lanes = settings::INGEST_WORKERS.get().max(1) as u32;
        let slots =
            (settings::QUEUE_SIZE.get() as u64 / SLOT_BYTES as u64 / u64::from(lanes)).max(2);
        // A whole number of rings: a cell is reused by the position one
        // such multiple later, which cannot be claimed before this
        // position's slot was released, after its result was published.
        let cells =
            (settings::TICKET_RESULTS.get() as u64 / u64::from(lanes)).next_multiple_of(slots);
        Layout {
            lanes,
            slots_per_lane: slots,
            cells_per_lane: cells,
        }
    }

    fn lanes_offset() -> usize {
        std::mem::size_of::<QueueHeader>()
    }

    fn lane_data_offset(&self, lane: u32) -> usize {
        let lane_bytes = self.slots_per_lane as usize * SLOT_BYTES
            + self.cells_per_lane as usize * std::mem::size_of::<ResultCell>();
        let start = Self::lanes_offset() + self.lanes as usize * std::mem::size_of::<Lane>();
        // Slots are 64-byte aligned; lane_bytes is a multiple of 64 only if cells are, so round.
        start + lane as usize * lane_bytes.next_multiple_of(64)
    }

    fn total(&self) -> usize {
        self.lane_data_offset(self.lanes)
    }
}

static QUEUE_BASE: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static mut QUEUE_BYTES: usize = 0;
static mut PREV_SHMEM_STARTUP: pg_sys::shmem_startup_hook_type = None;
#[cfg(not(any(feature = "pg13", feature = "pg14")))]
static mut PREV_SHMEM_REQUEST: pg_sys::shmem_request_hook_type = None;

/// From `_PG_init`: when preloading, reserves the queue's shared memory and
/// registers the workers.
pub fn init() {
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    // SAFETY: _PG_init runs once, single-threaded, in the postmaster.
    unsafe {
        QUEUE_BYTES = Layout::from_settings().total();
        #[cfg(any(feature = "pg13", feature = "pg14"))]
        pg_sys::RequestAddinShmemSpace(QUEUE_BYTES);
        #[cfg(not(any(feature = "pg13", feature = "pg14")))]
        {
            PREV_SHMEM_REQUEST = pg_sys::shmem_request_hook;
            pg_sys::shmem_request_hook = Some(request_shared_memory);
        }
        PREV_SHMEM_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(create_shared_memory);
    }
    for lane in 0..settings::INGEST_WORKERS.get() {
        BackgroundWorkerBuilder::new(&format!("allsource ingest worker {lane}"))
            .set_type("allsource ingest worker")
            .set_library("allsource")
            .set_function("allsource_ingest_main")
            .set_argument(Some(pg_sys::Datum::from(lane)))
            .enable_spi_access()
            .set_start_time(BgWorkerStartTime::RecoveryFinished)
            .set_restart_time(Some(RESTART_AFTER))
            .load();
    }
}

#[cfg(not(any(feature = "pg13", feature = "pg14")))]
#[pg_guard]
unsafe extern "C-unwind" fn request_shared_memory() {
    unsafe {
        if let Some(previous) = PREV_SHMEM_REQUEST {
            previous();
        }
        pg_sys::RequestAddinShmemSpace(QUEUE_BYTES);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn create_shared_memory() {
    unsafe {
        if let Some(previous) = PREV_SHMEM_STARTUP {
            previous();
        }
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock; // AddinShmemInitLock
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let base =
            pg_sys::ShmemInitStruct(c"allsource ingest queue".as_ptr(), QUEUE_BYTES, &mut found)
                as *mut u8;
        if !found {
            initialize(base, &Layout::from_settings());
        }
        QUEUE_BASE.store(base, Ordering::SeqCst);
        pg_sys::LWLockRelease(init_lock);
    }
}

/// Writes an empty queue at `base`.
///
/// # Safety
/// `base` points to `layout.total()` writable bytes, 64-byte aligned.
unsafe fn initialize(base: *mut u8, layout: &Layout) {
    let micros_since_2000 = unsafe { pg_sys::GetCurrentTimestamp() };
    let unix_micros = allsource_core::checksum::unix_micros_from_postgres(micros_since_2000);
    unsafe {
        (base as *mut QueueHeader).write(QueueHeader {
            lanes: layout.lanes,
            slots_per_lane: layout.slots_per_lane,
            cells_per_lane: layout.cells_per_lane,
            tickets: Tickets::starting_at(unix_micros, layout.lanes),
            database: AtomicU32::new(0),
        });
        let lanes = base.add(Layout::lanes_offset()) as *mut Lane;
        for lane in 0..layout.lanes {
            lanes.add(lane as usize).write(Lane {
                ring: RingHeader::new(),
                producers: AtomicU32::new(0),
                worker: AtomicI32::new(0),
                worker_pid: AtomicI32::new(0),
                sleeping: AtomicBool::new(false),
                state: AtomicU32::new(STOPPED),
                held_from: AtomicU64::new(0),
                held_to: AtomicU64::new(0),
                held_xid: AtomicU32::new(0),
                queued: AtomicI64::new(0),
                batches: AtomicU64::new(0),
                events: AtomicU64::new(0),
                last_batch: AtomicU32::new(0),
                lock_timeouts: AtomicU64::new(0),
                blocker_pid: AtomicI32::new(0),
                blocker_xid: AtomicU32::new(0),
                blocked_at: AtomicI64::new(0),
            });
            let slots = base.add(layout.lane_data_offset(lane)) as *mut Slot;
            for index in 0..layout.slots_per_lane as usize {
                slots.add(index).write(Slot::new(index));
            }
            let cells = slots.add(layout.slots_per_lane as usize) as *mut ResultCell;
            for index in 0..layout.cells_per_lane as usize {
                cells.add(index).write(ResultCell::default());
            }
        }
    }
}

/// A view of the queue's shared memory.
#[derive(Clone, Copy)]
struct Queue {
    base: *mut u8,
}

impl Queue {
    /// The queue, when preloaded.
    fn get() -> Option<Queue> {
        let base = QUEUE_BASE.load(Ordering::SeqCst);
        (!base.is_null()).then_some(Queue { base })
    }

    fn header(&self) -> &'static QueueHeader {
        // SAFETY: initialized at startup, never moved.
        unsafe { &*(self.base as *const QueueHeader) }
    }

    fn layout(&self) -> Layout {
        let h = self.header();
        Layout {
            lanes: h.lanes,
            slots_per_lane: h.slots_per_lane,
            cells_per_lane: h.cells_per_lane,
        }
    }

    fn lane(&self, lane: u32) -> &'static Lane {
        assert!(lane < self.header().lanes);
        // SAFETY: lanes follow the header, one per worker.
        unsafe { &*(self.base.add(Layout::lanes_offset()) as *const Lane).add(lane as usize) }
    }

    fn slots(&self, lane: u32) -> &'static [Slot] {
        let layout = self.layout();
        // SAFETY: the lane's slots, initialized at startup.
        unsafe {
            std::slice::from_raw_parts(
                self.base.add(layout.lane_data_offset(lane)) as *const Slot,
                layout.slots_per_lane as usize,
            )
        }
    }

    fn ring(&self, lane: u32) -> Ring<'static> {
        Ring::new(&self.lane(lane).ring, self.slots(lane))
    }

    fn cell(&self, place: TicketPlace) -> &'static ResultCell {
        let layout = self.layout();
        let index = place.position % layout.cells_per_lane;
        // SAFETY: the lane's cells follow its slots.
        unsafe {
            &*(self
                .slots(place.lane)
                .as_ptr()
                .add(layout.slots_per_lane as usize) as *const ResultCell)
                .add(index as usize)
        }
    }

    fn lanes(&self) -> impl Iterator<Item = (u32, &'static Lane)> + '_ {
        (0..self.header().lanes).map(|l| (l, self.lane(l)))
    }

    fn lane_of(&self, stream_id: &str) -> u32 {
        (stable_hash(stream_id) % u64::from(self.header().lanes)) as u32
    }
}

/// Events queued and not yet taken by a worker.
pub fn queued_events() -> u64 {
    Queue::get().map_or(0, |q| {
        q.lanes()
            .map(|(_, lane)| lane.queued.load(Ordering::Relaxed).max(0) as u64)
            .sum()
    })
}

/// Workers running now.
pub fn workers_running() -> u32 {
    Queue::get().map_or(0, |q| {
        q.lanes()
            .filter(|(_, lane)| lane.worker.load(Ordering::SeqCst) != 0)
            .count() as u32
    })
}

fn now() -> i64 {
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// The queue, if this session may use it.
fn queue_here(function: &str) -> Result<Queue> {
    refuse_on_standby(function)?;
    require_preloaded(function)?;
    let queue = Queue::get().expect("preloaded: the queue exists");
    if settings::INGEST_WORKERS.get() == 0 {
        return Err(
            Error::new("55000", format!("{function} needs ingest workers"))
                .with_hint("Set allsource.ingest_workers to 1 or more and restart PostgreSQL."),
        );
    }
    let database = settings::database();
    let serving = match queue.header().database.load(Ordering::Relaxed) {
        0 => std::ffi::CString::new(database.as_str())
            .ok()
            .map(|name| unsafe { pg_sys::get_database_oid(name.as_ptr(), true) }),
        oid => Some(pg_sys::Oid::from(oid)),
    };
    if serving != Some(unsafe { pg_sys::MyDatabaseId }) {
        return Err(Error::new(
            "55000",
            format!("{function} works only in database \"{database}\", where the ingest workers append"),
        )
        .with_hint("Connect to that database, or set allsource.database to this one and restart PostgreSQL."));
    }
    Ok(queue)
}

/// Queues an event for a background worker to append; returns its ticket at once.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn enqueue(
    stream_id: Option<&str>,
    event_type: Option<&str>,
    payload: Option<JsonbText>,
    metadata: default!(Option<JsonbText>, "NULL"),
    expected_version: default!(Option<i64>, "NULL"),
    event_id: default!(Option<Uuid>, "NULL"),
) -> i64 {
    let result = (|| {
        let (stream_id, event) = new_event(stream_id, event_type, payload, metadata, event_id)?;
        let expected = ExpectedVersion::from_arg(expected_version)?;
        let tenant = tenant::session_tenant()?;
        let queue = queue_here("allsource.enqueue()")?;
        let entry = QueuedEvent {
            stream_id: stream_id.to_string(),
            expected,
            event,
            tenant,
            enqueued_at: now(),
        };
        push(queue, queue.lane_of(stream_id), &entry)
    })();
    or_raise(result)
}

/// Pushes `entry` into `lane`, waiting up to `allsource.enqueue_timeout_ms`
/// for room; returns its ticket.
fn push(queue: Queue, lane_no: u32, entry: &QueuedEvent) -> Result<i64> {
    let bytes = entry.encode();
    let lane = queue.lane(lane_no);
    let ring = queue.ring(lane_no);
    let tickets = queue.header().tickets;
    let deadline =
        Instant::now() + Duration::from_millis(settings::ENQUEUE_TIMEOUT_MS.get() as u64);
    loop {
        lane.producers.fetch_add(1, Ordering::SeqCst);
        let pushed = ring.push_with(&bytes, |position| {
            let ticket = tickets.ticket(TicketPlace {
                lane: lane_no,
                position,
            });
            queue
                .cell(TicketPlace {
                    lane: lane_no,
                    position,
                })
                .open(ticket, tenant_tag(entry.tenant.as_deref()));
        });
        if pushed.is_ok() {
            lane.queued.fetch_add(1, Ordering::Relaxed);
        }
        lane.producers.fetch_sub(1, Ordering::SeqCst);
        match pushed {
            Ok(position) => {
                if lane.sleeping.load(Ordering::SeqCst) {
                    wake_worker(lane);
                }
                stats::enqueued();
                return Ok(tickets.ticket(TicketPlace {
                    lane: lane_no,
                    position,
                }));
            }
            Err(PushError::TooLarge {
                slots_needed,
                capacity,
            }) => {
                return Err(Error::new(
                    "54000",
                    format!(
                        "event of {} bytes is too large for the ingest queue: it needs {slots_needed} slots of {SLOT_BYTES} bytes and a lane has {capacity}",
                        bytes.len()
                    ),
                )
                .with_hint("Append it with allsource.append(), or raise allsource.queue_size."));
            }
            Err(PushError::Full) if Instant::now() < deadline => {
                // The queue is overloaded: check again every millisecond.
                wait_on_latch(Duration::from_millis(1));
            }
            Err(PushError::Full) => {
                return Err(Error::new("53400", "the ingest queue is full")
                    .with_detail(format!(
                        "Lane {lane_no} holds {} events in {} slots.",
                        lane.queued.load(Ordering::Relaxed),
                        ring.capacity()
                    ))
                    .with_hint("Retry later, set allsource.enqueue_timeout_ms to wait for room, raise allsource.queue_size or allsource.ingest_workers, or use allsource.append()."));
            }
        }
    }
}

fn wake_worker(lane: &Lane) {
    let worker = lane.worker.load(Ordering::SeqCst);
    if worker > 0 {
        wake(worker - 1, Some(lane.worker_pid.load(Ordering::SeqCst)));
    }
}

/// Sleeps on this process's latch for at most `timeout`; cancellable.
fn wait_on_latch(timeout: Duration) {
    sleep_on_latch(timeout);
    pgrx::check_for_interrupts!();
}

/// Sleeps on this process's latch for at most `timeout`. Workers use this
/// one: a cancel request then interrupts their next statement, which they
/// catch, instead of their main loop. Barriers (DROP DATABASE waits for
/// every process to absorb one) are absorbed here all the same.
fn sleep_on_latch(timeout: Duration) {
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

/// Waits until the ticket's event is appended or refused, or `timeout_ms` passes.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn await_ticket(
    ticket: Option<i64>,
    timeout_ms: default!(Option<i32>, 10000),
) -> TableIterator<
    'static,
    (
        name!(status, String),
        name!(version, Option<i64>),
        name!(position, Option<i64>),
    ),
> {
    let status = or_raise((|| {
        let ticket = allsource_core::validate::required("ticket", ticket)?;
        let timeout_ms = allsource_core::validate::non_negative("timeout_ms", timeout_ms)?;
        let queue = queue_here("allsource.await_ticket()")?;
        // Another tenant's ticket is answered as one never issued.
        let tenant = tenant_tag(tenant::session_tenant()?.as_deref());
        let place = queue
            .header()
            .tickets
            .place(ticket)
            .filter(|p| p.lane < queue.header().lanes)
            .filter(|&p| queue.cell(p).tenant() == tenant || queue.cell(p).ticket() != ticket)
            .ok_or_else(|| {
                Error::invalid_argument(
                    "ticket",
                    format!("{ticket} was not issued since the server last started"),
                )
                .with_hint("Results do not survive a restart. An event whose ticket never reported committed may be lost: look for it with read_stream and enqueue it again if it is missing.")
            })?;
        wait_for(
            queue.cell(place),
            ticket,
            Duration::from_millis(timeout_ms as u64),
        )
    })());
    if let Status::Rejected { sqlstate } = status {
        pgrx::notice!(
            "ticket {} was rejected with SQLSTATE {}: {}",
            ticket.unwrap_or_default(),
            String::from_utf8_lossy(&sqlstate),
            rejection_reason(&sqlstate)
        );
    }
    let (version, position) = match status {
        Status::Committed { version, position } => (Some(version), Some(position)),
        Status::Conflict { actual } => (Some(actual), None),
        Status::Pending | Status::Rejected { .. } => (None, None),
    };
    TableIterator::once((status.name().to_string(), version, position))
}

fn rejection_reason(sqlstate: &[u8; 5]) -> &'static str {
    match sqlstate {
        b"ZA002" => "the stream is deleted",
        b"ZA003" => "the event id belongs to another event",
        b"55P03" => {
            "another transaction held the stream's row longer than allsource.ingest_lock_timeout_ms; allsource.ingest_workers() names it"
        }
        b"40P01" | b"40001" => {
            "the worker's transaction kept failing on a conflict with other transactions"
        }
        _ => "the worker could not append it; the server log says why",
    }
}

/// Blocks on this backend's latch until `cell` holds `ticket`'s result, or
/// `timeout` passes (then the status is still `Pending`). A cancel while
/// sleeping leaves our registration behind: at worst one spurious wake-up.
fn wait_for(cell: &ResultCell, ticket: i64, timeout: Duration) -> Result<Status> {
    let me = super::my_procno();
    let deadline = Instant::now() + timeout;
    let mut registered = false;
    let outcome =
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match cell.lookup(ticket) {
                Lookup::Found(Status::Pending) if !left.is_zero() => {}
                Lookup::Found(status) => break Ok(status),
                Lookup::Expired => break Err(Error::invalid_argument(
                    "ticket",
                    format!("the result of {ticket} is no longer kept"),
                )
                .with_detail(
                    "The server keeps the results of its last allsource.ticket_results tickets.",
                )
                .with_hint("Await tickets sooner, or raise allsource.ticket_results.")),
                Lookup::Unknown => {
                    break Err(Error::invalid_argument(
                        "ticket",
                        format!("{ticket} was never issued"),
                    ))
                }
            }
            if !registered {
                registered = cell.register_waiter(me);
                if registered {
                    // Look again before sleeping: the worker publishes, then wakes.
                    continue;
                }
            }
            // Registered: sleep until woken. Another backend waits on this
            // ticket too and holds the wake-up: poll.
            let nap = if registered {
                left
            } else {
                left.min(Duration::from_millis(5))
            };
            wait_on_latch(nap);
        };
    if registered {
        cell.unregister_waiter(me);
    }
    outcome
}

/// One row per ingest worker: what it is doing and what it did.
#[pg_extern(volatile, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)]
fn ingest_workers() -> TableIterator<
    'static,
    (
        name!(worker, i32),
        name!(pid, Option<i32>),
        name!(state, String),
        name!(queued_events, i64),
        name!(batches, i64),
        name!(events, i64),
        name!(last_batch_size, i32),
        name!(lock_timeouts, i64),
        name!(blocked_by, Option<i32>),
        name!(blocked_by_xid, Option<i64>),
        name!(blocked_at, Option<TimestampWithTimeZone>),
    ),
> {
    or_raise(require_preloaded("allsource.ingest_workers()"));
    let queue = Queue::get().expect("preloaded: the queue exists");
    let rows: Vec<_> = queue
        .lanes()
        .take(settings::INGEST_WORKERS.get() as usize)
        .map(|(n, lane)| {
            let running = lane.worker.load(Ordering::SeqCst) != 0;
            let blocked_at = lane.blocked_at.load(Ordering::SeqCst);
            let blocked = blocked_at != 0;
            (
                n as i32,
                running.then(|| lane.worker_pid.load(Ordering::SeqCst)),
                state_name(lane.state.load(Ordering::SeqCst)).to_string(),
                lane.queued.load(Ordering::Relaxed).max(0),
                lane.batches.load(Ordering::Relaxed) as i64,
                lane.events.load(Ordering::Relaxed) as i64,
                lane.last_batch.load(Ordering::Relaxed) as i32,
                lane.lock_timeouts.load(Ordering::Relaxed) as i64,
                Some(lane.blocker_pid.load(Ordering::SeqCst)).filter(|&pid| blocked && pid != 0),
                blocked.then(|| i64::from(lane.blocker_xid.load(Ordering::SeqCst))),
                blocked.then(|| {
                    TimestampWithTimeZone::try_from(blocked_at).expect("a valid timestamp")
                }),
            )
        })
        .collect();
    TableIterator::new(rows)
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
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let lane_no = argument.value() as u32;
    let database = settings::database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    worker_session::pin_search_path();
    let queue = Queue::get().expect("workers start only when preloaded");
    queue
        .header()
        .database
        .store(unsafe { pg_sys::MyDatabaseId }.to_u32(), Ordering::Relaxed);
    let lane = queue.lane(lane_no);
    let worker = Worker {
        queue,
        lane_no,
        lane,
        ring: queue.ring(lane_no),
        stopping: Cell::new(false),
    };
    apply_lock_timeout();
    lane.worker_pid
        .store(unsafe { pg_sys::MyProcPid }, Ordering::SeqCst);
    lane.worker.store(super::my_procno() + 1, Ordering::SeqCst);
    log!("allsource ingest worker {lane_no} started in database \"{database}\"");

    worker.recover();
    let mut idle = false;
    loop {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            apply_lock_timeout();
        }
        if BackgroundWorker::sigterm_received() {
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
            worker::report_stats(true);
            worker::report_idle("waiting for queued events");
            idle = true;
        }
        worker.sleep(Duration::from_secs(1));
    }
    lane.state.store(STOPPED, Ordering::SeqCst);
    lane.worker.store(0, Ordering::SeqCst);
    log!("allsource ingest worker {lane_no} stopped with its lane empty");
    // Exit code 1: the postmaster restarts a worker stopped outside a shutdown.
    unsafe { pg_sys::proc_exit(1) };
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
        self.queue.header().tickets.ticket(TicketPlace {
            lane: self.lane_no,
            position,
        })
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
            ticket: self.ticket(taken.position),
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
        sleep_on_latch(nap);
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
                        self.lane.held_from.store(taken.position, Ordering::SeqCst);
                        self.lane.held_xid.store(0, Ordering::SeqCst);
                    }
                    self.lane
                        .held_to
                        .store(taken.position + u64::from(taken.span), Ordering::SeqCst);
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
        worker::report_running(&format!("appending {} queued events", batch.len()));
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
                    sqlstate: *b"XX001",
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
            if failure.sqlstate == LOCK_NOT_AVAILABLE {
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
                        sleep_on_latch(RETRY_AFTER);
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
                sleep_on_latch(RETRY_AFTER);
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
                    sqlstate: LOCK_NOT_AVAILABLE,
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
            unsafe { pg_sys::AbortCurrentTransaction() };
            Vec::new()
        })
        .execute();
        worker::report_stats(false);
        if let Some(&(_, xid)) = probe.first() {
            // A row's xmax is the transaction locking it (unless several share it).
            let pid = unsafe { pg_sys::BackendXidGetPid(pg_sys::TransactionId::from_inner(xid)) };
            self.lane.blocker_pid.store(pid, Ordering::SeqCst);
            self.lane.blocker_xid.store(xid, Ordering::SeqCst);
            self.lane.blocked_at.store(now(), Ordering::SeqCst);
            self.lane.lock_timeouts.fetch_add(1, Ordering::Relaxed);
        }
        probe.into_iter().map(|(stream, _)| stream).collect()
    }
}

fn stream_of<'h>(held: &'h &Held) -> &'h str {
    &held
        .event
        .as_ref()
        .expect("only decoded events are appended")
        .stream_id
}

/// Why a transaction of a worker failed.
struct Failure {
    message: String,
    sqlstate: [u8; 5],
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
        let code = report.sql_error_code();
        Failure {
            message: report.message().to_string(),
            sqlstate: crate::sql::raise::unpack_sqlstate(code as i32),
            retryable: matches!(
                code,
                PgSqlErrorCode::ERRCODE_T_R_DEADLOCK_DETECTED
                    | PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE
                    | PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE
                    | PgSqlErrorCode::ERRCODE_QUERY_CANCELED
            ),
        }
    }
}

impl Worker {
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
        let attempt = PgTryBuilder::new(AssertUnwindSafe(|| unsafe {
            pg_sys::SetCurrentStatementStartTimestamp();
            pg_sys::StartTransactionCommand();
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            match worker_session::as_worker_role(|| append_requests(&requests)).and_then(|r| r) {
                Ok(results) => {
                    for (held, result) in events.iter().zip(&results) {
                        if let Ok(appended) = result {
                            self.cell(held.taken.position)
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
                        sqlstate: race
                            .sqlstate
                            .as_bytes()
                            .try_into()
                            .expect("five characters"),
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
                worker::report_stats(false);
                // The commit failed: what it staged is not true. A successor
                // (if we exit before a retry settles them) must append these
                // again, whatever a later attempt's xid says.
                for held in events {
                    self.cell(held.taken.position).unstage();
                }
                return Err(failure);
            }
        };
        worker::report_stats(false);
        stats::worker_committed();
        for (held, result) in events.iter().zip(results) {
            let status = match result {
                Ok(a) => Status::Committed {
                    version: a.first_version,
                    position: a.first_position,
                },
                Err(refused) => {
                    stats::refused(&refused.error);
                    if refused.error.sqlstate
                        == allsource_core::error::sqlstate::WRONG_EXPECTED_VERSION
                    {
                        Status::Conflict {
                            actual: refused.stream_version,
                        }
                    } else {
                        Status::Rejected {
                            sqlstate: refused
                                .error
                                .sqlstate
                                .as_bytes()
                                .try_into()
                                .expect("five characters"),
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
        let cell = self.cell(held.taken.position);
        if cell.ticket() != held.ticket {
            return;
        }
        if let Some(waiter) = cell.publish(status) {
            wake(waiter, None);
        }
        if let Some(event) = &held.event {
            stats::ticket_finished((now() - event.enqueued_at).max(0) as u64);
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
        worker::report_running("taking over the events of a worker that stopped mid-batch");
        let xid = pg_sys::TransactionId::from_inner(self.lane.held_xid.load(Ordering::SeqCst));
        let committed = xid != pg_sys::TransactionId::INVALID
            && BackgroundWorker::transaction(|| unsafe { pg_sys::TransactionIdDidCommit(xid) });
        worker::report_stats(false);
        let mut held = Vec::new();
        let mut again = Vec::new();
        let mut position = from;
        while let Some(taken) = (position < to)
            .then(|| self.ring.taken_at(position))
            .flatten()
        {
            let entry = self.read(taken);
            let cell = self.cell(taken.position);
            if cell.lookup(entry.ticket) == Lookup::Found(Status::Pending) {
                if committed && cell.is_staged() {
                    if let Some(waiter) = cell.commit() {
                        wake(waiter, None);
                    }
                } else {
                    again.push(held.len());
                }
            }
            position += u64::from(taken.span);
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
