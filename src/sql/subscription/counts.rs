//! What `allsource.stats()` counts of subscriptions: events delivered (when
//! handed out), acknowledged and parked (when their transaction commits).
//! An `ack` acknowledges the events `receive` handed to this session at or
//! below its position, so each session remembers what it was handed; acks
//! and parkings wait for their transaction's commit to count and to be
//! forgotten, so a rolled back `ack` leaves the next one everything to count.

use crate::savepoints::Nested;
use crate::sql::backend::current_subtransaction;
use crate::sql::{committed_state, end_of_subtransaction, stats};
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::ffi::c_void;

/// Positions a session remembers per member: enough for any batch, and a
/// consumer that never acks cannot grow it without bound.
const REMEMBERED: usize = 100_000;

/// A member of a subscription: (subscription id, member).
type Member = (i64, i32);

/// What the current transaction did, applied when it commits.
#[derive(Clone, Copy)]
enum Done {
    /// The member's checkpoint moved to this position.
    Acked(Member, i64),
    /// The member's event at this position was parked.
    Parked(Member, i64),
}

thread_local! {
    /// The positions handed to this session and not yet acknowledged.
    static HANDED_OUT: RefCell<HashMap<Member, BTreeSet<i64>>> = RefCell::new(HashMap::new());
    static UNCOMMITTED: RefCell<Nested<Vec<Done>>> = const { RefCell::new(Nested::new(Vec::new())) };
}

/// From `_PG_init`, when preloading.
pub fn init() {
    // SAFETY: from _PG_init, on the process's one thread; the callbacks are
    // functions of this library, which is never unloaded.
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_transaction_event), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subtransaction_event), std::ptr::null_mut());
    }
}

/// Internal (`receive`, the handler workers): `positions` were handed out.
#[pg_extern(volatile, parallel_unsafe, name = "_count_delivered")]
#[search_path(pg_catalog, pg_temp)]
fn count_delivered(subscription_id: i64, member: i32, positions: Vec<i64>) {
    stats::delivered(positions.len() as u64);
    HANDED_OUT.with(|handed| {
        let mut handed = handed.borrow_mut();
        let remembered = handed.entry((subscription_id, member)).or_default();
        remembered.extend(positions);
        while remembered.len() > REMEMBERED {
            remembered.pop_first();
        }
    });
}

/// Internal (`ack`, the handler workers): the checkpoint moved to `upto`.
#[pg_extern(volatile, parallel_unsafe, name = "_count_acked")]
#[search_path(pg_catalog, pg_temp)]
fn count_acked(subscription_id: i64, member: i32, upto: i64) {
    record(Done::Acked((subscription_id, member), upto));
}

/// Internal (`_record_failure`): the event at `position` was parked.
#[pg_extern(volatile, parallel_unsafe, name = "_count_parked")]
#[search_path(pg_catalog, pg_temp)]
fn count_parked(subscription_id: i64, member: i32, position: i64) {
    record(Done::Parked((subscription_id, member), position));
}

fn record(done: Done) {
    let sub = current_subtransaction();
    UNCOMMITTED.with(|u| u.borrow_mut().change(sub, |list| list.push(done)));
}

/// Counts and forgets what a committed transaction acknowledged and parked.
fn apply(committed: Vec<Done>) {
    HANDED_OUT.with(|handed| {
        let mut handed = handed.borrow_mut();
        for done in committed {
            match done {
                Done::Acked(member, upto) => {
                    let Some(remembered) = handed.get_mut(&member) else {
                        continue;
                    };
                    let above = remembered.split_off(&upto.saturating_add(1));
                    stats::acked(std::mem::replace(remembered, above).len() as u64);
                }
                Done::Parked(member, position) => {
                    if let Some(remembered) = handed.get_mut(&member) {
                        remembered.remove(&position);
                    }
                    stats::parked(1);
                }
            }
        }
    });
}

#[pg_guard]
unsafe extern "C-unwind" fn on_transaction_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut c_void,
) {
    if let Some(committed) = UNCOMMITTED.with(|u| committed_state(u, event)) {
        if !committed.is_empty() {
            apply(committed);
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subtransaction_event(
    event: pg_sys::SubXactEvent::Type,
    sub: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut c_void,
) {
    UNCOMMITTED.with(|u| end_of_subtransaction(u, event, sub, parent));
}
