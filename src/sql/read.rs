//! `allsource.read_stream`: a stream's events, read straight from the index
//! of its own partition.
//!
//! A stream lives in one partition, `partition_for(stream_id)`. The read
//! opens `allsource.events_p<N>` and its `(stream_id, version)` index and
//! scans them the way PostgreSQL's catalog code scans its catalogs
//! (`systable_beginscan_ordered`), in the caller's snapshot, after a look at
//! the stream row in `allsource.streams` (deleted, tenant) the same way. A
//! statement on the partitioned `allsource.events`, what the function ran as
//! PL/pgSQL, locked all the partitions and pruned an append node over them
//! on every call; a statement on the partition through SPI still paid the
//! executor's start-up of four plan nodes and two copies of every row. The
//! numbers are in benches/README.md ("Instructions per append and per read").
//!
//! The function is a plain V1 C function returning its rows in a tuplestore
//! (materialize mode): the heap tuples go in as they are.

use crate::sql::raise::or_raise;
use crate::sql::select_one;
use crate::sql::tables::{attribute_number, index_on};
use crate::sql::tenant::session_tenant;
use allsource_core::error::{sqlstate, Error};
use allsource_core::partition::partition_for;
use allsource_core::validate;
use pgrx::fcinfo::{pg_get_nullable_datum, pg_getarg};
use pgrx::pg_sys::BuiltinOid::{INT8OID, TEXTOID, TIMESTAMPTZOID};
use pgrx::pg_sys::{AccessShareLock, NoLock, Oid};
use pgrx::prelude::*;
use pgrx::{PgMemoryContexts, PgTupleDesc};
use std::cell::Cell;
use std::ffi::CString;

thread_local! {
    /// The partition count of the `allsource.events` this backend last
    /// read, by that table's OID: fixed for as long as the table exists.
    static PARTITION_COUNT: Cell<Option<(Oid, u32)>> = const { Cell::new(None) };
}

#[no_mangle]
pub extern "C" fn pg_finfo_read_stream_rows() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// `allsource.read_stream(stream_id, from_version, max_count, backward)`,
/// declared in sql/finalize/reads.sql: versions >= `from_version`
/// ascending, or with `backward` versions <= `from_version` descending; at
/// most `max_count`. An unknown, deleted or other tenant's stream has none.
///
/// # Safety
/// PostgreSQL calls it through fmgr, with a valid `fcinfo`.
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn read_stream_rows(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: the arguments are the declared text, bigint, int, boolean;
    // the function is not STRICT, so that a NULL gets its 22023 below.
    let (stream_id, from_version, max_count, backward) = unsafe {
        (
            pg_getarg::<&str>(fcinfo, 0),
            pg_getarg::<i64>(fcinfo, 1),
            pg_getarg::<i32>(fcinfo, 2),
            pg_getarg::<bool>(fcinfo, 3),
        )
    };
    let request = (|| {
        Ok(Read {
            stream_id: validate::name("stream_id", stream_id)?,
            // SAFETY: argument 0 is there, and not NULL (validated).
            stream_id_text: unsafe { pg_get_nullable_datum(fcinfo, 0).value },
            from_version: validate::non_negative("from_version", from_version)?,
            max_count: validate::non_negative("max_count", max_count)?,
            backward: validate::required("backward", backward)?,
            tenant: session_tenant()?,
        })
    })();
    let read = or_raise(request);

    // SAFETY: fcinfo is valid (fmgr); the result set protocol of funcapi.h.
    unsafe {
        let (rsinfo, result_desc) = materialize_mode(fcinfo);
        let per_query = (*(*rsinfo).econtext).ecxt_per_query_memory;
        let random_access = (*rsinfo).allowedModes
            & pg_sys::SetFunctionReturnMode::SFRM_Materialize_Random as i32
            != 0;
        let (store, desc) = PgMemoryContexts::For(per_query).switch_to(|_| {
            (
                pg_sys::tuplestore_begin_heap(random_access, false, pg_sys::work_mem),
                pg_sys::CreateTupleDescCopy(result_desc),
            )
        });
        if read.max_count > 0 {
            read.scan(store, desc);
        }
        (*rsinfo).returnMode = pg_sys::SetFunctionReturnMode::SFRM_Materialize;
        (*rsinfo).setResult = store;
        (*rsinfo).setDesc = desc;
        pg_sys::Datum::from(0)
    }
}

