//! The `allsource.*` settings (GUCs).

use allsource_core::partition::{DEFAULT_PARTITIONS, MAX_PARTITIONS};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// Largest payload plus metadata of one event, in bytes of jsonb text.
pub static MAX_EVENT_BYTES: GucSetting<i32> = GucSetting::<i32>::new(1024 * 1024);

/// Whether committing appends send `NOTIFY allsource_events`.
pub static NOTIFY: GucSetting<bool> = GucSetting::<bool>::new(true);

/// The session's tenant: reads and writes are scoped to it.
pub static TENANT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// The tenant a superuser bound the session's role to (`ALTER ROLE … SET`).
pub static ROLE_TENANT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Partition count, read by CREATE EXTENSION only (sql/schema.sql).
static PARTITIONS: GucSetting<i32> = GucSetting::<i32>::new(DEFAULT_PARTITIONS);

/// The one database the workers serve; empty: every database with the extension.
pub static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// The most databases the workers serve at once (each has its own lanes).
pub static MAX_DATABASES: GucSetting<i32> = GucSetting::<i32>::new(8);

/// The largest `allsource.max_databases`: ticket numbers interleave the
/// databases' lanes, and stay apart across restarts only while they are few.
pub const MAX_MAX_DATABASES: i32 = 64;

/// Ingest workers, one per lane of the queue.
pub static INGEST_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(1);

/// Shared memory for queued events, in bytes.
pub static QUEUE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(8 * 1024 * 1024);

/// Ticket results the server keeps for `await_ticket`.
pub static TICKET_RESULTS: GucSetting<i32> = GucSetting::<i32>::new(1 << 19);

/// Most queued events a worker appends in one transaction.
pub static BATCH_MAX: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// How long a worker waits for a batch to fill, in ms.
pub static FLUSH_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(0);

/// How long an ingest worker waits for a lock (a stream's row), in ms; 0: no limit.
pub static INGEST_LOCK_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(200);

/// How long `enqueue` waits for room in a full queue, in ms.
pub static ENQUEUE_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(0);

/// How often, at most, the primary publishes its watermark for hot standbys, in ms.
pub static WATERMARK_PUBLISH_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(10);

/// How long a transaction may keep positions it took before it is cancelled, in ms; 0: no limit.
pub static MAX_APPEND_TRANSACTION_MS: GucSetting<i32> = GucSetting::<i32>::new(0);

/// The most ingest workers (lanes) the queue can have.
pub const MAX_INGEST_WORKERS: i32 = 64;

/// Workers that run the handlers of subscriptions.
pub static SUBSCRIPTION_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(1);

/// The most subscription workers.
pub const MAX_SUBSCRIPTION_WORKERS: i32 = 64;

