//! Planning appends: given the locked heads of the streams involved and the
//! events whose ids already exist, decide for each append request whether it
//! writes, repeats an earlier append (idempotency), or fails, and compute the
//! rows it writes with their versions and chained checksums.
//!
//! `append` and `append_batch` plan one request; an ingest worker plans a
//! whole batch of queued events at once, where each request may fail alone
//! because nothing is written until every request is decided.

use crate::batch::{Appended, NewEvent};
use crate::checksum::{self, Body, EventFields, CHECKSUM_LEN};
use crate::error::{Error, Result};
use crate::idempotency::{replay_of, StoredEvent};
use crate::validate::ExpectedVersion;
use std::collections::HashMap;
use std::ops::Range;
use uuid::Uuid;

/// One append: what `append`, `append_batch` or one queued event asks for.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub stream_id: &'a str,
    pub events: &'a [NewEvent],
    pub expected: ExpectedVersion,
    /// The session's `allsource.tenant`: the stream must be this tenant's.
    pub tenant: Option<&'a str>,
}

/// A stream's row, locked by the planning transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHead {
    pub partition_id: i32,
    pub version: i64,
    pub last_checksum: [u8; CHECKSUM_LEN],
    pub deleted: bool,
    pub tenant: Option<String>,
}

/// A row to insert into `allsource.events` (its position comes later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row<'a> {
    pub stream_id: &'a str,
    pub partition_id: i32,
    pub version: i64,
    pub event_id: Uuid,
    pub event: &'a NewEvent,
    pub checksum: [u8; CHECKSUM_LEN],
    /// The stream's tenant, recorded on the event.
    pub tenant: Option<&'a str>,
}

/// What one request comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It writes these rows of the plan.
    Writes(Range<usize>),
    /// A repeat of an earlier request of the same plan: that request's rows.
    RepeatsPlanned(Range<usize>),
    /// A repeat of events already stored: where they are.
    RepeatsStored(Appended),
    Refused(Refused),
}

/// A request refused: the error, and the stream's version when it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub error: Error,
    pub stream_version: i64,
}

/// The plan: rows to insert, in order, one outcome per request, and the
/// streams' heads after the rows (the stream rows to update).
#[derive(Debug)]
pub struct Plan<'a> {
    pub rows: Vec<Row<'a>>,
    pub outcomes: Vec<Outcome>,
    pub heads: HashMap<&'a str, StreamHead>,
}

impl Plan<'_> {
    /// Heads of the streams that get rows.
    pub fn touched_heads(&self) -> impl Iterator<Item = (&str, &StreamHead)> {
        let mut seen: Vec<&str> = self.rows.iter().map(|r| r.stream_id).collect();
        seen.sort_unstable();
        seen.dedup();
        seen.into_iter().map(|s| (s, &self.heads[s]))
    }

    /// The result of each request once the rows have positions
    /// (`positions[i]` for `rows[i]`).
    pub fn results(&self, positions: &[i64]) -> Vec<std::result::Result<Appended, Refused>> {
        assert_eq!(positions.len(), self.rows.len());
        self.outcomes
            .iter()
            .map(|outcome| match outcome {
                Outcome::Writes(range) | Outcome::RepeatsPlanned(range) => Ok(Appended {
                    first_version: self.rows[range.start].version,
                    last_version: self.rows[range.end - 1].version,
                    first_position: positions[range.start],
                    last_position: positions[range.end - 1],
                }),
                Outcome::RepeatsStored(appended) => Ok(*appended),
                Outcome::Refused(refused) => Err(refused.clone()),
            })
            .collect()
    }
}

