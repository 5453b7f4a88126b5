//! `allsource.read_stream`: a stream's events, read from its own partition.
//!
//! A stream lives in one partition, `partition_for(stream_id)`, so the read
//! goes to `allsource.events_p<N>` by a statement prepared once per backend
//! for that partition. A statement on the partitioned `allsource.events`
//! (what the function ran when it was PL/pgSQL) locks all the partitions
//! and prunes an append node over them on every call: about half of its
//! cost over a plain `SELECT`, per `benches/append_instructions.sh`.
//!
//! The function is a plain V1 C function returning its rows in a
//! tuplestore (materialize mode): pgrx's set-returning wrappers build each
//! row as a Rust value, where the rows here are already tuples.

use crate::sql::raise::or_raise;
use crate::sql::tenant::session_tenant;
use crate::sql::GenericPlans;
use crate::sql::{oid, spi};
use allsource_core::error::{sqlstate, Error};
use allsource_core::partition::partition_for;
use allsource_core::validate;
use pgrx::datum::DatumWithOid;
use pgrx::fcinfo::pg_getarg;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiResult};
use pgrx::{PgMemoryContexts, PgTupleDesc};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;

/// At most this many statements are kept per backend (two per partition
/// read, one per direction): the default 32 partitions fit; a store of
/// 1,024 partitions read all over starts again when it is full rather than
/// keeping 2,048 plans in every backend.
const MAX_KEPT_STATEMENTS: usize = 128;

/// What a backend keeps to read streams, for the events' row type as it
/// was when they were prepared.
struct Reader {
    /// A copy of that row type, in TopMemoryContext.
    row_type: pg_sys::TupleDesc,
    partition_count: u32,
    /// The live columns of `allsource.events`, in order, as `e.<name>`.
    columns: String,
    statements: HashMap<(u32, bool), OwnedPreparedStatement>,
}

thread_local! {
    static READER: RefCell<Option<Reader>> = const { RefCell::new(None) };
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
        spi(Spi::connect(|client| read.run(client, desc, store)));
        (*rsinfo).returnMode = pg_sys::SetFunctionReturnMode::SFRM_Materialize;
        (*rsinfo).setResult = store;
        (*rsinfo).setDesc = desc;
        pg_sys::Datum::from(0)
    }
}

/// One call's checked arguments.
struct Read<'a> {
    stream_id: &'a str,
    from_version: i64,
    max_count: i32,
    backward: bool,
    tenant: Option<String>,
}

impl Read<'_> {
    /// Runs the partition's statement and puts its rows in `store`.
    fn run(
        &self,
        client: &SpiClient,
        desc: pg_sys::TupleDesc,
        store: *mut pg_sys::Tuplestorestate,
    ) -> SpiResult<()> {
        READER.with(|cell| {
            let mut reader = cell.borrow_mut();
            // Another row type: the extension was created again (perhaps
            // with another partition count), or an upgrade changed the
            // columns, since this backend prepared its statements.
            let same_columns = |r: &Reader| {
                // SAFETY: both are valid tuple descriptors.
                unsafe { pg_sys::equalTupleDescs(r.row_type, desc) }
            };
            if !reader.as_ref().is_some_and(same_columns) {
                *reader = Some(Reader::new(client, desc));
            }
            let reader = reader.as_mut().expect("set above");
            let key = (
                partition_for(self.stream_id, reader.partition_count),
                self.backward,
            );
            if reader.statements.len() >= MAX_KEPT_STATEMENTS
                && !reader.statements.contains_key(&key)
            {
                reader.statements.clear();
            }
            let columns = &reader.columns;
            let statement = reader
                .statements
                .entry(key)
                .or_insert_with(|| prepare(client, columns, key.0, key.1));
            let _generic = GenericPlans::new();
            // '' is no tenant's name: the statement compares COALESCE(tenant_id, '').
            let args: [DatumWithOid; 4] = [
                self.stream_id.into(),
                self.from_version.into(),
                self.max_count.into(),
                self.tenant.as_deref().unwrap_or("").into(),
            ];
            client.select(&*statement, None, &args)?;
            // SAFETY: the rows of the statement just run.
            unsafe { store_rows(store, desc) };
            Ok(())
        })
    }
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

