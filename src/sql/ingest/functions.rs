//! The ingest queue's SQL functions: `enqueue` pushes an event into its
//! stream's lane and returns a ticket, `await_ticket` sleeps until a worker
//! published the ticket's result, `ingest_workers()` shows each lane.

use crate::settings;
use crate::sql::append::new_event;
use crate::sql::backend;
use crate::sql::background;
use crate::sql::jsonb::JsonbText;
use crate::sql::launcher;
use crate::sql::preload::require_preloaded;
use crate::sql::queue::{state_name, Claim, Lane, Queue};
use crate::sql::raise::or_raise;
use crate::sql::standby::refuse_on_standby;
use crate::sql::tenant;
use crate::sql::{select_one, stats, wake};
use allsource_core::error::{sqlstate, Error, Result, SqlState};
use allsource_core::ingest::{tenant_tag, Lookup, QueuedEvent, ResultCell, Status, TicketPlace};
use allsource_core::ring::{PushError, SLOT_BYTES};
use allsource_core::validate::ExpectedVersion;
use pgrx::prelude::*;
use pgrx::Uuid;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// This database's lane group, if this session may use it. The first
/// `enqueue` (`claim`) in a database the workers may serve but do not yet
/// (they start a moment after CREATE EXTENSION or a server start) claims
/// the group itself and wakes the launcher, which starts the workers.
fn queue_here(function: &str, claim: bool) -> Result<Queue> {
    refuse_on_standby(function)?;
    require_preloaded(function)?;
    if settings::INGEST_WORKERS.get() == 0 {
        return Err(Error::new(
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("{function} needs ingest workers"),
        )
        .with_hint("Set allsource.ingest_workers to 1 or more and restart PostgreSQL."));
    }
    let database = backend::database_id();
    if let Some(queue) = Queue::of_database(database) {
        return Ok(queue);
    }
    let here = backend::database_name(database).unwrap_or_default();
    if let Some(only) = settings::database().filter(|only| *only != here) {
        return Err(Error::new(
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("{function} works only in database \"{only}\", where the ingest workers append"),
        )
        .with_hint("Connect to that database, or set allsource.database to this one and restart PostgreSQL."));
    }
    // The launcher serves connectable databases that are not templates.
    let servable = select_one::<bool>(
        "SELECT datallowconn AND NOT datistemplate FROM pg_catalog.pg_database \
         WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database()",
    ) == Some(true);
    if claim && servable {
        match Queue::claim(database, 0) {
            Claim::Mine(queue) => {
                launcher::rescan_now();
                return Ok(queue);
            }
            Claim::Full => {
                return Err(Error::new(
                    sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                    format!("{function}: the ingest workers serve allsource.max_databases ({}) other databases already", settings::MAX_DATABASES.get()),
                )
                .with_hint("Raise allsource.max_databases (and max_worker_processes) and restart PostgreSQL, or drop a database the workers serve."));
            }
            Claim::Taken => {}
        }
    }
    Err(Error::new(
        sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("{function}: the ingest workers do not serve database \"{here}\""),
    )
    .with_detail(if servable {
        "Nothing was enqueued in it since the server started, or it is being dropped."
    } else {
        "They serve databases that allow connections and are not templates."
    }))
}

/// Queues an event for a background worker to append; returns its ticket at once.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn enqueue(
    stream_id: Option<&str>,
    event_type: Option<&str>,
    payload: Option<JsonbText>,
    metadata: default!(Option<JsonbText>, "NULL"),
    expected_version: default!(Option<i64>, "NULL"),
    event_id: default!(Option<Uuid>, "NULL"),
) -> i64 {
    let result = (|| {
        let (stream_id, event) = new_event(stream_id, event_type, payload, metadata, event_id)?;
        let expected = ExpectedVersion::from_arg(expected_version)?;
        let tenant = tenant::session_tenant()?;
        let queue = queue_here("allsource.enqueue()", true)?;
        let entry = QueuedEvent {
            stream_id: stream_id.to_string(),
            expected,
            event,
            tenant,
            enqueued_at: backend::clock_timestamp(),
        };
        push(queue, queue.lane_of(stream_id), &entry)
    })();
    or_raise(result)
}

