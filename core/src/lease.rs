//! Subscription leases: which session holds which member of which
//! subscription, as plain Rust over atomics (the extension puts the table in
//! PostgreSQL shared memory). A member is held by one session at a time; the
//! lease ends when its session releases it or ends.
//!
//! The table is small and every operation short, so one spin lock guards
//! finding and taking a lease: two sessions can never both take the same
//! member. Nothing inside the lock can fail or be interrupted.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU32, Ordering};

/// Who holds a lease: a backend's PGPROC number and its process id (the
/// pid tells a PGPROC's later owner from the one that took the lease).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    pub procno: i32,
    pub pid: i32,
}

/// What a lease is of: a subscription's member in a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub database: u32,
    pub subscription: i64,
    pub member: i32,
}

/// One lease. `pid == 0`: free.
#[repr(C)]
#[derive(Default)]
pub struct LeaseSlot {
    database: AtomicU32,
    member: AtomicI32,
    subscription: AtomicI64,
    procno: AtomicI32,
    pid: AtomicI32,
}

impl LeaseSlot {
    fn holder(&self) -> Option<Holder> {
        let pid = self.pid.load(Ordering::Relaxed);
        (pid != 0).then(|| Holder {
            procno: self.procno.load(Ordering::Relaxed),
            pid,
        })
    }

    fn is_of(&self, of: Member) -> bool {
        self.database.load(Ordering::Relaxed) == of.database
            && self.subscription.load(Ordering::Relaxed) == of.subscription
            && self.member.load(Ordering::Relaxed) == of.member
    }
}

/// Why a lease could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Another live session holds it.
    HeldBy(Holder),
    /// Every slot of the table is in use.
    Full,
}

/// The lease table's header: its lock.
#[repr(C)]
#[derive(Default)]
pub struct LeaseLock {
    locked: AtomicBool,
}

/// A view of the lease table: its lock and its slots.
pub struct Leases<'a> {
    lock: &'a LeaseLock,
    slots: &'a [LeaseSlot],
}

impl<'a> Leases<'a> {
    pub fn new(lock: &'a LeaseLock, slots: &'a [LeaseSlot]) -> Self {
        Leases { lock, slots }
    }

