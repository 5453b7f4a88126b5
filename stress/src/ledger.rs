//! What the run has been told: every acknowledged event, every event whose
//! outcome a lost connection left unknown, and every event that must not
//! exist (rolled back or refused). Content is derived from a key, so an entry
//! is a few integers however large the payload.

use serde_json::{json, Value};
use std::collections::HashMap;
use uuid::Uuid;

/// One event's identity: the writer that made it and its sequence number.
/// Its id, type, payload and metadata follow from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub writer: u16,
    pub seq: u32,
}

impl Key {
    /// Unique per run: `run` is random, the rest is the key.
    pub fn event_id(self, run: u64) -> Uuid {
        Uuid::from_u64_pair(run, (u64::from(self.writer) << 32) | u64::from(self.seq))
    }

    /// The key back from an event id of this run.
    pub fn from_event_id(id: Uuid, run: u64) -> Option<Key> {
        let (high, low) = id.as_u64_pair();
        (high == run).then_some(Key {
            writer: (low >> 32) as u16,
            seq: low as u32,
        })
    }

    pub fn event_type(self) -> &'static str {
        ["Created", "Updated", "Noted"][self.seq as usize % 3]
    }

    /// Sizes vary from 60 to about 300 bytes; text with quotes, escapes and
    /// non-ASCII, so the round trip through jsonb is not trivial.
    pub fn payload(self) -> Value {
        let pad_len = (usize::from(self.writer) * 31 + self.seq as usize * 17) % 200;
        let pad: String = "abc \"q\" \\ é ☃ 😀 "
            .chars()
            .cycle()
            .take(pad_len)
            .collect();
        json!({"writer": self.writer, "seq": self.seq, "amount": self.seq as f64 / 8.0, "pad": pad})
    }

    pub fn metadata(self) -> Option<Value> {
        self.seq
            .is_multiple_of(4)
            .then(|| json!({"trace": format!("w{}-{}", self.writer, self.seq)}))
    }
}

/// An acknowledged event: `append` returned, a `COMMIT` succeeded, or a
/// ticket reported `committed`.
#[derive(Debug, Clone, Copy)]
pub struct Acked {
    pub stream: u32,
    pub version: i64,
    /// Known for single events and a batch's first and last; `None` between.
    pub position: Option<i64>,
    pub key: Key,
}

#[derive(Default)]
pub struct Ledger {
    /// Acknowledged since the last check.
    pub pending: Vec<Acked>,
    /// Outcome unknown: present at most once, and then with this content.
    pub in_doubt: Vec<(u32, Key)>,
    /// Rolled back or refused: must not exist.
    pub absent: Vec<Key>,
    /// Highest acknowledged version per stream: the stream never goes below.
    pub acked_versions: HashMap<u32, i64>,
    pub acked_total: u64,
    pub in_doubt_total: u64,
    pub in_doubt_present: u64,
    pub absent_total: u64,
}

impl Ledger {
    pub fn acknowledge(&mut self, events: impl IntoIterator<Item = Acked>) {
        for event in events {
            let highest = self.acked_versions.entry(event.stream).or_insert(0);
            *highest = (*highest).max(event.version);
            self.pending.push(event);
            self.acked_total += 1;
        }
    }

    pub fn doubt(&mut self, events: impl IntoIterator<Item = (u32, Key)>) {
        for event in events {
            self.in_doubt.push(event);
            self.in_doubt_total += 1;
        }
    }

    pub fn refuse(&mut self, keys: impl IntoIterator<Item = Key>) {
        for key in keys {
            self.absent.push(key);
            self.absent_total += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_round_trip_and_differ_between_runs() {
        let key = Key {
            writer: 63,
            seq: 4_000_000_000,
        };
        assert_eq!(Key::from_event_id(key.event_id(7), 7), Some(key));
        assert_eq!(Key::from_event_id(key.event_id(7), 8), None);
        assert_ne!(key.event_id(7), Key { writer: 62, ..key }.event_id(7));
    }

    #[test]
    fn content_follows_from_the_key() {
        let key = Key { writer: 3, seq: 8 };
        assert_eq!(key.payload(), key.payload());
        assert_ne!(key.payload(), Key { seq: 9, ..key }.payload());
        assert!(key.metadata().is_some());
        assert!(Key { seq: 9, ..key }.metadata().is_none());
    }

    #[test]
    fn the_ledger_keeps_the_highest_acknowledged_version() {
        let mut ledger = Ledger::default();
        let key = Key { writer: 0, seq: 0 };
        ledger.acknowledge([5, 3].map(|version| Acked {
            stream: 1,
            version,
            position: None,
            key,
        }));
        assert_eq!(ledger.acked_versions[&1], 5);
        assert_eq!(ledger.acked_total, 2);
    }
}