impl Drop for Reader {
    fn drop(&mut self) {
        // SAFETY: the copy made in `new`, used by nothing else.
        unsafe { pg_sys::FreeTupleDesc(self.row_type) }
    }
}

impl Reader {
    fn new(client: &SpiClient, desc: pg_sys::TupleDesc) -> Reader {
        let partition_count = spi(client
            .select("SELECT allsource.partition_count()", Some(1), &[])
            .and_then(|rows| rows.first().get_one::<i32>()))
        .expect("partition_count() is a count");
        Reader {
            // SAFETY: a copy of a valid descriptor, kept for the session.
            row_type: unsafe {
                PgMemoryContexts::TopMemoryContext.switch_to(|_| pg_sys::CreateTupleDescCopy(desc))
            },
            partition_count: partition_count as u32,
            columns: live_columns(desc),
            statements: HashMap::new(),
        }
    }
}

/// `e.position, e.partition_id, …`: the row type's columns that are not
/// dropped, quoted.
fn live_columns(desc: pg_sys::TupleDesc) -> String {
    // SAFETY: desc is a valid tuple descriptor, not reference counted (a
    // copy); quote_identifier returns its argument or a palloc'd copy.
    unsafe {
        PgTupleDesc::from_pg_unchecked(desc)
            .iter()
            .filter(|a| !a.attisdropped)
            .map(|a| {
                let quoted = CStr::from_ptr(pg_sys::quote_identifier(a.attname.data.as_ptr()));
                format!("e.{}", quoted.to_str().expect("column names are UTF-8"))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The read of one partition in one direction. The stream row gates it (an
/// `EXISTS` without a reference to the events is a one-time filter): no
/// rows for a deleted stream or another tenant's.
fn prepare(
    client: &SpiClient,
    columns: &str,
    partition: u32,
    backward: bool,
) -> OwnedPreparedStatement {
    let (compare, order) = if backward { ("<=", "DESC") } else { (">=", "") };
    let sql = format!(
        "SELECT {columns} FROM allsource.events_p{partition} e \
         WHERE e.stream_id OPERATOR(pg_catalog.=) $1 AND e.version OPERATOR(pg_catalog.{compare}) $2 \
           AND EXISTS (SELECT FROM allsource.streams s \
                       WHERE s.stream_id OPERATOR(pg_catalog.=) $1 AND s.deleted_at IS NULL \
                         AND COALESCE(s.tenant_id, '') OPERATOR(pg_catalog.=) $4) \
         ORDER BY e.version {order} LIMIT $3"
    );
    let args = [oid::<String>(), oid::<i64>(), oid::<i32>(), oid::<String>()];
    spi(client.prepare(sql.as_str(), &args)).keep()
}

/// Copies the rows of the last SPI statement into `store`, laid out as
/// `desc` (whose dropped columns, if any, are NULL).
unsafe fn store_rows(store: *mut pg_sys::Tuplestorestate, desc: pg_sys::TupleDesc) {
    // SAFETY: SPI_tuptable holds the statement's SPI_processed rows until
    // SPI_finish; the tuplestore copies each row into its own memory.
    unsafe {
        let table = pg_sys::SPI_tuptable;
        let desc_attributes = PgTupleDesc::from_pg_unchecked(desc);
        let dropped: Vec<bool> = desc_attributes.iter().map(|a| a.attisdropped).collect();
        let natts = dropped.len();
        let live = (*(*table).tupdesc).natts as usize;
        let mut row_values = vec![pg_sys::Datum::from(0); live];
        let mut row_nulls = vec![false; live];
        let mut values = vec![pg_sys::Datum::from(0); natts];
        let mut nulls = vec![true; natts];
        for i in 0..pg_sys::SPI_processed as usize {
            let tuple = *(*table).vals.add(i);
            pg_sys::heap_deform_tuple(
                tuple,
                (*table).tupdesc,
                row_values.as_mut_ptr(),
                row_nulls.as_mut_ptr(),
            );
            let mut column = 0;
            for (slot, &is_dropped) in dropped.iter().enumerate() {
                if !is_dropped {
                    values[slot] = row_values[column];
                    nulls[slot] = row_nulls[column];
                    column += 1;
                }
            }
            pg_sys::tuplestore_putvalues(store, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        }
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
}
