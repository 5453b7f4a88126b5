//! What every background worker reports about itself, so its work shows where PostgreSQL's own
//! tools look: its table statistics after each transaction (the tuples it
//! inserted and updated, which autovacuum and autoanalyze go by: a backend
//! reports them when it goes idle, a background worker only when it asks)
//! and its state in `pg_stat_activity`.

use pgrx::pg_sys;
use std::ffi::CString;

/// Call after each transaction, outside any: hands this process's pending
/// table statistics over. PostgreSQL takes them at most once a second unless
/// `force` (call with `force` before sleeping, or the last ones wait).
pub fn report_stats(force: bool) {
    // SAFETY: outside a transaction, as PostgreSQL requires. 13 and 14
    // return nothing; 15 and later the time until the next flush, which the
    // next call handles.
    unsafe {
        #[allow(clippy::let_unit_value)]
        let _ = pg_sys::pgstat_report_stat(force);
    }
}

/// Shows the worker `running` what `doing` says in `pg_stat_activity`.
pub fn report_running(doing: &str) {
    report(pg_sys::BackendState::STATE_RUNNING, doing);
}

/// Shows the worker idle in `pg_stat_activity`, `waiting` for what it says.
pub fn report_idle(waiting: &str) {
    report(pg_sys::BackendState::STATE_IDLE, waiting);
}

fn report(state: pg_sys::BackendState::Type, text: &str) {
    let text = CString::new(text).expect("no NUL in a worker's description");
    // SAFETY: PostgreSQL copies the text into this backend's status entry.
    unsafe { pg_sys::pgstat_report_activity(state, text.as_ptr()) };
}