/// One call's checked arguments.
struct Read<'a> {
    stream_id: &'a str,
    /// The same, as the text datum it was passed as, for the scan keys.
    stream_id_text: pg_sys::Datum,
    from_version: i64,
    max_count: i32,
    backward: bool,
    tenant: Option<String>,
}

impl Read<'_> {
    /// Puts the stream's events in `store`, laid out as `desc`.
    ///
    /// # Safety
    /// `store` and `desc` are valid, in memory that outlives the call; in a
    /// transaction with an active snapshot (a query is running).
    unsafe fn scan(&self, store: *mut pg_sys::Tuplestorestate, desc: pg_sys::TupleDesc) {
        // SAFETY: as the caller's; every relation opened here is closed
        // here, its lock kept to the end of the transaction as the
        // executor's are.
        unsafe {
            let schema = pg_sys::get_namespace_oid(c"allsource".as_ptr(), false);
            let Some(count) = partition_count(schema) else {
                return;
            };
            if !self.stream_is_readable(schema) {
                return;
            }
            let name = CString::new(format!("events_p{}", partition_for(self.stream_id, count)))
                .expect("no NUL");
            let relid = pg_sys::get_relname_relid(name.as_ptr(), schema);
            if relid == pg_sys::InvalidOid {
                return;
            }
            let events = pg_sys::table_open(relid, AccessShareLock as i32);
            // A partition detached from allsource.events is no longer the
            // store's (verify_all reports it): its events are not read.
            if !(*(*events).rd_rel).relispartition {
                pg_sys::table_close(events, NoLock as i32);
                return;
            }
            let stream_id = attribute_number(events, c"stream_id", TEXTOID);
            let version = attribute_number(events, c"version", INT8OID);
            let index_oid = index_on(events, &[stream_id, version], "(stream_id, version)");
            let index = pg_sys::index_open(index_oid, AccessShareLock as i32);
            let (strategy, procedure) = if self.backward {
                (pg_sys::BTLessEqualStrategyNumber, pg_sys::F_INT8LE)
            } else {
                (pg_sys::BTGreaterEqualStrategyNumber, pg_sys::F_INT8GE)
            };
            let mut keys = [
                pg_sys::ScanKeyData::default(),
                pg_sys::ScanKeyData::default(),
            ];
            pg_sys::ScanKeyInit(
                &mut keys[0],
                stream_id,
                pg_sys::BTEqualStrategyNumber as u16,
                pg_sys::F_TEXTEQ.into(),
                self.stream_id_text,
            );
            pg_sys::ScanKeyInit(
                &mut keys[1],
                version,
                strategy as u16,
                procedure.into(),
                self.from_version.into(),
            );
            // The partition's columns in another order or with other dropped
            // ones than allsource.events' (a table attached by hand, an
            // upgrade): each row is converted.
            let conversion = if same_layout((*events).rd_att, desc) {
                std::ptr::null_mut()
            } else {
                pg_sys::convert_tuples_by_name((*events).rd_att, desc)
            };
            let direction = if self.backward {
                pg_sys::ScanDirection::BackwardScanDirection
            } else {
                pg_sys::ScanDirection::ForwardScanDirection
            };
            let scan = pg_sys::systable_beginscan_ordered(
                events,
                index,
                pg_sys::GetActiveSnapshot(),
                2,
                keys.as_mut_ptr(),
            );
            for _ in 0..self.max_count {
                let mut tuple = pg_sys::systable_getnext_ordered(scan, direction);
                if tuple.is_null() {
                    break;
                }
                if !conversion.is_null() {
                    tuple = pg_sys::execute_attr_map_tuple(tuple, conversion);
                } else if stored_columns(tuple) < (*(*events).rd_att).natts {
                    // Written before a column was added: the added one's
                    // default lives in the table's descriptor, not the row.
                    tuple = pg_sys::heap_expand_tuple(tuple, (*events).rd_att);
                }
                pg_sys::tuplestore_puttuple(store, tuple);
            }
            pg_sys::systable_endscan_ordered(scan);
            pg_sys::index_close(index, NoLock as i32);
            pg_sys::table_close(events, NoLock as i32);
        }
    }

    /// Whether the stream has a row that is not deleted and is the
    /// session's tenant's.
    ///
    /// # Safety
    /// As [`Read::scan`]'s.
    unsafe fn stream_is_readable(&self, schema: Oid) -> bool {
        // SAFETY: as the caller's.
        unsafe {
            let relid = pg_sys::get_relname_relid(c"streams".as_ptr(), schema);
            let streams = pg_sys::table_open(relid, AccessShareLock as i32);
            let stream_id = attribute_number(streams, c"stream_id", TEXTOID);
            let deleted_at = attribute_number(streams, c"deleted_at", TIMESTAMPTZOID);
            let tenant_id = attribute_number(streams, c"tenant_id", TEXTOID);
            // The list fills rd_pkindex, the index on stream_id.
            pg_sys::RelationGetIndexList(streams);
            let index = pg_sys::index_open((*streams).rd_pkindex, AccessShareLock as i32);
            let mut key = pg_sys::ScanKeyData::default();
            pg_sys::ScanKeyInit(
                &mut key,
                stream_id,
                pg_sys::BTEqualStrategyNumber as u16,
                pg_sys::F_TEXTEQ.into(),
                self.stream_id_text,
            );
            let scan = pg_sys::systable_beginscan_ordered(
                streams,
                index,
                pg_sys::GetActiveSnapshot(),
                1,
                &mut key,
            );
            let row =
                pg_sys::systable_getnext_ordered(scan, pg_sys::ScanDirection::ForwardScanDirection);
            let readable = !row.is_null() && {
                let desc = (*streams).rd_att;
                let mut null = false;
                pg_sys::heap_getattr(row, deleted_at as i32, desc, &mut null);
                let deleted = !null;
                let tenant = pg_sys::heap_getattr(row, tenant_id as i32, desc, &mut null);
                !deleted && <&str>::from_datum(tenant, null) == self.tenant.as_deref()
            };
            pg_sys::systable_endscan_ordered(scan);
            pg_sys::index_close(index, NoLock as i32);
            pg_sys::table_close(streams, NoLock as i32);
            readable
        }
    }
}

