//! The subscription workers (`allsource.subscription_workers` per database,
//! started by the launcher): each runs the members of handler subscriptions
//! that fall to it, holding their leases, one transaction per member and
//! batch (`allsource._handle`: the handler's effects and the checkpoint
//! commit together). A commit that appended wakes them (the notification
//! board's listeners); otherwise they look again every second.

use super::lease;
use crate::settings;
use crate::sql::backend;
use crate::sql::background::{self, report, session};
use crate::sql::queue::Queue;
use crate::sql::{notify, spi};
use pgrx::prelude::*;
use pgrx::PgTryBuilder;
use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Events a worker hands to a handler in one transaction.
const BATCH: i32 = 1000;
/// The longest a worker sleeps without being woken.
const IDLE_NAP: Duration = Duration::from_secs(1);

/// From the launcher: subscription worker `n` of lane group `group`'s database.
pub fn start(group: u32, n: u32) -> bool {
    background::Worker {
        name: &format!("allsource subscription worker {n} of lane group {group}"),
        kind: "allsource subscription worker",
        function: "allsource_subscription_main",
        argument: pg_sys::Datum::from(group << 8 | n),
        // The launcher starts it again while its database is served.
        restart_after: None,
    }
    .start()
}

/// A subscription worker: runs its members until told to stop.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn allsource_subscription_main(argument: pg_sys::Datum) {
    let (group, n) = (argument.value() as u32 >> 8, argument.value() as u32 & 0xff);
    let queue = Queue::group(group).expect("workers start only when preloaded");
    let database = queue.database();
    background::connect(background::Database::Oid(database));
    if !queue.serves(database) {
        return;
    }
    // One worker per slot: a launcher that restarted may start a second.
    let slot = &queue.header().subscribers[n as usize];
    let running = slot.load(Ordering::SeqCst);
    if backend::is_running(running)
        || slot
            .compare_exchange(
                running,
                backend::process_id(),
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_err()
    {
        return;
    }
    let worker = i64::from(n);
    let workers = i64::from(settings::SUBSCRIPTION_WORKERS.get().max(1));
    notify::listen();
    log!("allsource subscription worker {n} started for lane group {group}");
    let mut held = BTreeSet::new();
    while !background::signals().stop {
        let members: BTreeSet<(i64, i32)> = background::transaction(members_of_handlers)
            .into_iter()
            .filter(|(subscription, member)| {
                (subscription + i64::from(*member)) % workers == worker
            })
            .collect();
        // Let go of what this worker no longer runs: a dropped subscription's
        // id comes back after DROP and CREATE EXTENSION.
        held.retain(|&(subscription, member)| {
            members.contains(&(subscription, member)) || {
                lease::release(subscription, member);
                false
            }
        });
        let mut busy = false;
        for &(subscription, member) in &members {
            if background::signals().stop {
                break;
            }
            // Another session holds it (a worker that is still stopping).
            if !lease::take(subscription, member) {
                continue;
            }
            held.insert((subscription, member));
            busy |= handle(subscription, member) == BATCH;
        }
        if !busy {
            // The last statistics would otherwise wait for the next batch.
            report::report_stats(true);
            report::report_idle("waiting for events to hand to subscription handlers");
            background::sleep(IDLE_NAP);
        }
    }
    log!("allsource subscription worker {n} stopped");
}

/// Every member of every subscription with a handler (none if the extension
/// is not installed here yet).
fn members_of_handlers() -> Vec<(i64, i32)> {
    let installed = crate::sql::select_one::<bool>(
        "SELECT pg_catalog.to_regclass('allsource.subscriptions') IS NOT NULL",
    );
    if installed != Some(true) {
        return Vec::new();
    }
    Spi::connect(|client| {
        spi(client.select(
            "SELECT m.subscription_id, m.member FROM allsource.subscriptions s \
             JOIN allsource.subscription_members m ON m.subscription_id OPERATOR(pg_catalog.=) s.subscription_id \
             WHERE s.handler IS NOT NULL ORDER BY 1, 2",
            None,
            &[],
        ))
        .filter_map(|row| Some((spi(row.get::<i64>(1))?, spi(row.get::<i32>(2))?)))
        .collect()
    })
}

/// One batch of the member in a transaction of its own, as allsource_worker;
/// returns how many events it handled (0 after an error, which is logged).
fn handle(subscription: i64, member: i32) -> i32 {
    report::report_running("handing events to a subscription handler");
    let handled = PgTryBuilder::new(AssertUnwindSafe(|| {
        background::transaction(|| {
            session::as_worker_role(|| {
                Spi::get_one_with_args::<i32>(
                    "SELECT allsource._handle($1, $2, $3)",
                    &[subscription.into(), member.into(), BATCH.into()],
                )
            })
        })
    }))
    .catch_others(|caught| {
        // SAFETY: after a caught error the transaction is still open (or
        // already aborted, which this also handles).
        unsafe { pg_sys::AbortCurrentTransaction() };
        let message = match &caught {
            pgrx::pg_sys::panic::CaughtError::PostgresError(r)
            | pgrx::pg_sys::panic::CaughtError::ErrorReport(r) => r.message().to_string(),
            pgrx::pg_sys::panic::CaughtError::RustPanic { ereport, .. } => ereport.message().to_string(),
        };
        warning!("allsource subscription worker: member {member} of subscription {subscription}: {message}");
        Ok(Ok(Some(0)))
    })
    .execute();
    match handled {
        Ok(Ok(Some(n))) => n,
        Ok(Ok(None)) => 0,
        Ok(Err(spi_error)) => panic!("allsource subscription worker: {spi_error}"),
        Err(error) => {
            warning!("allsource subscription worker: {}", error.message);
            0
        }
    }
}
