//! The in-flight registry behind `allsource.watermark()`, as plain Rust over
//! atomics so it can be model-checked with threads; the extension's
//! `src/sql/watermark/mod.rs` puts the slots in PostgreSQL shared memory.
//!
//! The rule. A transaction that is about to take positions first publishes a
//! lower bound of them in its slot: the sequence's next value, read before
//! its first `nextval`. The slot is emptied only once the transaction's commit
//! is visible to new snapshots, or it aborted. The watermark is
//!
//! ```text
//! min(V, lowest held slot − 1)      V = the last position handed out, read first
//! ```
//!
//! Why it holds: take a position p ≤ watermark that is not visible yet. p ≤ V,
//! so p was handed out before V was read; its transaction published a bound
//! ≤ p before taking p, hence before V was read, hence before the slots were
//! scanned (the sequence's buffer lock and sequentially consistent atomics
//! order these). The scan therefore saw that slot still held unless the
//! transaction had already ended, so the watermark is < p: a contradiction.
//! A transaction that ended aborted never shows p; one that committed
//! already shows it.
//!
//! Why it never goes back. Reading the sequence and publishing the bound are
//! two steps: a bound read before another transaction took and committed the
//! next position, and published after a reader passed that position, would
//! pull the next watermark below the one just returned. So a claim is
//! published first as *pending* (no bound yet), then the sequence is read,
//! then the bound is settled by one compare-and-swap. A reader that meets a
//! pending claim of its database ignores it (its owner has taken no position
//! yet, and will take only positions above anything the reader read) and
//! turns it into *retry*, which makes the owner's swap fail: the owner reads
//! the sequence again. A settled bound is therefore above every watermark a
//! reader returned before it was settled.
//!
//! Cancelling (`allsource.max_append_transaction_ms`). Another process may
//! doom a claim that is too old: one compare-and-swap on the slot's phase,
//! which the owner's commit must win first ([`ClaimSlot::begin_commit`]) or fail.
//! A doomed transaction can therefore never commit, and the watermark
//! ignores its claim: none of its positions can become visible.

use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};

/// A slot's phase, in the low three bits of [`ClaimSlot::phase`]; the bits above
/// count the claims the slot held, so a phase is never seen twice.
const EMPTY: u64 = 0;
const PENDING: u64 = 1;
const RETRY: u64 = 2;
const HOLDING: u64 = 3;
const COMMITTING: u64 = 4;
const DOOMED: u64 = 5;
const PHASE_BITS: u64 = 7;

fn with_phase(word: u64, phase: u64) -> u64 {
    (word & !PHASE_BITS) | phase
}

/// One backend's claim: the lowest position its open transaction may commit.
/// A cache line each, so backends writing their own slots do not contend.
#[repr(C, align(64))]
#[derive(Default)]
pub struct ClaimSlot {
    /// The settled bound; meaningful only while the phase says so.
    lowest: AtomicI64,
    database: AtomicU32,
    pid: AtomicI32,
    /// When the claim was made, in PostgreSQL's microseconds since 2000-01-01.
    since: AtomicI64,
    /// The claim's number and phase: written by the owner, except that
    /// another process may turn PENDING into RETRY, or HOLDING into DOOMED.
    phase: AtomicU64,
}

/// What an occupied slot says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub lowest: i64,
    pub database: u32,
    pub pid: i32,
    pub since: i64,
}

/// A consistent look at a slot.
enum Seen {
    Nothing,
    /// Published, no bound yet: the phase word to swap.
    Pending(u64),
    /// Holding or committing: the claim counts.
    Settled(Claim),
}