/// The number of partitions of `allsource.events` in `schema`, `None`
/// without the table.
fn partition_count(schema: Oid) -> Option<u32> {
    // SAFETY: a name lookup in the catalog cache.
    let events = unsafe { pg_sys::get_relname_relid(c"events".as_ptr(), schema) };
    if events == pg_sys::InvalidOid {
        return None;
    }
    PARTITION_COUNT.with(|cached| match cached.get() {
        Some((oid, count)) if oid == events => Some(count),
        _ => {
            let count = select_one::<i32>("SELECT allsource.partition_count()")? as u32;
            cached.set(Some((events, count)));
            Some(count)
        }
    })
}

/// How many columns a heap tuple holds (`HeapTupleHeaderGetNatts`).
///
/// # Safety
/// `tuple` is a valid heap tuple.
unsafe fn stored_columns(tuple: pg_sys::HeapTuple) -> i32 {
    // SAFETY: as the caller's.
    unsafe { i32::from((*(*tuple).t_data).t_infomask2 & pg_sys::HEAP_NATTS_MASK as u16) }
}

/// Whether rows of `a` are laid out as rows of `b`: the same column types in
/// the same places, dropped ones too.
fn same_layout(a: pg_sys::TupleDesc, b: pg_sys::TupleDesc) -> bool {
    // SAFETY: two valid descriptors, neither freed nor released here.
    let (a, b) = unsafe {
        (
            PgTupleDesc::from_pg_unchecked(a),
            PgTupleDesc::from_pg_unchecked(b),
        )
    };
    a.len() == b.len()
        && a.iter().zip(b.iter()).all(|(x, y)| {
            x.attisdropped == y.attisdropped && (x.attisdropped || x.atttypid == y.atttypid)
        })
}

