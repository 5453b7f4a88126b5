//! `append_if`'s check of a condition whose items all have tags, without
//! SPI: for each item, the primary key of `allsource.event_tags` scanned from
//! (the item's index tag, the tenant, `after`) in a new snapshot, as a new
//! statement would see it after the append's locks; the item's first row of
//! a matching type that carries all its tags and is not one of the append's
//! own events. A condition with an item without tags reads
//! `allsource.events` and stays a statement (`boundary.rs`).

use crate::sql::backend::in_a_statement_snapshot;
use crate::sql::direct_insert::check_privileges;
use crate::sql::tables::{altered, attribute_number, index_on, table};
use allsource_core::boundary::{Item, Query};
use pgrx::pg_sys::BuiltinOid::{INT8OID, TEXTARRAYOID, TEXTOID, UUIDOID};
use pgrx::pg_sys::{self, AccessShareLock, NoLock};
use pgrx::{FromDatum, IntoDatum, PgTupleDesc, Uuid};

/// The first event after `after` of `tenant` (`''`: none) matching
/// `condition`, every item of which has tags, other than those with an id
/// in `own`: its position, and whether this transaction wrote it.
pub(crate) fn first_tagged_match(
    condition: &Query,
    after: i64,
    tenant: &str,
    own: &[Uuid],
) -> Option<(i64, bool)> {
    let relid = table(c"event_tags");
    check_privileges(relid, &[pg_sys::ACL_SELECT]);
    // SAFETY: what is opened here is closed here (the lock stays to the end
    // of the transaction, as a statement's does).
    unsafe {
        let relation = pg_sys::table_open(relid, AccessShareLock as i32);
        let index = TagIndex::open(relation);
        let first = in_a_statement_snapshot(|| {
            condition
                .items
                .iter()
                // SAFETY: the table and index are open, the snapshot pushed.
                .filter_map(|item| index.first_match(item, after, tenant, own))
                .min_by_key(|&(position, _)| position)
        });
        pg_sys::index_close(index.index, NoLock as i32);
        pg_sys::table_close(relation, NoLock as i32);
        first
    }
}

/// `allsource.event_tags` and its primary key, open; its columns' numbers.
struct TagIndex {
    relation: pg_sys::Relation,
    index: pg_sys::Relation,
    tag: i16,
    tenant: i16,
    position: i16,
    event_id: i16,
    event_type: i16,
    tags: i16,
}

impl TagIndex {
    /// # Safety
    /// `relation` is `allsource.event_tags`, open.
    unsafe fn open(relation: pg_sys::Relation) -> TagIndex {
        // SAFETY: as the caller's.
        unsafe {
            let column = |name, type_oid| attribute_number(relation, name, type_oid);
            let (tag, tenant, position) = (
                column(c"tag", TEXTOID),
                column(c"tenant", TEXTOID),
                column(c"position", INT8OID),
            );
            // The scan keys compare in the C collation, the index's order.
            let desc = PgTupleDesc::from_pg_unchecked((*relation).rd_att);
            for (column, name) in [(tag, c"tag"), (tenant, c"tenant")] {
                let collation = desc.get(column as usize - 1).map(|a| a.attcollation);
                if collation != Some(pg_sys::C_COLLATION_OID) {
                    let what = format!("has a column {name:?} in another collation than \"C\"");
                    altered(relation, &what);
                }
            }
            let index = index_on(
                relation,
                &[tag, tenant, position],
                "(tag, tenant, position)",
            );
            TagIndex {
                relation,
                index: pg_sys::index_open(index, AccessShareLock as i32),
                tag,
                tenant,
                position,
                event_id: column(c"event_id", UUIDOID),
                event_type: column(c"event_type", TEXTOID),
                tags: column(c"tags", TEXTARRAYOID),
            }
        }
    }

    /// The item's first matching row after `after`.
    ///
    /// # Safety
    /// The table and index are open, a snapshot is pushed.
    unsafe fn first_match(
        &self,
        item: &Item,
        after: i64,
        tenant: &str,
        own: &[Uuid],
    ) -> Option<(i64, bool)> {
        let tag = item.index_tag().expect("every item has tags");
        // SAFETY: as the caller's; the scan is ended before returning.
        unsafe {
            let mut keys = [pg_sys::ScanKeyData::default(); 3];
            let equal = pg_sys::BTEqualStrategyNumber as u16;
            let key = |key: &mut pg_sys::ScanKeyData, column, strategy, procedure, value| {
                pg_sys::ScanKeyInit(key, column, strategy, procedure, value)
            };
            key(
                &mut keys[0],
                self.tag,
                equal,
                pg_sys::F_TEXTEQ.into(),
                text(tag),
            );
            key(
                &mut keys[1],
                self.tenant,
                equal,
                pg_sys::F_TEXTEQ.into(),
                text(tenant),
            );
            key(
                &mut keys[2],
                self.position,
                pg_sys::BTGreaterStrategyNumber as u16,
                pg_sys::F_INT8GT.into(),
                after.into(),
            );
            let scan = pg_sys::systable_beginscan_ordered(
                self.relation,
                self.index,
                pg_sys::GetActiveSnapshot(),
                keys.len() as i32,
                keys.as_mut_ptr(),
            );
            let desc = (*self.relation).rd_att;
            let mut found = None;
            loop {
                let row = pg_sys::systable_getnext_ordered(
                    scan,
                    pg_sys::ScanDirection::ForwardScanDirection,
                );
                if row.is_null() {
                    break;
                }
                let column = |number: i16| {
                    let mut null = false;
                    let value = pg_sys::heap_getattr(row, number as i32, desc, &mut null);
                    (value, null)
                };
                // Each test reads its column only if the ones before pass.
                let matches_type = || {
                    let (event_type, null) = column(self.event_type);
                    item.types.is_empty()
                        || String::from_datum(event_type, null)
                            .is_some_and(|found| item.types.contains(&found))
                };
                let matches_tags = || {
                    let (tags, null) = column(self.tags);
                    item.tags.len() == 1
                        || <Vec<String>>::from_datum(tags, null)
                            .is_some_and(|found| item.tags.iter().all(|t| found.contains(t)))
                };
                let foreign = || {
                    let (event_id, null) = column(self.event_id);
                    Uuid::from_datum(event_id, null).is_none_or(|id| !own.contains(&id))
                };
                if matches_type() && matches_tags() && foreign() {
                    let (position, _) = column(self.position);
                    // The raw xmin, as the system column `xmin` shows it.
                    let xmin = (*(*row).t_data).t_choice.t_heap.t_xmin;
                    found = Some((
                        position.value() as i64,
                        pg_sys::TransactionIdIsCurrentTransactionId(xmin),
                    ));
                    break;
                }
            }
            pg_sys::systable_endscan_ordered(scan);
            found
        }
    }
}

fn text(value: &str) -> pg_sys::Datum {
    value.into_datum().expect("text")
}