    fn locked<T>(&self, work: impl FnOnce() -> T) -> T {
        while self
            .lock
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
            std::thread::yield_now();
        }
        let result = work();
        self.lock.locked.store(false, Ordering::Release);
        result
    }

    /// Takes `of` for `me`, or confirms `me` holds it already. `alive` says
    /// whether a holder's session still runs (a PGPROC still owned by that
    /// pid): a lease of a session that is gone is taken over.
    pub fn take(
        &self,
        of: Member,
        me: Holder,
        alive: impl Fn(Holder) -> bool,
    ) -> Result<(), Refusal> {
        self.locked(|| {
            let mut free = None;
            for slot in self.slots {
                match slot.holder() {
                    Some(holder) if slot.is_of(of) => {
                        if holder == me {
                            return Ok(());
                        }
                        if alive(holder) {
                            return Err(Refusal::HeldBy(holder));
                        }
                        free = Some(slot);
                        break;
                    }
                    Some(_) => {}
                    None => {
                        free.get_or_insert(slot);
                    }
                }
            }
            let slot = free.ok_or(Refusal::Full)?;
            slot.database.store(of.database, Ordering::Relaxed);
            slot.subscription.store(of.subscription, Ordering::Relaxed);
            slot.member.store(of.member, Ordering::Relaxed);
            slot.procno.store(me.procno, Ordering::Relaxed);
            slot.pid.store(me.pid, Ordering::Relaxed);
            Ok(())
        })
    }

    /// Who holds `of`, if anyone.
    pub fn holder(&self, of: Member) -> Option<Holder> {
        self.locked(|| {
            self.slots
                .iter()
                .find(|slot| slot.holder().is_some() && slot.is_of(of))
                .and_then(LeaseSlot::holder)
        })
    }

    /// Ends `me`'s lease of `of`; returns whether it held one.
    pub fn release(&self, of: Member, me: Holder) -> bool {
        self.locked(|| {
            let slot = self
                .slots
                .iter()
                .find(|slot| slot.holder() == Some(me) && slot.is_of(of));
            if let Some(slot) = slot {
                slot.pid.store(0, Ordering::Relaxed);
            }
            slot.is_some()
        })
    }

    /// Ends every lease of `me`: its session ends.
    pub fn release_all(&self, me: Holder) {
        self.locked(|| {
            for slot in self.slots.iter().filter(|slot| slot.holder() == Some(me)) {
                slot.pid.store(0, Ordering::Relaxed);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::thread;

    const A: Holder = Holder {
        procno: 1,
        pid: 100,
    };
    const B: Holder = Holder {
        procno: 2,
        pid: 200,
    };

    fn member(member: i32) -> Member {
        Member {
            database: 5,
            subscription: 7,
            member,
        }
    }

    #[test]
    fn one_session_holds_a_member_until_it_lets_go() {
        let lock = LeaseLock::default();
        let slots: Vec<LeaseSlot> = (0..4).map(|_| LeaseSlot::default()).collect();
        let leases = Leases::new(&lock, &slots);
        let alive = |_| true;
        assert_eq!(leases.take(member(0), A, alive), Ok(()));
        assert_eq!(leases.take(member(0), A, alive), Ok(()), "again: still A's");
        assert_eq!(leases.take(member(0), B, alive), Err(Refusal::HeldBy(A)));
        assert_eq!(leases.take(member(1), B, alive), Ok(()), "another member");
        assert_eq!(leases.holder(member(0)), Some(A));
        assert!(!leases.release(member(0), B), "B never held member 0");
        assert!(leases.release(member(0), A));
        assert_eq!(leases.holder(member(0)), None);
        assert_eq!(leases.take(member(0), B, alive), Ok(()));
        leases.release_all(B);
        assert_eq!(leases.holder(member(0)), None);
        assert_eq!(leases.holder(member(1)), None);
    }

    #[test]
    fn a_lease_of_a_session_that_is_gone_is_taken_over() {
        let lock = LeaseLock::default();
        let slots: Vec<LeaseSlot> = (0..2).map(|_| LeaseSlot::default()).collect();
        let leases = Leases::new(&lock, &slots);
        assert_eq!(leases.take(member(0), A, |_| true), Ok(()));
        assert_eq!(leases.take(member(0), B, |h| h != A), Ok(()));
        assert_eq!(leases.holder(member(0)), Some(B));
        assert_eq!(slots.iter().filter(|s| s.holder().is_some()).count(), 1);
    }

    #[test]
    fn a_full_table_refuses() {
        let lock = LeaseLock::default();
        let slots: Vec<LeaseSlot> = (0..1).map(|_| LeaseSlot::default()).collect();
        let leases = Leases::new(&lock, &slots);
        assert_eq!(leases.take(member(0), A, |_| true), Ok(()));
        assert_eq!(leases.take(member(1), A, |_| true), Err(Refusal::Full));
    }

    /// Sessions race for the same members: at any moment at most one holds each.
    #[test]
    fn racing_sessions_never_share_a_member() {
        let lock = Arc::new(LeaseLock::default());
        let slots: Arc<Vec<LeaseSlot>> = Arc::new((0..8).map(|_| LeaseSlot::default()).collect());
        let inside: Arc<Vec<AtomicUsize>> = Arc::new((0..3).map(|_| AtomicUsize::new(0)).collect());
        let sessions: Vec<_> = (0..6)
            .map(|s| {
                let (lock, slots, inside) = (lock.clone(), slots.clone(), inside.clone());
                thread::spawn(move || {
                    let leases = Leases::new(&lock, &slots);
                    let me = Holder {
                        procno: s,
                        pid: 1000 + s,
                    };
                    let mut held = 0;
                    for round in 0..3_000 {
                        let m = round % 3;
                        if leases.take(member(m), me, |_| true).is_ok() {
                            held += 1;
                            let others = inside[m as usize].fetch_add(1, Ordering::SeqCst);
                            assert_eq!(others, 0, "member {m} held twice");
                            inside[m as usize].fetch_sub(1, Ordering::SeqCst);
                            assert!(leases.release(member(m), me));
                        }
                    }
                    held
                })
            })
            .collect();
        let held: usize = sessions.into_iter().map(|s| s.join().unwrap()).sum();
        assert!(held > 100, "sessions did take leases ({held})");
    }
}