/// The caller's result set info and the row type it expects, or the error
/// of a call that cannot take a set back (what PostgreSQL's own
/// set-returning functions raise).
unsafe fn materialize_mode(
    fcinfo: pg_sys::FunctionCallInfo,
) -> (*mut pg_sys::ReturnSetInfo, pg_sys::TupleDesc) {
    // SAFETY: fcinfo is valid; resultinfo is a node or NULL.
    unsafe {
        let rsinfo = (*fcinfo).resultinfo as *mut pg_sys::ReturnSetInfo;
        let accepts = pgrx::is_a(rsinfo.cast(), pg_sys::NodeTag::T_ReturnSetInfo)
            && (*rsinfo).allowedModes & pg_sys::SetFunctionReturnMode::SFRM_Materialize as i32 != 0;
        if !accepts {
            or_raise::<()>(Err(Error::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "allsource.read_stream() was called in a context that cannot accept a set",
            )
            .with_hint("Call it in FROM: SELECT * FROM allsource.read_stream(…).")));
        }
        let mut desc: pg_sys::TupleDesc = std::ptr::null_mut();
        let class = pg_sys::get_call_result_type(fcinfo, std::ptr::null_mut(), &mut desc);
        assert_eq!(
            class,
            pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE,
            "read_stream returns SETOF allsource.events"
        );
        (rsinfo, desc)
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::test_support::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn read_stream_forward_backward_and_windows() {
        Spi::run("SELECT allsource.append_batch('read-stream-forward/s', (SELECT jsonb_agg(jsonb_build_object('type', 'T', 'payload', i)) FROM generate_series(1, 10) i))").unwrap();
        Spi::run("SELECT allsource.append('read-stream-forward/other', 'T', '0')").unwrap();
        let versions = |query: &str| -> String {
            one(&format!("SELECT coalesce(string_agg(version::text, ',' ORDER BY ord), '') FROM {query} WITH ORDINALITY AS r(position, partition_id, stream_id, version, event_id, event_type, tenant_id, payload, metadata, created_at, checksum, ord)"))
        };
        assert_eq!(
            versions("allsource.read_stream('read-stream-forward/s')"),
            "1,2,3,4,5,6,7,8,9,10"
        );
        assert_eq!(
            versions("allsource.read_stream('read-stream-forward/s', 8)"),
            "8,9,10"
        );
        assert_eq!(
            versions("allsource.read_stream('read-stream-forward/s', 2, 3)"),
            "2,3,4"
        );
        assert_eq!(
            versions("allsource.read_stream('read-stream-forward/s', 5, 2, true)"),
            "5,4"
        );
        assert_eq!(
            versions("allsource.read_stream('read-stream-forward/s', 100, 3, backward => true)"),
            "10,9,8"
        );
        assert_eq!(
            versions("allsource.read_stream('read-stream-forward/s', 1, 0)"),
            ""
        );
        assert_eq!(
            versions("allsource.read_stream('read-stream-forward/s', 11)"),
            ""
        );
        assert_eq!(versions("allsource.read_stream('missing')"), "");
        assert_eq!(
            one::<String>(
                "SELECT payload::text FROM allsource.read_stream('read-stream-forward/s', 3, 1)"
            ),
            "3"
        );
    }

    #[pg_test]
    fn read_stream_refuses_bad_arguments() {
        for (query, words) in [
            ("SELECT * FROM allsource.read_stream(NULL)", "\"stream_id\""),
            ("SELECT * FROM allsource.read_stream('')", "\"stream_id\""),
            (
                "SELECT * FROM allsource.read_stream('s', -1)",
                "\"from_version\"",
            ),
            (
                "SELECT * FROM allsource.read_stream('s', NULL)",
                "\"from_version\"",
            ),
            (
                "SELECT * FROM allsource.read_stream('s', 1, -1)",
                "\"max_count\"",
            ),
            (
                "SELECT * FROM allsource.read_stream('s', 1, NULL)",
                "\"max_count\"",
            ),
            (
                "SELECT * FROM allsource.read_stream('s', 1, 10, NULL)",
                "\"backward\"",
            ),
        ] {
            assert_fails(query, "22023", words);
        }
    }

    #[pg_test]
    fn read_stream_in_the_select_list_and_of_deleted_streams() {
        Spi::run("SELECT allsource.append_batch('select-list-1', '[{\"type\": \"A\", \"payload\": 1}, {\"type\": \"B\", \"payload\": 2}]')").unwrap();
        assert_eq!(
            one::<String>("SELECT string_agg((r).event_type, ',') FROM (SELECT allsource.read_stream('select-list-1') AS r) x"),
            "A,B"
        );
        Spi::run("SELECT allsource.delete_stream('select-list-1')").unwrap();
        assert_eq!(
            one::<i64>("SELECT count(*) FROM allsource.read_stream('select-list-1')"),
            0
        );
    }

    /// The statements a backend keeps name the columns of `allsource.events`
    /// as they were: a column added or dropped since (an upgrade) makes new ones.
    #[pg_test]
    fn read_stream_follows_a_change_of_columns() {
        Spi::run("SELECT allsource.append_batch('columns-1', '[{\"type\": \"A\", \"payload\": {\"n\": 1}}, {\"type\": \"B\", \"payload\": {\"n\": 2}}]')").unwrap();
        let read = || {
            one::<String>("SELECT string_agg(format('%s:%s', version, payload->>'n'), ',' ORDER BY version) FROM allsource.read_stream('columns-1')")
        };
        assert_eq!(read(), "1:1,2:2");
        Spi::run("ALTER TABLE allsource.events ADD COLUMN spare int, ADD COLUMN note text DEFAULT 'added'").unwrap();
        assert_eq!(
            one::<String>("SELECT string_agg(note, ',') FROM allsource.read_stream('columns-1')"),
            "added,added"
        );
        // A dropped column before a live one: the rows' columns shift.
        Spi::run("ALTER TABLE allsource.events DROP COLUMN spare").unwrap();
        assert_eq!(read(), "1:1,2:2");
        assert_eq!(
            one::<String>("SELECT string_agg(event_type || note, ',' ORDER BY version) FROM allsource.read_stream('columns-1')"),
            "Aadded,Badded"
        );
    }

    /// A table altered by hand: a clear error naming what is missing.
    #[pg_test]
    fn read_stream_refuses_a_table_altered_by_hand() {
        // First, as below: other tests' backends wait rather than deadlock.
        Spi::run("LOCK TABLE allsource.streams, allsource.events IN ACCESS EXCLUSIVE MODE")
            .unwrap();
        Spi::run("SELECT allsource.append('altered-1', 'A', '{}')").unwrap();
        Spi::run("ALTER TABLE allsource.events RENAME COLUMN version TO v").unwrap();
        assert_fails(
            "SELECT * FROM allsource.read_stream('altered-1')",
            "XX001",
            "has no column version",
        );
    }

    /// A partition whose columns are in another order than the parent's
    /// (attached by hand): its rows are converted to `allsource.events`' layout.
    #[pg_test]
    fn read_stream_converts_a_partition_of_another_layout() {
        // First, streams before events as appends and reads take them, so
        // that the other tests' backends wait for this one rather than
        // deadlock with the DETACH below.
        Spi::run("LOCK TABLE allsource.streams, allsource.events IN ACCESS EXCLUSIVE MODE")
            .unwrap();
        Spi::run("SELECT allsource.append_batch('layout-1', '[{\"type\": \"A\", \"payload\": {\"n\": 1}}, {\"type\": \"B\", \"payload\": {\"n\": 2}}]')").unwrap();
        reattach_partition_in_another_layout("layout-1");
        assert_eq!(
            one::<String>("SELECT string_agg(format('%s:%s:%s', version, event_type, payload->>'n'), ',' ORDER BY version) FROM allsource.read_stream('layout-1')"),
            "1:A:1,2:B:2"
        );
        assert_eq!(
            one::<String>("SELECT string_agg(version::text, ',') FROM allsource.read_stream('layout-1', 5, backward => true)"),
            "2,1"
        );
    }
}
