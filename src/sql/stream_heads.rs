//! The rows of `allsource.streams` an append locks and then advances,
//! without SPI: the primary key scanned in a new snapshot (what a new
//! statement would see), the row locked as `SELECT … FOR UPDATE` locks it
//! (the table AM's `tuple_lock`: in READ COMMITTED it follows a concurrent
//! update to the newest version, in REPEATABLE READ and SERIALIZABLE that is
//! a serialization failure), then updated with `simple_heap_update` (HOT
//! when the page has room, new index entries otherwise). Creating a missing
//! row stays an SPI `INSERT … ON CONFLICT DO NOTHING` in the append, which
//! waits for a concurrent creator; the next round of locks finds the row.
//! Only the row of a stream whose name was made for the append (no one
//! else can create it) is inserted here directly.
//!
//! The statement trigger of the write guard does not fire for these updates:
//! they are the extension's own. Privileges are checked as `UPDATE` would.

use crate::sql::backend::in_a_statement_snapshot;
use crate::sql::direct_insert::{check_privileges, DirectInsert, IndexEntries};
use crate::sql::raise::or_raise;
use crate::sql::tables::{attribute_number, refuse_what_a_direct_write_skips, table, Write};
use allsource_core::checksum::GENESIS;
use allsource_core::error::{sqlstate, Error};
use allsource_core::plan::StreamHead;
use pgrx::pg_sys::BuiltinOid::{BYTEAOID, INT4OID, INT8OID, TEXTOID, TIMESTAMPTZOID};
use pgrx::pg_sys::{self, Datum, RowExclusiveLock};
use pgrx::{FromDatum, IntoDatum};

/// `allsource.streams` opened to lock and update rows.
pub(crate) struct StreamRows {
    relation: pg_sys::Relation,
    index: pg_sys::Relation,
    slot: *mut pg_sys::TupleTableSlot,
    /// Opened at the first update that is not HOT.
    entries: Option<IndexEntries>,
    columns: Columns,
}

/// The numbers of the columns read and written.
struct Columns {
    stream_id: i16,
    partition_id: i16,
    version: i16,
    tenant_id: i16,
    last_checksum: i16,
    deleted_at: i16,
    updated_at: i16,
}

/// A locked row: the head the append decides on, and the row it updates.
pub(crate) struct LockedRow {
    pub(crate) head: StreamHead,
    tuple: pg_sys::HeapTuple,
}

impl StreamRows {
    /// Opens the table with the lock an `UPDATE` takes, kept to the end of
    /// the transaction, after the privilege checks of `SELECT … FOR UPDATE`
    /// and `UPDATE`.
    pub(crate) fn open() -> StreamRows {
        // SAFETY: in a transaction; what is opened here `close` closes (or
        // the transaction's abort).
        unsafe {
            let relid = table(c"streams");
            check_privileges(relid, &[pg_sys::ACL_SELECT, pg_sys::ACL_UPDATE]);
            let relation = pg_sys::table_open(relid, RowExclusiveLock as i32);
            refuse_what_a_direct_write_skips(relation, Write::Update);
            let column = |name, type_oid| attribute_number(relation, name, type_oid);
            let columns = Columns {
                stream_id: column(c"stream_id", TEXTOID),
                partition_id: column(c"partition_id", INT4OID),
                version: column(c"version", INT8OID),
                tenant_id: column(c"tenant_id", TEXTOID),
                last_checksum: column(c"last_checksum", BYTEAOID),
                deleted_at: column(c"deleted_at", TIMESTAMPTZOID),
                updated_at: column(c"updated_at", TIMESTAMPTZOID),
            };
            // The list fills rd_pkindex, the index on stream_id.
            pg_sys::RelationGetIndexList(relation);
            let index = pg_sys::index_open((*relation).rd_pkindex, RowExclusiveLock as i32);
            StreamRows {
                relation,
                index,
                slot: pg_sys::table_slot_create(relation, std::ptr::null_mut()),
                entries: None,
                columns,
            }
        }
    }

    /// Locks the rows of `stream_ids` in that order; `None` for a stream
    /// without a row that a new statement would see.
    pub(crate) fn lock(&mut self, stream_ids: &[&str]) -> Vec<Option<LockedRow>> {
        // An append earlier in this statement is seen.
        in_a_statement_snapshot(|| {
            stream_ids
                .iter()
                // SAFETY: the table and index are open, the snapshot pushed.
                .map(|id| unsafe { self.lock_one(id) })
                .collect()
        })
    }

