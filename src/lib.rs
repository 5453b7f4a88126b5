//! AllSource: an event store inside PostgreSQL.
//!
//! This crate is the extension: the SQL surface and the PostgreSQL
//! integration (shared memory, transaction callbacks, background workers).
//! What it decides without PostgreSQL lives in the `allsource-core` crate
//! (`core/`); the schema in `sql/*.sql`.

#![warn(clippy::undocumented_unsafe_blocks)]

mod savepoints;
mod settings;
pub(crate) mod sql;

#[cfg(any(test, feature = "pg_test"))]
mod tests;

pgrx::pg_module_magic!();

pgrx::extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
pgrx::extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

/// Runs when a process loads the library: defines the settings and the
/// transaction callbacks, and, when preloading, the shared memory of the
/// watermark, the notification boards, the statistics and the ingest queue,
/// and registers the ingest workers and the watermark publisher. Without
/// preloading everything but `watermark()`, `inflight()`, the reads that need
/// them, the queue and `stats()` works.
#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    settings::register();
    sql::preload::init();
    // PostgreSQL calls the transaction callbacks last registered first: the
    // watermark's slot is emptied before the commit is handed to the notifier,
    // which then finds the commit readable.
    sql::notify::init();
    sql::watermark::init();
    sql::stats::init();
    sql::ingest::init();
}

/// Used by `cargo pgrx test` and the `#[pg_test]` functions.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'allsource'"]
    }
}
