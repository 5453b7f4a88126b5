//! The ingest queue's shared memory: `allsource.max_databases` lane groups,
//! one per database the workers serve, claimed by that database's publisher
//! and freed once the database is dropped. A group has one lane per worker,
//! each a ring of encoded events and a table of ticket results, laid out at
//! server start from `allsource.queue_size`, `allsource.ingest_workers` and
//! `allsource.ticket_results`. Also what `stats()` reads of it.

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

/// A lane group's states. Only a `SERVING` group's lanes are read by
/// anyone but its claimer.
pub(crate) const FREE: u32 = 0;
pub(crate) const SERVING: u32 = 1;
/// Its database is being dropped: nothing is started for it.
pub(crate) const PAUSED: u32 = 2;

/// The header of one database's lane group.
#[repr(C, align(64))]
pub(crate) struct QueueHeader {
    pub(crate) state: AtomicU32,
    /// The OID of the database the group serves (0 while free).
    pub(crate) database: AtomicU32,
    /// The pid of the database's publisher, which claimed the group.
    pub(crate) publisher: AtomicI32,
    /// The backend that paused the group (its DROP DATABASE).
    pub(crate) paused_by: AtomicI32,
    /// Where this group's ticket numbers start, set when it is claimed.
    ticket_base: AtomicI64,
    pub(crate) lanes: u32,
    pub(crate) slots_per_lane: u64,
    pub(crate) cells_per_lane: u64,
    /// The pids of the database's subscription workers (0: none started yet).
    pub(crate) subscribers: [AtomicI32; crate::settings::MAX_SUBSCRIPTION_WORKERS as usize],
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

/// One group's shared memory: a header, the lanes, then each lane's slots
/// and cells; `allsource.max_databases` groups one after the other.
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

    fn group_bytes(&self) -> usize {
        self.lane_data_offset(self.lanes).next_multiple_of(64)
    }

    fn total(&self) -> usize {
        settings::MAX_DATABASES.get() as usize * self.group_bytes()
    }
}

static QUEUE_BASE: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
/// Groups and the bytes of each, as laid out at startup.
static mut GROUPS: u32 = 0;
static mut GROUP_BYTES: usize = 0;
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
        let layout = Layout::from_settings();
        GROUPS = settings::MAX_DATABASES.get() as u32;
        GROUP_BYTES = layout.group_bytes();
        if !found {
            for group in 0..GROUPS {
                initialize_header(base.add(group as usize * GROUP_BYTES), &layout);
            }
        }
        QUEUE_BASE.store(base, Ordering::SeqCst);
        pg_sys::LWLockRelease(init_lock);
    }
}

/// Writes a free group's header at `base`; its lanes are written when a
/// database claims it, so an unused group's pages are never touched.
///
/// # Safety
/// `base` points to `layout.group_bytes()` writable bytes, 64-byte aligned.
unsafe fn initialize_header(base: *mut u8, layout: &Layout) {
    // SAFETY: as the caller promises.
    unsafe {
        (base as *mut QueueHeader).write(QueueHeader {
            state: AtomicU32::new(FREE),
            database: AtomicU32::new(0),
            publisher: AtomicI32::new(0),
            paused_by: AtomicI32::new(0),
            ticket_base: AtomicI64::new(0),
            lanes: layout.lanes,
            slots_per_lane: layout.slots_per_lane,
            cells_per_lane: layout.cells_per_lane,
            subscribers: std::array::from_fn(|_| AtomicI32::new(0)),
        });
    }
}

