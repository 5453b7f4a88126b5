//! The ingest queue's pure parts: how a queued event is encoded in the ring,
//! how tickets are numbered, and the per-ticket result cell that workers
//! publish and `await_ticket` reads.

use crate::batch::NewEvent;
use crate::error::SqlState;
use crate::validate::ExpectedVersion;
use std::sync::atomic::{fence, AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};
use uuid::Uuid;

/// An event waiting in the queue: one `enqueue` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEvent {
    pub stream_id: String,
    pub expected: ExpectedVersion,
    pub event: NewEvent,
    /// The enqueuing session's `allsource.tenant`, which the append records.
    pub tenant: Option<String>,
    /// When `enqueue` accepted it (PostgreSQL timestamp, µs), for latency.
    pub enqueued_at: i64,
}

/// Fixed bytes before the variable-length fields.
const FIXED: usize = 8 + 1 + 8 + 1 + 16 + 2 + 2 + 2 + 4 + 4;

impl QueuedEvent {
    /// The bytes the ring stores.
    pub fn encode(&self) -> Vec<u8> {
        let e = &self.event;
        let metadata = e.metadata.as_deref().unwrap_or("");
        let tenant = self.tenant.as_deref().unwrap_or("");
        let mut out = Vec::with_capacity(
            FIXED
                + self.stream_id.len()
                + e.event_type.len()
                + tenant.len()
                + e.payload.len()
                + metadata.len(),
        );
        out.extend_from_slice(&self.enqueued_at.to_le_bytes());
        let (kind, version) = match self.expected {
            ExpectedVersion::Any => (0u8, 0i64),
            ExpectedVersion::NoStream => (1, 0),
            ExpectedVersion::StreamExists => (2, 0),
            ExpectedVersion::Exactly(n) => (3, n),
        };
        out.push(kind);
        out.extend_from_slice(&version.to_le_bytes());
        out.push(
            u8::from(e.event_id.is_some())
                | (u8::from(e.metadata.is_some()) << 1)
                | (u8::from(self.tenant.is_some()) << 2),
        );
        out.extend_from_slice(e.event_id.unwrap_or_default().as_bytes());
        out.extend_from_slice(&(self.stream_id.len() as u16).to_le_bytes());
        out.extend_from_slice(&(e.event_type.len() as u16).to_le_bytes());
        out.extend_from_slice(&(tenant.len() as u16).to_le_bytes());
        out.extend_from_slice(&(e.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&(metadata.len() as u32).to_le_bytes());
        out.extend_from_slice(self.stream_id.as_bytes());
        out.extend_from_slice(e.event_type.as_bytes());
        out.extend_from_slice(tenant.as_bytes());
        out.extend_from_slice(e.payload.as_bytes());
        out.extend_from_slice(metadata.as_bytes());
        out
    }

    /// Reads what [`encode`](Self::encode) wrote; `None` if the bytes are not such an entry.
    pub fn decode(bytes: &[u8]) -> Option<QueuedEvent> {
        let mut reader = Reader { bytes };
        let enqueued_at = i64::from_le_bytes(reader.array()?);
        let kind = reader.take(1)?[0];
        let version = i64::from_le_bytes(reader.array()?);
        let expected = match kind {
            0 => ExpectedVersion::Any,
            1 => ExpectedVersion::NoStream,
            2 => ExpectedVersion::StreamExists,
            3 => ExpectedVersion::Exactly(version),
            _ => return None,
        };
        let flags = reader.take(1)?[0];
        let event_id = Uuid::from_bytes(reader.array()?);
        let stream_len = u16::from_le_bytes(reader.array()?) as usize;
        let type_len = u16::from_le_bytes(reader.array()?) as usize;
        let tenant_len = u16::from_le_bytes(reader.array()?) as usize;
        let payload_len = u32::from_le_bytes(reader.array()?) as usize;
        let metadata_len = u32::from_le_bytes(reader.array()?) as usize;
        let stream_id = reader.text(stream_len)?;
        let event_type = reader.text(type_len)?;
        let tenant = reader.text(tenant_len)?;
        let payload = reader.text(payload_len)?;
        let metadata = reader.text(metadata_len)?;
        if !reader.bytes.is_empty() {
            return None;
        }
        Some(QueuedEvent {
            stream_id,
            expected,
            tenant: (flags & 4 != 0).then_some(tenant),
            enqueued_at,
            event: NewEvent {
                event_type,
                event_id: (flags & 1 != 0).then_some(event_id),
                payload,
                metadata: (flags & 2 != 0).then_some(metadata),
                tags: Vec::new(),
            },
        })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn text(&mut self, n: usize) -> Option<String> {
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

/// Ticket numbers: `base + position × lanes + lane`, where `position` is the
/// entry's ring position in its lane. `base` comes from the clock when
/// shared memory is created, so tickets keep growing across restarts and a
/// ticket below `base` is from an earlier run of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tickets {
    pub base: i64,
    pub lanes: u32,
}

/// Where a ticket's entry lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketPlace {
    pub lane: u32,
    pub position: u64,
}

impl Tickets {
    /// Tickets of a server whose shared memory was created at `unix_micros`:
    /// room for 1,024 tickets per microsecond before they could reach the
    /// next run's.
    pub fn starting_at(unix_micros: i64, lanes: u32) -> Self {
        Tickets {
            base: unix_micros.saturating_mul(1024),
            lanes: lanes.max(1),
        }
    }

    pub fn ticket(&self, place: TicketPlace) -> i64 {
        self.base + (place.position * u64::from(self.lanes) + u64::from(place.lane)) as i64
    }

    /// The place of a ticket of this run; `None` for one of an earlier run.
    pub fn place(&self, ticket: i64) -> Option<TicketPlace> {
        let offset = u64::try_from(ticket.checked_sub(self.base)?).ok()?;
        Some(TicketPlace {
            lane: (offset % u64::from(self.lanes)) as u32,
            position: offset / u64::from(self.lanes),
        })
    }
}

/// What became of a ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// In the queue or being appended.
    Pending,
    /// Appended and committed (or an idempotent repeat of a committed event).
    Committed { version: i64, position: i64 },
    /// The stream was not at the expected version; `actual` is its version.
    Conflict { actual: i64 },
    /// Refused for another reason, with the SQLSTATE it would have raised.
    Rejected { sqlstate: SqlState },
}

impl Status {
    pub fn name(&self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Committed { .. } => "committed",
            Status::Conflict { .. } => "conflict",
            Status::Rejected { .. } => "rejected",
        }
    }
}