    /// # Safety
    /// As [`StreamRows::lock`]'s, with the snapshot pushed.
    unsafe fn lock_one(&mut self, stream_id: &str) -> Option<LockedRow> {
        // SAFETY: as the caller's.
        unsafe {
            let snapshot = pg_sys::GetActiveSnapshot();
            let mut key = pg_sys::ScanKeyData::default();
            pg_sys::ScanKeyInit(
                &mut key,
                self.columns.stream_id,
                pg_sys::BTEqualStrategyNumber as u16,
                pg_sys::F_TEXTEQ.into(),
                stream_id.into_datum().expect("text"),
            );
            let scan = pg_sys::systable_beginscan_ordered(
                self.relation,
                self.index,
                snapshot,
                1,
                &mut key,
            );
            let found =
                pg_sys::systable_getnext_ordered(scan, pg_sys::ScanDirection::ForwardScanDirection);
            let mut tid = (!found.is_null()).then(|| (*found).t_self);
            pg_sys::systable_endscan_ordered(scan);
            let mut failure = pg_sys::TM_FailureData::default();
            let result = {
                let tid = tid.as_mut()?;
                let in_transaction_snapshot =
                    pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32;
                // As ExecLockRows.
                let flags = if in_transaction_snapshot {
                    pg_sys::TUPLE_LOCK_FLAG_LOCK_UPDATE_IN_PROGRESS as u8
                } else {
                    (pg_sys::TUPLE_LOCK_FLAG_LOCK_UPDATE_IN_PROGRESS
                        | pg_sys::TUPLE_LOCK_FLAG_FIND_LAST_VERSION) as u8
                };
                let tuple_lock = (*(*self.relation).rd_tableam)
                    .tuple_lock
                    .expect("a table AM locks tuples");
                let (relation, slot) = (self.relation, self.slot);
                let cid = pg_sys::GetCurrentCommandId(true);
                // A raw function pointer: its errors (lock_timeout, deadlock,
                // cancel) must unwind through the Rust frames, not jump past them.
                pg_sys::ffi::pg_guard_ffi_boundary(|| {
                    tuple_lock(
                        relation,
                        tid,
                        snapshot,
                        slot,
                        cid,
                        pg_sys::LockTupleMode::LockTupleExclusive,
                        pg_sys::LockWaitPolicy::LockWaitBlock,
                        flags,
                        &mut failure,
                    )
                })
            };
            match result {
                pg_sys::TM_Result::TM_Ok => Some(self.locked_row()),
                // Gone since the scan: the append creates it again.
                pg_sys::TM_Result::TM_Deleted
                    if pg_sys::XactIsoLevel < pg_sys::XACT_REPEATABLE_READ as i32 =>
                {
                    None
                }
                pg_sys::TM_Result::TM_Updated | pg_sys::TM_Result::TM_Deleted => {
                    or_raise(Err(Error::new(
                        sqlstate::SERIALIZATION_FAILURE,
                        format!("could not serialize access to stream \"{stream_id}\" due to a concurrent append"),
                    )
                    .with_hint("Retry the transaction.")))
                }
                other => or_raise(Err(Error::new(
                    sqlstate::INTERNAL_ERROR,
                    format!("the row of stream \"{stream_id}\" could not be locked (table AM result {other})"),
                ))),
            }
        }
    }

    /// The row in the slot, copied out of the buffer, and its head.
    ///
    /// # Safety
    /// The slot holds the row just locked.
    unsafe fn locked_row(&self) -> LockedRow {
        // SAFETY: as the caller's; the copy lives in the current memory
        // context, past the slot's next row.
        unsafe {
            let mut should_free = false;
            let tuple = pg_sys::heap_copytuple(pg_sys::ExecFetchSlotHeapTuple(
                self.slot,
                false,
                &mut should_free,
            ));
            let desc = (*self.relation).rd_att;
            let column = |number: i16| {
                let mut null = false;
                let value = pg_sys::heap_getattr(tuple, number as i32, desc, &mut null);
                (value, null)
            };
            let value = |number: i16| column(number).0;
            let checksum = column(self.columns.last_checksum);
            let tenant = column(self.columns.tenant_id);
            let head = StreamHead {
                partition_id: value(self.columns.partition_id).value() as i32,
                version: value(self.columns.version).value() as i64,
                last_checksum: <Vec<u8>>::from_datum(checksum.0, checksum.1)
                    .and_then(|c| c.try_into().ok())
                    .unwrap_or(GENESIS),
                deleted: !column(self.columns.deleted_at).1,
                tenant: String::from_datum(tenant.0, tenant.1),
            };
            LockedRow { head, tuple }
        }
    }

