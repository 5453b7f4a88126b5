//! Tenants: whose rows a session reads and writes.
//!
//! Two modes. Per request, `SET allsource.tenant = 'acme'`: a user setting,
//! so isolation holds while the application sets it honestly (one login
//! shared by every tenant). Bound to a role, `ALTER ROLE acme_app SET
//! allsource.role_tenant = 'acme'` by a superuser: a setting only a
//! superuser may change, so the role's sessions act for that tenant and no
//! other, whatever they set; `allsource.tenant` may then only repeat it.

use crate::settings;
use crate::sql::raise::or_raise;
use allsource_core::error::{sqlstate, Error, Result};
use allsource_core::validate;
use pgrx::prelude::*;
use std::ffi::CString;

/// The session's tenant, `None` for none; errors on a tenant name that is
/// not valid UTF-8 or too long (22023) and on a request for another tenant
/// than the one the role is bound to (42501).
pub fn session_tenant() -> Result<Option<String>> {
    let requested = setting_text("allsource.tenant", settings::TENANT.get())?;
    let Some(bound) = setting_text("allsource.role_tenant", settings::ROLE_TENANT.get())? else {
        return Ok(requested);
    };
    if requested.as_ref().is_some_and(|r| *r != bound) {
        return Err(Error::new(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            format!("this session is bound to tenant \"{bound}\""),
        )
        .with_detail("allsource.role_tenant binds the role to a tenant; allsource.tenant may only repeat it.")
        .with_hint("RESET allsource.tenant, or connect as a role of the other tenant."));
    }
    Ok(Some(bound))
}

/// A tenant setting's value: `None` when unset or empty.
fn setting_text(name: &str, value: Option<CString>) -> Result<Option<String>> {
    Ok(validate::tenant(name, value.as_deref())?.map(str::to_string))
}

/// The session's tenant (NULL without one): reads and writes are scoped to it.
#[pg_extern(stable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn current_tenant() -> Option<String> {
    or_raise(session_tenant())
}

/// Whether a row's `tenant_id` is the session's tenant: the test of the
/// row-level security policies (the functions compare with
/// `current_tenant()` themselves, once per call). A function the planner
/// cannot see into, on purpose: it estimates a third of the rows match,
/// where an inlined `IS NOT DISTINCT FROM` estimated almost none and made a
/// `SELECT … ORDER BY position LIMIT n` sort everything.
#[pg_extern(stable, parallel_safe, name = "_in_tenant")]
#[search_path(pg_catalog, pg_temp)]
fn in_tenant(tenant_id: Option<&str>) -> bool {
    let session = or_raise(session_tenant());
    tenant_id == session.as_deref()
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::test_support::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn a_tenant_sees_and_writes_only_its_own_streams() {
        Spi::run("SET LOCAL allsource.tenant = 'acme'").unwrap();
        Spi::run("SELECT allsource.append('tenants/acme-1', 'A', '{\"secret\": 1}')").unwrap();
        Spi::run("SELECT allsource.save_snapshot('tenants/acme-1', 1, '{}')").unwrap();
        let tenant: String =
            one("SELECT tenant_id FROM allsource.events WHERE stream_id = 'tenants/acme-1'");
        assert_eq!(tenant, "acme");
        Spi::run("SET LOCAL allsource.tenant = 'globex'").unwrap();
        for (query, sqlstate) in [
            ("SELECT allsource.append('tenants/acme-1', 'A', '{}')", "42501"),
            ("SELECT allsource.append_batch('tenants/acme-1', '[{\"type\": \"A\", \"payload\": 1}]')", "42501"),
            ("SELECT allsource.delete_stream('tenants/acme-1')", "42501"),
            ("SELECT allsource.save_snapshot('tenants/acme-1', 1, '{}')", "42501"),
        ] {
            assert_fails(query, sqlstate, "another tenant");
        }
        for query in [
            "SELECT count(*) FROM allsource.read_stream('tenants/acme-1')",
            "SELECT count(*) FROM allsource.load_snapshot('tenants/acme-1')",
            "SELECT allsource.stream_version('tenants/acme-1')",
            "SELECT events_checked FROM allsource.verify_stream('tenants/acme-1')",
            "SELECT count(*) FROM allsource.verify_all() WHERE stream_id = 'tenants/acme-1'",
        ] {
            assert_eq!(one::<i64>(query), 0, "{query}");
        }
        assert!(one::<bool>(
            "SELECT allsource.verify_gapless('tenants/acme-1')"
        ));
        // No tenant is a scope of its own too.
        Spi::run("RESET allsource.tenant").unwrap();
        assert_fails(
            "SELECT allsource.append('tenants/acme-1', 'A', '{}')",
            "42501",
            "another tenant",
        );
        Spi::run("SET LOCAL allsource.tenant = 'acme'").unwrap();
        let version: i64 = one("SELECT allsource.stream_version('tenants/acme-1')");
        assert_eq!(version, 1);
    }
}