const QUEUED: u32 = 1;
/// Written by a worker whose transaction may or may not have committed.
const STAGED: u32 = 2;
const COMMITTED: u32 = 3;
const CONFLICT: u32 = 4;
const REJECTED: u32 = 5;

/// A tenant as a ticket's result cell records it: 0 for none. A hash, so a
/// cell stays small; a collision needs two tenants whose names the same
/// party chose, which per-request tenants can set at will anyway.
pub fn tenant_tag(tenant: Option<&str>) -> u64 {
    tenant.map_or(0, |t| crate::partition::stable_hash(t) | 1)
}

/// One ticket's result, in shared memory. A waiter registers its latch
/// owner in `waiter` and then checks `state`; a worker sets `state` and then
/// wakes `waiter`: sequentially consistent on both sides, so a wake-up is
/// never lost.
///
/// A cell is reused by a later ticket, so [`lookup`](Self::lookup) reads it
/// like a seqlock with `ticket` as the sequence: ticket, state and result,
/// then the ticket again. The result fields are stored with `Release` and
/// read before an `Acquire` fence, so a reader that saw a later ticket's
/// result also sees that ticket in its second read (that ticket was stored
/// before its event was queued, so before its result). Without the fence
/// the result loads may be performed after the second ticket load, which
/// x86 never does and ARM does.
#[repr(C)]
pub struct ResultCell {
    // 40 bytes: a server keeps hundreds of thousands of these.
    ticket: AtomicI64,
    /// [`tenant_tag`] of the tenant that enqueued it: only that tenant
    /// may ask for the result.
    tenant: AtomicU64,
    /// Version (committed) or actual version (conflict).
    version: AtomicI64,
    /// Position (committed) or packed SQLSTATE (rejected).
    detail: AtomicI64,
    state: AtomicU32,
    /// `pgprocno + 1` of a backend waiting on this ticket, 0 for none.
    waiter: AtomicI32,
}

const _: () = assert!(std::mem::size_of::<ResultCell>() == 40);

/// What a cell says about a given ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Found(Status),
    /// The cell was reused by a later ticket: this one's result is gone.
    Expired,
    /// No such ticket was issued yet.
    Unknown,
}

impl Default for ResultCell {
    fn default() -> Self {
        ResultCell {
            ticket: AtomicI64::new(0),
            tenant: AtomicU64::new(0),
            state: AtomicU32::new(0),
            waiter: AtomicI32::new(0),
            version: AtomicI64::new(0),
            detail: AtomicI64::new(0),
        }
    }
}

