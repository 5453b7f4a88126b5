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

/// The number of the column `name` of `relation`; an error without it.
///
/// # Safety
/// `relation` is open.
pub(crate) unsafe fn attribute_number(relation: pg_sys::Relation, name: &CStr) -> i16 {
    // SAFETY: an open relation's descriptor; from_pg_unchecked neither
    // frees nor releases it.
    let found = unsafe {
        PgTupleDesc::from_pg_unchecked((*relation).rd_att)
            .iter()
            .find(|a| !a.attisdropped && CStr::from_ptr(a.attname.data.as_ptr()) == name)
            .map(|a| a.attnum)
    };
    found.unwrap_or_else(|| {
        or_raise(Err(Error::new(
            sqlstate::DATA_CORRUPTED,
            format!(
                "an AllSource table has no column {}",
                name.to_string_lossy()
            ),
        )
        .with_hint(ALTERED_HINT)))
    })
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
