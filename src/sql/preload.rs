//! Whether the library was loaded through `shared_preload_libraries`: the
//! watermark, the notification boards, the statistics and the ingest queue
//! live in shared memory that only exists then.

use allsource_core::error::{sqlstate, Error};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set in the postmaster when loaded through shared_preload_libraries and
/// inherited by every backend it forks.
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// From `_PG_init`: remembers whether this is the postmaster preloading.
pub fn init() {
    if super::backend::preloading() {
        PRELOADED.store(true, Ordering::Relaxed);
    }
}

/// Whether the library was preloaded (inherited by every forked process).
pub fn is_preloaded() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

/// Whether the library was preloaded; the error to raise otherwise.
pub fn require_preloaded(function: &str) -> allsource_core::error::Result<()> {
    if is_preloaded() {
        return Ok(());
    }
    Err(Error::new(
        sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("{function} needs allsource in shared_preload_libraries"),
    )
    .with_hint(
        "Add allsource to shared_preload_libraries in postgresql.conf and restart PostgreSQL.",
    ))
}
