//! Dynamic consistency boundaries in SQL: `append_if`, the condition
//! `read_query` and `query_head` read by, and the locks every append takes
//! ([`allsource_core::boundary`] decides which, and argues why they suffice).

use crate::settings;
use crate::sql::append::{append_one, PassedJsonb};
use crate::sql::jsonb::JsonbText;
use crate::sql::raise::or_raise;
use crate::sql::standby::refuse_on_standby;
use crate::sql::stats::{self, Call};
use crate::sql::GenericPlans;
use crate::sql::{spi, tag_index, tenant};
use allsource_core::batch::{parse_batch_text, NewEvent};
use allsource_core::boundary::{self, Mode, Query};
use allsource_core::error::{sqlstate, Error, Result};
use allsource_core::plan::Request;
use allsource_core::validate::{self, ExpectedVersion};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiTupleTable};
use pgrx::{PgOid, Uuid};
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Instant;

/// The class (`objsubid` in `pg_locks`) of AllSource's advisory locks.
/// `pg_advisory_lock` and its kin use 1 and 2, so no SQL role can take
/// these keys, or hold one to stall the appends.
const LOCK_CLASS: u16 = 0x4153;

/// Prepared statements of queries kept per backend, one per query shape and
/// use; beyond, the cache starts over (a shape: so many items, each with
/// types, tags or both).
const MAX_CACHED_STATEMENTS: usize = 256;

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
        let batch = validate::required("events", events)?;
        let events = parse_batch_text(&batch.0, settings::max_event_bytes())?;
        // One event (a decision's usual append): stored as the argument holds it.
        let passed = (events.len() == 1).then(|| PassedJsonb::first_of_batch(batch.1, &events[0]));
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
        let (stream, new_stream) = match stream_id {
            Some(_) => (validate::name("stream_id", stream_id)?.to_owned(), false),
            None => own_stream(&events),
        };
        let tenant = tenant::session_tenant()?;
        let keys = boundary::locks(condition.as_ref(), event_keys(&events));
        lock(&boundary::lock_order(
            keys.into_iter()
                .map(|(key, mode)| (tenant.as_deref(), key, mode)),
        ));
        // After the locks, in a snapshot of its own: it sees every event
        // whose writer could have conflicted (docs/design.md).
        if let Some(condition) = &condition {
            let after = after_position.unwrap_or(0);
            if let Some((position, ours)) = first_match(condition, after, tenant, &events) {
                return Err(condition_failed(position, after_position, ours));
            }
        }
        append_one(
            &stream,
            &events,
            ExpectedVersion::from_arg(None)?,
            passed,
            new_stream,
        )
    })();
    let a = or_raise(stats::direct_append(result, Call::AppendBatch, started));
    TableIterator::once((a.first_position, a.last_position))
}

/// The events' stream when the caller names none: `$dcb-` and the first
/// event's id (so a retry with the same ids finds its events again), or a
/// new time-ordered id; whether that name is new, so that no transaction
/// can have created its row.
fn own_stream(events: &[NewEvent]) -> (String, bool) {
    match events[0].event_id {
        Some(id) => (format!("$dcb-{id}"), false),
        None => (format!("$dcb-{}", uuid::Uuid::now_v7()), true),
    }
}

/// The position a decision based on `read_query(query)` may pass to
/// `append_if` as `after_position`: the watermark. 22023 names a bad part
/// of the query.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn query_head(query: default!(Option<JsonbText>, "NULL")) -> i64 {
    or_raise(query.map(|text| parse_query("query", &text.0)).transpose());
    crate::sql::watermark::watermark()
}

