//! What the launcher learns from other backends' utility statements.
//! `DROP DATABASE` (and the other statements that need a database to
//! themselves: `ALTER DATABASE … RENAME TO`, `… SET TABLESPACE`, `CREATE
//! DATABASE … TEMPLATE`) pauses the database's lane group and stops its
//! workers before PostgreSQL looks for other sessions in the database (it
//! waits up to five seconds for them to leave, then fails): the launcher
//! starts nothing for a paused group, and the statement finds the workers
//! gone or leaving. Afterwards (or if the drop fails) the group serves
//! again, and the launcher starts its workers. A committed `CREATE
//! EXTENSION allsource` or `CREATE DATABASE` makes the launcher look at
//! every database at once, so a new database's workers start within a second.

use crate::sql::backend;
use crate::sql::queue::Queue;
use pgrx::pg_sys::{self, NodeTag};
use pgrx::PgTryBuilder;
use std::cell::Cell;
use std::ffi::{c_char, c_void, CStr};
use std::panic::AssertUnwindSafe;

static mut PREVIOUS: pg_sys::ProcessUtility_hook_type = None;

thread_local! {
    /// This transaction created a database or the extension.
    static CREATED: Cell<bool> = const { Cell::new(false) };
}

/// From `_PG_init`, when preloading: the hook and the commit callback,
/// inherited by every backend.
pub(super) fn init() {
    // SAFETY: from _PG_init, on the postmaster's one thread; the functions
    // belong to this library, which is never unloaded.
    unsafe {
        PREVIOUS = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
        pg_sys::RegisterXactCallback(Some(on_transaction_event), std::ptr::null_mut());
    }
}

/// Runs the statement (`next`: the previous hook or PostgreSQL's own),
/// with a database's workers stopped if it needs that database to itself.
///
/// # Safety
/// `statement` is the utility statement PostgreSQL passed the hook.
unsafe fn around(statement: *mut pg_sys::Node, next: impl FnOnce()) {
    // SAFETY: as the caller promises.
    let alone = unsafe { needs_alone(statement) };
    let paused = alone.and_then(|(name, drops)| {
        // SAFETY: a syscache lookup by a NUL-terminated name, inside the
        // statement's transaction.
        let database = unsafe { pg_sys::get_database_oid(name, true) };
        pause(database).map(|group| (group, drops))
    });
    // SAFETY: the node's tag says its type; its strings are NUL-terminated.
    unsafe {
        let creates_extension = pgrx::is_a(statement, NodeTag::T_CreateExtensionStmt)
            && CStr::from_ptr((*(statement as *mut pg_sys::CreateExtensionStmt)).extname)
                == c"allsource";
        if creates_extension || pgrx::is_a(statement, NodeTag::T_CreatedbStmt) {
            CREATED.set(true);
        }
    }
    match paused {
        None => next(),
        Some((group, drops)) => {
            PgTryBuilder::new(AssertUnwindSafe(next))
                .catch_others(|error| {
                    group.resume();
                    error.rethrow()
                })
                .execute();
            // A dropped database's group is freed by the launcher once it is gone.
            if !drops {
                group.resume();
            }
        }
    }
}

/// The database `statement` refuses to run on while other sessions are
/// connected to it, and whether it drops it: DROP DATABASE, ALTER DATABASE
/// … RENAME TO and … SET TABLESPACE, CREATE DATABASE … TEMPLATE.
///
/// # Safety
/// `statement` is a utility statement PostgreSQL parsed.
unsafe fn needs_alone(statement: *mut pg_sys::Node) -> Option<(*const c_char, bool)> {
    // SAFETY: each node is read as the type its tag names.
    unsafe {
        if pgrx::is_a(statement, NodeTag::T_DropdbStmt) {
            return Some(((*(statement as *mut pg_sys::DropdbStmt)).dbname, true));
        }
        if pgrx::is_a(statement, NodeTag::T_RenameStmt) {
            let rename = statement as *mut pg_sys::RenameStmt;
            return ((*rename).renameType == pg_sys::ObjectType::OBJECT_DATABASE)
                .then(|| ((*rename).subname as *const c_char, false));
        }
        if pgrx::is_a(statement, NodeTag::T_AlterDatabaseStmt) {
            let alter = statement as *mut pg_sys::AlterDatabaseStmt;
            return option((*alter).options, c"tablespace")
                .map(|_| ((*alter).dbname as *const c_char, false));
        }
        if pgrx::is_a(statement, NodeTag::T_CreatedbStmt) {
            let create = statement as *mut pg_sys::CreatedbStmt;
            let template = option((*create).options, c"template")?;
            // DEFAULT (no argument) is template1, where nothing is served.
            return (!(*template).arg.is_null())
                .then(|| (pg_sys::defGetString(template) as *const c_char, false));
        }
        None
    }
}

/// The option `name` of a statement's list of options.
///
/// # Safety
/// `options` is NIL or a List of DefElem.
unsafe fn option(options: *mut pg_sys::List, name: &CStr) -> Option<*mut pg_sys::DefElem> {
    if options.is_null() {
        return None;
    }
    // SAFETY: a List's `length` cells hold pointers, here to DefElems, whose
    // names are NUL-terminated.
    unsafe {
        (0..(*options).length as usize)
            .map(|i| (*(*options).elements.add(i)).ptr_value as *mut pg_sys::DefElem)
            .find(|&def| CStr::from_ptr((*def).defname) == name)
    }
}

/// Pauses the group serving `database` and tells its workers to stop.
fn pause(database: pg_sys::Oid) -> Option<Queue> {
    let group = Queue::of_database(database)?;
    if !group.pause() {
        return None;
    }
    for pid in group.workers().filter(|&pid| backend::is_running(pid)) {
        // SAFETY: a signal to a process of this server, which it handles
        // as the postmaster's shutdown request: drain and exit.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    Some(group)
}

#[cfg(not(feature = "pg13"))]
#[pgrx::pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    statement: *mut pg_sys::PlannedStmt,
    query: *const c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    environment: *mut pg_sys::QueryEnvironment,
    destination: *mut pg_sys::DestReceiver,
    completion: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: PostgreSQL's arguments, passed on unchanged.
    unsafe {
        around((*statement).utilityStmt, || match PREVIOUS {
            Some(previous) => previous(
                statement,
                query,
                read_only_tree,
                context,
                params,
                environment,
                destination,
                completion,
            ),
            None => pg_sys::standard_ProcessUtility(
                statement,
                query,
                read_only_tree,
                context,
                params,
                environment,
                destination,
                completion,
            ),
        })
    }
}

#[cfg(feature = "pg13")]
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn process_utility(
    statement: *mut pg_sys::PlannedStmt,
    query: *const c_char,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    environment: *mut pg_sys::QueryEnvironment,
    destination: *mut pg_sys::DestReceiver,
    completion: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: PostgreSQL's arguments, passed on unchanged.
    unsafe {
        around((*statement).utilityStmt, || match PREVIOUS {
            Some(previous) => previous(
                statement,
                query,
                context,
                params,
                environment,
                destination,
                completion,
            ),
            None => pg_sys::standard_ProcessUtility(
                statement,
                query,
                context,
                params,
                environment,
                destination,
                completion,
            ),
        })
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_transaction_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut c_void,
) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_COMMIT if CREATED.get() => {
            CREATED.set(false);
            super::rescan_now();
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT | XACT_EVENT_PREPARE => CREATED.set(false),
        _ => {}
    }
}
