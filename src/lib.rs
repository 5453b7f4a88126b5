//! AllSource: an event store inside PostgreSQL.
//!
//! The pure-Rust core (no PostgreSQL needed, unit-tested and benchmarked on
//! its own): [`partition`], [`checksum`], [`jsontext`], [`batch`],
//! [`validate`], [`error`], [`savepoints`]. The thin pgrx layer that exposes
//! it as SQL lives in `sql`; the schema in `sql/*.sql`.

pub mod batch;
pub mod checksum;
pub mod error;
pub mod ingest;
pub mod jsontext;
pub mod partition;
pub mod plan;
pub mod ring;
pub mod savepoints;
pub mod stats;
pub mod validate;
pub mod verify;
pub mod watermark;

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
    // PostgreSQL calls the transaction callbacks last registered first: the
    // watermark's slot is emptied before the commit is handed to the notifier,
    // which then finds the commit readable.
    sql::notify::init();
    sql::watermark::init();
    sql::stats::init();
    sql::ingest::init();
    sql::standby::init();
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
