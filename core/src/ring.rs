//! A bounded lock-free MPMC queue of variable-length byte entries over one
//! flat, pointer-free block of memory, so that it works in PostgreSQL shared
//! memory across forked processes (a queue on the Rust heap, crossbeam's
//! `ArrayQueue` included, is invisible to other backends).
//!
//! The algorithm is Dmitry Vyukov's bounded MPMC queue, the one behind
//! `ArrayQueue`: every slot carries a sequence number saying whose turn it
//! is, producers claim positions with a CAS on `tail`, consumers with a CAS
//! on `head`. One extension: an entry may span several consecutive slots. A
//! producer claims `span` positions at once after checking that each of
//! those slots is free for this lap; a consumer claims them all by moving
//! `head` past the span written in the entry's first slot.
//!
//! Taking and freeing are separate steps ([`Ring::take`], then
//! [`Ring::release`]): a consumer keeps the entry's bytes in place until it
//! no longer needs them, so a crashed consumer's entries can be read again.
//!
//! Positions are 64-bit and never wrap in practice (a million entries a
//! second for half a million years).

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Size of one slot in bytes, header included.
pub const SLOT_BYTES: usize = 256;
/// Bytes of entry data one slot carries.
pub const SLOT_DATA: usize = SLOT_BYTES - 16;

/// One slot. `seq == position` means free for the producer of `position`;
/// `seq == position + 1` means written and ready for its consumer.
#[repr(C, align(64))]
pub struct Slot {
    seq: AtomicU64,
    /// In an entry's first slot: how many slots the entry spans.
    span: AtomicU32,
    /// In an entry's first slot: the entry's length in bytes.
    len: AtomicU32,
    data: UnsafeCell<[u8; SLOT_DATA]>,
}

const _: () = assert!(std::mem::size_of::<Slot>() == SLOT_BYTES);

/// Head and tail, each on its own cache line.
#[repr(C, align(64))]
pub struct Cursor {
    value: AtomicU64,
    _pad: [u8; 56],
}

/// The ring's counters; its slots live next to it (see [`Ring::new`]).
#[repr(C)]
pub struct RingHeader {
    tail: Cursor,
    head: Cursor,
}

/// Why a push did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// Not enough free slots right now.
    Full,
    /// The entry needs more slots than the ring has.
    TooLarge {
        slots_needed: usize,
        capacity: usize,
    },
}

/// An entry a consumer took: its first position and its length in slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    // Private: only the ring hands these out, so `read` and `release` are
    // only ever given entries a consumer took.
    position: u64,
    span: u32,
}

impl Taken {
    /// The entry's first position in the ring.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// How many slots the entry spans.
    pub fn span(&self) -> u32 {
        self.span
    }
}

/// A view of a ring: its header and its slots.
pub struct Ring<'a> {
    header: &'a RingHeader,
    slots: &'a [Slot],
}

// SAFETY: all shared state is atomic; slot data is written only by the
// producer that claimed the slot and read only by the consumer that took it,
// with the slot's sequence number ordering the two (release/acquire).
unsafe impl Sync for Ring<'_> {}
// SAFETY: a Ring holds only shared references: sending one shares them,
// which is sound for the reason above.
unsafe impl Send for Ring<'_> {}

/// Slots an entry of `len` bytes occupies (at least one).
pub fn slots_for(len: usize) -> usize {
    len.div_ceil(SLOT_DATA).max(1)
}

impl RingHeader {
    pub fn new() -> Self {
        RingHeader {
            tail: Cursor::new(),
            head: Cursor::new(),
        }
    }
}

impl Default for RingHeader {
    fn default() -> Self {
        Self::new()
    }
}

impl Cursor {
    fn new() -> Self {
        Cursor {
            value: AtomicU64::new(0),
            _pad: [0; 56],
        }
    }
}

impl Slot {
    /// Slot `index` of a fresh ring.
    pub fn new(index: usize) -> Self {
        Slot {
            seq: AtomicU64::new(index as u64),
            span: AtomicU32::new(0),
            len: AtomicU32::new(0),
            data: UnsafeCell::new([0; SLOT_DATA]),
        }
    }
}

