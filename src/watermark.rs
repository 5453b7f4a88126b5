//! The in-flight registry behind `allsource.watermark()`, as plain Rust over
//! atomics so it can be model-checked with threads; `sql/watermark.rs` puts
//! the slots in PostgreSQL shared memory.
//!
//! The rule. A transaction that is about to take positions first publishes a
//! lower bound of them in its slot: the sequence's next value, read before
//! its first `nextval`. The slot is emptied only once the transaction's commit
//! is visible to new snapshots, or it aborted. The watermark is
//!
//! ```text
//! min(V, lowest occupied slot − 1)      V = the last position handed out, read first
//! ```
//!
//! Why it holds: take a position p ≤ watermark that is not visible yet. p ≤ V,
//! so p was handed out before V was read; its transaction published a bound
//! ≤ p before taking p, hence before V was read, hence before the slots were
//! scanned (the sequence's buffer lock and sequentially consistent atomics
//! order these). The scan therefore saw that slot still occupied unless the
//! transaction had already ended, so the watermark is < p: a contradiction.
//! A transaction that ended aborted never shows p; one that committed
//! already shows it.
//!
//! Cancelling (`allsource.max_append_transaction_ms`). Another process may
//! doom a claim that is too old: one compare-and-swap on the slot's phase,
//! which the owner's commit must win first ([`Slot::begin_commit`]) or fail.
//! A doomed transaction can therefore never commit, and the watermark
//! ignores its claim: none of its positions can become visible.

use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};

/// A slot's phase, in the low two bits of [`Slot::phase`]; the bits above
/// count the claims the slot held, so a phase is never seen twice.
const EMPTY: u64 = 0;
const HOLDING: u64 = 1;
const COMMITTING: u64 = 2;
const DOOMED: u64 = 3;
const PHASE_BITS: u64 = 3;

/// One backend's claim: the lowest position its open transaction may commit.
/// A cache line each, so backends writing their own slots do not contend.
#[repr(C, align(64))]
#[derive(Default)]
pub struct Slot {
    /// 0 when empty; positions start at 1.
    lowest: AtomicI64,
    database: AtomicU32,
    pid: AtomicI32,
    /// When the claim was made, in PostgreSQL's microseconds since 2000-01-01.
    since: AtomicI64,
    /// The claim's number and phase: written by the owner, except that
    /// another process may turn HOLDING into DOOMED.
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

impl Slot {
    /// Publishes `claim` unless the slot already holds one (a transaction's
    /// first claim is its lowest). Returns whether it published.
    pub fn hold(&self, claim: Claim) -> bool {
        if self.lowest.load(Ordering::SeqCst) != 0 {
            return false;
        }
        assert!(claim.lowest > 0, "positions start at 1");
        // The details first; `lowest` last, so a reader that sees it sees them.
        self.database.store(claim.database, Ordering::Relaxed);
        self.pid.store(claim.pid, Ordering::Relaxed);
        self.since.store(claim.since, Ordering::Relaxed);
        self.lowest.store(claim.lowest, Ordering::SeqCst);
        let number = (self.phase.load(Ordering::SeqCst) & !PHASE_BITS) + PHASE_BITS + 1;
        self.phase.store(number | HOLDING, Ordering::SeqCst);
        true
    }

    /// Empties the slot: call once the transaction's outcome is visible.
    pub fn release(&self) {
        let phase = self.phase.load(Ordering::SeqCst);
        self.phase
            .store((phase & !PHASE_BITS) | EMPTY, Ordering::SeqCst);
        self.lowest.store(0, Ordering::SeqCst);
    }

