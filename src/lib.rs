//! AllSource: an event store inside PostgreSQL.
//!
//! The pure-Rust core (no PostgreSQL needed, unit-tested and benchmarked on
//! its own): [`partition`], [`checksum`], [`jsontext`], [`batch`],
//! [`validate`], [`error`]. The thin pgrx layer that exposes it as SQL lives
//! in `sql`; the schema in `sql/*.sql`.

pub mod batch;
pub mod checksum;
pub mod error;
pub mod jsontext;
pub mod partition;
pub mod validate;
pub mod verify;

mod settings;
mod sql;

#[cfg(any(test, feature = "pg_test"))]
mod tests;

pgrx::pg_module_magic!();

pgrx::extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
pgrx::extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

/// Runs when a backend loads the library, preloaded or not: defines the
/// settings. Nothing here needs `shared_preload_libraries` yet.
#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    settings::register();
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