/// `a - b` as a signed distance between positions.
fn distance(a: u64, b: u64) -> i64 {
    a.wrapping_sub(b) as i64
}

impl<'a> Ring<'a> {
    /// A ring over `slots`, which must have been made by [`Slot::new`] with
    /// their indexes (or have been used only by this ring since).
    pub fn new(header: &'a RingHeader, slots: &'a [Slot]) -> Self {
        // With one slot, "released for the next lap" and "ready" would be the same number.
        assert!(slots.len() >= 2, "a ring needs at least two slots");
        Ring { header, slots }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    fn slot(&self, position: u64) -> &Slot {
        &self.slots[(position % self.slots.len() as u64) as usize]
    }

    /// Slots claimed by producers and not yet taken by consumers.
    pub fn depth(&self) -> u64 {
        let head = self.header.head.value.load(Ordering::SeqCst);
        let tail = self.header.tail.value.load(Ordering::SeqCst);
        tail.saturating_sub(head)
    }

    /// Whether nothing is queued: every claimed position was also taken.
    pub fn is_empty(&self) -> bool {
        self.depth() == 0
    }

    /// Copies `bytes` into the ring as one entry; returns its position.
    /// One CAS on `tail` claims all its slots; no lock is taken.
    pub fn push(&self, bytes: &[u8]) -> Result<u64, PushError> {
        self.push_with(bytes, |_| {})
    }

    /// [`push`](Self::push), calling `before_publish` with the entry's
    /// position after the slots are claimed and before any consumer can
    /// take the entry.
    pub fn push_with(
        &self,
        bytes: &[u8],
        before_publish: impl FnOnce(u64),
    ) -> Result<u64, PushError> {
        let span = slots_for(bytes.len());
        if span > self.capacity() {
            return Err(PushError::TooLarge {
                slots_needed: span,
                capacity: self.capacity(),
            });
        }
        let tail = &self.header.tail.value;
        let mut position = tail.load(Ordering::Relaxed);
        'claim: loop {
            for offset in 0..span as u64 {
                let seq = self.slot(position + offset).seq.load(Ordering::Acquire);
                match distance(seq, position + offset) {
                    0 => {}
                    // The previous lap's entry there is not released yet.
                    d if d < 0 => return Err(PushError::Full),
                    // Another producer got further: start again from the new tail.
                    _ => {
                        position = tail.load(Ordering::Relaxed);
                        continue 'claim;
                    }
                }
            }
            match tail.compare_exchange_weak(
                position,
                position + span as u64,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(current) => position = current,
            }
        }
        // The slots are ours alone until we publish them.
        for (index, chunk) in bytes.chunks(SLOT_DATA).enumerate() {
            let slot = self.slot(position + index as u64);
            // SAFETY: we claimed this slot; no one else reads or writes its data now.
            unsafe { (&mut *slot.data.get())[..chunk.len()].copy_from_slice(chunk) };
        }
        let first = self.slot(position);
        first.span.store(span as u32, Ordering::Relaxed);
        first.len.store(bytes.len() as u32, Ordering::Relaxed);
        for offset in 1..span as u64 {
            let p = position + offset;
            self.slot(p).seq.store(p + 1, Ordering::Release);
        }
        before_publish(position);
        // Publishing the first slot last makes the whole entry visible at once.
        first.seq.store(position + 1, Ordering::SeqCst);
        Ok(position)
    }

    /// Claims the oldest ready entry. `None` when the ring is empty or its
    /// oldest entry is still being written.
    pub fn take(&self) -> Option<Taken> {
        let head = &self.header.head.value;
        let mut position = head.load(Ordering::Relaxed);
        loop {
            let slot = self.slot(position);
            let seq = slot.seq.load(Ordering::Acquire);
            match distance(seq, position + 1) {
                0 => {
                    let span = slot.span.load(Ordering::Relaxed);
                    match head.compare_exchange_weak(
                        position,
                        position + u64::from(span),
                        Ordering::SeqCst,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => return Some(Taken { position, span }),
                        Err(current) => position = current,
                    }
                }
                d if d < 0 => return None,
                _ => position = head.load(Ordering::Relaxed),
            }
        }
    }

