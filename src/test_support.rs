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

/// Puts the partition of `stream_id` back as a table with the same columns
/// in the opposite order (as attached by hand), holding the same rows.
pub(crate) fn reattach_partition_in_another_layout(stream_id: &str) {
    Spi::run(&format!(
        "DO $$
         DECLARE p int := allsource.partition_for('{stream_id}');
         BEGIN
             EXECUTE format('ALTER TABLE allsource.events DETACH PARTITION allsource.events_p%s', p);
             EXECUTE format('ALTER TABLE allsource.events_p%s RENAME TO events_moved', p);
             EXECUTE format('CREATE TABLE allsource.events_p%s (tags text[], checksum bytea NOT NULL,
                 created_at timestamptz NOT NULL, metadata jsonb, payload jsonb NOT NULL, tenant_id text,
                 event_type text NOT NULL, event_id uuid NOT NULL, version bigint NOT NULL,
                 stream_id text COLLATE \"C\" NOT NULL, partition_id int NOT NULL, position bigint NOT NULL)', p);
             EXECUTE format('INSERT INTO allsource.events_p%s (position, partition_id, stream_id, version, event_id,
                 event_type, tenant_id, payload, metadata, created_at, checksum, tags)
                 SELECT position, partition_id, stream_id, version, event_id, event_type, tenant_id, payload,
                        metadata, created_at, checksum, tags FROM allsource.events_moved', p);
             EXECUTE format('ALTER TABLE allsource.events ATTACH PARTITION allsource.events_p%s FOR VALUES IN (%s)', p, p);
         END $$"
    ))
    .unwrap();
}
