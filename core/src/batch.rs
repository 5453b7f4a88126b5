//! New events as the append path takes them, from `append`'s arguments or
//! parsed from `append_batch`'s JSON array.

use crate::boundary;
use crate::error::{Error, Result};
use crate::jsontext::jsonb_text;
use crate::validate::{self, MAX_BATCH_EVENTS};
use serde_json::Value;
use std::collections::HashMap;
use uuid::Uuid;

/// One event to append, its JSON already in jsonb text form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub event_type: String,
    /// The caller's id; `None` gets a random one at append time.
    pub event_id: Option<Uuid>,
    pub payload: String,
    pub metadata: Option<String>,
    /// Its tags, checked ([`boundary::tags`]); none is stored as NULL.
    pub tags: Vec<String>,
}

impl NewEvent {
    /// Its tags as stored: NULL for none.
    pub fn stored_tags(&self) -> Option<&[String]> {
        (!self.tags.is_empty()).then_some(self.tags.as_slice())
    }

    /// Bytes of payload and metadata text, what `allsource.max_event_bytes` limits.
    pub fn size(&self) -> usize {
        self.payload.len() + self.metadata.as_ref().map_or(0, String::len)
    }
}

const KEYS: [&str; 5] = ["type", "payload", "metadata", "id", "tags"];

/// Parses `append_batch`'s `events`: a non-empty JSON array of
/// `{"type": …, "payload": …, "metadata": …, "id": …, "tags": […]}`, all but
/// `type` and `payload` optional. Errors name the element and key, e.g. `events[2].type`.
/// Parses a batch from its jsonb text. jsonb accepts nesting serde_json does
/// not read (deeper than 128 levels): such a batch is refused, not a crash.
pub fn parse_batch_text(text: &str, max_event_bytes: usize) -> Result<Vec<NewEvent>> {
    let events: Value = serde_json::from_str(text).map_err(|e| {
        Error::invalid_argument(
            "events",
            format!("cannot be read as a batch ({e}); append an event nested that deeply with allsource.append"),
        )
    })?;
    parse_batch(&events, max_event_bytes)
}

pub fn parse_batch(events: &Value, max_event_bytes: usize) -> Result<Vec<NewEvent>> {
    let items = events.as_array().ok_or_else(|| {
        Error::invalid_argument(
            "events",
            format!("must be a JSON array of events, not {}", kind(events)),
        )
    })?;
    if items.is_empty() {
        return Err(Error::invalid_argument(
            "events",
            "must contain at least one event",
        ));
    }
    if items.len() > MAX_BATCH_EVENTS {
        return Err(Error::invalid_argument(
            "events",
            format!(
                "has {} events, the limit is {MAX_BATCH_EVENTS} per batch",
                items.len()
            ),
        ));
    }
    let mut parsed = Vec::with_capacity(items.len());
    // Index of the event that carries each id: duplicates in linear time.
    let mut first_with_id = HashMap::new();
    for (index, item) in items.iter().enumerate() {
        let event = parse_event(index, item)?;
        validate::event_size(&format!("events[{index}]"), event.size(), max_event_bytes)?;
        if let Some(id) = event.event_id {
            if let Some(first) = first_with_id.insert(id, index) {
                return Err(Error::invalid_argument(
                    &format!("events[{index}].id"),
                    format!("{id} is also the id of events[{first}]"),
                ));
            }
        }
        parsed.push(event);
    }
    Ok(parsed)
}

