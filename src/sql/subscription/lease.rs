//! Leases in shared memory ([`allsource_core::lease`]): `receive`, `ack`,
//! `nack` take the member's lease for the session (`_hold_member`),
//! `release` and the end of the session let it go. A crash restart empties
//! the table with the rest of shared memory.

use crate::sql::backend;
use crate::sql::preload::{self, require_preloaded};
use crate::sql::raise::or_raise;
use allsource_core::error::{sqlstate, Error, Result};
use allsource_core::lease::{Holder, LeaseLock, LeaseSlot, Leases, Member, Refusal};
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgAtomic};
use std::cell::Cell;

/// Leases the whole server may hold at once (sessions × members they hold).
const MAX_LEASES: usize = 4096;

#[repr(C)]
struct Table {
    lock: LeaseLock,
    slots: [LeaseSlot; MAX_LEASES],
}

// SAFETY: plain atomics, no pointers: valid in any process that maps it.
unsafe impl PGRXSharedMemory for Table {}

// SAFETY: no other shared memory is named so.
static TABLE: PgAtomic<Table> = unsafe { PgAtomic::new(c"allsource_subscription_leases") };

thread_local! {
    /// The exit callback that lets this session's leases go is registered.
    static EXIT_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

/// From `_PG_init`, when preloading.
pub fn init() {
    pg_shmem_init!(
        TABLE = Table {
            lock: LeaseLock::default(),
            slots: std::array::from_fn(|_| LeaseSlot::default()),
        }
    );
}

fn leases() -> Leases<'static> {
    let table = TABLE.get();
    Leases::new(&table.lock, &table.slots)
}

fn me() -> Holder {
    Holder {
        procno: backend::procno().expect("a backend has a PGPROC"),
        pid: backend::process_id(),
    }
}

fn member_of(subscription_id: i64, member: i32) -> Member {
    Member {
        database: backend::database_id().to_u32(),
        subscription: subscription_id,
        member,
    }
}

/// Takes the member for this session, or says who holds it.
fn try_take(subscription_id: i64, member: i32) -> std::result::Result<(), Refusal> {
    if !EXIT_CALLBACK.with(|r| r.replace(true)) {
        // SAFETY: on_exit is a function of this library, which is never unloaded.
        unsafe { pg_sys::before_shmem_exit(Some(on_exit), pg_sys::Datum::from(0)) };
    }
    let alive = |holder: Holder| backend::pid_at(holder.procno) == holder.pid;
    leases().take(member_of(subscription_id, member), me(), alive)
}

/// For the subscription workers: whether this session holds the member now.
pub fn take(subscription_id: i64, member: i32) -> bool {
    try_take(subscription_id, member).is_ok()
}

fn hold(subscription_id: i64, name: &str, member: i32) -> Result<()> {
    require_preloaded("allsource.receive(), ack() and nack()")?;
    match try_take(subscription_id, member) {
        Ok(()) => Ok(()),
        Err(Refusal::HeldBy(holder)) => Err(Error::new(
            sqlstate::OBJECT_IN_USE,
            format!(
                "member {member} of subscription \"{name}\" is held by the session of pid {}",
                holder.pid
            ),
        )
        .with_detail("A member is consumed by one session at a time; its lease ends when that session calls allsource.release() or ends.")
        .with_hint("Consume another member, or wait for that session to end.")),
        Err(Refusal::Full) => Err(Error::new(
            sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
            format!("the server holds {MAX_LEASES} subscription leases, as many as it can"),
        )
        .with_hint("Release members that are not being consumed (allsource.release()), or end idle consuming sessions.")),
    }
}

/// Takes the member's lease for this session (or confirms it holds it); 55006
/// while another session does.
#[pg_extern(volatile, parallel_unsafe, name = "_hold_member")]
#[search_path(pg_catalog, pg_temp)]
fn hold_member(subscription_id: i64, name: &str, member: i32) {
    or_raise(hold(subscription_id, name, member));
}

/// Ends this session's lease of the member; false if it held none.
pub fn release(subscription_id: i64, member: i32) -> bool {
    preload::is_preloaded() && leases().release(member_of(subscription_id, member), me())
}

/// `release` for SQL.
#[pg_extern(volatile, parallel_unsafe, name = "_release_member")]
#[search_path(pg_catalog, pg_temp)]
fn release_member(subscription_id: i64, member: i32) -> bool {
    release(subscription_id, member)
}

/// The pid of the session holding the member, if one does.
#[pg_extern(volatile, parallel_safe, name = "_member_holder")]
#[search_path(pg_catalog, pg_temp)]
fn member_holder(subscription_id: i64, member: i32) -> Option<i32> {
    if !preload::is_preloaded() {
        return None;
    }
    leases()
        .holder(member_of(subscription_id, member))
        .filter(|holder| backend::pid_at(holder.procno) == holder.pid)
        .map(|holder| holder.pid)
}

#[pg_guard]
unsafe extern "C-unwind" fn on_exit(_code: i32, _arg: pg_sys::Datum) {
    if let Some(procno) = backend::procno() {
        leases().release_all(Holder {
            procno,
            pid: backend::process_id(),
        });
    }
}