/// The events of the session's tenant matching `query` after
/// `after_position` and up to `upto`, at most `max_count`, in position
/// order: `read_query`'s (which reads their rows). A statement per query
/// shape, prepared once per backend, so a call is not planned again.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn _query_positions(
    query: Option<JsonbText>,
    after_position: i64,
    upto: i64,
    max_count: i32,
) -> TableIterator<'static, (name!(partition_id, i32), name!(position, i64))> {
    let query = or_raise(match query {
        None => Ok(None),
        Some(text) => parse_query("query", &text.0),
    })
    .unwrap_or_default();
    let tenant = or_raise(tenant::session_tenant());
    let mut statement = Matching::new(
        &query,
        tenant,
        vec![
            after_position.into(),
            upto.into(),
            i64::from(max_count).into(),
        ],
    );
    // Each item's first events in range, then the first of them all (UNION:
    // an event two items match is read once).
    let items = statement.union(" UNION ", |table, condition| {
        format!(
            "(SELECT x.partition_id, x.position FROM {table} x \
              WHERE {condition} AND x.position OPERATOR(pg_catalog.>) $1 \
                AND x.position OPERATOR(pg_catalog.<=) $2 ORDER BY x.position LIMIT $3)"
        )
    });
    let sql =
        format!("SELECT m.partition_id, m.position FROM ({items}) m ORDER BY m.position LIMIT $3");
    let rows = statement.run(&sql, false, |table| {
        table
            .map(|row| {
                (
                    spi(row.get(1)).expect("partition_id is NOT NULL"),
                    spi(row.get(2)).expect("position is NOT NULL"),
                )
            })
            .collect::<Vec<(i32, i64)>>()
    });
    TableIterator::new(rows)
}

/// The events of a tenant that match a query, as one branch per item (a
/// query matching everything: one over all events): the table each reads
/// (`allsource.event_tags` for an item with tags, `allsource.events` by type
/// otherwise) and its condition on `x`, and the arguments that go with them
/// (the caller's first, then the tenant, then the names).
struct Matching {
    branches: Vec<(&'static str, String)>,
    types: Vec<PgOid>,
    args: Vec<DatumWithOid<'static>>,
}

const EVENTS: &str = "allsource.events";
const EVENT_TAGS: &str = "allsource.event_tags";

impl Matching {
    fn new(query: &Query, tenant: Option<String>, first: Vec<DatumWithOid<'static>>) -> Self {
        let mut types: Vec<PgOid> = first.iter().map(|arg| PgOid::from(arg.oid())).collect();
        let mut args = first;
        let mut parameter = |arg: DatumWithOid<'static>| {
            types.push(PgOid::from(arg.oid()));
            args.push(arg);
            format!("${}", args.len())
        };
        // event_tags has '' for no tenant; events has NULL.
        let tenant_is = match &tenant {
            Some(tenant) => format!(
                "x.tenant_id OPERATOR(pg_catalog.=) {}",
                parameter(tenant.clone().into())
            ),
            None => "x.tenant_id IS NULL".to_owned(),
        };
        let branches = if query.matches_everything() {
            vec![(EVENTS, tenant_is)]
        } else {
            let tag_tenant_is = format!(
                "x.tenant OPERATOR(pg_catalog.=) {}",
                parameter(tenant.unwrap_or_default().into())
            );
            let mut branches = Vec::new();
            for item in &query.items {
                match item.index_tag() {
                    Some(tag) => {
                        let mut condition = format!(
                            "x.tag OPERATOR(pg_catalog.=) {} AND {tag_tenant_is}",
                            parameter(tag.to_owned().into())
                        );
                        if !item.types.is_empty() {
                            condition += &format!(
                                " AND x.event_type OPERATOR(pg_catalog.=) ANY ({})",
                                parameter(item.types.clone().into())
                            );
                        }
                        if item.tags.len() > 1 {
                            condition += &format!(
                                " AND x.tags OPERATOR(pg_catalog.@>) {}",
                                parameter(item.tags.clone().into())
                            );
                        }
                        branches.push((EVENT_TAGS, condition));
                    }
                    // A branch per type: each a range of (event_type, position).
                    None => branches.extend(item.types.iter().map(|event_type| {
                        (
                            EVENTS,
                            format!(
                                "{tenant_is} AND x.event_type OPERATOR(pg_catalog.=) {}",
                                parameter(event_type.clone().into())
                            ),
                        )
                    })),
                }
            }
            branches
        };
        Matching {
            branches,
            types,
            args,
        }
    }