fn parse_event(index: usize, item: &Value) -> Result<NewEvent> {
    let at = |key: &str| format!("events[{index}].{key}");
    let object = item.as_object().ok_or_else(|| {
        Error::invalid_argument(
            &format!("events[{index}]"),
            format!("must be a JSON object, not {}", kind(item)),
        )
    })?;
    if let Some(unknown) = object.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(Error::invalid_argument(
            &format!("events[{index}]"),
            format!(
                "has an unknown key \"{unknown}\"; the keys are type, payload, metadata, id and tags"
            ),
        ));
    }
    let event_type = match object.get("type") {
        Some(Value::String(t)) => validate::name(&at("type"), Some(t))?.to_string(),
        Some(other) => {
            return Err(Error::invalid_argument(
                &at("type"),
                format!("must be a string, not {}", kind(other)),
            ))
        }
        None => return Err(Error::invalid_argument(&at("type"), "is missing")),
    };
    let payload = object
        .get("payload")
        .map(jsonb_text)
        .ok_or_else(|| Error::invalid_argument(&at("payload"), "is missing"))?;
    let metadata = match object.get("metadata") {
        None | Some(Value::Null) => None,
        Some(m) => Some(jsonb_text(m)),
    };
    let event_id = match object.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(Uuid::parse_str(s).map_err(|e| {
            Error::invalid_argument(&at("id"), format!("\"{s}\" is not a UUID ({e})"))
        })?),
        Some(other) => {
            return Err(Error::invalid_argument(
                &at("id"),
                format!("must be a UUID string, not {}", kind(other)),
            ))
        }
    };
    let tags = match object.get("tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(values)) => {
            let values: Vec<Option<&str>> = values.iter().map(Value::as_str).collect();
            if values.iter().any(Option::is_none) {
                return Err(Error::invalid_argument(
                    &at("tags"),
                    "must hold strings only",
                ));
            }
            boundary::tags(&at("tags"), &values)?
        }
        Some(other) => {
            return Err(Error::invalid_argument(
                &at("tags"),
                format!("must be an array of strings, not {}", kind(other)),
            ))
        }
    };
    Ok(NewEvent {
        event_type,
        event_id,
        payload,
        metadata,
        tags,
    })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Where an append landed: versions and positions of its first and last event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub first_version: i64,
    pub last_version: i64,
    pub first_position: i64,
    pub last_position: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMIT: usize = 1 << 20;

    #[test]
    fn parses_events_in_order() {
        let events = json!([
            {"type": "A", "payload": {"x": 1}},
            {"type": "B", "payload": [1, 2], "metadata": {"by": "me"}, "id": "00112233-4455-6677-8899-aabbccddeeff"},
            {"type": "C", "payload": null, "metadata": null}
        ]);
        let parsed = parse_batch(&events, LIMIT).unwrap();
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[0].event_type, "A");
        assert_eq!(parsed[0].payload, r#"{"x": 1}"#);
        assert_eq!(parsed[1].metadata.as_deref(), Some(r#"{"by": "me"}"#));
        assert_eq!(
            parsed[1].event_id.unwrap().to_string(),
            "00112233-4455-6677-8899-aabbccddeeff"
        );
        assert_eq!(parsed[2].payload, "null");
        assert_eq!(parsed[2].metadata, None);
    }

    fn error_for(events: Value) -> Error {
        parse_batch(&events, LIMIT).unwrap_err()
    }

    #[test]
    fn bad_shapes_name_the_place() {
        let cases = [
            (json!({"type": "A"}), "\"events\""),
            (json!([]), "\"events\""),
            (json!([1]), "\"events[0]\""),
            (json!([{"payload": {}}]), "\"events[0].type\""),
            (json!([{"type": "", "payload": {}}]), "\"events[0].type\""),
            (json!([{"type": 5, "payload": {}}]), "\"events[0].type\""),
            (
                json!([{"type": "A", "payload": {}}, {"type": "A"}]),
                "\"events[1].payload\"",
            ),
            (
                json!([{"type": "A", "payload": {}, "id": "nope"}]),
                "\"events[0].id\"",
            ),
            (
                json!([{"type": "A", "payload": {}, "id": 7}]),
                "\"events[0].id\"",
            ),
            (
                json!([{"type": "A", "payload": {}, "typo": 1}]),
                "\"events[0]\"",
            ),
        ];
        for (events, place) in cases {
            let err = error_for(events.clone());
            assert_eq!(err.sqlstate, "22023", "{events}");
            assert!(err.message.contains(place), "{events}: {}", err.message);
        }
    }

    #[test]
    fn duplicate_ids_in_one_batch_are_refused() {
        let id = "00112233-4455-6677-8899-aabbccddeeff";
        let err = error_for(json!([
            {"type": "A", "payload": 1, "id": id},
            {"type": "B", "payload": 2, "id": id}
        ]));
        assert!(err.message.contains("events[1].id"), "{}", err.message);
        assert!(err.message.contains("events[0]"), "{}", err.message);
    }

    /// The largest batch, its last id a repeat of the first: found in linear
    /// time (a scan per event made this 5·10⁹ comparisons). Printed, not asserted.
    #[test]
    fn duplicate_ids_in_the_largest_batch_are_found_in_linear_time() {
        let events =
            |duplicate: bool| {
                Value::Array(
                (0..MAX_BATCH_EVENTS as u128)
                    .map(|i| {
                        let id = if duplicate && i + 1 == MAX_BATCH_EVENTS as u128 { 0 } else { i };
                        json!({"type": "A", "payload": 1, "id": Uuid::from_u128(id).to_string()})
                    })
                    .collect(),
            )
            };
        let distinct = events(false);
        let started = std::time::Instant::now();
        assert_eq!(
            parse_batch(&distinct, LIMIT).unwrap().len(),
            MAX_BATCH_EVENTS
        );
        println!(
            "{MAX_BATCH_EVENTS} distinct ids checked in {:?}",
            started.elapsed()
        );
        let repeated = events(true);
        let started = std::time::Instant::now();
        let err = parse_batch(&repeated, LIMIT).unwrap_err();
        println!(
            "{MAX_BATCH_EVENTS} ids, the last a repeat, refused in {:?}",
            started.elapsed()
        );
        assert!(
            err.message
                .contains(&format!("events[{}].id", MAX_BATCH_EVENTS - 1))
                && err.message.contains("events[0]"),
            "{}",
            err.message
        );
    }

    #[test]
    fn oversized_events_are_refused_with_54000() {
        let events = json!([{"type": "A", "payload": "x".repeat(100)}]);
        let err = parse_batch(&events, 50).unwrap_err();
        assert_eq!(err.sqlstate, "54000");
        assert!(err.message.contains("events[0]"));
    }

    #[test]
    fn too_many_events_are_refused() {
        let events = Value::Array(vec![
            json!({"type": "A", "payload": 1});
            MAX_BATCH_EVENTS + 1
        ]);
        assert_eq!(error_for(events).sqlstate, "22023");
    }

    #[test]
    fn a_batch_nested_deeper_than_the_parser_reads_is_refused() {
        let deep = format!(
            r#"[{{"type": "A", "payload": {}1{}}}]"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let error = parse_batch_text(&deep, 1 << 20).unwrap_err();
        assert_eq!(error.sqlstate, "22023");
        assert!(
            error.message.contains("allsource.append"),
            "{}",
            error.message
        );
        let shallow = r#"[{"type": "A", "payload": [[1]]}]"#;
        assert_eq!(
            parse_batch_text(shallow, 1 << 20).unwrap()[0].payload,
            "[[1]]"
        );
    }
}
