//! Calling a subscription's handler as the role that created the
//! subscription, never as the worker: `_call_handler` switches the current
//! user for the call alone, in a way the handler cannot undo (`SET ROLE` and
//! `RESET ROLE` are refused inside it); calling it by name makes PostgreSQL
//! check that role's right to execute it.

use pgrx::prelude::*;
use pgrx::AnyElement;
use std::ffi::CString;

/// Internal (the subscription workers): the handler as `owner`, in one
/// statement: `handler(events)` if it takes an array, else `handler(event)`
/// for each event of the array, in its order.
#[pg_extern(volatile, parallel_unsafe, name = "_call_handler")]
#[search_path(pg_catalog, pg_temp)]
fn call_handler(handler: pg_sys::Oid, owner: &str, events: AnyElement) {
    let owner = CString::new(owner).expect("a role name has no NUL");
    // SAFETY: a syscache lookup inside the caller's transaction; a missing
    // role raises (the handler's attempt fails with that error).
    let role = unsafe { pg_sys::get_role_oid(owner.as_ptr(), false) };
    // Called by its qualified name, so the executor checks the owner's right
    // to execute it and copes with whatever it returns (NULL for void SQL).
    let (name, takes_batches): (String, bool) = Spi::get_two_with_args(
        "SELECT pg_catalog.format('%I.%I', n.nspname, p.proname), \
                p.proargtypes[0] OPERATOR(pg_catalog.=) 'allsource.events[]'::pg_catalog.regtype \
         FROM pg_catalog.pg_proc p \
         JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace \
         WHERE p.oid OPERATOR(pg_catalog.=) $1",
        &[handler.into()],
    )
    .ok()
    .and_then(|(name, takes_batches)| Some((name?, takes_batches?)))
    .unwrap_or_else(|| pgrx::error!("the handler (function {handler:?}) no longer exists"));
    let events_type = events.oid();
    // SAFETY: the array datum PostgreSQL passed us, with its own type.
    let argument = unsafe { pgrx::datum::DatumWithOid::new(events, events_type) };
    // A handler of single events: OFFSET 0 keeps the subquery from being
    // flattened, so it is called row by row in the array's order; `IS NULL`
    // makes every call count, whatever it returns.
    let calls = if takes_batches {
        format!("SELECT {name}($1)")
    } else {
        format!(
            "SELECT pg_catalog.count({name}(batch.event) IS NULL) FROM \
             (SELECT event FROM pg_catalog.unnest($1) event OFFSET 0) batch"
        )
    };
    let (mut user, mut context) = (pg_sys::InvalidOid, 0);
    // SAFETY: saves this backend's user and security context, then acts as
    // `role` for the call; an error inside aborts the (sub)transaction,
    // which restores them, as PostgreSQL's SECURITY DEFINER calls do.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(role, pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
    }
    Spi::run_with_args(&calls, &[argument])
        .unwrap_or_else(|e| pgrx::error!("calling the handler {name}: {e}"));
    // SAFETY: restores what was saved above.
    unsafe { pg_sys::SetUserIdAndSecContext(user, context) };
}