    /// The branches, each made a statement by `select(table, condition)`,
    /// joined by `operator`.
    fn union(&self, operator: &str, select: impl Fn(&str, &str) -> String) -> String {
        let selects: Vec<String> = self
            .branches
            .iter()
            .map(|(table, condition)| select(table, condition))
            .collect();
        selects.join(operator)
    }

    /// Runs `sql` (built by [`Matching::union`]). With `new_snapshot`
    /// as a mutating statement, for which SPI takes a new snapshot (a
    /// read-only one reuses the caller's, taken before `append_if`'s locks);
    /// otherwise read-only: PostgreSQL assigns a mutating statement's
    /// transaction an id, which a hot standby cannot, and a read need not.
    fn run<R>(
        &mut self,
        sql: &str,
        new_snapshot: bool,
        read: impl FnOnce(SpiTupleTable) -> R,
    ) -> R {
        let _generic = GenericPlans::new();
        STATEMENTS.with(|statements| {
            let mut statements = statements.borrow_mut();
            if statements.len() >= MAX_CACHED_STATEMENTS && !statements.contains_key(sql) {
                statements.clear();
            }
            Spi::connect_mut(|client| {
                let statement = statements.entry(sql.to_owned()).or_insert_with(|| {
                    let prepared = if new_snapshot {
                        client.prepare_mut(sql, &self.types)
                    } else {
                        client.prepare(sql, &self.types)
                    };
                    spi(prepared).keep()
                });
                read(spi(client.select(&*statement, None, &self.args)))
            })
        })
    }
}

