//! Rows put into the extension's tables without SPI and without a plan,
//! the way `COPY FROM` and the catalog code write: a heap tuple formed in
//! the table's own column order, `simple_heap_insert`, then the table's
//! index entries (`ExecInsertIndexTuples`, which also checks unique keys and
//! computes expression indexes). The WAL is the executor's, so crash
//! recovery, replication and logical decoding see ordinary inserts.
//!
//! What a planned `INSERT` did besides, and why these rows do without it:
//! the privilege check is made here (the workers write as a role with
//! `INSERT` rights only); the write guard's statement triggers do not fire,
//! since these are the extension's own writes; row-level security is not
//! evaluated, since the writers are the tables' owner, which it exempts, and
//! `allsource_worker`, whose policy admits every row; the tables have no
//! `CHECK` constraints and no row triggers, and the values come from the
//! append path, which never leaves a `NOT NULL` column empty. A table
//! altered by hand so that these rows would be wrong raises `XX001`.

use crate::sql::raise::or_raise;
use crate::sql::tables::{altered, check_type, refuse_what_a_direct_write_skips, table, Write};
use allsource_core::error::{sqlstate, Error};
use pgrx::pg_sys::{self, BuiltinOid, Datum, Oid, RowExclusiveLock};
use pgrx::{PgMemoryContexts, PgTupleDesc};
use std::ffi::CStr;

/// One table opened for inserts, with its indexes.
pub(crate) struct DirectInsert {
    relation: pg_sys::Relation,
    entries: IndexEntries,
    /// For each of the table's columns, where its value is in a row
    /// (`None`: a dropped column, or one added by hand that stays NULL).
    columns: Vec<Option<usize>>,
    values: Vec<Datum>,
    nulls: Vec<bool>,
}

impl DirectInsert {
    /// Opens the table `relid` for rows whose values come in the order of
    /// `names`, after checking that the current user may insert into
    /// `privileges_of` (the table a statement would have named: for a
    /// partition, its parent). The lock is `RowExclusiveLock`, kept to the
    /// end of the transaction as the executor's is.
    pub(crate) fn open(
        relid: Oid,
        privileges_of: Oid,
        names: &[(&CStr, BuiltinOid)],
    ) -> DirectInsert {
        check_privileges(privileges_of, &[pg_sys::ACL_INSERT]);
        // SAFETY: in a transaction; what is opened here `close` closes (or
        // the transaction's abort).
        unsafe {
            let relation = pg_sys::table_open(relid, RowExclusiveLock as i32);
            refuse_what_a_direct_write_skips(relation, Write::Insert);
            let columns = column_sources(relation, names);
            let width = columns.len();
            DirectInsert {
                relation,
                entries: IndexEntries::open(relation),
                columns,
                values: vec![Datum::from(0); width],
                nulls: vec![true; width],
            }
        }
    }

    /// [`DirectInsert::open`] for the extension's own (unpartitioned) table
    /// `allsource.<name>`.
    pub(crate) fn open_table(name: &CStr, names: &[(&CStr, BuiltinOid)]) -> DirectInsert {
        let relid = table(name);
        DirectInsert::open(relid, relid, names)
    }

    /// Inserts one row: `row[i]` is the value of `names[i]` (`None`: NULL).
    pub(crate) fn insert(&mut self, row: &[Option<Datum>]) {
        let tuple = self.write(row);
        // SAFETY: the tuple was just inserted; the slot of the index
        // entries takes it and frees it.
        unsafe { self.entries.insert(tuple, false, false) };
    }

    /// [`DirectInsert::insert`], returning a copy of the row written, with
    /// its `t_self`, in the current memory context.
    pub(crate) fn insert_and_copy(&mut self, row: &[Option<Datum>]) -> pg_sys::HeapTuple {
        let tuple = self.write(row);
        // SAFETY: as in `insert`, the copy made before the slot takes it.
        unsafe {
            let copy = pg_sys::heap_copytuple(tuple);
            self.entries.insert(tuple, false, false);
            copy
        }
    }

    /// The row formed in the table's column order and put in the heap.
    fn write(&mut self, row: &[Option<Datum>]) -> pg_sys::HeapTuple {
        for (column, source) in self.columns.iter().enumerate() {
            let value = source.and_then(|i| row[i]);
            self.nulls[column] = value.is_none();
            self.values[column] = value.unwrap_or(Datum::from(0));
        }
        // SAFETY: the values are datums of the columns' types (the append
        // path builds them so); the relation is open.
        unsafe {
            let tuple = pg_sys::heap_form_tuple(
                (*self.relation).rd_att,
                self.values.as_mut_ptr(),
                self.nulls.as_mut_ptr(),
            );
            pg_sys::simple_heap_insert(self.relation, tuple);
            tuple
        }
    }

