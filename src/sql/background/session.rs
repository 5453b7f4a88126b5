//! What makes a background worker's SQL safe to run in a database where
//! hostile roles may create objects: its session's `search_path` is pinned
//! to `pg_catalog, pg_temp` (whatever `ALTER DATABASE` or `ALTER ROLE` set),
//! and the transactions that write run as the role `allsource_worker`,
//! which holds only the table rights the workers need, not as the bootstrap
//! superuser a worker has to connect as.

use allsource_core::error::{sqlstate, Error, Result};
use pgrx::pg_sys;

/// The role the ingest workers and the watermark publisher write as
/// (created by `CREATE EXTENSION`).
const WORKER_ROLE: &std::ffi::CStr = c"allsource_worker";

/// Pins this worker session's `search_path`: names the extension's SQL
/// leaves unqualified can only mean `pg_catalog`'s objects (`pg_temp` is
/// never searched for functions or operators). Call right after connecting.
pub fn pin_search_path() {
    // SAFETY: sets a GUC of this backend; PGC_S_OVERRIDE outranks every
    // database, role and session setting.
    unsafe {
        pg_sys::SetConfigOption(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
    }
}

/// Runs `work` as `allsource_worker`, in a security-restricted operation
/// (as PostgreSQL runs maintenance as a table's owner). Call inside a
/// transaction; an error in `work` aborts it, which restores the user.
pub fn as_worker_role<T>(work: impl FnOnce() -> T) -> Result<T> {
    // SAFETY: a syscache lookup, inside the caller's transaction.
    let role = unsafe { pg_sys::get_role_oid(WORKER_ROLE.as_ptr(), true) };
    if role == pg_sys::InvalidOid {
        return Err(Error::new(
            sqlstate::UNDEFINED_OBJECT,
            "role \"allsource_worker\" does not exist",
        )
        .with_detail("AllSource's background workers write as that role, which CREATE EXTENSION allsource (0.4.0 or later) creates.")
        .with_hint("Run ALTER EXTENSION allsource UPDATE in this database."));
    }
    let (mut user, mut context) = (pg_sys::InvalidOid, 0);
    // SAFETY: saves and sets this backend's current user, as
    // PostgreSQL's own maintenance commands do.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(
            role,
            context
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
    }
    let result = work();
    // SAFETY: restores what was saved above.
    unsafe { pg_sys::SetUserIdAndSecContext(user, context) };
    Ok(result)
}
