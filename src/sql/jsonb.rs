//! jsonb arguments as text: PostgreSQL's own jsonb output, which is the
//! canonical text the checksum covers and the size limit measures. pgrx's
//! `JsonB` would parse that text with serde_json, which refuses values
//! nested deeper than 128 levels that PostgreSQL accepts.

use pgrx::callconv::{Arg, ArgAbi};
use pgrx::nullable::Nullable;
use pgrx::prelude::*;
use pgrx::{direct_function_call, FromDatum};
use std::ffi::CStr;

/// A jsonb argument's text, and the datum it was passed as (valid for the
/// call: an append stores it as it came instead of parsing the text again).
pub struct JsonbText(pub String, pub pg_sys::Datum);

impl FromDatum for JsonbText {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<JsonbText> {
        if is_null {
            return None;
        }
        // SAFETY: a non-null datum of a jsonb argument; jsonb_out detoasts it.
        unsafe {
            let text = direct_function_call::<&CStr>(pg_sys::jsonb_out, &[Some(datum)])
                .expect("jsonb_out returns text");
            let owned = text.to_string_lossy().into_owned();
            pg_sys::pfree(text.as_ptr() as *mut std::ffi::c_void);
            Some(JsonbText(owned, datum))
        }
    }
}

// SAFETY: the SQL type is jsonb and FromDatum above reads a jsonb datum.
unsafe impl<'fcx> ArgAbi<'fcx> for JsonbText {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        // SAFETY: as for pgrx's own jsonb arguments.
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or_else(|| panic!("argument {index} must not be null"))
    }

    unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
        // SAFETY: as above.
        unsafe { arg.unbox_arg_using_from_datum() }.into()
    }
}

pgrx::impl_sql_translatable!(JsonbText, arg_only = "jsonb");