impl ResultCell {
    /// Makes the cell `ticket`'s, pending. Called by the producer before
    /// it publishes the entry, so a consumer always finds it.
    pub fn open(&self, ticket: i64, tenant: u64) {
        self.tenant.store(tenant, Ordering::SeqCst);
        self.state.store(QUEUED, Ordering::SeqCst);
        self.waiter.store(0, Ordering::SeqCst);
        self.ticket.store(ticket, Ordering::SeqCst);
    }

    pub fn ticket(&self) -> i64 {
        self.ticket.load(Ordering::SeqCst)
    }

    /// The [`tenant_tag`] of the ticket's tenant.
    pub fn tenant(&self) -> u64 {
        self.tenant.load(Ordering::SeqCst)
    }

    /// Records a result that becomes true only if the worker's transaction
    /// commits: readers still see it pending until [`commit`](Self::commit).
    pub fn stage(&self, version: i64, position: i64) {
        self.version.store(version, Ordering::Release);
        self.detail.store(position, Ordering::Release);
        self.state.store(STAGED, Ordering::SeqCst);
    }

    /// Takes back a staged result whose transaction did not commit.
    pub fn unstage(&self) {
        let _ = self
            .state
            .compare_exchange(STAGED, QUEUED, Ordering::SeqCst, Ordering::SeqCst);
    }

    pub fn is_staged(&self) -> bool {
        self.state.load(Ordering::SeqCst) == STAGED
    }

    /// The staged result is durable. Returns the waiter to wake, if any.
    pub fn commit(&self) -> Option<i32> {
        self.finish(COMMITTED)
    }

    /// Publishes a final result; returns the waiter to wake, if any.
    pub fn publish(&self, status: Status) -> Option<i32> {
        let state = match status {
            Status::Pending => unreachable!("a published result is final"),
            Status::Committed { version, position } => {
                self.version.store(version, Ordering::Release);
                self.detail.store(position, Ordering::Release);
                COMMITTED
            }
            Status::Conflict { actual } => {
                self.version.store(actual, Ordering::Release);
                CONFLICT
            }
            Status::Rejected { sqlstate } => {
                let mut packed = [0u8; 8];
                packed[..5].copy_from_slice(sqlstate.as_bytes());
                self.detail
                    .store(i64::from_le_bytes(packed), Ordering::Release);
                REJECTED
            }
        };
        self.finish(state)
    }

    fn finish(&self, state: u32) -> Option<i32> {
        self.state.store(state, Ordering::SeqCst);
        match self.waiter.load(Ordering::SeqCst) {
            0 => None,
            w => Some(w - 1),
        }
    }

    /// The status of `ticket` as this cell knows it.
    pub fn lookup(&self, ticket: i64) -> Lookup {
        let holder = self.ticket.load(Ordering::SeqCst);
        if holder > ticket {
            return Lookup::Expired;
        }
        if holder < ticket {
            return Lookup::Unknown;
        }
        let status = match self.state.load(Ordering::SeqCst) {
            COMMITTED => Status::Committed {
                version: self.version.load(Ordering::Relaxed),
                position: self.detail.load(Ordering::Relaxed),
            },
            CONFLICT => Status::Conflict {
                actual: self.version.load(Ordering::Relaxed),
            },
            REJECTED => {
                let packed = self.detail.load(Ordering::Relaxed).to_le_bytes();
                Status::Rejected {
                    sqlstate: SqlState::new(packed[..5].try_into().expect("five bytes")),
                }
            }
            _ => Status::Pending,
        };
        // A cell reused while we read it shows a later ticket now; the fence
        // keeps the loads above from being performed after this one.
        fence(Ordering::Acquire);
        if self.ticket.load(Ordering::SeqCst) != ticket {
            return Lookup::Expired;
        }
        Lookup::Found(status)
    }

    /// Registers `pgprocno` to be woken when the result arrives. Only one
    /// waiter is registered; returns false if another one already is.
    pub fn register_waiter(&self, pgprocno: i32) -> bool {
        let me = pgprocno + 1;
        match self
            .waiter
            .compare_exchange(0, me, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => true,
            Err(current) => current == me,
        }
    }