pub fn register() {
    GucRegistry::define_int_guc(
        c"allsource.watermark_publish_interval_ms",
        c"How often, at most, the primary writes its watermark for hot standbys to replay.",
        c"Written only when it moved. 0 stops publishing: a standby's watermark then stays where it was.",
        &WATERMARK_PUBLISH_INTERVAL_MS,
        0,
        60_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"allsource.max_append_transaction_ms",
        c"Longest an appending transaction may stay open before it is cancelled.",
        c"Counted from its first append. A cancelled transaction no longer holds watermark() back; its next append and its COMMIT fail with SQLSTATE 25P04. Needs preloading (the watermark publisher cancels). 0: no limit.",
        &MAX_APPEND_TRANSACTION_MS,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"allsource.batch_max",
        c"Most queued events an ingest worker appends in one transaction.",
        c"",
        &BATCH_MAX,
        1,
        100_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"allsource.ingest_lock_timeout_ms",
        c"How long an ingest worker waits for a lock another transaction holds, such as a stream's row.",
        c"The events of a stream locked longer are tried once more and then rejected with SQLSTATE 55P03; the batch's other events go on. 0 waits without limit: one open transaction can then stall its lane.",
        &INGEST_LOCK_TIMEOUT_MS,
        0,
        60_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"allsource.flush_interval_ms",
        c"How long an ingest worker waits for a batch to fill before appending it.",
        c"0 appends what is queued at once; events that arrive meanwhile form the next batch.",
        &FLUSH_INTERVAL_MS,
        0,
        10_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"allsource.enqueue_timeout_ms",
        c"How long enqueue() waits for room when the queue is full.",
        c"0 raises SQLSTATE 53400 at once.",
        &ENQUEUE_TIMEOUT_MS,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"allsource.max_event_bytes",
        c"Largest event AllSource accepts: payload plus metadata, in bytes of jsonb text.",
        c"Appends of larger events fail with SQLSTATE 54000.",
        &MAX_EVENT_BYTES,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_BYTE,
    );
    GucRegistry::define_bool_guc(
        c"allsource.notify",
        c"Send NOTIFY allsource_events when a transaction that appended commits.",
        c"Commits hand their positions to a notifier worker, which sends at most one notification per partition every 10 ms (without preloading, each commit notifies itself). Turn it off where subscribers poll instead.",
        &NOTIFY,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"allsource.tenant",
        c"The tenant this session reads and writes as.",
        c"Appends record it; row-level security shows only its rows to roles that are not superusers. Empty: rows without a tenant.",
        &TENANT,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"allsource.role_tenant",
        c"The tenant a role is bound to: its sessions act for that tenant only.",
        c"Set by a superuser for a role (ALTER ROLE name SET allsource.role_tenant = 'acme'); such a session cannot change it, and allsource.tenant may then only repeat it.",
        &ROLE_TENANT,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"allsource.partitions",
        c"Number of partitions CREATE EXTENSION allsource creates.",
        c"Read once, when the extension is created; allsource.partition_count() reports the number in use.",
        &PARTITIONS,
        1,
        MAX_PARTITIONS,
        GucContext::Suset,
        GucFlags::default(),
    );
    // PostgreSQL accepts server-start settings only from a preloaded library.
    if crate::sql::backend::preloading() {
        register_server_start_settings();
    }
}

/// The ingest queue's shape, fixed when the server starts.
fn register_server_start_settings() {
    GucRegistry::define_string_guc(
        c"allsource.database",
        c"The only database AllSource's workers serve; empty: every database where the extension is created.",
        c"Set: enqueue() works, and the watermark is published for hot standbys, in that database only. Takes effect at server start.",
        &DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"allsource.max_databases",
        c"The most databases AllSource's workers serve at once, each with its own ingest queue.",
        c"Reserves that many times allsource.queue_size plus 40 bytes per allsource.ticket_results of shared memory, touched only as databases use it. Takes effect at server start.",
        &MAX_DATABASES,
        1,
        MAX_MAX_DATABASES,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"allsource.ingest_workers",
        c"Background workers that append queued events; each drains its own lane of the queue.",
        c"A stream always goes to the same lane, so its queued events are appended in the order they were enqueued. 0 disables the queue. Takes effect at server start.",
        &INGEST_WORKERS,
        0,
        MAX_INGEST_WORKERS,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"allsource.subscription_workers",
        c"Background workers that call subscriptions' handlers (0: none).",
        c"Per database the launcher serves; they share its handler subscriptions' members. Takes effect at server start.",
        &SUBSCRIPTION_WORKERS,
        0,
        MAX_SUBSCRIPTION_WORKERS,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"allsource.queue_size",
        c"Shared memory for queued events, shared equally by the lanes.",
        c"Events take 256-byte slots: about 70 bytes plus their ids, type, payload and metadata. Takes effect at server start.",
        &QUEUE_SIZE,
        64 * 1024,
        1024 * 1024 * 1024,
        GucContext::Postmaster,
        GucFlags::UNIT_BYTE,
    );
    GucRegistry::define_int_guc(
        c"allsource.ticket_results",
        c"How many recent tickets' results the server keeps for await_ticket().",
        c"40 bytes each in shared memory. An older ticket's result is gone: await_ticket() raises 22023. Takes effect at server start.",
        &TICKET_RESULTS,
        1024,
        1 << 28,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}

/// `allsource.database`: the one database the workers serve, if set.
pub fn database() -> Option<String> {
    DATABASE
        .get()
        .map(|d| d.to_string_lossy().into_owned())
        .filter(|d| !d.is_empty())
}

/// Whether the workers may serve the database named `name`.
pub fn serves_database(name: &str) -> bool {
    database().is_none_or(|only| only == name)
}

/// `allsource.max_event_bytes` as a byte count.
pub fn max_event_bytes() -> usize {
    MAX_EVENT_BYTES.get() as usize
}