    /// Closes the indexes and the table (the lock stays).
    pub(crate) fn close(self) {
        // SAFETY: what `open` opened, released once.
        unsafe {
            self.entries.close();
            pg_sys::table_close(self.relation, pg_sys::NoLock as i32);
        }
    }
}

/// The index entries of a table's new rows, made as the executor makes
/// them: an executor state for expression indexes' values, the table's
/// indexes open.
pub(crate) struct IndexEntries {
    estate: *mut pg_sys::EState,
    result: *mut pg_sys::ResultRelInfo,
    slot: *mut pg_sys::TupleTableSlot,
}

impl IndexEntries {
    /// # Safety
    /// `relation` is open, and stays open until [`IndexEntries::close`].
    pub(crate) unsafe fn open(relation: pg_sys::Relation) -> IndexEntries {
        // SAFETY: as the caller's; the state lives in its own memory context.
        unsafe {
            let estate = pg_sys::CreateExecutorState();
            let (result, slot) = PgMemoryContexts::For((*estate).es_query_cxt).switch_to(|_| {
                let result: *mut pg_sys::ResultRelInfo =
                    pgrx::PgBox::<pg_sys::ResultRelInfo>::alloc_node(
                        pg_sys::NodeTag::T_ResultRelInfo,
                    )
                    .into_pg();
                // Range table index 0: no statement, so no columns
                // "updated" to consult (an update leaves every key as it was).
                pg_sys::InitResultRelInfo(result, relation, 0, std::ptr::null_mut(), 0);
                pg_sys::ExecOpenIndices(result, false);
                // A deferred unique check would need the executor's queue.
                for i in 0..(*result).ri_NumIndices as usize {
                    let index = *(*result).ri_IndexRelationDescs.add(i);
                    if !(*(*index).rd_index).indimmediate {
                        altered(relation, "has a deferrable unique index");
                    }
                }
                let slot = pg_sys::MakeSingleTupleTableSlot(
                    (*relation).rd_att,
                    &raw const pg_sys::TTSOpsHeapTuple,
                );
                (result, slot)
            });
            #[cfg(feature = "pg13")]
            {
                (*estate).es_result_relation_info = result;
            }
            IndexEntries {
                estate,
                result,
                slot,
            }
        }
    }