    pub fn unregister_waiter(&self, pgprocno: i32) {
        let _ = self
            .waiter
            .compare_exchange(pgprocno + 1, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::sqlstate;

    fn queued(expected: ExpectedVersion, id: Option<u128>, metadata: Option<&str>) -> QueuedEvent {
        QueuedEvent {
            stream_id: "order-é".into(),
            expected,
            tenant: metadata.map(|_| "acme".into()),
            enqueued_at: 123_456,
            event: NewEvent {
                event_type: "Placed".into(),
                event_id: id.map(Uuid::from_u128),
                payload: r#"{"total": 5}"#.into(),
                metadata: metadata.map(String::from),
                tags: Vec::new(),
            },
        }
    }

    #[test]
    fn entries_round_trip() {
        for expected in [
            ExpectedVersion::Any,
            ExpectedVersion::NoStream,
            ExpectedVersion::StreamExists,
            ExpectedVersion::Exactly(42),
        ] {
            for id in [None, Some(7)] {
                for metadata in [None, Some(""), Some(r#"{"by": "me"}"#)] {
                    let event = queued(expected, id, metadata);
                    assert_eq!(QueuedEvent::decode(&event.encode()), Some(event));
                }
            }
        }
    }

    #[test]
    fn damaged_entries_do_not_decode() {
        let bytes = queued(ExpectedVersion::Any, Some(1), None).encode();
        for cut in 0..bytes.len() {
            assert_eq!(QueuedEvent::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(QueuedEvent::decode(&longer), None);
    }

    #[test]
    fn tickets_map_to_places_and_back() {
        let tickets = Tickets::starting_at(1_790_000_000_000_000, 3);
        for lane in 0..3 {
            for position in [0, 1, 999, u64::from(u32::MAX) * 5] {
                let place = TicketPlace { lane, position };
                assert_eq!(tickets.place(tickets.ticket(place)), Some(place));
            }
        }
        assert_eq!(tickets.place(tickets.base - 1), None);
        let later = Tickets::starting_at(1_790_000_000_000_001, 3);
        assert!(
            later.base
                > tickets.ticket(TicketPlace {
                    lane: 2,
                    position: 300
                })
        );
    }

    /// A writer reuses one cell for ticket after ticket while readers look
    /// tickets up: a result found is always its own ticket's, never the next
    /// one's. This is the seqlock `lookup` relies on; it needs the acquire
    /// fence before the second ticket read, without which a weakly ordered
    /// CPU (ARM) may pair one ticket with the next one's result. x86 keeps
    /// loads in order, so there this test passes with or without the fence.
    #[test]
    fn a_reused_cell_never_shows_another_tickets_result() {
        const TICKETS: i64 = 200_000;
        let cell = ResultCell::default();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    while !done.load(Ordering::SeqCst) {
                        let latest = cell.ticket();
                        for ticket in [latest, latest - 1, latest + 1] {
                            match cell.lookup(ticket) {
                                Lookup::Found(Status::Committed { version, position }) => {
                                    assert_eq!((version, position), (ticket, -ticket));
                                }
                                Lookup::Found(Status::Pending)
                                | Lookup::Expired
                                | Lookup::Unknown => {}
                                other => panic!("ticket {ticket}: {other:?}"),
                            }
                        }
                    }
                });
            }
            for ticket in 1..=TICKETS {
                cell.open(ticket, 0);
                cell.publish(Status::Committed {
                    version: ticket,
                    position: -ticket,
                });
            }
            done.store(true, Ordering::SeqCst);
        });
        assert_eq!(cell.lookup(TICKETS - 1), Lookup::Expired);
    }

    #[test]
    fn a_result_goes_from_pending_to_final() {
        let cell = ResultCell::default();
        assert_eq!(cell.lookup(5), Lookup::Unknown);
        cell.open(5, 0);
        assert_eq!(cell.lookup(5), Lookup::Found(Status::Pending));
        assert!(cell.register_waiter(9));
        assert!(!cell.register_waiter(10), "one waiter at a time");
        cell.stage(1, 70);
        cell.unstage();
        assert!(!cell.is_staged(), "a failed commit takes its result back");
        cell.stage(3, 77);
        assert_eq!(cell.lookup(5), Lookup::Found(Status::Pending));
        assert_eq!(cell.commit(), Some(9));
        cell.unstage();
        assert!(
            matches!(cell.lookup(5), Lookup::Found(Status::Committed { .. })),
            "a committed result stays"
        );
        assert_eq!(
            cell.lookup(5),
            Lookup::Found(Status::Committed {
                version: 3,
                position: 77
            })
        );
        cell.open(6, 0);
        assert_eq!(cell.lookup(5), Lookup::Expired);
        assert_eq!(cell.publish(Status::Conflict { actual: 4 }), None);
        assert_eq!(
            cell.lookup(6),
            Lookup::Found(Status::Conflict { actual: 4 })
        );
        cell.open(7, 0);
        cell.publish(Status::Rejected {
            sqlstate: sqlstate::EVENT_ID_REUSED,
        });
        assert_eq!(
            cell.lookup(7),
            Lookup::Found(Status::Rejected {
                sqlstate: sqlstate::EVENT_ID_REUSED
            })
        );
    }
}