/// Plans `requests` in order. `heads` has every stream of the requests;
/// `stored` finds events already in the store by id; `created_at` is the
/// transaction's timestamp (Unix µs) that the checksums cover; `new_id`
/// gives ids to events that come without one.
pub fn plan_requests<'a>(
    requests: &[Request<'a>],
    mut heads: HashMap<&'a str, StreamHead>,
    stored: impl Fn(&Uuid) -> Option<StoredEvent>,
    created_at: i64,
    mut new_id: impl FnMut() -> Uuid,
) -> Plan<'a> {
    let mut rows: Vec<Row<'a>> = Vec::new();
    // Ids written by this plan so far: a later request with the same ids is a repeat.
    let mut planned: HashMap<Uuid, usize> = HashMap::new();
    let mut outcomes = Vec::with_capacity(requests.len());
    for request in requests {
        let head = heads
            .get_mut(request.stream_id)
            .expect("every stream of the requests has a head");
        let outcome = decide(request, head, &rows, &planned, &stored).unwrap_or_else(|error| {
            Outcome::Refused(Refused {
                error,
                stream_version: head.version,
            })
        });
        if let Outcome::Writes(_) = outcome {
            // New rows: append them to the stream.
            let mut previous = head.last_checksum;
            for (offset, event) in request.events.iter().enumerate() {
                let version = head.version + 1 + offset as i64;
                let event_id = event.event_id.unwrap_or_else(&mut new_id);
                previous = checksum::checksum(
                    &EventFields {
                        stream_id: request.stream_id,
                        version,
                        event_type: &event.event_type,
                        event_id: *event_id.as_bytes(),
                        payload: Body::Text(&event.payload),
                        metadata: event.metadata.as_deref().map(Body::Text),
                        created_at_unix_micros: created_at,
                        tenant: request.tenant,
                        tags: &event.tags,
                    },
                    &previous,
                );
                planned.insert(event_id, rows.len());
                rows.push(Row {
                    stream_id: request.stream_id,
                    partition_id: head.partition_id,
                    version,
                    event_id,
                    event,
                    checksum: previous,
                    tenant: request.tenant,
                });
            }
            head.version += request.events.len() as i64;
            head.last_checksum = previous;
        }
        outcomes.push(outcome);
    }
    Plan {
        rows,
        outcomes,
        heads,
    }
}