    /// Makes the index entries of `tuple`, just stored in the table, and
    /// frees it: for a new row, or (`update`) for a new version that was not
    /// a HOT update (`only_summarizing`: of which only summarizing indexes
    /// need entries).
    ///
    /// # Safety
    /// `tuple` was just inserted into the table, or is the new version an
    /// update just wrote.
    pub(crate) unsafe fn insert(
        &mut self,
        tuple: pg_sys::HeapTuple,
        update: bool,
        only_summarizing: bool,
    ) {
        let (no_conflict, no_arbiters) = (std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: as the caller's; no arbiter indexes, no speculative
        // insertion. The slot frees the tuple when the next one is stored.
        unsafe {
            pg_sys::ExecStoreHeapTuple(tuple, self.slot, true);
            #[cfg(feature = "pg13")]
            {
                let _ = (update, only_summarizing);
                pg_sys::ExecInsertIndexTuples(
                    self.slot,
                    self.estate,
                    false,
                    no_conflict,
                    no_arbiters,
                );
            }
            #[cfg(any(feature = "pg14", feature = "pg15"))]
            {
                let _ = only_summarizing;
                pg_sys::ExecInsertIndexTuples(
                    self.result,
                    self.slot,
                    self.estate,
                    update,
                    false,
                    no_conflict,
                    no_arbiters,
                );
            }
            #[cfg(any(feature = "pg16", feature = "pg17", feature = "pg18"))]
            pg_sys::ExecInsertIndexTuples(
                self.result,
                self.slot,
                self.estate,
                update,
                false,
                no_conflict,
                no_arbiters,
                only_summarizing,
            );
            // Expression indexes' values are computed in per-tuple memory.
            let per_tuple = (*self.estate).es_per_tuple_exprcontext;
            if !per_tuple.is_null() {
                pg_sys::MemoryContextReset((*per_tuple).ecxt_per_tuple_memory);
            }
        }
    }

    /// Closes the indexes and frees the state.
    ///
    /// # Safety
    /// Once, with the table still open.
    pub(crate) unsafe fn close(self) {
        // SAFETY: as the caller's.
        unsafe {
            pg_sys::ExecDropSingleTupleTableSlot(self.slot);
            pg_sys::ExecCloseIndices(self.result);
            pg_sys::FreeExecutorState(self.estate);
        }
    }
}

/// The executor's privilege check of a statement on the table `relid`:
/// each privilege of `modes` (ACL bits) for the current user, else `42501`.
pub(crate) fn check_privileges(relid: Oid, modes: &[u32]) {
    for &mode in modes {
        // SAFETY: catalog lookups; aclcheck_error raises.
        unsafe {
            let allowed = pg_sys::pg_class_aclcheck(relid, pg_sys::GetUserId(), mode as _);
            if allowed != pg_sys::AclResult::ACLCHECK_OK {
                pg_sys::aclcheck_error(
                    allowed,
                    pg_sys::ObjectType::OBJECT_TABLE,
                    pg_sys::get_rel_name(relid),
                );
            }
        }
    }
}

/// For each column of `relation`, the position of its name in `names`;
/// `None` for a dropped column and for one added by hand that may be NULL
/// and has no default (what an `INSERT` that does not name it stores). Any
/// other column the append path does not write is an error: a row without
/// it would be wrong.
///
/// # Safety
/// `relation` is open.
unsafe fn column_sources(
    relation: pg_sys::Relation,
    names: &[(&CStr, BuiltinOid)],
) -> Vec<Option<usize>> {
    // SAFETY: an open relation's descriptor, neither freed nor released.
    let desc = unsafe { PgTupleDesc::from_pg_unchecked((*relation).rd_att) };
    desc.iter()
        .map(|attribute| {
            if attribute.attisdropped {
                return None;
            }
            // SAFETY: attname is a NUL-terminated NameData.
            let name = unsafe { CStr::from_ptr(attribute.attname.data.as_ptr()) };
            let found = names.iter().position(|(n, _)| *n == name);
            if let Some(at) = found {
                // SAFETY: as above.
                unsafe { check_type(relation, name, attribute.atttypid, names[at].1) };
            } else if attribute.attnotnull || attribute.atthasdef {
                let what = format!("has a column {name:?} that AllSource does not write");
                // SAFETY: as above.
                unsafe { altered(relation, &what) };
            }
            found
        })
        .collect()
}

/// The leaf partition of the list-partitioned `parent` that holds rows
/// whose partition key is `key`, as the executor routes them; the error
/// PostgreSQL raises for a row no partition takes (`23514`) otherwise, and
/// `XX001` for a partition partitioned by hand.
///
/// # Safety
/// `parent` is open and list-partitioned on one int4 column.
pub(crate) unsafe fn partition_holding(parent: pg_sys::Relation, key: i32) -> Oid {
    // SAFETY: the partition descriptor lives in the relcache entry while
    // the relation is open; its arrays have the lengths they state.
    let found = unsafe {
        #[cfg(feature = "pg13")]
        let partitions = pg_sys::RelationGetPartitionDesc(parent);
        #[cfg(not(feature = "pg13"))]
        let partitions = pg_sys::RelationGetPartitionDesc(parent, true);
        let bounds = (*partitions).boundinfo;
        let datums = if bounds.is_null() {
            &[][..]
        } else {
            std::slice::from_raw_parts((*bounds).datums, (*bounds).ndatums as usize)
        };
        // Not a default partition, if one was attached by hand: read_stream
        // reads the partition the stream's id names.
        datums
            .iter()
            .position(|datum| (**datum).value() as i32 == key)
            .map(|i| {
                let part = *(*bounds).indexes.add(i) as usize;
                (
                    *(*partitions).oids.add(part),
                    *(*partitions).is_leaf.add(part),
                )
            })
    };
    match found {
        Some((oid, true)) => oid,
        // SAFETY: the parent is open.
        Some((_, false)) => unsafe {
            altered(parent, "has a partition that is partitioned itself")
        },
        None => or_raise(Err(Error::new(
            sqlstate::CHECK_VIOLATION,
            format!("no partition of relation \"events\" found for partition_id {key}"),
        )
        .with_hint(
            "Run allsource.verify_all(); a partition of allsource.events was detached or dropped.",
        ))),
    }
}
