//! `allsource.save_snapshot` (`load_snapshot` is SQL, in sql/finalize/reads.sql):
//! one snapshot per stream, the latest.

use crate::sql::guard::WriteGuard;
use crate::sql::jsonb::JsonbText;
use crate::sql::raise::or_raise;
use crate::sql::spi;
use crate::sql::standby::refuse_on_standby;
use crate::sql::stream_row::lock_stream;
use crate::sql::tenant;
use allsource_core::error::Error;
use allsource_core::validate;
use pgrx::prelude::*;

/// Saves a snapshot of the stream's state at `version`. Only the latest is
/// kept: returns false (and keeps the stored one) when a snapshot of a higher
/// version exists.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn save_snapshot(stream_id: Option<&str>, version: Option<i64>, state: Option<JsonbText>) -> bool {
    or_raise((|| {
        refuse_on_standby("allsource.save_snapshot()")?;
        let stream_id = validate::name("stream_id", stream_id)?;
        let version =
            version.ok_or_else(|| Error::invalid_argument("version", "must not be null"))?;
        let state = validate::required("state", state)?.0;
        if version < 1 {
            return Err(Error::invalid_argument(
                "version",
                format!("must be at least 1, not {version}"),
            ));
        }
        let tenant = tenant::session_tenant()?;
        let _writing = WriteGuard::new();
        Spi::connect_mut(|client| {
            let stream = lock_stream(client, stream_id, tenant.as_deref())?;
            let current = stream.as_ref().map_or(0, |s| s.version);
            if stream.as_ref().is_some_and(|s| s.deleted) {
                return Err(Error::stream_deleted(stream_id));
            }
            if version > current {
                return Err(Error::invalid_argument(
                    "version",
                    format!("is {version}, but stream \"{stream_id}\" is at version {current}"),
                ));
            }
            let stored = spi(client.update(
                "INSERT INTO allsource.snapshots AS s (stream_id, version, state, tenant_id) \
                 VALUES ($1, $2, $3::jsonb, $4) \
                 ON CONFLICT (stream_id) DO UPDATE \
                 SET version = excluded.version, state = excluded.state, created_at = pg_catalog.now() \
                 WHERE s.version <= excluded.version \
                 RETURNING 1",
                None,
                &[
                    stream_id.into(),
                    version.into(),
                    state.into(),
                    tenant.into(),
                ],
            ));
            Ok(!stored.is_empty())
        })
    })())
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::test_support::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn snapshots_keep_the_latest() {
        Spi::run("SELECT allsource.append_batch('snapshots/s', '[{\"type\": \"A\", \"payload\": 1}, {\"type\": \"B\", \"payload\": 2}, {\"type\": \"C\", \"payload\": 3}]')").unwrap();
        let none: i64 = one("SELECT count(*) FROM allsource.load_snapshot('snapshots/s')");
        assert_eq!(none, 0);
        assert!(one::<bool>(
            "SELECT allsource.save_snapshot('snapshots/s', 2, '{\"sum\": 3}')"
        ));
        assert!(
            !one::<bool>("SELECT allsource.save_snapshot('snapshots/s', 1, '{\"sum\": 1}')"),
            "an older snapshot does not replace a newer one"
        );
        assert!(one::<bool>(
            "SELECT allsource.save_snapshot('snapshots/s', 3, '{\"sum\": 6}')"
        ));
        let (version, state) = Spi::get_two::<i64, pgrx::JsonB>(
            "SELECT version, state FROM allsource.load_snapshot('snapshots/s')",
        )
        .unwrap();
        assert_eq!(version, Some(3));
        assert_eq!(state.unwrap().0, serde_json::json!({"sum": 6}));
        assert_fails(
            "SELECT allsource.save_snapshot('snapshots/s', 4, '{}')",
            "22023",
            "at version 3",
        );
        assert_fails(
            "SELECT allsource.save_snapshot('snapshots/s', 0, '{}')",
            "22023",
            "version",
        );
        assert_fails(
            "SELECT allsource.save_snapshot('snapshots/s', 1, NULL)",
            "22023",
            "state",
        );
        assert_fails(
            "SELECT allsource.save_snapshot('snapshots/none', 1, '{}')",
            "22023",
            "at version 0",
        );
        Spi::run("SELECT allsource.delete_stream('snapshots/s')").unwrap();
        assert_fails(
            "SELECT allsource.save_snapshot('snapshots/s', 3, '{}')",
            "ZA002",
            "deleted",
        );
    }
}
