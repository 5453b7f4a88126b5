//! AllSource: an event store inside PostgreSQL.
//!
//! This crate is the extension: the SQL surface and the PostgreSQL
//! integration. What it decides without PostgreSQL lives in the
//! `allsource-core` crate (`core/`); the schema in `sql/*.sql`.
//!
//! - `sql`: every SQL function, one module per capability (its own list).
//! - `settings`: the `allsource.*` configuration parameters.
//! - `savepoints`: per-transaction state that follows savepoints.
//! - `test_support`: what the `#[pg_test]`s beside each module share.

#![warn(clippy::undocumented_unsafe_blocks)]

mod savepoints;
mod settings;
pub(crate) mod sql;

#[cfg(any(test, feature = "pg_test"))]
mod test_support;

pgrx::pg_module_magic!();

pgrx::extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
// After the functions generated from Rust, in this order; `requires` names
// the Rust functions (by their Rust names) each file needs to exist.
pgrx::extension_sql_file!(
    "../sql/finalize/guards.sql",
    name = "guards",
    requires = [refuse_direct_write]
);
pgrx::extension_sql_file!(
    "../sql/finalize/rls.sql",
    name = "rls",
    requires = ["guards", in_tenant]
);
pgrx::extension_sql_file!(
    "../sql/finalize/roles.sql",
    name = "roles",
    requires = ["rls"]
);
pgrx::extension_sql_file!(
    "../sql/finalize/reads.sql",
    name = "reads",
    requires = ["roles"]
);
pgrx::extension_sql_file!(
    "../sql/finalize/grants.sql",
    name = "grants",
    requires = [
        "reads",
        append,
        append_batch,
        enqueue,
        await_ticket,
        delete_stream,
        save_snapshot,
        stats_reset,
        verify_stream,
        verify_all,
        verify_anchor,
        verify_all_tenants
    ]
);
pgrx::extension_sql_file!(
    "../sql/finalize/router_support.sql",
    name = "router_support",
    requires = ["grants"]
);
pgrx::extension_sql_file!(
    "../sql/finalize/subscriptions.sql",
    name = "subscriptions",
    requires = [
        "router_support",
        _check_subscription,
        _calling_role,
        hold_member,
        release_member,
        member_holder,
        call_handler
    ]
);
pgrx::extension_sql_file!("../sql/finalize/comments.sql", name = "comments", finalize);

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
    sql::subscription::init();
    sql::launcher::init();
}

/// Used by `cargo pgrx test` and the `#[pg_test]` functions.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        // The workers serve only postgres, where the extension is not created.
        vec![
            "shared_preload_libraries = 'allsource'",
            "allsource.database = 'postgres'",
        ]
    }
}