    /// The bytes of an entry taken and not yet released, appended to `out`.
    pub fn read(&self, taken: Taken, out: &mut Vec<u8>) {
        let len = self.slot(taken.position).len.load(Ordering::Relaxed) as usize;
        let mut left = len;
        for offset in 0..u64::from(taken.span) {
            let slot = self.slot(taken.position + offset);
            let n = left.min(SLOT_DATA);
            // SAFETY: the entry is taken and not released: its slots stay as
            // the producer published them.
            out.extend_from_slice(unsafe { &(&*slot.data.get())[..n] });
            left -= n;
        }
    }

    /// The entry at `position`, if it was taken and not released: what a
    /// consumer that replaces a crashed one reads again.
    pub fn taken_at(&self, position: u64) -> Option<Taken> {
        let slot = self.slot(position);
        (slot.seq.load(Ordering::Acquire) == position + 1
            && self.header.head.value.load(Ordering::SeqCst) > position)
            .then(|| Taken {
                position,
                span: slot.span.load(Ordering::Relaxed),
            })
    }

    /// Frees a taken entry's slots for producers of the next lap.
    pub fn release(&self, taken: Taken) {
        let lap = self.capacity() as u64;
        for offset in 0..u64::from(taken.span) {
            let p = taken.position + offset;
            self.slot(p).seq.store(p + lap, Ordering::Release);
        }
    }
}

/// A ring on the heap, for tests and benchmarks of the algorithm.
pub struct HeapRing {
    header: RingHeader,
    slots: Vec<Slot>,
}

impl HeapRing {
    pub fn new(capacity: usize) -> Self {
        HeapRing {
            header: RingHeader::new(),
            slots: (0..capacity).map(Slot::new).collect(),
        }
    }

