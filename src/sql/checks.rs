//! Argument checks for the read functions written in SQL (sql/finalize/reads.sql):
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

// read_all and read_category are SQL (sql/finalize/reads.sql): their tests live beside their argument checks.
#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::test_support::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn global_reads_refuse_bad_arguments_and_snapshot_isolation() {
        let cases = [
            ("SELECT * FROM allsource.read_all(-1)", "22023", "\"after_position\""),
            ("SELECT * FROM allsource.read_all(0, -1)", "22023", "\"max_count\""),
            ("SELECT * FROM allsource.read_all(NULL)", "22023", "\"after_position\""),
            ("SELECT * FROM allsource.read_all(partition_id => 32)", "22023", "\"partition_id\""),
            ("SELECT * FROM allsource.read_all(partition_id => -1)", "22023", "\"partition_id\""),
            ("SELECT * FROM allsource.read_category('')", "22023", "\"category\""),
            ("SELECT * FROM allsource.read_category(NULL)", "22023", "\"category\""),
            ("SELECT * FROM allsource.read_category('c', -5)", "22023", "\"after_position\""),
            ("SELECT * FROM allsource.read_category('c', consumer_group_member => 2, consumer_group_size => 2)", "22023", "\"consumer_group_member\""),
            ("SELECT * FROM allsource.read_category('c', consumer_group_member => -1, consumer_group_size => 2)", "22023", "\"consumer_group_member\""),
            ("SELECT * FROM allsource.read_category('c', consumer_group_member => 0, consumer_group_size => 0)", "22023", "\"consumer_group_size\""),
            ("SELECT * FROM allsource.read_category('c', consumer_group_member => 0)", "22023", "\"consumer_group_size\""),
            ("SELECT * FROM allsource.read_category('c', consumer_group_size => 3)", "22023", "\"consumer_group_member\""),
        ];
        for (query, code, words) in cases {
            assert_fails(query, code, words);
        }
    }
}
