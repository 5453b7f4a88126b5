//! `allsource.partition_for`.

use crate::sql::raise::or_raise;
use crate::sql::select_one;
use crate::sql::tables::table;
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
            None => {
                select_one::<i32>("SELECT allsource.partition_count()").ok_or_else(no_partitions)?
            }
        };
        Ok(partition::partition_for(stream_id, count as u32) as i32)
    });
    or_raise(result)
}

/// The number of partitions attached to `allsource.events`, as
/// `allsource.partition_count()` counts them, from the relcache (the SQL
/// function costs a new stream a plan of its own on every append). 55000
/// without any.
pub(crate) fn attached_partition_count() -> u32 {
    // SAFETY: the partitioned table is opened to read its descriptor, which
    // lives in its relcache entry while it is open, and closed here (the
    // lock stays to the end of the transaction).
    let count = unsafe {
        let events = pg_sys::table_open(table(c"events"), pg_sys::AccessShareLock as i32);
        // Detach-pending partitions included: pg_inherits still lists them.
        #[cfg(feature = "pg13")]
        let partitions = pg_sys::RelationGetPartitionDesc(events);
        #[cfg(not(feature = "pg13"))]
        let partitions = pg_sys::RelationGetPartitionDesc(events, false);
        let count = (*partitions).nparts;
        pg_sys::table_close(events, pg_sys::NoLock as i32);
        count
    };
    if count > 0 {
        return count as u32;
    }
    or_raise(Err(no_partitions()))
}

fn no_partitions() -> Error {
    Error::new(
        sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
        "allsource has no partitions; is the extension installed?",
    )
}

// partition_count and partition_stats are SQL (sql/finalize/reads.sql): their tests live beside partition_for.
#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::test_support::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn partitions() {
        assert_eq!(one::<i32>("SELECT allsource.partition_count()"), 32);
        assert_eq!(
            one::<i64>(
                "SELECT count(*) FROM pg_inherits WHERE inhparent = 'allsource.events'::regclass"
            ),
            32
        );
        // The test vectors of docs/sql-reference.md.
        assert_eq!(one::<i32>("SELECT allsource.partition_for('order-1')"), 12);
        assert_eq!(
            one::<i32>("SELECT allsource.partition_for('order-1', 7)"),
            0
        );
        assert_eq!(
            one::<i32>("SELECT allsource.partition_for('customer-42', partition_count => 1024)"),
            821
        );
        assert_eq!(
            one::<i32>("SELECT allsource.partition_for('Äpfel-ünd-Birnen')"),
            21
        );

        Spi::run("SELECT allsource.append_batch('order-1', '[{\"type\": \"A\", \"payload\": 1}, {\"type\": \"A\", \"payload\": 2}]')").unwrap();
        Spi::run("SELECT allsource.append('customer-42', 'A', '1')").unwrap();
        assert_eq!(
            one::<i64>("SELECT count(*) FROM allsource.partition_stats()"),
            32
        );
        assert_eq!(
            one::<String>(
                "SELECT string_agg(format('%s:%s:%s', partition_id, stream_count, event_count), ' ' ORDER BY partition_id)
                 FROM allsource.partition_stats() WHERE event_count > 0"
            ),
            "12:1:2 21:1:1"
        );
        assert!(one::<bool>(
            "SELECT last_position = (SELECT max(position) FROM allsource.events WHERE stream_id = 'order-1')
                    AND total_bytes > 0
             FROM allsource.partition_stats() WHERE partition_id = 12"
        ));
        assert!(one::<bool>("SELECT last_position IS NULL AND event_count = 0 FROM allsource.partition_stats() WHERE partition_id = 0"));
    }

    #[pg_test]
    fn a_new_stream_is_placed_by_the_partitions_attached_now() {
        Spi::run("LOCK TABLE allsource.streams, allsource.events IN ACCESS EXCLUSIVE MODE")
            .unwrap();
        Spi::run("SELECT allsource.append('placed-before-the-detach', 'A', '1')").unwrap();
        Spi::run("ALTER TABLE allsource.events DETACH PARTITION allsource.events_p31").unwrap();
        assert_eq!(one::<i32>("SELECT allsource.partition_count()"), 31);
        // A stream that 31 partitions place elsewhere than 32 do.
        let stream: String = one(
            "SELECT s FROM (SELECT 'placed-by-the-count/' || g AS s FROM generate_series(1, 100) g) x
             WHERE allsource.partition_for(s, 31) <> allsource.partition_for(s, 32) LIMIT 1",
        );
        Spi::run(&format!("SELECT allsource.append('{stream}', 'A', '1')")).unwrap();
        assert_eq!(
            one::<i32>(&format!(
                "SELECT partition_id FROM allsource.streams WHERE stream_id = '{stream}'"
            )),
            one::<i32>(&format!("SELECT allsource.partition_for('{stream}', 31)"))
        );
    }
}
