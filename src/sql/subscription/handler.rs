//! Calling a subscription's handler as the role that created the
//! subscription, never as the worker: `_call_handler` switches the current
//! user for the call alone, in a way the handler cannot undo (`SET ROLE` and
//! `RESET ROLE` are refused inside it), and checks that role's right to
//! execute the handler, as calling it by name would.

use pgrx::prelude::*;
use pgrx::AnyElement;
use std::ffi::CString;

/// Internal (the subscription workers): `handler(event)` as `owner`.
#[pg_extern(volatile, parallel_unsafe, name = "_call_handler")]
#[search_path(pg_catalog, pg_temp)]
fn call_handler(handler: pg_sys::Oid, owner: &str, event: AnyElement) {
    let owner = CString::new(owner).expect("a role name has no NUL");
    // SAFETY: a syscache lookup inside the caller's transaction; a missing
    // role raises (the handler's attempt fails with that error).
    let role = unsafe { pg_sys::get_role_oid(owner.as_ptr(), false) };
    let allowed: bool = Spi::get_one_with_args(
        "SELECT pg_catalog.has_function_privilege($1, $2, 'EXECUTE')",
        &[role.into(), handler.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    if !allowed {
        pgrx::error!(
            "permission denied for the handler: role {} may not execute it",
            owner.to_string_lossy()
        );
    }
    let (mut user, mut context) = (pg_sys::InvalidOid, 0);
    // SAFETY: saves this backend's user and security context, then acts as
    // `role` for the call; an error inside aborts the (sub)transaction,
    // which restores them, as PostgreSQL's SECURITY DEFINER calls do.
    // OidFunctionCall1Coll calls a function of one argument with the row
    // datum PostgreSQL passed us.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(role, pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
        pg_sys::OidFunctionCall1Coll(handler, pg_sys::InvalidOid, event.datum());
        pg_sys::SetUserIdAndSecContext(user, context);
    }
}
