//! Dynamic consistency boundaries: an event's tags, the queries that select
//! events by type and tag, and the locks a conditional append takes so that
//! it never needs a global one.
//!
//! The rule ([`locks`]): every append holds SHARE on the keys of each new
//! event (its type, each of its tags, and [`Key::Everything`]); an append
//! with a condition holds EXCLUSIVE on one key per query item: the item's
//! smallest tag if it has tags (an event matching the item carries every
//! tag, so also that one), else each of its types, else `Everything`. So an
//! event that matches a condition always has a key its writer holds in SHARE
//! while the condition's append holds it in EXCLUSIVE: the two transactions
//! take turns, and the one that checks second sees the other's events. Keys
//! are taken in one order (by [`lock_order`]), so two appends never deadlock
//! on them. Keys are per tenant: tenants are separate boundaries.

use crate::error::{Error, Result};
use crate::validate;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Tags an event may carry.
pub const MAX_TAGS: usize = 64;
/// Distinct keys one append locks at most; beyond, it locks its tenant's
/// [`Key::Everything`] in EXCLUSIVE instead (the lock table is finite).
pub const MAX_LOCKS: usize = 128;

/// An event's tags, checked: each a name (non-empty, at most 255 bytes), at
/// most [`MAX_TAGS`]; repeats kept once, in their first order.
pub fn tags(argument: &str, values: &[Option<&str>]) -> Result<Vec<String>> {
    if values.len() > MAX_TAGS {
        return Err(Error::invalid_argument(
            argument,
            format!("has {} tags, the limit is {MAX_TAGS}", values.len()),
        ));
    }
    let mut checked: Vec<String> = Vec::with_capacity(values.len());
    for value in values {
        let tag = validate::name(argument, *value)?;
        if !checked.iter().any(|t| t == tag) {
            checked.push(tag.to_owned());
        }
    }
    Ok(checked)
}

/// One item of a query: events of one of `types` (any type if empty) that
/// carry every tag of `tags`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub types: Vec<String>,
    pub tags: Vec<String>,
}

impl Item {
    /// The tag every event the item matches carries, whose rows of
    /// `allsource.event_tags` find them: the smallest, which is also the key
    /// an item's condition locks ([`locks`]). `None` without tags.
    pub fn index_tag(&self) -> Option<&str> {
        self.tags.iter().min().map(String::as_str)
    }

    fn matches(&self, event_type: &str, tags: &[String]) -> bool {
        (self.types.is_empty() || self.types.iter().any(|t| t == event_type))
            && self.tags.iter().all(|t| tags.contains(t))
    }
}

/// A query: the events matching any of its items. No items: every event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Query {
    pub items: Vec<Item>,
}

impl Query {
    /// `argument`'s JSON: `NULL`, or an array of `{"types": [...], "tags": [...]}`.
    pub fn parse(argument: &str, value: Option<&Value>) -> Result<Query> {
        let items = match value {
            None | Some(Value::Null) => return Ok(Query::default()),
            Some(Value::Array(items)) => items,
            Some(_) => {
                return Err(Error::invalid_argument(
                    argument,
                    "must be a JSON array of {\"types\": [...], \"tags\": [...]} items",
                ))
            }
        };
        let items = items
            .iter()
            .enumerate()
            .map(|(i, item)| parse_item(argument, i + 1, item))
            .collect::<Result<_>>()?;
        Ok(Query { items })
    }

    /// Whether an event of `event_type` carrying `tags` matches.
    pub fn matches(&self, event_type: &str, tags: &[String]) -> bool {
        self.items.is_empty() || self.items.iter().any(|i| i.matches(event_type, tags))
    }

    /// Whether every event matches: no items, or an item with neither types
    /// nor tags.
    pub fn matches_everything(&self) -> bool {
        self.items.is_empty()
            || self
                .items
                .iter()
                .any(|item| item.types.is_empty() && item.tags.is_empty())
    }
}

fn parse_item(argument: &str, number: usize, item: &Value) -> Result<Item> {
    let part = |what: &str| format!("{argument}[{number}].{what}");
    let Value::Object(fields) = item else {
        return Err(Error::invalid_argument(
            &format!("{argument}[{number}]"),
            "must be an object with \"types\" and/or \"tags\"",
        ));
    };
    if let Some(unknown) = fields.keys().find(|k| *k != "types" && *k != "tags") {
        return Err(Error::invalid_argument(
            &format!("{argument}[{number}]"),
            format!("unknown key \"{unknown}\" (an item has \"types\" and \"tags\")"),
        ));
    }
    let names = |key: &str| -> Result<Vec<String>> {
        match fields.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(values)) => {
                let values: Vec<Option<&str>> = values.iter().map(Value::as_str).collect();
                if values.iter().any(Option::is_none) {
                    return Err(Error::invalid_argument(
                        &part(key),
                        "must hold strings only",
                    ));
                }
                tags(&part(key), &values)
            }
            Some(_) => Err(Error::invalid_argument(
                &part(key),
                "must be an array of strings",
            )),
        }
    };
    Ok(Item {
        types: names("types")?,
        tags: names("tags")?,
    })
}

