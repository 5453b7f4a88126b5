//! Argument checks for the read functions written in SQL (sql/finalize.sql):
//! they call these so every function validates with the same rules and words.

use crate::sql::raise::or_raise;
use allsource_core::validate;
use pgrx::prelude::*;

/// Internal: raises 22023 unless `stream_id` is a valid stream id.
#[pg_extern(immutable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn _check_stream_id(stream_id: Option<&str>) {
    or_raise(validate::name("stream_id", stream_id));
}

/// Internal: raises 22023 unless `read_stream`'s arguments are valid.
#[pg_extern(immutable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn _check_read_stream(
    stream_id: Option<&str>,
    from_version: Option<i64>,
    max_count: Option<i32>,
    backward: Option<bool>,
) {
    or_raise((|| {
        validate::name("stream_id", stream_id)?;
        validate::non_negative("from_version", from_version)?;
        validate::non_negative("max_count", max_count)?;
        validate::required("backward", backward)?;
        Ok(())
    })());
}

/// Internal: raises 22023 unless `read_all`'s arguments are valid.
#[pg_extern(immutable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn _check_read_all(
    after_position: Option<i64>,
    max_count: Option<i32>,
    partition_id: Option<i32>,
    partition_count: i32,
) {
    or_raise((|| {
        validate::non_negative("after_position", after_position)?;
        validate::non_negative("max_count", max_count)?;
        if let Some(partition_id) = partition_id {
            validate::in_range("partition_id", partition_id, 0, partition_count - 1)?;
        }
        Ok(())
    })());
}

/// Internal: raises 22023 unless `read_category`'s arguments are valid.
#[pg_extern(immutable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn _check_read_category(
    category: Option<&str>,
    after_position: Option<i64>,
    max_count: Option<i32>,
    consumer_group_member: Option<i32>,
    consumer_group_size: Option<i32>,
) {
    or_raise((|| {
        validate::name("category", category)?;
        validate::non_negative("after_position", after_position)?;
        validate::non_negative("max_count", max_count)?;
        validate::consumer_group(consumer_group_member, consumer_group_size)
    })());
}