impl ClaimSlot {
    /// Publishes a claim of `database` whose bound is `next_position()`, the
    /// sequence's next value, read after the claim is visible; reads it again
    /// while a reader interfered. Call on an empty slot, before taking any
    /// position. Returns the bound.
    pub fn hold(
        &self,
        database: u32,
        pid: i32,
        since: i64,
        mut next_position: impl FnMut() -> i64,
    ) -> i64 {
        loop {
            // The details first; the phase last, so a reader that sees it sees them.
            self.database.store(database, Ordering::Relaxed);
            self.pid.store(pid, Ordering::Relaxed);
            self.since.store(since, Ordering::Relaxed);
            let number = (self.phase.load(Ordering::SeqCst) & !PHASE_BITS) + PHASE_BITS + 1;
            let pending = number | PENDING;
            self.phase.store(pending, Ordering::SeqCst);
            let lowest = next_position();
            assert!(lowest > 0, "positions start at 1");
            self.lowest.store(lowest, Ordering::SeqCst);
            if self
                .phase
                .compare_exchange(
                    pending,
                    with_phase(pending, HOLDING),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
                .is_ok()
            {
                return lowest;
            }
        }
    }

    /// Empties the slot: call once the transaction's outcome is visible.
    pub fn release(&self) {
        let phase = self.phase.load(Ordering::SeqCst);
        self.phase.store(with_phase(phase, EMPTY), Ordering::SeqCst);
    }

    fn look(&self) -> Seen {
        loop {
            let before = self.phase.load(Ordering::SeqCst);
            match before & PHASE_BITS {
                PENDING => return Seen::Pending(before),
                HOLDING | COMMITTING => {
                    let claim = Claim {
                        lowest: self.lowest.load(Ordering::SeqCst),
                        database: self.database.load(Ordering::Relaxed),
                        pid: self.pid.load(Ordering::Relaxed),
                        since: self.since.load(Ordering::Relaxed),
                    };
                    // Still the same claim (a doom or commit since keeps its bound).
                    if self.phase.load(Ordering::SeqCst) & !PHASE_BITS == before & !PHASE_BITS {
                        return Seen::Settled(claim);
                    }
                }
                // Empty, retrying, or doomed: nothing of it can become visible.
                _ => return Seen::Nothing,
            }
        }
    }

    /// The claim of `database` that holds its watermark back, if any. A
    /// pending claim of `database` is sent back to read the sequence again.
    pub fn claim(&self, database: u32) -> Option<Claim> {
        loop {
            match self.look() {
                Seen::Nothing => return None,
                Seen::Settled(claim) => return (claim.database == database).then_some(claim),
                Seen::Pending(phase) => {
                    if self.database.load(Ordering::Relaxed) != database
                        || self
                            .phase
                            .compare_exchange(
                                phase,
                                with_phase(phase, RETRY),
                                Ordering::SeqCst,
                                Ordering::SeqCst,
                            )
                            .is_ok()
                    {
                        return None;
                    }
                }
            }
        }
    }

    /// The owner, before its commit: from now on the claim cannot be doomed.
    /// False if it already was: the transaction must not commit.
    pub fn begin_commit(&self) -> bool {
        let phase = self.phase.load(Ordering::SeqCst);
        match phase & PHASE_BITS {
            HOLDING => self
                .phase
                .compare_exchange(
                    phase,
                    with_phase(phase, COMMITTING),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
                .is_ok(),
            DOOMED => false,
            _ => true,
        }
    }

    /// Whether the owner's claim was doomed.
    pub fn is_doomed(&self) -> bool {
        self.phase.load(Ordering::SeqCst) & PHASE_BITS == DOOMED
    }

    /// Dooms the claim, of any database, if it was made before `before` and
    /// its owner has not begun to commit; returns it then.
    pub fn doom_if_older(&self, before: i64) -> Option<Claim> {
        let phase = self.phase.load(Ordering::SeqCst);
        if phase & PHASE_BITS != HOLDING {
            return None;
        }
        let Seen::Settled(claim) = self.look() else {
            return None;
        };
        // Unchanged since the first look: `since` is this claim's.
        if claim.since >= before || self.phase.load(Ordering::SeqCst) != phase {
            return None;
        }
        self.phase
            .compare_exchange(
                phase,
                with_phase(phase, DOOMED),
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
            .then_some(claim)
    }
}

/// The watermark of `database`, given `last_handed_out` (V, read before this
/// call) and every backend's slot.
pub fn watermark(last_handed_out: i64, slots: &[ClaimSlot], database: u32) -> i64 {
    lowest_claim(slots, database).map_or(last_handed_out, |lowest| last_handed_out.min(lowest - 1))
}

/// The lowest position an open transaction of `database` may still commit:
/// every committed position below it is readable.
pub fn lowest_claim(slots: &[ClaimSlot], database: u32) -> Option<i64> {
    slots
        .iter()
        .filter_map(|slot| slot.claim(database))
        .map(|claim| claim.lowest)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::sync::{Arc, Mutex};
    use std::thread;
    use std::time::Duration;

    fn claim(lowest: i64, database: u32) -> Claim {
        Claim {
            lowest,
            database,
            pid: 1,
            since: 0,
        }
    }

    fn hold(slot: &ClaimSlot, claim: Claim) {
        assert_eq!(
            slot.hold(claim.database, claim.pid, claim.since, || claim.lowest),
            claim.lowest
        );
    }

    #[test]
    fn empty_registry_gives_the_last_position() {
        let slots: Vec<ClaimSlot> = (0..4).map(|_| ClaimSlot::default()).collect();
        assert_eq!(watermark(42, &slots, 1), 42);
    }

    #[test]
    fn the_lowest_claim_of_the_database_holds_it_back() {
        let slots: Vec<ClaimSlot> = (0..4).map(|_| ClaimSlot::default()).collect();
        hold(&slots[0], claim(30, 1));
        hold(&slots[2], claim(20, 1));
        hold(&slots[3], claim(5, 2));
        assert_eq!(watermark(42, &slots, 1), 19);
        slots[2].release();
        assert_eq!(watermark(42, &slots, 1), 29);
        slots[0].release();
        assert_eq!(watermark(42, &slots, 1), 42);
        assert_eq!(watermark(42, &slots, 2), 4);
    }

    #[test]
    fn a_doomed_claim_no_longer_holds_the_mark_and_cannot_commit() {
        let slots: Vec<ClaimSlot> = (0..2).map(|_| ClaimSlot::default()).collect();
        let old = Claim {
            since: 100,
            ..claim(10, 1)
        };
        hold(&slots[0], old);
        hold(
            &slots[1],
            Claim {
                since: 500,
                ..claim(20, 1)
            },
        );
        assert_eq!(slots[0].doom_if_older(100), None, "not older");
        assert_eq!(slots[0].doom_if_older(101), Some(old));
        assert!(slots[0].is_doomed());
        assert!(
            !slots[0].begin_commit(),
            "a doomed transaction may not commit"
        );
        assert_eq!(watermark(42, &slots, 1), 19, "only the other claim counts");
        assert!(slots[1].begin_commit());
        assert_eq!(slots[1].doom_if_older(1000), None, "committing: too late");
        assert_eq!(watermark(42, &slots, 1), 19, "a committing claim holds");
        slots[0].release();
        hold(&slots[0], claim(30, 1));
        assert!(!slots[0].is_doomed(), "a new claim starts afresh");
        assert!(slots[0].begin_commit());
    }

    /// Writers take positions from a locked "sequence", commit or roll back
    /// after random delays; readers compute watermarks. Afterwards, every
    /// position that ever committed at or below a reader's watermark must
    /// have been visible when that reader looked.
    #[test]
    fn no_committed_position_appears_below_a_watermark_later() {
        let sequence = Arc::new(Mutex::new(0i64));
        let visible = Arc::new(Mutex::new(BTreeSet::new()));
        let slots: Arc<Vec<ClaimSlot>> = Arc::new((0..8).map(|_| ClaimSlot::default()).collect());
        let writers: Vec<_> = (0..6)
            .map(|w| {
                let (sequence, visible, slots) = (sequence.clone(), visible.clone(), slots.clone());
                thread::spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64);
                    // Until this writer committed enough (a loaded machine
                    // dooms more), within a bound.
                    let (mut committed, mut rounds) = (0, 0);
                    while committed < 200 && rounds < 20_000 {
                        rounds += 1;
                        let since = *sequence.lock().unwrap();
                        slots[w].hold(1, 1, since, || *sequence.lock().unwrap() + 1);
                        let mut mine = vec![];
                        for _ in 0..rng.gen_range(1..4) {
                            let mut next = sequence.lock().unwrap();
                            *next += 1;
                            mine.push(*next);
                        }
                        thread::sleep(Duration::from_micros(rng.gen_range(0..200)));
                        // A doomed writer rolls back.
                        if rng.gen_bool(0.8) && slots[w].begin_commit() {
                            committed += mine.len();
                            visible.lock().unwrap().extend(mine);
                        }
                        slots[w].release();
                    }
                })
            })
            .collect();
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (sequence, visible, slots) = (sequence.clone(), visible.clone(), slots.clone());
                thread::spawn(move || {
                    let mut observations = vec![];
                    for _ in 0..2_000 {
                        let last = *sequence.lock().unwrap();
                        let mark = watermark(last, &slots, 1);
                        let seen: BTreeSet<i64> =
                            visible.lock().unwrap().range(..=mark).copied().collect();
                        observations.push((mark, seen));
                    }
                    observations
                })
            })
            .collect();
        // Dooms every claim older than its previous round (since: the sequence value).
        let canceller = {
            let (sequence, slots) = (sequence.clone(), slots.clone());
            thread::spawn(move || {
                let mut doomed = 0;
                for _ in 0..2_000 {
                    let now = *sequence.lock().unwrap();
                    doomed += slots
                        .iter()
                        .filter(|s| s.doom_if_older(now - 5).is_some())
                        .count();
                    thread::sleep(Duration::from_micros(50));
                }
                doomed
            })
        };
        for writer in writers {
            writer.join().unwrap();
        }
        assert!(canceller.join().unwrap() > 0, "the canceller doomed claims");
        let committed = visible.lock().unwrap().clone();
        for reader in readers {
            let observations = reader.join().unwrap();
            for (mark, seen) in &observations {
                let eventually: BTreeSet<i64> = committed.range(..=*mark).copied().collect();
                assert_eq!(
                    &eventually, seen,
                    "a position committed below watermark {mark} after it was read"
                );
            }
        }
        assert!(committed.len() > 1000, "the model did real work");
    }

    #[test]
    fn a_reader_sends_a_pending_claim_back_to_read_the_sequence_again() {
        let slots: Vec<ClaimSlot> = (0..2).map(|_| ClaimSlot::default()).collect();
        let mut reads = 0;
        let lowest = slots[0].hold(1, 1, 0, || {
            reads += 1;
            // While the claim is pending, another transaction's position 11
            // commits and a reader passes it; the bound read now is stale.
            if reads == 1 {
                assert_eq!(watermark(11, &slots, 1), 11, "a pending claim is ignored");
                assert_eq!(watermark(11, &slots, 2), 11);
                11
            } else {
                12
            }
        });
        assert_eq!(reads, 2, "the owner read the sequence again");
        assert_eq!(lowest, 12);
        assert_eq!(
            watermark(20, &slots, 1),
            11,
            "never below a watermark returned"
        );
    }

    #[test]
    fn another_databases_reader_leaves_a_pending_claim_alone() {
        let slots: Vec<ClaimSlot> = (0..1).map(|_| ClaimSlot::default()).collect();
        let mut reads = 0;
        slots[0].hold(1, 1, 0, || {
            reads += 1;
            assert_eq!(watermark(7, &slots, 2), 7);
            5
        });
        assert_eq!(reads, 1);
        assert_eq!(watermark(7, &slots, 1), 4);
    }

    /// Writers claim with a delay between reading the "sequence" and
    /// settling (a descheduled backend), others take and commit positions
    /// meanwhile; readers must never see the watermark go back.
    #[test]
    fn the_watermark_never_goes_back() {
        let sequence = Arc::new(Mutex::new(0i64));
        let slots: Arc<Vec<ClaimSlot>> = Arc::new((0..6).map(|_| ClaimSlot::default()).collect());
        // Writers go on until the readers saw the watermark rise often enough.
        let rises = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (sequence, slots, rises) = (sequence.clone(), slots.clone(), rises.clone());
                thread::spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(100 + w as u64);
                    let mut rounds = 0;
                    // Bounded, so that a reader that failed cannot keep them waiting.
                    while rounds < 200 || (rises.load(Ordering::SeqCst) < 200 && rounds < 100_000) {
                        rounds += 1;
                        slots[w].hold(1, 1, 0, || {
                            let next = *sequence.lock().unwrap() + 1;
                            thread::sleep(Duration::from_micros(rng.gen_range(0..50)));
                            next
                        });
                        for _ in 0..rng.gen_range(1..3) {
                            *sequence.lock().unwrap() += 1;
                        }
                        slots[w].release();
                    }
                })
            })
            .collect();
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (sequence, slots, rises, done) =
                    (sequence.clone(), slots.clone(), rises.clone(), done.clone());
                thread::spawn(move || {
                    let mut last = 0;
                    while !done.load(Ordering::SeqCst) {
                        let mark = watermark(*sequence.lock().unwrap(), &slots, 1);
                        assert!(
                            mark >= last,
                            "the watermark went back from {last} to {mark}"
                        );
                        if mark > last {
                            rises.fetch_add(1, Ordering::SeqCst);
                        }
                        last = mark;
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        done.store(true, Ordering::SeqCst);
        for reader in readers {
            reader.join().unwrap();
        }
        assert!(
            rises.load(Ordering::SeqCst) >= 200,
            "the readers saw it move"
        );
    }
}
