//! The extension's tables as the direct paths open them (`read_stream`, the
//! append's inserts and stream rows): found by name, their columns by name,
//! and the error of a table altered by hand (`XX001`).

use crate::sql::raise::or_raise;
use allsource_core::error::{sqlstate, Error};
use pgrx::pg_sys::{self, Oid};
use pgrx::PgTupleDesc;
use std::ffi::CStr;

/// The hint of every error about a table altered by hand.
pub(crate) const ALTERED_HINT: &str =
    "Run allsource.verify_all(); reinstall the extension from a backup if its tables were altered.";

/// The extension's table `allsource.<name>`.
pub(crate) fn table(name: &CStr) -> Oid {
    // SAFETY: name lookups in the catalog cache.
    unsafe {
        let schema = pg_sys::get_namespace_oid(c"allsource".as_ptr(), false);
        let relid = pg_sys::get_relname_relid(name.as_ptr(), schema);
        assert_ne!(relid, pg_sys::InvalidOid, "allsource.{name:?} exists");
        relid
    }
}

/// The number of the column `name` of `relation`, which must be of the type
/// `type_oid`; an error without it.
///
/// # Safety
/// `relation` is open.
pub(crate) unsafe fn attribute_number(
    relation: pg_sys::Relation,
    name: &CStr,
    type_oid: pg_sys::BuiltinOid,
) -> i16 {
    // SAFETY: an open relation's descriptor; from_pg_unchecked neither
    // frees nor releases it.
    let found = unsafe {
        PgTupleDesc::from_pg_unchecked((*relation).rd_att)
            .iter()
            .find(|a| !a.attisdropped && CStr::from_ptr(a.attname.data.as_ptr()) == name)
            .map(|a| (a.attnum, a.atttypid))
    };
    match found {
        Some((number, found_type)) => {
            // SAFETY: as above.
            unsafe { check_type(relation, name, found_type, type_oid) };
            number
        }
        None => or_raise(Err(Error::new(
            sqlstate::DATA_CORRUPTED,
            format!(
                "an AllSource table has no column {}",
                name.to_string_lossy()
            ),
        )
        .with_hint(ALTERED_HINT))),
    }
}

/// The valid btree index of `relation` whose first key columns are
/// `columns`, without a predicate or expressions: one whose scan, like the
/// planner's, sees every row (named `names` in the error without one,
/// `XX001`).
///
/// # Safety
/// `relation` is open.
pub(crate) unsafe fn index_on(relation: pg_sys::Relation, columns: &[i16], names: &str) -> Oid {
    // SAFETY: the relation's index list (a copy) and each index's pg_index
    // row from the catalog cache, released at once.
    let found = unsafe {
        let list = pg_sys::RelationGetIndexList(relation);
        let length = if list.is_null() {
            0
        } else {
            (*list).length as usize
        };
        (0..length)
            .map(|i| (*(*list).elements.add(i)).oid_value)
            .find(|&oid| {
                let row = pg_sys::SearchSysCache1(
                    pg_sys::SysCacheIdentifier::INDEXRELID as i32,
                    oid.into(),
                );
                if row.is_null() {
                    return false;
                }
                let index = pg_sys::GETSTRUCT(row) as *const pg_sys::FormData_pg_index;
                let keys = (*index)
                    .indkey
                    .values
                    .as_slice((*index).indnkeyatts as usize);
                let whole = pg_sys::heap_attisnull(
                    row,
                    pg_sys::Anum_pg_index_indpred as i32,
                    std::ptr::null_mut(),
                ) && pg_sys::heap_attisnull(
                    row,
                    pg_sys::Anum_pg_index_indexprs as i32,
                    std::ptr::null_mut(),
                );
                let matches = (*index).indisvalid && whole && keys.starts_with(columns);
                pg_sys::ReleaseSysCache(row);
                matches && is_btree(oid)
            })
    };
    // SAFETY: as the caller's.
    found.unwrap_or_else(|| unsafe { altered(relation, &format!("has no index on {names}")) })
}

/// Whether the relation `oid` (an index) is a btree.
///
/// # Safety
/// In a transaction.
unsafe fn is_btree(oid: Oid) -> bool {
    // SAFETY: a pg_class row from the catalog cache, released at once.
    unsafe {
        let row = pg_sys::SearchSysCache1(pg_sys::SysCacheIdentifier::RELOID as i32, oid.into());
        if row.is_null() {
            return false;
        }
        let relam = (*(pg_sys::GETSTRUCT(row) as *const pg_sys::FormData_pg_class)).relam;
        pg_sys::ReleaseSysCache(row);
        relam == pg_sys::BTREE_AM_OID
    }
}

/// Raises `XX001` unless the column `name` of `relation` has the type
/// `expected`: the direct paths read and write its datums as that type.
///
/// # Safety
/// `relation` is open.
pub(crate) unsafe fn check_type(
    relation: pg_sys::Relation,
    name: &CStr,
    found: Oid,
    expected: pg_sys::BuiltinOid,
) {
    if found != expected.value() {
        let what = format!(
            "has a column {} of another type than AllSource's",
            name.to_string_lossy()
        );
        // SAFETY: as the caller's.
        unsafe { altered(relation, &what) };
    }
}

/// Raises `XX001` if `relation` is not a heap table or has what the direct
/// paths would skip and a statement would run: `CHECK` constraints, stored generated columns, or
/// row triggers on `operation` (the write guard's are statement triggers).
///
/// # Safety
/// `relation` is open.
pub(crate) unsafe fn refuse_what_a_direct_write_skips(
    relation: pg_sys::Relation,
    operation: Write,
) {
    // SAFETY: the relation's descriptor and trigger descriptor (or NULL).
    unsafe {
        if (*(*relation).rd_rel).relam != pg_sys::HEAP_TABLE_AM_OID {
            altered(relation, "is not a heap table");
        }
        let constraints = (*(*relation).rd_att).constr;
        if !constraints.is_null()
            && ((*constraints).num_check > 0 || (*constraints).has_generated_stored)
        {
            altered(relation, "has CHECK constraints or generated columns");
        }
        let triggers = (*relation).trigdesc;
        let row_triggers = !triggers.is_null()
            && match operation {
                Write::Insert => {
                    (*triggers).trig_insert_before_row
                        || (*triggers).trig_insert_after_row
                        || (*triggers).trig_insert_new_table
                }
                Write::Update => {
                    (*triggers).trig_update_before_row
                        || (*triggers).trig_update_after_row
                        || (*triggers).trig_update_old_table
                        || (*triggers).trig_update_new_table
                }
            };
        if row_triggers {
            altered(
                relation,
                "has row triggers, which AllSource's writes do not fire",
            );
        }
    }
}

/// What a direct path does to a table.
#[derive(Clone, Copy)]
pub(crate) enum Write {
    Insert,
    Update,
}

/// Raises the error of the AllSource table `relation`, altered by hand so
/// that `what` (`XX001`).
///
/// # Safety
/// `relation` is open.
pub(crate) unsafe fn altered(relation: pg_sys::Relation, what: &str) -> ! {
    // SAFETY: the relation's name, from its open descriptor.
    let name = unsafe { CStr::from_ptr((*(*relation).rd_rel).relname.data.as_ptr()) };
    or_raise(Err(Error::new(
        sqlstate::DATA_CORRUPTED,
        format!("the AllSource table {} {what}", name.to_string_lossy()),
    )
    .with_hint(ALTERED_HINT)))
}
