//! What the extension reads of the PostgreSQL process it runs in: which
//! database and process this is, its PGPROC, its (sub)transaction, the
//! time, and whether the postmaster is preloading the library. PostgreSQL
//! runs each process on one thread, which alone writes these globals.

use pgrx::pg_sys;
use std::ffi::CStr;

/// The database this process is connected to (`MyDatabaseId`);
/// `InvalidOid` before it connects (the postmaster, a worker starting).
pub fn database_id() -> pg_sys::Oid {
    // SAFETY: a plain global of this process, written by its own thread.
    unsafe { pg_sys::MyDatabaseId }
}

/// Whether a process of this server with that pid runs now (0: none).
pub fn is_running(pid: i32) -> bool {
    // SAFETY: looks the pid up in the proc array, under its lock.
    pid != 0 && unsafe { !pg_sys::BackendPidGetProc(pid).is_null() }
}

/// This process's pid (`MyProcPid`).
pub fn process_id() -> i32 {
    // SAFETY: a plain global of this process, set when it starts.
    unsafe { pg_sys::MyProcPid }
}

/// This process's index in `ProcGlobal->allProcs`, `None` if it has no PGPROC
/// (the postmaster): what PostgreSQL 16 and older store as
/// `MyProc->pgprocno`; 17 dropped that field for this same pointer
/// difference (`GetNumberFromPGProc`).
pub fn procno() -> Option<i32> {
    // SAFETY: MyProc is null or points into ProcGlobal->allProcs, an array
    // in shared memory that outlives every process using it.
    unsafe {
        let proc = pg_sys::MyProc;
        (!proc.is_null()).then(|| proc.offset_from((*pg_sys::ProcGlobal).allProcs) as i32)
    }
}

/// The current (sub)transaction's number, for [`crate::savepoints::Nested::change`].
pub fn current_subtransaction() -> u32 {
    // SAFETY: reads a field of CurrentTransactionState, which always points
    // to a transaction state (the top one at least).
    unsafe { pg_sys::GetCurrentSubTransactionId() }
}

/// The time now, in PostgreSQL's microseconds since 2000 (`clock_timestamp()`).
pub fn clock_timestamp() -> i64 {
    pgrx::datetime::clock_timestamp().into()
}

/// When the current transaction started, in PostgreSQL's microseconds since
/// 2000 (`now()`).
pub fn transaction_timestamp() -> i64 {
    pgrx::datetime::now().into()
}

/// Whether this is the postmaster loading `shared_preload_libraries` now:
/// only then may `_PG_init` request shared memory, register workers and
/// define server-start settings. Elsewhere, `preload::is_preloaded`
/// says whether that happened.
pub fn preloading() -> bool {
    // SAFETY: a plain global of this process, set by PostgreSQL around the loading.
    unsafe { pg_sys::process_shared_preload_libraries_in_progress }
}

/// The name of database `oid`; `None` if there is none (it was dropped).
/// Call inside a transaction: it reads the catalog.
pub fn database_name(oid: pg_sys::Oid) -> Option<String> {
    // SAFETY: a syscache lookup, inside the caller's transaction; a non-null
    // result is a NUL-terminated copy in the current memory context.
    unsafe {
        let name = pg_sys::get_database_name(oid);
        (!name.is_null()).then(|| CStr::from_ptr(name).to_string_lossy().into_owned())
    }
}

/// The pid of the process that owns PGPROC number `procno` now (0: none).
pub fn pid_at(procno: i32) -> i32 {
    // SAFETY: ProcGlobal and its allProcs array live in shared memory for the
    // server's life; a bounds-checked index reads one PGPROC's pid field.
    unsafe {
        let count = (*pg_sys::ProcGlobal).allProcCount as i32;
        if !(0..count).contains(&procno) {
            return 0;
        }
        (*(*pg_sys::ProcGlobal).allProcs.add(procno as usize)).pid
    }
}

/// The role the caller acts as (`SET ROLE` included), which a SECURITY
/// DEFINER function's `current_user` no longer says.
pub fn calling_role() -> String {
    // SAFETY: the outer user id is always a valid role of this session;
    // GetUserNameFromId returns a NUL-terminated copy (it raises if none).
    unsafe {
        let name = pg_sys::GetUserNameFromId(pg_sys::GetOuterUserId(), false);
        CStr::from_ptr(name).to_string_lossy().into_owned()
    }
}

/// Runs `read` in the snapshot the next statement of this transaction would
/// take, as SPI does for each statement: after `CommandCounterIncrement`
/// (this transaction's earlier changes are seen), and in READ COMMITTED a
/// new one (others' commits are seen). An error in `read` leaves the
/// snapshot to the transaction's abort, which pops it.
pub fn in_a_statement_snapshot<R>(read: impl FnOnce() -> R) -> R {
    // SAFETY: in a transaction; the snapshot pushed here is popped here.
    unsafe {
        pg_sys::CommandCounterIncrement();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let result = read();
    // SAFETY: the snapshot pushed above is the active one.
    unsafe { pg_sys::PopActiveSnapshot() };
    result
}