/// Pushes `entry` into `lane`, waiting up to `allsource.enqueue_timeout_ms`
/// for room; returns its ticket.
fn push(queue: Queue, lane_no: u32, entry: &QueuedEvent) -> Result<i64> {
    let bytes = entry.encode();
    let lane = queue.lane(lane_no);
    let ring = queue.ring(lane_no);
    let deadline =
        Instant::now() + Duration::from_millis(settings::ENQUEUE_TIMEOUT_MS.get() as u64);
    loop {
        lane.producers.fetch_add(1, Ordering::SeqCst);
        let pushed = ring.push_with(&bytes, |position| {
            let ticket = queue.ticket(lane_no, position);
            queue
                .cell(TicketPlace {
                    lane: lane_no,
                    position,
                })
                .open(ticket, tenant_tag(entry.tenant.as_deref()));
        });
        if pushed.is_ok() {
            lane.queued.fetch_add(1, Ordering::Relaxed);
        }
        lane.producers.fetch_sub(1, Ordering::SeqCst);
        match pushed {
            Ok(position) => {
                if lane.sleeping.load(Ordering::SeqCst) {
                    wake_worker(lane);
                }
                stats::enqueued();
                return Ok(queue.ticket(lane_no, position));
            }
            Err(PushError::TooLarge {
                slots_needed,
                capacity,
            }) => {
                return Err(Error::new(
                    sqlstate::PROGRAM_LIMIT_EXCEEDED,
                    format!(
                        "event of {} bytes is too large for the ingest queue: it needs {slots_needed} slots of {SLOT_BYTES} bytes and a lane has {capacity}",
                        bytes.len()
                    ),
                )
                .with_hint("Append it with allsource.append(), or raise allsource.queue_size."));
            }
            Err(PushError::Full) if Instant::now() < deadline => {
                // The queue is overloaded: check again every millisecond.
                wait_on_latch(Duration::from_millis(1));
            }
            Err(PushError::Full) => {
                return Err(Error::new(sqlstate::CONFIGURATION_LIMIT_EXCEEDED, "the ingest queue is full")
                    .with_detail(format!(
                        "Lane {lane_no} holds {} events in {} slots.",
                        lane.queued.load(Ordering::Relaxed),
                        ring.capacity()
                    ))
                    .with_hint("Retry later, set allsource.enqueue_timeout_ms to wait for room, raise allsource.queue_size or allsource.ingest_workers, or use allsource.append()."));
            }
        }
    }
}

fn wake_worker(lane: &Lane) {
    let worker = lane.worker.load(Ordering::SeqCst);
    if worker > 0 {
        wake(worker - 1, Some(lane.worker_pid.load(Ordering::SeqCst)));
    }
}

/// Sleeps on this process's latch for at most `timeout`; cancellable.
fn wait_on_latch(timeout: Duration) {
    background::sleep(timeout);
    pgrx::check_for_interrupts!();
}

/// Waits until the ticket's event is appended or refused, or `timeout_ms` passes.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn await_ticket(
    ticket: Option<i64>,
    timeout_ms: default!(Option<i32>, 10000),
) -> TableIterator<
    'static,
    (
        name!(status, String),
        name!(version, Option<i64>),
        name!(position, Option<i64>),
    ),
> {
    let status = or_raise((|| {
        let ticket = allsource_core::validate::required("ticket", ticket)?;
        let timeout_ms = allsource_core::validate::non_negative("timeout_ms", timeout_ms)?;
        let queue = queue_here("allsource.await_ticket()", false)?;
        // Another tenant's ticket is answered as one never issued.
        let tenant = tenant_tag(tenant::session_tenant()?.as_deref());
        // Another database's ticket is never this group's either.
        let place = queue
            .place(ticket)
            .filter(|p| p.lane < queue.header().lanes)
            .filter(|&p| queue.cell(p).tenant() == tenant || queue.cell(p).ticket() != ticket)
            .ok_or_else(|| {
                Error::invalid_argument(
                    "ticket",
                    format!("{ticket} was not issued since the server last started"),
                )
                .with_hint("Results do not survive a restart. An event whose ticket never reported committed may be lost: look for it with read_stream and enqueue it again if it is missing.")
            })?;
        wait_for(
            queue.cell(place),
            ticket,
            Duration::from_millis(timeout_ms as u64),
        )
    })());
    if let Status::Rejected { sqlstate } = status {
        pgrx::notice!(
            "ticket {} was rejected with SQLSTATE {}: {}",
            ticket.unwrap_or_default(),
            sqlstate,
            rejection_reason(sqlstate)
        );
    }
    let (version, position) = match status {
        Status::Committed { version, position } => (Some(version), Some(position)),
        Status::Conflict { actual } => (Some(actual), None),
        Status::Pending | Status::Rejected { .. } => (None, None),
    };
    TableIterator::once((status.name().to_string(), version, position))
}

fn rejection_reason(code: SqlState) -> &'static str {
    match code {
        sqlstate::STREAM_DELETED => "the stream is deleted",
        sqlstate::EVENT_ID_REUSED => "the event id belongs to another event",
        sqlstate::LOCK_NOT_AVAILABLE => {
            "another transaction held the stream's row longer than allsource.ingest_lock_timeout_ms; allsource.ingest_workers() names it"
        }
        sqlstate::DEADLOCK_DETECTED | sqlstate::SERIALIZATION_FAILURE => {
            "the worker's transaction kept failing on a conflict with other transactions"
        }
        _ => "the worker could not append it; the server log says why",
    }
}

