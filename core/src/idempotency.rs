//! Idempotency: an append whose event ids already exist is a retry when the
//! stored events match it exactly (it returns where they landed and writes
//! nothing), and refused (ZA003) otherwise.

use crate::batch::{Appended, NewEvent};
use crate::error::{Error, Result};
use uuid::Uuid;

/// An event already in the store, as the idempotency check needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub stream_id: String,
    /// The stream's tenant: errors name another tenant's stream to nobody.
    pub tenant: Option<String>,
    pub version: i64,
    pub position: i64,
    pub event_type: String,
    pub payload: String,
}

impl StoredEvent {
    /// How an error names the stream to a caller of `tenant`.
    fn stream_name(&self, tenant: Option<&str>) -> String {
        if self.tenant.as_deref() == tenant {
            format!("stream \"{}\"", self.stream_id)
        } else {
            "another tenant's stream".to_string()
        }
    }
}

/// Decides what an append means when some of its event ids already exist.
///
/// `Ok(None)`: none exists, append normally. `Ok(Some(appended))`: every event
/// exists with the same stream, type and payload, in consecutive versions: a
/// retry, which returns where the originals landed and writes nothing.
/// `Err(ZA003)`: an id exists with other content, or the call mixes existing
/// and new events.
pub fn replay_of(
    stream_id: &str,
    tenant: Option<&str>,
    events: &[NewEvent],
    stored: impl Fn(&Uuid) -> Option<StoredEvent>,
) -> Result<Option<Appended>> {
    let found: Vec<Option<StoredEvent>> = events
        .iter()
        .map(|e| e.event_id.as_ref().and_then(&stored))
        .collect();
    if found.iter().all(Option::is_none) {
        return Ok(None);
    }
    let mut first: Option<&StoredEvent> = None;
    for (index, (event, stored)) in events.iter().zip(&found).enumerate() {
        let Some(stored) = stored else {
            let (id, of) = found
                .iter()
                .zip(events)
                .find_map(|(s, e)| s.as_ref().map(|s| (e.event_id.unwrap(), s)))
                .expect("at least one event was found");
            // Another tenant's event: not even its version is told.
            let detail = if of.tenant.as_deref() == tenant {
                format!(
                    "it is version {} of stream \"{}\", but this call also carries new events (events[{index}]); a retry must repeat the original call exactly",
                    of.version, of.stream_id
                )
            } else {
                "it belongs to another tenant's stream".to_string()
            };
            return Err(Error::event_id_reused(&id.to_string(), detail));
        };
        let id = event.event_id.expect("found events have ids").to_string();
        let differs = if stored.stream_id != stream_id {
            Some(format!(
                "it belongs to {}, not \"{stream_id}\"",
                stored.stream_name(tenant)
            ))
        } else if stored.event_type != event.event_type {
            Some(format!(
                "its type is \"{}\", not \"{}\"",
                stored.event_type, event.event_type
            ))
        } else if stored.payload != event.payload {
            Some(format!(
                "its payload differs from the one stored at version {}",
                stored.version
            ))
        } else if first.is_some_and(|f| stored.version != f.version + index as i64) {
            Some("the original events were appended in another order or in other calls".to_string())
        } else {
            None
        };
        if let Some(difference) = differs {
            return Err(Error::event_id_reused(&id, difference));
        }
        first.get_or_insert(stored);
    }
    let first = first.expect("at least one event was found");
    let last = found
        .last()
        .and_then(Option::as_ref)
        .expect("all events were found");
    Ok(Some(Appended {
        first_version: first.version,
        last_version: last.version,
        first_position: first.position,
        last_position: last.position,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: u128, event_type: &str, payload: &str) -> NewEvent {
        NewEvent {
            event_type: event_type.into(),
            event_id: Some(Uuid::from_u128(id)),
            payload: payload.into(),
            metadata: None,
            tags: Vec::new(),
        }
    }

    fn stored(version: i64, event_type: &str, payload: &str) -> StoredEvent {
        StoredEvent {
            stream_id: "s".into(),
            tenant: None,
            version,
            position: version * 10,
            event_type: event_type.into(),
            payload: payload.into(),
        }
    }

    #[test]
    fn replay_returns_the_originals() {
        let events = [event(1, "A", "1"), event(2, "B", "2")];
        let lookup = |id: &Uuid| match id.as_u128() {
            1 => Some(stored(4, "A", "1")),
            2 => Some(stored(5, "B", "2")),
            _ => None,
        };
        assert_eq!(
            replay_of("s", None, &events, lookup).unwrap(),
            Some(Appended {
                first_version: 4,
                last_version: 5,
                first_position: 40,
                last_position: 50
            })
        );
        assert_eq!(
            replay_of("s", None, &[event(9, "A", "1")], lookup).unwrap(),
            None
        );
    }

    #[test]
    fn replay_refuses_changed_content() {
        let lookup = |_: &Uuid| Some(stored(1, "A", "1"));
        for (stream, e) in [
            ("other", event(1, "A", "1")),
            ("s", event(1, "B", "1")),
            ("s", event(1, "A", "2")),
        ] {
            let err = replay_of(stream, None, &[e], lookup).unwrap_err();
            assert_eq!(err.sqlstate, "ZA003");
            assert!(err.message.contains(&Uuid::from_u128(1).to_string()));
        }
    }

    #[test]
    fn another_tenants_stream_is_not_named() {
        let theirs = |_: &Uuid| {
            Some(StoredEvent {
                tenant: Some("acme".into()),
                ..stored(1, "A", "1")
            })
        };
        let err = replay_of("mine", Some("globex"), &[event(1, "A", "1")], theirs).unwrap_err();
        let detail = err.detail.unwrap();
        assert!(
            detail.contains("another tenant's stream") && !detail.contains("\"s\""),
            "{detail}"
        );
        let err = replay_of("mine", Some("acme"), &[event(1, "A", "1")], theirs).unwrap_err();
        assert!(err.detail.unwrap().contains("stream \"s\""));
    }

    #[test]
    fn replay_refuses_a_mix_of_old_and_new() {
        let lookup = |id: &Uuid| (id.as_u128() == 1).then(|| stored(1, "A", "1"));
        let err =
            replay_of("s", None, &[event(1, "A", "1"), event(2, "A", "1")], lookup).unwrap_err();
        assert_eq!(err.sqlstate, "ZA003");
        let mut anonymous = event(0, "A", "1");
        anonymous.event_id = None;
        assert!(replay_of("s", None, &[anonymous, event(1, "A", "1")], lookup).is_err());
    }

    #[test]
    fn replay_refuses_reordered_originals() {
        let lookup = |id: &Uuid| match id.as_u128() {
            1 => Some(stored(2, "A", "1")),
            2 => Some(stored(1, "A", "1")),
            _ => None,
        };
        assert!(replay_of("s", None, &[event(1, "A", "1"), event(2, "A", "1")], lookup).is_err());
    }
}
