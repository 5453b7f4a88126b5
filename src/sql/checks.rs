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

// read_stream, read_all and read_category are SQL (sql/finalize/reads.sql): their tests live beside their argument checks.
#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::test_support::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn read_stream_forward_backward_and_windows() {
        Spi::run("SELECT allsource.append_batch('read-stream-forward/s', (SELECT jsonb_agg(jsonb_build_object('type', 'T', 'payload', i)) FROM generate_series(1, 10) i))").unwrap();
        Spi::run("SELECT allsource.append('read-stream-forward/other', 'T', '0')").unwrap();
        let versions = |query: &str| -> String {
            one(&format!("SELECT coalesce(string_agg(version::text, ',' ORDER BY ord), '') FROM {query} WITH ORDINALITY AS r(position, partition_id, stream_id, version, event_id, event_type, tenant_id, payload, metadata, created_at, checksum, ord)"))
        };
        assert_eq!(
            versions("allsource.read_stream('read-stream-forward/s')"),
            "1,2,3,4,5,6,7,8,9,10"
        );
        assert_eq!(
            versions("allsource.read_stream('read-stream-forward/s', 8)"),
            "8,9,10"
        );
        assert_eq!(
            versions("allsource.read_stream('read-stream-forward/s', 2, 3)"),
            "2,3,4"
        );
        assert_eq!(
            versions("allsource.read_stream('read-stream-forward/s', 5, 2, true)"),
            "5,4"
        );
        assert_eq!(
            versions("allsource.read_stream('read-stream-forward/s', 100, 3, backward => true)"),
            "10,9,8"
        );
        assert_eq!(
            versions("allsource.read_stream('read-stream-forward/s', 1, 0)"),
            ""
        );
        assert_eq!(
            versions("allsource.read_stream('read-stream-forward/s', 11)"),
            ""
        );
        assert_eq!(versions("allsource.read_stream('missing')"), "");
        assert_eq!(
            one::<String>(
                "SELECT payload::text FROM allsource.read_stream('read-stream-forward/s', 3, 1)"
            ),
            "3"
        );
    }

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
