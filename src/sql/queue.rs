//! The ingest queue's shared memory: one lane per worker, each a ring of
//! encoded events and a table of ticket results, laid out at server start
//! from `allsource.queue_size`, `allsource.ingest_workers` and
//! `allsource.ticket_results`; and what `stats()` reads of it.

use crate::settings;
use crate::sql::backend;
use allsource_core::ingest::{ResultCell, TicketPlace, Tickets};
use allsource_core::partition::stable_hash;
use allsource_core::ring::{Ring, RingHeader, Slot, SLOT_BYTES};
use pgrx::prelude::*;
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, Ordering,
};

/// A worker's state, as `ingest_workers()` shows it.
pub(crate) const STOPPED: u32 = 0;
pub(crate) const IDLE: u32 = 1;
pub(crate) const APPENDING: u32 = 2;
pub(crate) const DRAINING: u32 = 3;

pub(crate) fn state_name(state: u32) -> &'static str {
    match state {
        IDLE => "idle",
        APPENDING => "appending",
        DRAINING => "draining",
        _ => "stopped",
    }
}

#[repr(C, align(64))]
pub(crate) struct QueueHeader {
    pub(crate) lanes: u32,
    pub(crate) slots_per_lane: u64,
    pub(crate) cells_per_lane: u64,
    pub(crate) tickets: Tickets,
    /// The OID of `allsource.database`, published by the first worker that
    /// connects (0 until then), so `enqueue` needs no catalog lookup.
    pub(crate) database: AtomicU32,
}

#[repr(C, align(64))]
pub(crate) struct Lane {
    pub(crate) ring: RingHeader,
    /// Backends inside `enqueue` right now: a stopping worker waits for them.
    pub(crate) producers: AtomicU32,
    /// The running worker's `pgprocno + 1`, 0 when none.
    pub(crate) worker: AtomicI32,
    pub(crate) worker_pid: AtomicI32,
    /// The worker waits on its latch: producers set it.
    pub(crate) sleeping: AtomicBool,
    pub(crate) state: AtomicU32,
    /// Ring positions the worker has taken and not yet released.
    pub(crate) held_from: AtomicU64,
    pub(crate) held_to: AtomicU64,
    /// The transaction id of the worker's last commit attempt (0: none).
    pub(crate) held_xid: AtomicU32,
    /// Events enqueued and not yet taken.
    pub(crate) queued: AtomicI64,
    pub(crate) batches: AtomicU64,
    pub(crate) events: AtomicU64,
    pub(crate) last_batch: AtomicU32,
    /// Times the worker gave up waiting for a stream's row lock, and the
    /// transaction that held the last one: its pid (0 if prepared), xid, when.
    pub(crate) lock_timeouts: AtomicU64,
    pub(crate) blocker_pid: AtomicI32,
    pub(crate) blocker_xid: AtomicU32,
    pub(crate) blocked_at: AtomicI64,
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

/// From `_PG_init`, when preloading: reserves the queue's shared memory.
pub(crate) fn reserve_shared_memory() {
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
}

#[cfg(not(any(feature = "pg13", feature = "pg14")))]
#[pg_guard]
unsafe extern "C-unwind" fn request_shared_memory() {
    // SAFETY: PostgreSQL calls this hook in the postmaster, on its one
    // thread, where requesting shared memory is allowed; the statics were
    // set by reserve_shared_memory and are never written again.
    unsafe {
        if let Some(previous) = PREV_SHMEM_REQUEST {
            previous();
        }
        pg_sys::RequestAddinShmemSpace(QUEUE_BYTES);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn create_shared_memory() {
    // SAFETY: PostgreSQL calls this hook on a process's one thread once its
    // shared memory exists; the statics were set by reserve_shared_memory
    // and are never written again. AddinShmemInitLock (MainLWLockArray[21],
    // as pgrx locks it) is held while the segment is looked up or created.
    // ShmemInitStruct returns QUEUE_BYTES bytes, aligned to a cache line, or
    // raises; QUEUE_BYTES is Layout::from_settings().total() of the same
    // server-start settings, so `initialize` gets what it needs.
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
    let unix_micros =
        allsource_core::checksum::unix_micros_from_postgres(backend::clock_timestamp());
    // SAFETY: every write is at an offset of `layout` inside its total(), as
    // the caller promises, and each offset is a multiple of 64, the largest
    // alignment of the types written.
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
pub(crate) struct Queue {
    base: *mut u8,
}

impl Queue {
    /// The queue, when preloaded.
    pub(crate) fn get() -> Option<Queue> {
        let base = QUEUE_BASE.load(Ordering::SeqCst);
        (!base.is_null()).then_some(Queue { base })
    }

    pub(crate) fn header(&self) -> &'static QueueHeader {
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

    pub(crate) fn lane(&self, lane: u32) -> &'static Lane {
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

    pub(crate) fn ring(&self, lane: u32) -> Ring<'static> {
        Ring::new(&self.lane(lane).ring, self.slots(lane))
    }

    pub(crate) fn cell(&self, place: TicketPlace) -> &'static ResultCell {
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

    pub(crate) fn lanes(&self) -> impl Iterator<Item = (u32, &'static Lane)> + '_ {
        (0..self.header().lanes).map(|l| (l, self.lane(l)))
    }

    pub(crate) fn lane_of(&self, stream_id: &str) -> u32 {
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
