//! Dynamic consistency boundaries in SQL: `append_if`, the condition
//! `read_query` and `query_head` read by, and the locks every append takes
//! ([`allsource_core::boundary`] decides which, and argues why they suffice).

use crate::settings;
use crate::sql::append::{append_one, GenericPlans};
use crate::sql::jsonb::JsonbText;
use crate::sql::raise::or_raise;
use crate::sql::standby::refuse_on_standby;
use crate::sql::stats::{self, Call};
use crate::sql::{oid, spi, tenant};
use allsource_core::batch::{parse_batch_text, NewEvent};
use allsource_core::boundary::{self, array_literal, Mode, Query};
use allsource_core::error::{sqlstate, Error, Result};
use allsource_core::plan::Request;
use allsource_core::validate::{self, ExpectedVersion};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::{PgOid, Uuid};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::time::Instant;

/// The class (`objsubid` in `pg_locks`) of AllSource's advisory locks.
/// `pg_advisory_lock` and its kin use 1 and 2, so no SQL role can take
/// these keys, or hold one to stall the appends.
const LOCK_CLASS: u16 = 0x4153;

/// Prepared checks kept per backend, one per query shape; beyond, the
/// cache starts over (a shape is as many items, each with types, tags or both).
const MAX_CACHED_CHECKS: usize = 256;

/// Appends `events` unless an event matching `fail_if_events_match` (of the
/// session's tenant) lies after `after_position`; in `stream_id`, or in a
/// new stream of their own.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn append_if(
    events: Option<JsonbText>,
    fail_if_events_match: default!(Option<JsonbText>, "NULL"),
    after_position: default!(Option<i64>, "NULL"),
    stream_id: default!(Option<&str>, "NULL"),
) -> TableIterator<'static, (name!(first_position, i64), name!(last_position, i64))> {
    let started = Instant::now();
    let result = (|| {
        refuse_on_standby("allsource.append_if()")?;
        needs_read_committed("allsource.append_if")?;
        let events = parse_batch_text(
            &validate::required("events", events)?.0,
            settings::max_event_bytes(),
        )?;
        let condition = fail_if_events_match
            .map(|text| parse_query("fail_if_events_match", &text.0))
            .transpose()?
            .flatten();
        if after_position.is_some_and(|after| after < 0) {
            return Err(Error::invalid_argument(
                "after_position",
                "must be 0 or more (or NULL: any position)",
            ));
        }
        let stream = match stream_id {
            Some(_) => validate::name("stream_id", stream_id)?.to_owned(),
            None => own_stream(&events),
        };
        let tenant = tenant::session_tenant()?;
        let keys = boundary::locks(condition.as_ref(), event_keys(&events));
        lock(&boundary::lock_order(
            keys.into_iter()
                .map(|(key, mode)| (tenant.as_deref(), key, mode)),
        ));
        // After the locks, in a statement of its own: its snapshot sees
        // every event whose writer could have conflicted (docs/design.md).
        if let Some(condition) = &condition {
            let after = after_position.unwrap_or(0);
            if let Some(position) = first_match(condition, after, tenant.as_deref(), &events) {
                return Err(condition_failed(position, after_position));
            }
        }
        append_one(&stream, &events, ExpectedVersion::from_arg(None)?)
    })();
    let a = or_raise(stats::direct_append(result, Call::AppendBatch, started));
    TableIterator::once((a.first_position, a.last_position))
}

/// The events' stream when the caller names none: `$dcb-` and the first
/// event's id (so a retry with the same ids finds its events again), or a
/// new time-ordered id.
fn own_stream(events: &[NewEvent]) -> String {
    let id = events[0].event_id.unwrap_or_else(uuid::Uuid::now_v7);
    format!("$dcb-{id}")
}

/// `read_query`'s and `query_head`'s query as an SQL condition on
/// `allsource.events e`, its names quoted as literals (by PostgreSQL's own
/// quoting, whatever the session's settings). 22023 names the bad part.
#[pg_extern(immutable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn _query_condition(query: Option<JsonbText>) -> String {
    let parsed = or_raise(match query {
        None => Ok(None),
        Some(text) => parse_query("query", &text.0),
    })
    .unwrap_or_default();
    parsed.sql(|names| format!("{}::text[]", quote_literal(&array_literal(names))))
}

fn quote_literal(text: &str) -> String {
    let text = CString::new(text).expect("names hold no NUL: text cannot");
    // SAFETY: quote_literal_cstr reads a C string and returns a new palloc'd one.
    unsafe { CStr::from_ptr(pg_sys::quote_literal_cstr(text.as_ptr())) }
        .to_str()
        .expect("quoting keeps UTF-8")
        .to_owned()
}

/// A query from its jsonb text; `None` for JSON `null`.
fn parse_query(argument: &str, text: &str) -> Result<Option<Query>> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        Error::invalid_argument(argument, format!("cannot be read as a query ({e})"))
    })?;
    if value.is_null() {
        return Ok(None);
    }
    Query::parse(argument, Some(&value)).map(Some)
}

fn event_keys(events: &[NewEvent]) -> impl Iterator<Item = (&str, &[String])> {
    events
        .iter()
        .map(|event| (event.event_type.as_str(), event.tags.as_slice()))
}

