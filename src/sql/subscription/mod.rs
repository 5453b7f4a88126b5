//! Subscriptions: named consumers of the global log with server-side
//! checkpoints. The SQL functions (`create_subscription`, `receive`, `ack`,
//! `nack`, …) are written in SQL, in sql/finalize/subscriptions.sql, over the
//! tables of sql/schema.sql. Here: the members' leases ([`lease`], in shared
//! memory), the handler call as the subscription's owner (`handler`), the
//! workers that run handler subscriptions (`worker`), and what `stats()`
//! counts of them (`counts`).

mod counts;
mod handler;
pub mod lease;
mod worker;

pub use worker::start as start_worker;

/// From `_PG_init`, when preloading: the leases' shared memory and the
/// counting of acks at commit (the launcher starts the subscription workers
/// of each database).
pub fn init() {
    if crate::sql::backend::preloading() {
        lease::init();
        counts::init();
    }
}

use crate::sql::backend;
use crate::sql::raise::or_raise;
use allsource_core::error::Result;
use allsource_core::partition::MAX_PARTITIONS;
use allsource_core::validate;
use pgrx::prelude::*;

/// Internal: raises 22023 unless `create_subscription`'s arguments are valid.
#[pg_extern(immutable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn _check_subscription(
    name: Option<&str>,
    categories: Option<Vec<Option<String>>>,
    event_types: Option<Vec<Option<String>>>,
    start_after: Option<i64>,
    members: Option<i32>,
    max_attempts: Option<i32>,
) {
    or_raise((|| {
        validate::name("name", name)?;
        names("categories", categories)?;
        names("event_types", event_types)?;
        validate::non_negative("start_after", start_after)?;
        validate::in_range(
            "members",
            validate::required("members", members)?,
            1,
            MAX_PARTITIONS,
        )?;
        let max_attempts = validate::required("max_attempts", max_attempts)?;
        validate::in_range("max_attempts", max_attempts, 1, i32::MAX)
    })());
}

/// A filter's names: `NULL` (no filter), or a non-empty array of names.
fn names(argument: &str, values: Option<Vec<Option<String>>>) -> Result<()> {
    let Some(values) = values else { return Ok(()) };
    if values.is_empty() {
        return Err(allsource_core::error::Error::invalid_argument(
            argument,
            "must not be empty (NULL means no filter)",
        ));
    }
    for value in &values {
        validate::name(argument, value.as_deref())?;
    }
    Ok(())
}

/// Internal: the role the caller acts as (a subscription's handler runs as the
/// role that created it).
#[pg_extern(stable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn _calling_role() -> String {
    backend::calling_role()
}