/// Blocks on this backend's latch until `cell` holds `ticket`'s result, or
/// `timeout` passes (then the status is still `Pending`). A cancel while
/// sleeping leaves our registration behind: at worst one spurious wake-up.
fn wait_for(cell: &ResultCell, ticket: i64, timeout: Duration) -> Result<Status> {
    let me = backend::procno().expect("a backend has a PGPROC");
    let deadline = Instant::now() + timeout;
    let mut registered = false;
    let outcome =
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match cell.lookup(ticket) {
                Lookup::Found(Status::Pending) if !left.is_zero() => {}
                Lookup::Found(status) => break Ok(status),
                Lookup::Expired => break Err(Error::invalid_argument(
                    "ticket",
                    format!("the result of {ticket} is no longer kept"),
                )
                .with_detail(
                    "The server keeps the results of its last allsource.ticket_results tickets.",
                )
                .with_hint("Await tickets sooner, or raise allsource.ticket_results.")),
                Lookup::Unknown => {
                    break Err(Error::invalid_argument(
                        "ticket",
                        format!("{ticket} was never issued"),
                    ))
                }
            }
            if !registered {
                registered = cell.register_waiter(me);
                if registered {
                    // Look again before sleeping: the worker publishes, then wakes.
                    continue;
                }
            }
            // Registered: sleep until woken. Another backend waits on this
            // ticket too and holds the wake-up: poll.
            let nap = if registered {
                left
            } else {
                left.min(Duration::from_millis(5))
            };
            wait_on_latch(nap);
        };
    if registered {
        cell.unregister_waiter(me);
    }
    outcome
}

/// One row per ingest worker: what it is doing and what it did.
#[pg_extern(volatile, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::type_complexity)]
fn ingest_workers() -> TableIterator<
    'static,
    (
        name!(worker, i32),
        name!(pid, Option<i32>),
        name!(state, String),
        name!(queued_events, i64),
        name!(batches, i64),
        name!(events, i64),
        name!(last_batch_size, i32),
        name!(lock_timeouts, i64),
        name!(blocked_by, Option<i32>),
        name!(blocked_by_xid, Option<i64>),
        name!(blocked_at, Option<TimestampWithTimeZone>),
    ),
> {
    or_raise(require_preloaded("allsource.ingest_workers()"));
    let workers = settings::INGEST_WORKERS.get();
    // Where the workers do not serve this database (yet), every one is stopped.
    let Some(queue) = Queue::of_database(backend::database_id()) else {
        let stopped = (0..workers).map(|n| {
            let name = state_name(crate::sql::queue::STOPPED).to_string();
            (n, None, name, 0, 0, 0, 0, 0, None, None, None)
        });
        return TableIterator::new(stopped.collect::<Vec<_>>());
    };
    let rows: Vec<_> = queue
        .lanes()
        .take(workers as usize)
        .map(|(n, lane)| {
            let running = lane.worker.load(Ordering::SeqCst) != 0;
            let blocked_at = lane.blocked_at.load(Ordering::SeqCst);
            let blocked = blocked_at != 0;
            (
                n as i32,
                running.then(|| lane.worker_pid.load(Ordering::SeqCst)),
                state_name(lane.state.load(Ordering::SeqCst)).to_string(),
                lane.queued.load(Ordering::Relaxed).max(0),
                lane.batches.load(Ordering::Relaxed) as i64,
                lane.events.load(Ordering::Relaxed) as i64,
                lane.last_batch.load(Ordering::Relaxed) as i32,
                lane.lock_timeouts.load(Ordering::Relaxed) as i64,
                Some(lane.blocker_pid.load(Ordering::SeqCst)).filter(|&pid| blocked && pid != 0),
                blocked.then(|| i64::from(lane.blocker_xid.load(Ordering::SeqCst))),
                blocked.then(|| {
                    TimestampWithTimeZone::try_from(blocked_at).expect("a valid timestamp")
                }),
            )
        })
        .collect();
    TableIterator::new(rows)
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::test_support::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn enqueue_checks_arguments_first_then_the_database() {
        let cases = [
            (
                "SELECT allsource.enqueue(NULL, 'T', '{}')",
                "22023",
                "\"stream_id\"",
            ),
            (
                "SELECT allsource.enqueue('s', '', '{}')",
                "22023",
                "\"event_type\"",
            ),
            (
                "SELECT allsource.enqueue('s', 'T', NULL)",
                "22023",
                "\"payload\"",
            ),
            (
                "SELECT allsource.enqueue('s', 'T', '{}', expected_version => -7)",
                "22023",
                "\"expected_version\"",
            ),
            (
                "SELECT allsource.enqueue('s', 'T', to_jsonb(repeat('x', 1100000)))",
                "54000",
                "payload",
            ),
            // The test server's workers serve only database postgres (lib.rs).
            (
                "SELECT allsource.enqueue('s', 'T', '{}')",
                "55000",
                "\"postgres\"",
            ),
            (
                "SELECT * FROM allsource.await_ticket(1)",
                "55000",
                "\"postgres\"",
            ),
        ];
        for (query, code, words) in cases {
            assert_fails(query, code, words);
        }
    }
}
