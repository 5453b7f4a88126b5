//! Helpers of the `#[pg_test]`s, which sit at the bottom of the modules
//! they test. Each runs inside a real PostgreSQL (with the extension
//! preloaded) in its own transaction, rolled back afterwards. Concurrency and
//! committed-state checks live in the driver tests (`tests/driver`).
//! Tests share one database and run in parallel, so each uses its own stream
//! ids and event ids: two open transactions on one stream would wait on each other.
//!
//! pgrx runs every test as a function of the schema `tests`: each module of
//! tests is `#[pgrx::pg_schema] mod tests`, and test names are unique across them.

use pgrx::prelude::*;
use pgrx::IntoDatum;

pub(crate) fn one<T: FromDatum + IntoDatum>(query: &str) -> T {
    Spi::get_one::<T>(query)
        .unwrap_or_else(|e| panic!("{query}: {e}"))
        .unwrap_or_else(|| panic!("{query} returned NULL"))
}

/// Runs `query` in a subtransaction that must fail; returns (SQLSTATE, message).
fn failure(query: &str) -> (String, String) {
    Spi::run(
        "CREATE OR REPLACE FUNCTION pg_temp.failure_of(query text) RETURNS text[]
         LANGUAGE plpgsql AS $$
         BEGIN
             EXECUTE query;
             RETURN NULL;
         EXCEPTION WHEN OTHERS THEN
             RETURN ARRAY[SQLSTATE, SQLERRM];
         END $$",
    )
    .unwrap();
    let quoted = pgrx::spi::quote_literal(query);
    let result: Vec<String> = Spi::get_one(&format!("SELECT pg_temp.failure_of({quoted})"))
        .unwrap()
        .unwrap_or_else(|| panic!("expected an error from {query}"));
    (result[0].clone(), result[1].clone())
}

pub(crate) fn assert_fails(query: &str, sqlstate: &str, words: &str) {
    let (code, message) = failure(query);
    assert_eq!(code, sqlstate, "{query}: {message}");
    assert!(
        message.contains(words),
        "{query}: {message:?} should mention {words:?}"
    );
}

pub(crate) fn event_count() -> i64 {
    one("SELECT count(*) FROM allsource.events")
}
