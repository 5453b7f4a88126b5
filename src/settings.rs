//! The `allsource.*` settings (GUCs).

use crate::partition::{DEFAULT_PARTITIONS, MAX_PARTITIONS};
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};

/// Largest payload plus metadata of one event, in bytes of jsonb text.
pub static MAX_EVENT_BYTES: GucSetting<i32> = GucSetting::<i32>::new(1024 * 1024);

/// Whether committing appends send `NOTIFY allsource_events`.
pub static NOTIFY: GucSetting<bool> = GucSetting::<bool>::new(true);

/// Partition count, read by CREATE EXTENSION only (sql/schema.sql).
static PARTITIONS: GucSetting<i32> = GucSetting::<i32>::new(DEFAULT_PARTITIONS);

pub fn register() {
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
        c"One notification per partition per transaction. Each notifying commit takes PostgreSQL's notification lock, which serialises those commits: turn it off where subscribers poll instead.",
        &NOTIFY,
        GucContext::Userset,
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
}

/// `allsource.max_event_bytes` as a byte count.
pub fn max_event_bytes() -> usize {
    MAX_EVENT_BYTES.get() as usize
}