/// What a lock is on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// Every event: held in SHARE by every writer.
    Everything,
    Type(String),
    Tag(String),
}

impl Key {
    /// The key's 64-bit id in the lock table for `tenant` (a hash: two keys
    /// that share one only wait for each other more than they must).
    pub fn id(&self, tenant: Option<&str>) -> u64 {
        let mut hash = Sha256::new();
        match tenant {
            None => hash.update([0u8]),
            Some(tenant) => {
                hash.update([1u8]);
                hash.update((tenant.len() as u32).to_be_bytes());
                hash.update(tenant.as_bytes());
            }
        }
        match self {
            Key::Everything => hash.update([0u8]),
            Key::Type(name) => {
                hash.update([1u8]);
                hash.update(name.as_bytes());
            }
            Key::Tag(name) => {
                hash.update([2u8]);
                hash.update(name.as_bytes());
            }
        }
        let digest = hash.finalize();
        u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
    }
}

/// How a key is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    Share,
    Exclusive,
}

/// The locks of an append: of its `condition` (if any) and of its new events
/// (type and tags of each), each key once in the stronger mode, in the order
/// every append takes them.
pub fn locks<'a>(
    condition: Option<&Query>,
    events: impl IntoIterator<Item = (&'a str, &'a [String])>,
) -> Vec<(Key, Mode)> {
    let mut keys: BTreeMap<Key, Mode> = BTreeMap::new();
    let mut hold = |key: Key, mode: Mode| {
        let held = keys.entry(key).or_insert(mode);
        *held = (*held).max(mode);
    };
    for (event_type, tags) in events {
        hold(Key::Everything, Mode::Share);
        hold(Key::Type(event_type.to_owned()), Mode::Share);
        for tag in tags {
            hold(Key::Tag(tag.clone()), Mode::Share);
        }
    }
    if let Some(condition) = condition {
        if condition.items.is_empty() {
            hold(Key::Everything, Mode::Exclusive);
        }
        for item in &condition.items {
            if let Some(tag) = item.index_tag() {
                hold(Key::Tag(tag.to_owned()), Mode::Exclusive);
            } else if !item.types.is_empty() {
                for event_type in &item.types {
                    hold(Key::Type(event_type.clone()), Mode::Exclusive);
                }
            } else {
                hold(Key::Everything, Mode::Exclusive);
            }
        }
    }
    keys.into_iter().collect()
}