/// The locks of appending `requests`' events: SHARE on each event's keys,
/// of the request's tenant.
pub(crate) fn writer_locks(requests: &[Request]) -> Vec<(u64, Mode)> {
    boundary::lock_order(requests.iter().flat_map(|request| {
        boundary::locks(None, event_keys(request.events))
            .into_iter()
            .map(|(key, mode)| (request.tenant, key, mode))
    }))
}

/// Takes `locks` (in [`boundary::lock_order`]'s order) until the
/// transaction ends; waits as long as `lock_timeout` lets it, and joins
/// PostgreSQL's deadlock detection like any lock.
pub(crate) fn lock(locks: &[(u64, Mode)]) {
    // SAFETY: MyDatabaseId is set for the life of a backend connected to a database.
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    for &(id, mode) in locks {
        let tag = pg_sys::LOCKTAG {
            locktag_field1: database,
            locktag_field2: (id >> 32) as u32,
            locktag_field3: id as u32,
            locktag_field4: LOCK_CLASS,
            locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
            locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
        };
        let mode = match mode {
            Mode::Share => pg_sys::ShareLock,
            Mode::Exclusive => pg_sys::ExclusiveLock,
        } as pg_sys::LOCKMODE;
        // SAFETY: a transaction lock (released at its end) on a tag built
        // above; errors (deadlock, lock_timeout) are raised as PostgreSQL errors.
        unsafe {
            pg_sys::LockAcquire(&tag, mode, false, false);
        }
    }
}

/// 0A000 unless READ COMMITTED: a condition is checked with a snapshot
/// taken after the locks, which an older transaction snapshot is not.
fn needs_read_committed(function: &str) -> Result<()> {
    // SAFETY: a backend-local variable.
    let level = unsafe { pg_sys::XactIsoLevel };
    if level < pg_sys::XACT_REPEATABLE_READ as i32 {
        return Ok(());
    }
    Err(Error::new(
        sqlstate::FEATURE_NOT_SUPPORTED,
        format!("{function} needs READ COMMITTED"),
    )
    .with_detail("Under REPEATABLE READ or SERIALIZABLE the transaction's snapshot predates the append's locks, so the condition could miss a conflicting event.")
    .with_hint("Run conditional appends in a READ COMMITTED transaction (the default)."))
}

/// The first position after `after` of an event of `tenant` matching
/// `condition`, other than `events` themselves (a retry finds its own).
fn first_match(
    condition: &Query,
    after: i64,
    tenant: Option<&str>,
    events: &[NewEvent],
) -> Option<i64> {
    let mut names: Vec<Vec<String>> = Vec::new();
    let first_name = if tenant.is_some() { 4 } else { 3 };
    let matching = condition.sql(|list| {
        names.push(list.to_vec());
        format!("${}", first_name + names.len() - 1)
    });
    let tenant_is = if tenant.is_some() {
        "e.tenant_id OPERATOR(pg_catalog.=) $3"
    } else {
        "e.tenant_id IS NULL"
    };
    // "+ 0": not an index scan in position order, filtering for the match;
    // the match's own indexes find the few candidates.
    let sql = format!(
        "SELECT pg_catalog.min(e.position OPERATOR(pg_catalog.+) 0) FROM allsource.events e \
         WHERE e.position OPERATOR(pg_catalog.>) $1 AND e.event_id OPERATOR(pg_catalog.<>) ALL ($2) \
           AND {tenant_is} AND {matching}"
    );
    let own: Vec<Uuid> = events
        .iter()
        .filter_map(|event| event.event_id)
        .map(|id| Uuid::from_bytes(*id.as_bytes()))
        .collect();
    let mut types: Vec<PgOid> = vec![oid::<i64>(), oid::<Vec<Uuid>>()];
    let mut args: Vec<DatumWithOid> = vec![after.into(), own.into()];
    if let Some(tenant) = tenant {
        types.push(oid::<String>());
        args.push(tenant.to_owned().into());
    }
    for list in names {
        types.push(oid::<Vec<String>>());
        args.push(list.into());
    }
    let _generic = GenericPlans::new();
    CHECKS.with(|checks| {
        let mut checks = checks.borrow_mut();
        Spi::connect_mut(|client| {
            if checks.len() >= MAX_CACHED_CHECKS && !checks.contains_key(&sql) {
                checks.clear();
            }
            // Prepared as mutating: SPI then takes a new snapshot for it,
            // where a read-only statement would reuse the caller's, taken
            // before the locks.
            let check = checks
                .entry(sql.clone())
                .or_insert_with(|| spi(client.prepare_mut(&sql, &types)).keep());
            spi(spi(client.update(&*check, Some(1), &args))
                .first()
                .get_one::<i64>())
        })
    })
}

thread_local! {
    static CHECKS: RefCell<HashMap<String, OwnedPreparedStatement>> = RefCell::new(HashMap::new());
}

fn condition_failed(position: i64, after_position: Option<i64>) -> Error {
    let since = match after_position {
        Some(after) => format!("after position {after}"),
        None => "at all".to_owned(),
    };
    Error::new(
        sqlstate::CONDITION_FAILED,
        format!("the append's condition failed: the event at position {position} matches fail_if_events_match"),
    )
    .with_detail(format!("An event matching the condition exists {since}; nothing was appended."))
    .with_hint("Read the events of the decision again (query_head, then read_query), decide again, and retry with the new head as after_position.")
}