thread_local! {
    static STATEMENTS: RefCell<HashMap<String, OwnedPreparedStatement>> = RefCell::new(HashMap::new());
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
    for &(id, mode) in locks {
        let tag = advisory_lock_tag(LOCK_CLASS, id);
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

/// The lock tag of AllSource's advisory lock `id` of `class` in this
/// database: a class `pg_advisory_lock` and its kin never use (they use 1
/// and 2), so no SQL role can take it.
pub(crate) fn advisory_lock_tag(class: u16, id: u64) -> pg_sys::LOCKTAG {
    pg_sys::LOCKTAG {
        // SAFETY: MyDatabaseId is set for the life of a backend connected to a database.
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: (id >> 32) as u32,
        locktag_field3: id as u32,
        locktag_field4: class,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
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

/// The first event after `after` of `tenant` matching `condition`, other
/// than `events` themselves (a retry finds its own): its position, and
/// whether this transaction wrote it.
fn first_match(
    condition: &Query,
    after: i64,
    tenant: Option<String>,
    events: &[NewEvent],
) -> Option<(i64, bool)> {
    let own: Vec<Uuid> = events
        .iter()
        .filter_map(|event| event.event_id)
        .map(|id| Uuid::from_bytes(*id.as_bytes()))
        .collect();
    // No items: every event matches, which the index of tags cannot tell.
    if !condition.items.is_empty()
        && condition
            .items
            .iter()
            .all(|item| item.index_tag().is_some())
    {
        let tenant = tenant.unwrap_or_default();
        return tag_index::first_tagged_match(condition, after, &tenant, &own);
    }
    let mut statement = Matching::new(condition, tenant, vec![after.into(), own.into()]);
    let items = statement.union(" UNION ALL ", |table, condition| {
        format!(
            "(SELECT x.position, x.xmin::text::bigint AS xmin FROM {table} x \
              WHERE {condition} AND x.position OPERATOR(pg_catalog.>) $1 \
                AND x.event_id OPERATOR(pg_catalog.<>) ALL ($2) ORDER BY x.position LIMIT 1)"
        )
    });
    let sql = format!("SELECT m.position, m.xmin FROM ({items}) m ORDER BY m.position LIMIT 1");
    statement.run(&sql, true, |mut table| {
        let row = table.next()?;
        let position: i64 = spi(row.get(1)).expect("position is NOT NULL");
        let xmin: i64 = spi(row.get(2)).expect("xmin is never NULL");
        let xid = pg_sys::TransactionId::from_inner(xmin as u32);
        // SAFETY: asks about this backend's own transaction state.
        let ours = unsafe { pg_sys::TransactionIdIsCurrentTransactionId(xid) };
        Some((position, ours))
    })
}

fn condition_failed(position: i64, after_position: Option<i64>, ours: bool) -> Error {
    let since = match after_position {
        Some(after) => format!("after position {after}"),
        None => "at all".to_owned(),
    };
    let error = Error::new(
        sqlstate::CONDITION_FAILED,
        format!("the append's condition failed: the event at position {position} matches fail_if_events_match"),
    );
    if ours {
        return error
            .with_detail(format!("An event matching the condition exists {since}: this transaction appended it, and reads stop at the watermark, which waits for this transaction; nothing was appended."))
            .with_hint("Commit a decision before making another that depends on its events: a retry in this transaction fails again.");
    }
    error
        .with_detail(format!("An event matching the condition exists {since}; nothing was appended."))
        .with_hint("Read the events of the decision again (query_head, then read_query), decide again, and retry with the new head as after_position.")
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::test_support::*;
    use pgrx::prelude::*;

    /// A one-event `append_if` stores the payload and metadata copied out of
    /// its argument: the same values as their text gives, a JSON null
    /// metadata as none, values stored out of line too; every event verifies.
    #[pg_test]
    fn one_event_of_append_if_is_stored_as_passed() {
        Spi::run(
            "CREATE TEMP TABLE decided AS
             SELECT jsonb_build_object('noise', string_agg(md5(i::text), '')) AS big
             FROM generate_series(1, 6000) i",
        )
        .unwrap();
        for events in [
            r#"'[{"type": "T", "payload": {"b": [1, 2.50], "a": "x"}, "metadata": {"by": "me"}, "tags": ["as-passed"]}]'"#,
            r#"'[{"type": "T", "payload": null, "metadata": null}]'"#,
            r#"'[{"type": "T", "payload": "text"}]'"#,
            "(SELECT jsonb_build_array(jsonb_build_object('type', 'T', 'payload', big, 'metadata', big)) FROM decided)",
        ] {
            Spi::run(&format!(
                "SELECT allsource.append_if({events}, stream_id => 'stored-as-passed')"
            ))
            .unwrap();
        }
        assert!(one::<bool>(
            r#"SELECT array_agg(payload ORDER BY version)
                      = ARRAY['{"a": "x", "b": [1, 2.50]}', 'null', '"text"', (SELECT big FROM decided)]::jsonb[]
                  AND array_agg(metadata ORDER BY version)::text[] IS NOT DISTINCT FROM
                      ARRAY['{"by": "me"}', NULL, NULL, (SELECT big FROM decided)::text]
             FROM allsource.read_stream('stored-as-passed')"#
        ));
        assert!(one::<bool>(
            "SELECT ok AND events_checked = 4 FROM allsource.verify_stream('stored-as-passed')"
        ));
    }

    /// A check reads only an index that sees every row, in the order its
    /// keys compare: a partial one, or another collation, in place of
    /// `event_tags`' key raises XX001.
    #[pg_test]
    fn a_check_refuses_an_index_of_tags_altered_by_hand() {
        let decide = r#"SELECT allsource.append_if('[{"type": "T", "payload": {}, "tags": ["altered-index"]}]',
                                                    '[{"tags": ["altered-index"]}]', 0)"#;
        Spi::run("ALTER TABLE allsource.event_tags DROP CONSTRAINT event_tags_pkey").unwrap();
        Spi::run(
            "CREATE INDEX by_hand ON allsource.event_tags (tag, tenant, position) WHERE position > 1000000000",
        )
        .unwrap();
        assert_fails(decide, "XX001", "has no index on (tag, tenant, position)");
        Spi::run("DROP INDEX allsource.by_hand").unwrap();
        Spi::run(
            "ALTER TABLE allsource.event_tags ALTER COLUMN tag TYPE text COLLATE \"POSIX\",
                 ADD PRIMARY KEY (tag, tenant, position)",
        )
        .unwrap();
        assert_fails(decide, "XX001", "in another collation");
    }
}