/// The lock table entries of locks of one or more tenants, in the one order
/// every append takes them (by id), each id once in its strongest mode.
/// Over [`MAX_LOCKS`], each tenant's `Everything` in EXCLUSIVE instead:
/// that conflicts with every writer of the tenant, which holds it in SHARE.
pub fn lock_order<'a>(
    locks: impl IntoIterator<Item = (Option<&'a str>, Key, Mode)>,
) -> Vec<(u64, Mode)> {
    let mut ids: BTreeMap<u64, Mode> = BTreeMap::new();
    let mut tenants: Vec<Option<&str>> = Vec::new();
    for (tenant, key, mode) in locks {
        if !tenants.contains(&tenant) {
            tenants.push(tenant);
        }
        let held = ids.entry(key.id(tenant)).or_insert(mode);
        *held = (*held).max(mode);
    }
    if ids.len() > MAX_LOCKS {
        ids = tenants
            .into_iter()
            .map(|tenant| (Key::Everything.id(tenant), Mode::Exclusive))
            .collect();
    }
    ids.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::sqlstate;
    use proptest::prelude::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<Query> {
        Query::parse("fail_if_events_match", Some(&value))
    }

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_query_matches_by_type_and_every_tag_of_any_item() {
        let query = parse(json!([
            {"types": ["Enrolled", "Left"], "tags": ["course:7"]},
            {"tags": ["student:42", "term:1"]}
        ]))
        .unwrap();
        assert!(query.matches("Enrolled", &strings(&["course:7", "x"])));
        assert!(
            !query.matches("Opened", &strings(&["course:7"])),
            "not one of the types"
        );
        assert!(query.matches("Opened", &strings(&["term:1", "student:42"])));
        assert!(
            !query.matches("Opened", &strings(&["student:42"])),
            "not every tag"
        );
        assert!(Query::parse("q", None).unwrap().matches("Any", &[]));
        assert!(parse(json!([])).unwrap().matches("Any", &[]));
        let types_only = parse(json!([{"types": ["Opened"]}])).unwrap();
        assert!(types_only.matches("Opened", &[]));
        assert!(
            parse(json!([{}])).unwrap().matches("Any", &[]),
            "an empty item is everything"
        );
    }

    #[test]
    fn bad_queries_and_tags_are_refused_naming_the_part() {
        for (bad, part) in [
            (json!({"tags": ["a"]}), "\"fail_if_events_match\""),
            (json!(["a"]), "fail_if_events_match[1]"),
            (json!([{"tag": ["a"]}]), "unknown key \"tag\""),
            (json!([{}, {"tags": "a"}]), "fail_if_events_match[2].tags"),
            (json!([{"types": [1]}]), "fail_if_events_match[1].types"),
            (json!([{"tags": [""]}]), "must not be empty"),
            (json!([{"tags": ["x".repeat(256)]}]), "256 bytes"),
        ] {
            let error = parse(bad.clone()).unwrap_err();
            assert_eq!(error.sqlstate, sqlstate::INVALID_PARAMETER_VALUE, "{bad}");
            assert!(error.message.contains(part), "{bad}: {}", error.message);
        }
        let many: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
        let many: Vec<Option<&str>> = many.iter().map(|t| Some(t.as_str())).collect();
        assert!(tags("tags", &many)
            .unwrap_err()
            .message
            .contains("limit is 64"));
        assert_eq!(
            tags("tags", &[Some("a"), Some("a"), Some("b")]).unwrap(),
            ["a", "b"]
        );
    }

    #[test]
    fn an_append_without_a_condition_only_shares() {
        let tags = strings(&["course:7"]);
        let locks = locks(None, [("Enrolled", tags.as_slice())]);
        assert!(
            locks.iter().all(|(_, mode)| *mode == Mode::Share),
            "{locks:?}"
        );
        assert_eq!(locks.len(), 3, "everything, the type, the tag: {locks:?}");
    }

    #[test]
    fn disjoint_boundaries_share_no_exclusive_key() {
        let condition = |tag: &str| parse(json!([{"tags": [tag]}])).unwrap();
        let (a, b) = (strings(&["course:1"]), strings(&["course:2"]));
        let first = locks(Some(&condition("course:1")), [("Enrolled", a.as_slice())]);
        let second = locks(Some(&condition("course:2")), [("Enrolled", b.as_slice())]);
        for (key, mode) in &first {
            if let Some((_, other)) = second.iter().find(|(k, _)| k == key) {
                assert!(
                    *mode == Mode::Share && *other == Mode::Share,
                    "{key:?} would make them wait"
                );
            }
        }
    }

    #[test]
    fn an_item_is_found_by_its_smallest_tag_and_everything_is_recognised() {
        let query = parse(json!([{"types": ["A"], "tags": ["t", "b"]}, {"types": ["A"]}])).unwrap();
        assert_eq!(query.items[0].index_tag(), Some("b"));
        assert_eq!(query.items[1].index_tag(), None);
        assert!(Query::default().matches_everything());
        assert!(parse(json!([{"tags": ["t"]}, {}]))
            .unwrap()
            .matches_everything());
        assert!(!parse(json!([{"tags": ["t"]}, {"types": ["A"]}]))
            .unwrap()
            .matches_everything());
    }

    #[test]
    fn tenants_lock_apart_and_many_keys_fall_back_to_everything() {
        let key = Key::Tag("course:7".into());
        assert_ne!(key.id(None), key.id(Some("acme")));
        assert_ne!(key.id(Some("acme")), key.id(Some("globex")));
        let few = lock_order([
            (Some("acme"), key.clone(), Mode::Share),
            (Some("acme"), key.clone(), Mode::Exclusive),
            (Some("acme"), Key::Everything, Mode::Share),
        ]);
        assert_eq!(few.len(), 2);
        assert!(few.windows(2).all(|w| w[0].0 < w[1].0), "sorted by id");
        assert!(few.contains(&(key.id(Some("acme")), Mode::Exclusive)));
        let many =
            lock_order((0..=MAX_LOCKS).map(|i| (None, Key::Tag(format!("t{i}")), Mode::Share)));
        assert_eq!(many, [(Key::Everything.id(None), Mode::Exclusive)]);
    }

    fn name() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(str::to_owned)
    }

    fn item() -> impl Strategy<Value = Item> {
        (
            prop::collection::vec(name(), 0..3),
            prop::collection::vec(name(), 0..3),
        )
            .prop_map(|(types, tags)| Item {
                types: types.into_iter().map(|t| format!("T{t}")).collect(),
                tags,
            })
    }

    proptest! {
        /// The locking argument: whenever an event matches a condition, the
        /// event's writer and the condition's append hold a common key, one
        /// of them in EXCLUSIVE, so they cannot both pass their locks at once.
        #[test]
        fn a_matching_event_always_conflicts_with_the_condition(
            items in prop::collection::vec(item(), 0..4),
            event_type in name().prop_map(|t| format!("T{t}")),
            event_tags in prop::collection::vec(name(), 0..4),
        ) {
            let condition = Query { items };
            prop_assume!(condition.matches(&event_type, &event_tags));
            let checker = locks(Some(&condition), std::iter::empty());
            let writer = locks(None, [(event_type.as_str(), event_tags.as_slice())]);
            let conflict = checker.iter().any(|(key, mode)| {
                writer.iter().any(|(k, m)| k == key && (*mode == Mode::Exclusive || *m == Mode::Exclusive))
            });
            prop_assert!(conflict, "checker {:?} writer {:?}", checker, writer);
        }
    }
}