    /// Inserts the row (version 0) of `stream_id`, a stream whose name was
    /// made for this append so that no other transaction can create it, and
    /// returns it as [`StreamRows::lock`] would after creating it: the row
    /// is this transaction's until it commits.
    pub(crate) fn create_new(
        &mut self,
        stream_id: &str,
        partition_id: i32,
        tenant: Option<&str>,
    ) -> LockedRow {
        let mut insert = DirectInsert::open_table(
            c"streams",
            &[
                (c"stream_id", TEXTOID),
                (c"partition_id", INT4OID),
                (c"version", INT8OID),
                (c"tenant_id", TEXTOID),
                (c"created_at", TIMESTAMPTZOID),
                (c"updated_at", TIMESTAMPTZOID),
            ],
        );
        let now = crate::sql::backend::transaction_timestamp();
        let tuple = insert.insert_and_copy(&[
            stream_id.into_datum(),
            partition_id.into_datum(),
            0i64.into_datum(),
            tenant.into_datum(),
            Some(now.into()),
            Some(now.into()),
        ]);
        insert.close();
        // SAFETY: in a transaction. The append's update of the row is then
        // a later command's, which may change it.
        unsafe { pg_sys::CommandCounterIncrement() };
        LockedRow {
            head: StreamHead {
                partition_id,
                version: 0,
                last_checksum: GENESIS,
                deleted: false,
                tenant: tenant.map(str::to_owned),
            },
            tuple,
        }
    }

    /// Writes the stream's new version and last checksum into its locked row.
    pub(crate) fn advance(&mut self, row: &LockedRow, version: i64, last_checksum: &[u8]) {
        let now = crate::sql::backend::transaction_timestamp();
        let mut columns = [
            i32::from(self.columns.version),
            i32::from(self.columns.last_checksum),
            i32::from(self.columns.updated_at),
        ];
        let mut values: [Datum; 3] = [
            version.into(),
            last_checksum.into_datum().expect("bytea"),
            now.into(),
        ];
        let mut nulls = [false; 3];
        // SAFETY: the row is locked by this transaction, so no one else can
        // have updated it (simple_heap_update raises if someone had).
        unsafe {
            let new = pg_sys::heap_modify_tuple_by_cols(
                row.tuple,
                (*self.relation).rd_att,
                3,
                columns.as_mut_ptr(),
                values.as_mut_ptr(),
                nulls.as_mut_ptr(),
            );
            let mut old = (*row.tuple).t_self;
            #[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15"))]
            let only_summarizing = {
                pg_sys::simple_heap_update(self.relation, &mut old, new);
                (!pg_sys::HeapTupleHeaderIsHeapOnly((*new).t_data)).then_some(false)
            };
            #[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15")))]
            let only_summarizing = {
                let mut update_indexes = pg_sys::TU_UpdateIndexes::TU_None;
                pg_sys::simple_heap_update(self.relation, &mut old, new, &mut update_indexes);
                match update_indexes {
                    pg_sys::TU_UpdateIndexes::TU_None => None,
                    pg_sys::TU_UpdateIndexes::TU_Summarizing => Some(true),
                    _ => Some(false),
                }
            };
            // Not a HOT update: the new version needs index entries.
            match only_summarizing {
                Some(only_summarizing) => self
                    .entries
                    .get_or_insert_with(|| IndexEntries::open(self.relation))
                    .insert(new, true, only_summarizing),
                None => pg_sys::heap_freetuple(new),
            }
        }
    }

    /// Closes the index and the table (the locks stay).
    pub(crate) fn close(self) {
        // SAFETY: what `open` opened, released once.
        unsafe {
            pg_sys::ExecDropSingleTupleTableSlot(self.slot);
            if let Some(entries) = self.entries {
                entries.close();
            }
            pg_sys::index_close(self.index, pg_sys::NoLock as i32);
            pg_sys::table_close(self.relation, pg_sys::NoLock as i32);
        }
    }
}