    /// The claim, unless the slot is empty or its claim is doomed.
    pub fn claim(&self) -> Option<Claim> {
        let before = self.phase.load(Ordering::SeqCst);
        let lowest = self.lowest.load(Ordering::SeqCst);
        let claim = (lowest != 0).then(|| Claim {
            lowest,
            database: self.database.load(Ordering::Relaxed),
            pid: self.pid.load(Ordering::Relaxed),
            since: self.since.load(Ordering::Relaxed),
        })?;
        // Doomed, and still the same claim: it can never commit. A claim
        // that changed meanwhile counts, which only holds the mark back.
        let doomed = before & PHASE_BITS == DOOMED && self.phase.load(Ordering::SeqCst) == before;
        (!doomed).then_some(claim)
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
                    (phase & !PHASE_BITS) | COMMITTING,
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

    /// Dooms the claim if it was made before `before` and its owner has not
    /// begun to commit; returns it then.
    pub fn doom_if_older(&self, before: i64) -> Option<Claim> {
        let phase = self.phase.load(Ordering::SeqCst);
        if phase & PHASE_BITS != HOLDING {
            return None;
        }
        let claim = self.claim()?;
        // Unchanged since the first look: `since` is this claim's.
        if claim.since >= before || self.phase.load(Ordering::SeqCst) != phase {
            return None;
        }
        self.phase
            .compare_exchange(
                phase,
                (phase & !PHASE_BITS) | DOOMED,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
            .then_some(claim)
    }
}

/// The watermark of `database`, given `last_handed_out` (V, read before this
/// call) and every backend's slot.
pub fn watermark(last_handed_out: i64, slots: &[Slot], database: u32) -> i64 {
    lowest_claim(slots, database).map_or(last_handed_out, |lowest| last_handed_out.min(lowest - 1))
}

/// The lowest position an open transaction of `database` may still commit:
/// every committed position below it is readable.
pub fn lowest_claim(slots: &[Slot], database: u32) -> Option<i64> {
    slots
        .iter()
        .filter_map(Slot::claim)
        .filter(|claim| claim.database == database)
        .map(|claim| claim.lowest)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeSet;
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

    #[test]
    fn empty_registry_gives_the_last_position() {
        let slots: Vec<Slot> = (0..4).map(|_| Slot::default()).collect();
        assert_eq!(watermark(42, &slots, 1), 42);
    }

    #[test]
    fn the_lowest_claim_of_the_database_holds_it_back() {
        let slots: Vec<Slot> = (0..4).map(|_| Slot::default()).collect();
        assert!(slots[0].hold(claim(30, 1)));
        assert!(slots[2].hold(claim(20, 1)));
        assert!(slots[3].hold(claim(5, 2)), "another database's claim");
        assert_eq!(watermark(42, &slots, 1), 19);
        assert!(
            !slots[2].hold(claim(25, 1)),
            "a transaction keeps its first claim"
        );
        slots[2].release();
        assert_eq!(watermark(42, &slots, 1), 29);
        slots[0].release();
        assert_eq!(watermark(42, &slots, 1), 42);
        assert_eq!(watermark(42, &slots, 2), 4);
    }

    #[test]
    fn a_doomed_claim_no_longer_holds_the_mark_and_cannot_commit() {
        let slots: Vec<Slot> = (0..2).map(|_| Slot::default()).collect();
        let old = Claim {
            since: 100,
            ..claim(10, 1)
        };
        assert!(slots[0].hold(old));
        assert!(slots[1].hold(Claim {
            since: 500,
            ..claim(20, 1)
        }));
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
        assert!(slots[0].hold(claim(30, 1)));
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
        let slots: Arc<Vec<Slot>> = Arc::new((0..8).map(|_| Slot::default()).collect());
        let writers: Vec<_> = (0..6)
            .map(|w| {
                let (sequence, visible, slots) = (sequence.clone(), visible.clone(), slots.clone());
                thread::spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64);
                    for _ in 0..300 {
                        let bound = *sequence.lock().unwrap() + 1;
                        slots[w].hold(Claim {
                            since: bound,
                            ..claim(bound, 1)
                        });
                        let mut mine = vec![];
                        for _ in 0..rng.gen_range(1..4) {
                            let mut next = sequence.lock().unwrap();
                            *next += 1;
                            mine.push(*next);
                        }
                        thread::sleep(Duration::from_micros(rng.gen_range(0..200)));
                        // A doomed writer rolls back.
                        if rng.gen_bool(0.8) && slots[w].begin_commit() {
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
}
