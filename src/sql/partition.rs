//! `allsource.partition_for`.

use crate::sql::raise::or_raise;
use crate::sql::select_one;
use allsource_core::error::{sqlstate, Error};
use allsource_core::partition::{self, MAX_PARTITIONS};
use allsource_core::validate;
use pgrx::prelude::*;

/// The partition that owns `stream_id`: see [`partition::partition_for`].
/// Without `partition_count`, the extension's own count.
#[pg_extern(stable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn partition_for(stream_id: Option<&str>, partition_count: default!(Option<i32>, "NULL")) -> i32 {
    let result = validate::name("stream_id", stream_id).and_then(|stream_id| {
        let count = match partition_count {
            Some(count) => validate::in_range("partition_count", count, 1, MAX_PARTITIONS)?,
            None => select_one::<i32>("SELECT allsource.partition_count()").ok_or_else(|| {
                Error::new(
                    sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                    "allsource has no partitions; is the extension installed?",
                )
            })?,
        };
        Ok(partition::partition_for(stream_id, count as u32) as i32)
    });
    or_raise(result)
}