/// Writes empty lanes into the group at `base`.
///
/// # Safety
/// `base` is a group initialized by [`initialize_header`] that no other
/// process reads or writes beyond its header's atomics: free, and claimed
/// by the caller under the claim lock.
unsafe fn initialize_lanes(base: *mut u8, layout: &Layout) {
    // SAFETY: every write is at an offset of `layout` inside its
    // group_bytes(), as the caller promises, and each offset is a multiple
    // of 64, the largest alignment of the types written.
    unsafe {
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

/// Serialises claiming and freeing groups across the server.
struct ClaimLock(*mut pg_sys::LWLock);

impl ClaimLock {
    fn take() -> ClaimLock {
        // SAFETY: AddinShmemInitLock (MainLWLockArray[21], as pgrx locks it),
        // otherwise only held briefly while shared memory is created; an
        // error while holding it releases it (LWLockReleaseAll).
        unsafe {
            let lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
            pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
            ClaimLock(lock)
        }
    }
}

impl Drop for ClaimLock {
    fn drop(&mut self) {
        // SAFETY: the lock taken in `take`, held by this process.
        unsafe { pg_sys::LWLockRelease(self.0) };
    }
}

/// What [`Queue::claim`] found.
pub(crate) enum Claim {
    Mine(Queue),
    /// Another publisher runs for the database, or it is being dropped.
    Taken,
    /// Every group serves another database.
    Full,
}

/// A view of one database's lane group.
#[derive(Clone, Copy)]
pub(crate) struct Queue {
    base: *mut u8,
    group: u32,
}

impl Queue {
    /// Group `group`, when preloaded.
    pub(crate) fn group(group: u32) -> Option<Queue> {
        let base = QUEUE_BASE.load(Ordering::SeqCst);
        // SAFETY: written once at startup, before QUEUE_BASE.
        let (groups, bytes) = unsafe { (GROUPS, GROUP_BYTES) };
        (!base.is_null() && group < groups).then(|| Queue {
            // SAFETY: inside the segment: groups × bytes were reserved.
            base: unsafe { base.add(group as usize * bytes) },
            group,
        })
    }

    /// Every group, when preloaded.
    pub(crate) fn groups() -> impl Iterator<Item = Queue> {
        (0..).map_while(Queue::group)
    }

    /// The group serving `database`, if one does.
    pub(crate) fn of_database(database: pg_sys::Oid) -> Option<Queue> {
        Queue::groups().find(|q| q.serves(database))
    }

    /// Whether this group serves `database` now.
    pub(crate) fn serves(&self, database: pg_sys::Oid) -> bool {
        // State first: a group's database is set before it starts serving.
        self.state() == SERVING && self.database() == database
    }

    pub(crate) fn number(&self) -> u32 {
        self.group
    }

    pub(crate) fn state(&self) -> u32 {
        self.header().state.load(Ordering::SeqCst)
    }

    pub(crate) fn database(&self) -> pg_sys::Oid {
        pg_sys::Oid::from(self.header().database.load(Ordering::SeqCst))
    }

    /// Claims a group for `database`'s publisher `pid` (0: for a backend of
    /// it, which found none serving it): the one already serving it (for a
    /// publisher, if the one before it died), or a free one, emptied.
    pub(crate) fn claim(database: pg_sys::Oid, pid: i32) -> Claim {
        let _lock = ClaimLock::take();
        if let Some(mine) = Queue::groups().find(|q| q.state() != FREE && q.database() == database)
        {
            let publisher = mine.header().publisher.load(Ordering::SeqCst);
            if mine.state() != SERVING || (pid != 0 && backend::is_running(publisher)) {
                return Claim::Taken;
            }
            if pid != 0 {
                mine.header().publisher.store(pid, Ordering::SeqCst);
            }
            return Claim::Mine(mine);
        }
        let Some(free) = Queue::groups().find(|q| q.state() == FREE) else {
            return Claim::Full;
        };
        let header = free.header();
        // SAFETY: a free group, which nobody reads beyond its header's
        // atomics, and only we claim it, under the lock.
        unsafe { initialize_lanes(free.base, &free.layout()) };
        // Ticket numbers of group g are g modulo the number of groups, and
        // start above every earlier claim's (they come from the clock).
        let groups = i64::from(Queue::groups().count() as u32);
        let clock = Tickets::starting_at(
            allsource_core::checksum::unix_micros_from_postgres(backend::clock_timestamp()),
            1,
        )
        .base
        .max(header.ticket_base.load(Ordering::SeqCst) + 1);
        header
            .ticket_base
            .store(clock + (groups - clock % groups) % groups, Ordering::SeqCst);
        header.database.store(database.to_u32(), Ordering::SeqCst);
        header.publisher.store(pid, Ordering::SeqCst);
        header.state.store(SERVING, Ordering::SeqCst);
        Claim::Mine(free)
    }

    /// Stops serving while this backend drops the database: the launcher
    /// starts nothing for a paused group. False if it was not serving.
    pub(crate) fn pause(&self) -> bool {
        let paused = self
            .header()
            .state
            .compare_exchange(SERVING, PAUSED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if paused {
            self.header()
                .paused_by
                .store(backend::process_id(), Ordering::SeqCst);
        }
        paused
    }

    /// Serves again after [`pause`](Self::pause) (the DROP DATABASE failed).
    pub(crate) fn resume(&self) {
        let _ = self.header().state.compare_exchange(
            PAUSED,
            SERVING,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// Serves again if the backend that paused the group is gone while its
    /// database still exists (it died in the middle of its DROP DATABASE).
    pub(crate) fn resume_if_abandoned(&self) {
        if !backend::is_running(self.header().paused_by.load(Ordering::SeqCst)) {
            self.resume();
        }
    }

    /// Frees the group if its database is `database` and none of its workers runs.
    pub(crate) fn free_if_idle(&self, database: pg_sys::Oid) -> bool {
        let _lock = ClaimLock::take();
        if self.state() == FREE
            || self.database() != database
            || self.workers().any(backend::is_running)
        {
            return false;
        }
        self.header().state.store(FREE, Ordering::SeqCst);
        self.header().database.store(0, Ordering::SeqCst);
        true
    }

    /// The pids recorded for the group's publisher and lane workers (0: none).
    pub(crate) fn workers(self) -> impl Iterator<Item = i32> {
        let header = self.header();
        std::iter::once(header.publisher.load(Ordering::SeqCst))
            .chain(
                self.lanes()
                    .map(|(_, lane)| lane.worker_pid.load(Ordering::SeqCst)),
            )
            .chain(
                header
                    .subscribers
                    .iter()
                    .map(|pid| pid.load(Ordering::SeqCst)),
            )
    }

    /// The ticket of the entry at `position` of `lane`.
    pub(crate) fn ticket(&self, lane: u32, position: u64) -> i64 {
        self.tickets().ticket(TicketPlace {
            lane: lane * self.group_count() + self.group,
            position,
        })
    }

    /// Where a ticket of this group lives; `None` for another group's, or
    /// one of an earlier claim or run.
    pub(crate) fn place(&self, ticket: i64) -> Option<TicketPlace> {
        let place = self.tickets().place(ticket)?;
        (place.lane % self.group_count() == self.group).then(|| TicketPlace {
            lane: place.lane / self.group_count(),
            position: place.position,
        })
    }

    /// Lane `l` of group `g` is lane `l × groups + g` of the server's tickets.
    fn tickets(&self) -> Tickets {
        Tickets {
            base: self.header().ticket_base.load(Ordering::SeqCst),
            lanes: self.header().lanes * self.group_count(),
        }
    }

    fn group_count(&self) -> u32 {
        // SAFETY: written once at startup.
        unsafe { GROUPS }
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

    pub(crate) fn lanes(self) -> impl Iterator<Item = (u32, &'static Lane)> {
        (0..self.header().lanes).map(move |l| (l, self.lane(l)))
    }

    pub(crate) fn lane_of(&self, stream_id: &str) -> u32 {
        (stable_hash(stream_id) % u64::from(self.header().lanes)) as u32
    }
}

/// Events queued and not yet taken by a worker.
pub fn queued_events() -> u64 {
    Queue::groups()
        .filter(|q| q.state() == SERVING)
        .flat_map(|q| q.lanes())
        .map(|(_, lane)| lane.queued.load(Ordering::Relaxed).max(0) as u64)
        .sum()
}

/// Workers running now.
pub fn workers_running() -> u32 {
    Queue::groups()
        .filter(|q| q.state() == SERVING)
        .flat_map(|q| q.lanes())
        .filter(|(_, lane)| lane.worker.load(Ordering::SeqCst) != 0)
        .count() as u32
}