    pub fn ring(&self) -> Ring<'_> {
        Ring::new(&self.header, &self.slots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;
    use std::sync::atomic::AtomicBool;

    fn pop(ring: &Ring) -> Option<Vec<u8>> {
        let taken = ring.take()?;
        let mut out = Vec::new();
        ring.read(taken, &mut out);
        ring.release(taken);
        Some(out)
    }

    #[test]
    fn fifo_with_entries_of_every_size() {
        let heap = HeapRing::new(8);
        let ring = heap.ring();
        assert_eq!(ring.take(), None);
        let entries: Vec<Vec<u8>> = [0, 1, SLOT_DATA, SLOT_DATA + 1, 3 * SLOT_DATA]
            .iter()
            .map(|&n| (0..n).map(|i| (i * 7 + n) as u8).collect())
            .collect();
        for round in 0..5 {
            for entry in &entries {
                ring.push(entry).unwrap();
                assert_eq!(pop(&ring).as_ref(), Some(entry), "round {round}");
            }
        }
        assert!(ring.is_empty());
    }

    #[test]
    fn full_and_too_large() {
        let heap = HeapRing::new(4);
        let ring = heap.ring();
        assert_eq!(
            ring.push(&[1; 4 * SLOT_DATA + 1]),
            Err(PushError::TooLarge {
                slots_needed: 5,
                capacity: 4
            })
        );
        ring.push(&[1; 2 * SLOT_DATA]).unwrap();
        ring.push(&[2]).unwrap();
        assert_eq!(ring.push(&[3; SLOT_DATA + 1]), Err(PushError::Full));
        ring.push(&[3]).unwrap();
        assert_eq!(ring.push(&[4]), Err(PushError::Full));
        // Taking is not enough: the slots come back when released.
        let first = ring.take().unwrap();
        assert_eq!(ring.push(&[4]), Err(PushError::Full));
        ring.release(first);
        ring.push(&[4; SLOT_DATA + 1]).unwrap();
        assert_eq!(pop(&ring), Some(vec![2]));
        assert_eq!(pop(&ring), Some(vec![3]));
        assert_eq!(pop(&ring), Some(vec![4; SLOT_DATA + 1]));
        assert_eq!(pop(&ring), None);
    }

    #[test]
    fn a_taken_entry_can_be_read_again_until_released() {
        let heap = HeapRing::new(4);
        let ring = heap.ring();
        let position = ring.push(b"keep me").unwrap();
        assert_eq!(ring.taken_at(position), None, "not taken yet");
        let taken = ring.take().unwrap();
        let again = ring.taken_at(position).unwrap();
        assert_eq!(again, taken);
        let mut out = Vec::new();
        ring.read(again, &mut out);
        assert_eq!(out, b"keep me");
        ring.release(taken);
        assert_eq!(ring.taken_at(position), None);
    }

    /// Producers and consumers on threads, entries of random sizes: every
    /// entry arrives exactly once, intact, and each producer's entries in
    /// the order it pushed them when there is one consumer. (The result
    /// cells that tickets point to are a seqlock of their own, tested the
    /// same way in `crate::ingest`: `a_reused_cell_never_shows_another_tickets_result`.)
    fn stress(producers: usize, consumers: usize, capacity: usize, per_producer: usize, seed: u64) {
        let heap = HeapRing::new(capacity);
        let ring = heap.ring();
        let done = AtomicBool::new(false);
        let received: Vec<Vec<(usize, usize)>> = std::thread::scope(|s| {
            let pushers: Vec<_> = (0..producers)
                .map(|p| {
                    let ring = &ring;
                    s.spawn(move || {
                        let mut rng = rand::rngs::StdRng::seed_from_u64(seed + p as u64);
                        for n in 0..per_producer {
                            let len = 16 + rng.gen_range(0..3 * SLOT_DATA);
                            let mut entry = vec![(n % 251) as u8; len];
                            entry[..8].copy_from_slice(&(p as u64).to_le_bytes());
                            entry[8..16].copy_from_slice(&(n as u64).to_le_bytes());
                            while ring.push(&entry).is_err() {
                                std::thread::yield_now();
                            }
                        }
                    })
                })
                .collect();
            let takers: Vec<_> = (0..consumers)
                .map(|_| {
                    let (ring, done) = (&ring, &done);
                    s.spawn(move || {
                        let mut got = Vec::new();
                        loop {
                            match pop(ring) {
                                Some(entry) => {
                                    let p = u64::from_le_bytes(entry[..8].try_into().unwrap());
                                    let n = u64::from_le_bytes(entry[8..16].try_into().unwrap());
                                    assert!(
                                        entry[16..].iter().all(|&b| b == (n % 251) as u8),
                                        "entry {p}/{n} was torn"
                                    );
                                    got.push((p as usize, n as usize));
                                }
                                None if done.load(Ordering::SeqCst) && ring.is_empty() => break,
                                None => std::thread::yield_now(),
                            }
                        }
                        got
                    })
                })
                .collect();
            for pusher in pushers {
                pusher.join().unwrap();
            }
            done.store(true, Ordering::SeqCst);
            takers.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let mut seen: HashMap<(usize, usize), usize> = HashMap::new();
        for got in &received {
            for &key in got {
                *seen.entry(key).or_default() += 1;
            }
            if consumers == 1 {
                for p in 0..producers {
                    let order: Vec<usize> = got
                        .iter()
                        .filter(|(q, _)| *q == p)
                        .map(|(_, n)| *n)
                        .collect();
                    assert!(
                        order.windows(2).all(|w| w[0] < w[1]),
                        "producer {p} out of order"
                    );
                }
            }
        }
        assert_eq!(seen.len(), producers * per_producer, "entries lost");
        assert!(seen.values().all(|&c| c == 1), "an entry arrived twice");
        assert!(ring.is_empty());
    }

    #[test]
    fn many_producers_one_consumer_keeps_each_producers_order() {
        stress(6, 1, 16, 3000, 1);
    }

    #[test]
    fn many_producers_many_consumers_lose_nothing() {
        for seed in 0..4 {
            stress(4, 3, 7, 2000, 100 * seed);
        }
    }

    #[test]
    fn a_tiny_ring_under_contention() {
        stress(3, 2, 4, 2000, 7);
    }
}