/// The outcome of one request against its stream's current head.
fn decide(
    request: &Request,
    head: &StreamHead,
    rows: &[Row],
    planned: &HashMap<Uuid, usize>,
    stored: &impl Fn(&Uuid) -> Option<StoredEvent>,
) -> Result<Outcome> {
    if head.tenant.as_deref() != request.tenant {
        return Err(Error::other_tenant(request.stream_id));
    }
    if head.deleted {
        return Err(Error::stream_deleted(request.stream_id));
    }
    let in_plan = |id: &Uuid| {
        planned.get(id).map(|&index| {
            let row = &rows[index];
            StoredEvent {
                stream_id: row.stream_id.to_string(),
                tenant: row.tenant.map(str::to_string),
                version: row.version,
                // Row indexes stand in for the positions not taken yet.
                position: index as i64,
                event_type: row.event.event_type.clone(),
                payload: row.event.payload.clone(),
            }
        })
    };
    let ids: Vec<&Uuid> = request
        .events
        .iter()
        .filter_map(|e| e.event_id.as_ref())
        .collect();
    let all_planned = !ids.is_empty() && ids.iter().all(|id| planned.contains_key(id));
    if all_planned {
        if let Some(repeat) = replay_of(request.stream_id, request.tenant, request.events, in_plan)?
        {
            return Ok(Outcome::RepeatsPlanned(
                repeat.first_position as usize..repeat.last_position as usize + 1,
            ));
        }
    }
    if ids.iter().any(|id| planned.contains_key(id)) {
        let id = ids.iter().find(|id| planned.contains_key(id)).unwrap();
        return Err(Error::event_id_reused(
            &id.to_string(),
            "it was appended earlier in this batch together with other events; a retry must repeat the original call exactly",
        ));
    }
    if let Some(repeat) = replay_of(request.stream_id, request.tenant, request.events, stored)? {
        return Ok(Outcome::RepeatsStored(repeat));
    }
    request.expected.check(request.stream_id, head.version)?;
    Ok(Outcome::Writes(
        rows.len()..rows.len() + request.events.len(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::GENESIS;

    fn event(id: Option<u128>, payload: &str) -> NewEvent {
        NewEvent {
            event_type: "E".into(),
            event_id: id.map(Uuid::from_u128),
            payload: payload.into(),
            metadata: None,
            tags: Vec::new(),
        }
    }

    fn head(version: i64) -> StreamHead {
        StreamHead {
            partition_id: 3,
            version,
            last_checksum: GENESIS,
            deleted: false,
            tenant: None,
        }
    }

    fn ids() -> impl FnMut() -> Uuid {
        let mut next = 1000u128;
        move || {
            next += 1;
            Uuid::from_u128(next)
        }
    }

    fn nothing_stored(_: &Uuid) -> Option<StoredEvent> {
        None
    }

    #[test]
    fn requests_fail_alone_and_versions_stay_gapless() {
        let one = [event(None, "1")];
        let two = [event(None, "2"), event(None, "3")];
        let requests = [
            Request {
                stream_id: "a",
                events: &one,
                expected: ExpectedVersion::NoStream,
                tenant: None,
            },
            Request {
                stream_id: "a",
                events: &one,
                expected: ExpectedVersion::NoStream,
                tenant: None,
            },
            Request {
                stream_id: "b",
                events: &two,
                expected: ExpectedVersion::Exactly(5),
                tenant: None,
            },
            Request {
                stream_id: "a",
                events: &two,
                expected: ExpectedVersion::Exactly(1),
                tenant: None,
            },
        ];
        let heads = HashMap::from([("a", head(0)), ("b", head(5))]);
        let plan = plan_requests(&requests, heads, nothing_stored, 0, ids());
        assert_eq!(plan.outcomes[0], Outcome::Writes(0..1));
        match &plan.outcomes[1] {
            Outcome::Refused(Refused {
                error,
                stream_version,
            }) => {
                assert_eq!(error.sqlstate, "ZA001");
                assert_eq!(*stream_version, 1);
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(plan.outcomes[2], Outcome::Writes(1..3));
        assert_eq!(plan.outcomes[3], Outcome::Writes(3..5));
        let versions: Vec<(&str, i64)> =
            plan.rows.iter().map(|r| (r.stream_id, r.version)).collect();
        assert_eq!(versions, [("a", 1), ("b", 6), ("b", 7), ("a", 2), ("a", 3)]);
        assert_eq!(plan.heads["a"].version, 3);
        assert_eq!(plan.heads["b"].version, 7);
        let results = plan.results(&[10, 11, 12, 13, 14]);
        assert_eq!(results[3].as_ref().unwrap().first_position, 13);
        assert_eq!(plan.touched_heads().count(), 2);
    }

    #[test]
    fn checksums_chain_within_a_stream_across_requests() {
        let first = [event(None, "1")];
        let second = [event(None, "2")];
        let requests = [
            Request {
                stream_id: "a",
                events: &first,
                expected: ExpectedVersion::Any,
                tenant: None,
            },
            Request {
                stream_id: "a",
                events: &second,
                expected: ExpectedVersion::Any,
                tenant: None,
            },
        ];
        let batched = plan_requests(
            &requests,
            HashMap::from([("a", head(0))]),
            nothing_stored,
            7,
            ids(),
        );
        // The same two appends made one at a time chain the same way.
        let alone = plan_requests(
            &requests[..1],
            HashMap::from([("a", head(0))]),
            nothing_stored,
            7,
            ids(),
        );
        let mut after = head(1);
        after.last_checksum = alone.rows[0].checksum;
        let mut ids = ids();
        ids();
        let next = plan_requests(
            &requests[1..],
            HashMap::from([("a", after)]),
            nothing_stored,
            7,
            ids,
        );
        assert_eq!(batched.rows[1].checksum, next.rows[0].checksum);
        assert_eq!(batched.heads["a"].last_checksum, next.rows[0].checksum);
    }

    #[test]
    fn a_repeat_in_the_same_batch_returns_the_first() {
        let original = [event(Some(1), "x"), event(Some(2), "y")];
        let changed = [event(Some(1), "other")];
        let mixed = [event(Some(1), "x"), event(Some(3), "z")];
        let requests = [
            Request {
                stream_id: "a",
                events: &original,
                expected: ExpectedVersion::NoStream,
                tenant: None,
            },
            Request {
                stream_id: "a",
                events: &original,
                expected: ExpectedVersion::NoStream,
                tenant: None,
            },
            Request {
                stream_id: "a",
                events: &changed,
                expected: ExpectedVersion::Any,
                tenant: None,
            },
            Request {
                stream_id: "a",
                events: &mixed,
                expected: ExpectedVersion::Any,
                tenant: None,
            },
        ];
        let plan = plan_requests(
            &requests,
            HashMap::from([("a", head(0))]),
            nothing_stored,
            0,
            ids(),
        );
        assert_eq!(plan.rows.len(), 2);
        assert_eq!(plan.outcomes[0], Outcome::Writes(0..2));
        assert_eq!(
            plan.outcomes[1],
            Outcome::RepeatsPlanned(0..2),
            "a repeat, not a conflict"
        );
        for refused in &plan.outcomes[2..] {
            assert!(
                matches!(refused, Outcome::Refused(Refused { error, .. }) if error.sqlstate == "ZA003"),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn a_request_of_another_tenant_is_refused_and_its_rows_carry_the_tenant() {
        let one = [event(None, "x")];
        let mut acme = head(1);
        acme.tenant = Some("acme".into());
        let request = |tenant| Request {
            stream_id: "a",
            events: &one,
            expected: ExpectedVersion::Any,
            tenant,
        };
        let requests = [
            request(Some("globex")),
            request(None),
            request(Some("acme")),
        ];
        let plan = plan_requests(&requests, HashMap::from([("a", acme)]), |_| None, 0, ids());
        for refused in &plan.outcomes[..2] {
            let Outcome::Refused(Refused { error, .. }) = refused else {
                panic!("{refused:?}")
            };
            assert_eq!(error.sqlstate, "42501");
        }
        assert_eq!(plan.rows.len(), 1);
        assert_eq!(plan.rows[0].tenant, Some("acme"));
        assert_eq!(plan.rows[0].version, 2);
    }

    #[test]
    fn stored_events_are_repeats_and_deleted_streams_refuse() {
        let retry = [event(Some(1), "x")];
        let stored = |id: &Uuid| {
            (id.as_u128() == 1).then(|| StoredEvent {
                stream_id: "a".into(),
                tenant: None,
                version: 4,
                position: 40,
                event_type: "E".into(),
                payload: "x".into(),
            })
        };
        let mut gone = head(2);
        gone.deleted = true;
        let requests = [
            Request {
                stream_id: "a",
                events: &retry,
                expected: ExpectedVersion::Exactly(1),
                tenant: None,
            },
            Request {
                stream_id: "d",
                events: &retry,
                expected: ExpectedVersion::Any,
                tenant: None,
            },
        ];
        let plan = plan_requests(
            &requests,
            HashMap::from([("a", head(9)), ("d", gone)]),
            stored,
            0,
            ids(),
        );
        assert!(plan.rows.is_empty());
        assert_eq!(
            plan.outcomes[0],
            Outcome::RepeatsStored(Appended {
                first_version: 4,
                last_version: 4,
                first_position: 40,
                last_position: 40
            })
        );
        assert!(
            matches!(&plan.outcomes[1], Outcome::Refused(Refused { error, .. }) if error.sqlstate == "ZA002")
        );
    }
}
