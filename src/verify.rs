//! Verification of a stream's hash chain, streaming: rows go in one at a time
//! in version order, memory stays bounded by a small window kept for
//! diagnosis. Pure Rust, so the detection logic is property-tested without
//! PostgreSQL; `sql/verify.rs` feeds it from the tables.

use crate::checksum::{checksum, Body, EventFields, CHECKSUM_LEN, GENESIS};
use std::collections::VecDeque;

/// Rows kept before and read after a failure to tell what happened.
pub const DIAGNOSIS_WINDOW: usize = 32;

/// One stored event, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub version: i64,
    pub event_type: String,
    pub event_id: [u8; 16],
    /// `payload::text`
    pub payload: String,
    /// `metadata::text`
    pub metadata: Option<String>,
    /// The digests a hard delete kept in place of payload and metadata.
    pub erased: Option<ErasedDigests>,
    pub created_at_unix_micros: i64,
    pub checksum: Vec<u8>,
}

/// What `allsource.erased_events` keeps of an erased event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErasedDigests {
    pub payload: [u8; CHECKSUM_LEN],
    pub metadata: Option<[u8; CHECKSUM_LEN]>,
}

impl EventRow {
    fn fields<'a>(&'a self, stream_id: &'a str, version: i64) -> EventFields<'a> {
        let (payload, metadata) = match &self.erased {
            None => (
                Body::Text(&self.payload),
                self.metadata.as_deref().map(Body::Text),
            ),
            Some(erased) => (
                Body::Digest(&erased.payload),
                erased.metadata.as_ref().map(Body::Digest),
            ),
        };
        EventFields {
            stream_id,
            version,
            event_type: &self.event_type,
            event_id: self.event_id,
            payload,
            metadata,
            created_at_unix_micros: self.created_at_unix_micros,
        }
    }
}

/// The stream row: its version and last checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRow {
    pub version: i64,
    pub last_checksum: Option<Vec<u8>>,
}

/// The outcome for one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    /// Events read before the verdict: all of them for a sound stream.
    pub events_checked: i64,
    pub first_bad_version: Option<i64>,
    pub problem: Option<String>,
}

impl Verdict {
    fn sound(events_checked: i64) -> Verdict {
        Verdict {
            ok: true,
            events_checked,
            first_bad_version: None,
            problem: None,
        }
    }

    fn bad(events_checked: i64, version: i64, problem: String) -> Verdict {
        Verdict {
            ok: false,
            events_checked,
            first_bad_version: Some(version),
            problem: Some(problem),
        }
    }
}

/// A checksum that did not verify, with the rows around it.
struct Mismatch {
    row: EventRow,
    /// The verified checksum of the version before it.
    previous: [u8; CHECKSUM_LEN],
    after: Vec<EventRow>,
    copied_from: Option<i64>,
}

enum State {
    Checking,
    /// Found a version other than the one expected next.
    Gap {
        expected: i64,
        found: i64,
    },
    Mismatch(Box<Mismatch>),
}

/// Checks one stream: feed rows with [`push`](Self::push) while it returns
/// true, then ask [`finish`](Self::finish) for the verdict.
pub struct StreamVerifier<'a> {
    stream_id: &'a str,
    previous: [u8; CHECKSUM_LEN],
    next_version: i64,
    checked: i64,
    before: VecDeque<EventRow>,
    state: State,
}

impl<'a> StreamVerifier<'a> {
    pub fn new(stream_id: &'a str) -> Self {
        StreamVerifier {
            stream_id,
            previous: GENESIS,
            next_version: 1,
            checked: 0,
            before: VecDeque::with_capacity(DIAGNOSIS_WINDOW),
            state: State::Checking,
        }
    }

    /// Takes the next row in version order; false once no more rows are needed.
    pub fn push(&mut self, row: EventRow) -> bool {
        match &mut self.state {
            State::Gap { .. } => false,
            State::Mismatch(mismatch) => {
                mismatch.after.push(row);
                mismatch.after.len() < DIAGNOSIS_WINDOW
            }
            State::Checking => {
                self.checked += 1;
                if row.version != self.next_version {
                    self.state = State::Gap {
                        expected: self.next_version,
                        found: row.version,
                    };
                    return false;
                }
                let expected = checksum(&row.fields(self.stream_id, row.version), &self.previous);
                if row.checksum != expected {
                    self.state = State::Mismatch(Box::new(Mismatch {
                        row,
                        previous: self.previous,
                        after: Vec::new(),
                        copied_from: None,
                    }));
                    return true;
                }
                self.previous = expected;
                self.next_version += 1;
                if self.before.len() == DIAGNOSIS_WINDOW {
                    self.before.pop_front();
                }
                self.before.push_back(row);
                true
            }
        }
    }

    /// The checksum that failed to verify, if any: the caller may look for it
    /// elsewhere in the stream and report it with [`copied_from`](Self::copied_from).
    pub fn mismatched_checksum(&self) -> Option<(i64, &[u8])> {
        match &self.state {
            State::Mismatch(m) => Some((m.row.version, &m.row.checksum)),
            _ => None,
        }
    }

    /// Records that the mismatched checksum is stored at `version` too.
    pub fn copied_from(&mut self, version: i64) {
        if let State::Mismatch(m) = &mut self.state {
            m.copied_from = Some(version);
        }
    }

    /// The verdict, given the stream row (`None` if it is missing).
    pub fn finish(self, stream: Option<&StreamRow>) -> Verdict {
        let checked = self.checked;
        match self.state {
            State::Gap { expected, found } if found > expected => Verdict::bad(
                checked,
                expected,
                format!("version {expected} is missing (the next event found is version {found})"),
            ),
            State::Gap { expected, found } => Verdict::bad(
                checked,
                expected,
                format!("version {found} appears again where version {expected} belongs"),
            ),
            State::Mismatch(mismatch) => {
                let version = mismatch.row.version;
                let problem = diagnose(self.stream_id, &mismatch, &self.before, stream);
                Verdict::bad(checked, version, problem)
            }
            State::Checking => {
                let last = self.next_version - 1;
                match stream {
                    None if checked == 0 => Verdict::sound(0),
                    None => Verdict::bad(
                        checked,
                        1,
                        "events exist but the stream row is missing".into(),
                    ),
                    Some(head) if head.version != last => Verdict::bad(
                        checked,
                        head.version.min(last) + 1,
                        format!(
                            "the stream row says version {}, but the events end at version {last}",
                            head.version
                        ),
                    ),
                    Some(head)
                        if last > 0
                            && head.last_checksum.as_deref() != Some(&self.previous[..]) =>
                    {
                        Verdict::bad(
                            checked,
                            last,
                            format!("the stream row's last checksum does not match version {last}"),
                        )
                    }
                    Some(_) => Verdict::sound(checked),
                }
            }
        }
    }
}

/// Tells what most likely happened at a version whose checksum failed.
fn diagnose(
    stream_id: &str,
    m: &Mismatch,
    before: &VecDeque<EventRow>,
    stream: Option<&StreamRow>,
) -> String {
    let k = m.row.version;
    if let Some(source) = m.copied_from {
        return format!("the checksum of version {k} is a copy of version {source}'s");
    }
    let neighbours: Vec<&EventRow> = before.iter().chain(&m.after).collect();

    // Another event's content, hashed as version k, gives k's checksum: contents were exchanged.
    for other in &neighbours {
        if checksum(&other.fields(stream_id, k), &m.previous)[..] == m.row.checksum[..] {
            return format!(
                "version {k} holds the content of version {}: events were swapped",
                other.version
            );
        }
    }
    // This row's checksum fits it as another version: whole events were exchanged or reordered.
    let mut links: Vec<&[u8]> = vec![&GENESIS[..], &m.previous[..]];
    links.extend(neighbours.iter().map(|r| &r.checksum[..]));
    for candidate in neighbours.iter().map(|r| r.version).chain([k - 1, k + 1]) {
        if candidate == k || candidate < 1 {
            continue;
        }
        for link in &links {
            let Ok(link) = <[u8; CHECKSUM_LEN]>::try_from(*link) else {
                continue;
            };
            if checksum(&m.row.fields(stream_id, candidate), &link)[..] == m.row.checksum[..] {
                return format!(
                    "the event at version {k} was written as version {candidate}: events were swapped or reordered"
                );
            }
        }
    }
    // The checksum is genuine if what comes after still chains to it: then the content changed.
    let next_link_holds = match m.after.first() {
        Some(next) if next.version == k + 1 => <[u8; CHECKSUM_LEN]>::try_from(&m.row.checksum[..])
            .is_ok_and(|link| {
                checksum(&next.fields(stream_id, k + 1), &link)[..] == next.checksum[..]
            }),
        Some(_) => false,
        None => stream.is_some_and(|s| {
            s.version == k && s.last_checksum.as_deref() == Some(&m.row.checksum[..])
        }),
    };
    if next_link_holds {
        format!("the content of version {k} was changed: its type, event id, payload, metadata or created_at no longer match its checksum")
    } else {
        format!("the checksum of version {k} does not match its event or its chain: the checksum was changed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const STREAM: &str = "order-1";

    /// A sound stream of `n` events with distinct content.
    fn stream_of(n: i64) -> (Vec<EventRow>, StreamRow) {
        let mut previous = GENESIS;
        let mut rows = vec![];
        for version in 1..=n {
            let mut row = EventRow {
                version,
                event_type: format!("Type{}", version % 3),
                event_id: (version as u128 * 7919).to_be_bytes(),
                payload: format!(r#"{{"n": {version}}}"#),
                metadata: (version % 2 == 0).then(|| format!(r#"{{"m": {version}}}"#)),
                created_at_unix_micros: 1_767_225_600_000_000 + version / 3,
                checksum: vec![],
                erased: None,
            };
            previous = checksum(&row.fields(STREAM, version), &previous);
            row.checksum = previous.to_vec();
            rows.push(row);
        }
        let head = StreamRow {
            version: n,
            last_checksum: (n > 0).then(|| previous.to_vec()),
        };
        (rows, head)
    }

    fn verify(rows: &[EventRow], head: Option<&StreamRow>) -> Verdict {
        let mut verifier = StreamVerifier::new(STREAM);
        for row in rows {
            if !verifier.push(row.clone()) {
                break;
            }
        }
        let copy_of = verifier.mismatched_checksum().and_then(|(version, bad)| {
            rows.iter()
                .find(|r| r.version != version && r.checksum == bad)
                .map(|r| r.version)
        });
        if let Some(source) = copy_of {
            verifier.copied_from(source);
        }
        verifier.finish(head)
    }

    fn assert_bad(verdict: &Verdict, version: i64, words: &str) {
        assert!(!verdict.ok, "{verdict:?}");
        assert_eq!(verdict.first_bad_version, Some(version), "{verdict:?}");
        let problem = verdict.problem.as_deref().unwrap();
        assert!(
            problem.contains(words),
            "{problem:?} should mention {words:?}"
        );
    }

    /// What a hard delete leaves: the text gone, the digests in its place.
    fn erase(rows: &[EventRow]) -> Vec<EventRow> {
        rows.iter()
            .map(|row| EventRow {
                payload: "null".into(),
                metadata: None,
                erased: Some(ErasedDigests {
                    payload: crate::checksum::digest(&row.payload),
                    metadata: row.metadata.as_deref().map(crate::checksum::digest),
                }),
                ..row.clone()
            })
            .collect()
    }

    #[test]
    fn an_erased_stream_still_verifies_and_a_wrong_digest_does_not() {
        let (rows, head) = stream_of(6);
        let mut erased = erase(&rows);
        assert!(verify(&erased, Some(&head)).ok);
        erased[3].erased.as_mut().unwrap().payload[0] ^= 1;
        assert_bad(&verify(&erased, Some(&head)), 4, "");
    }

    #[test]
    fn sound_streams_verify() {
        for n in [0, 1, 2, 50, 200] {
            let (rows, head) = stream_of(n);
            assert_eq!(verify(&rows, Some(&head)), Verdict::sound(n));
        }
        assert_eq!(verify(&[], None), Verdict::sound(0), "no stream, no events");
    }

    #[test]
    fn each_changed_field_is_found() {
        type Damage = fn(&mut EventRow);
        let damages: [(&str, Damage); 5] = [
            ("payload", |r| r.payload = r#"{"n": -1}"#.into()),
            ("metadata", |r| r.metadata = Some("{}".into())),
            ("type", |r| r.event_type = "Forged".into()),
            ("event id", |r| r.event_id[0] ^= 1),
            ("created_at", |r| r.created_at_unix_micros += 1),
        ];
        for (field, damage) in damages {
            for k in [1, 5, 10] {
                let (mut rows, head) = stream_of(10);
                damage(&mut rows[k as usize - 1]);
                let verdict = verify(&rows, Some(&head));
                assert_eq!(
                    verdict.first_bad_version,
                    Some(k),
                    "{field} changed at {k}: {verdict:?}"
                );
                assert_bad(&verdict, k, "content of version");
            }
        }
    }

    #[test]
    fn removed_events_are_found() {
        let (rows, head) = stream_of(10);
        let without = |k: usize| {
            rows.iter()
                .filter(|r| r.version != k as i64)
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_bad(&verify(&without(1), Some(&head)), 1, "version 1 is missing");
        assert_bad(&verify(&without(4), Some(&head)), 4, "version 4 is missing");
        assert_bad(
            &verify(&without(10), Some(&head)),
            10,
            "stream row says version 10, but the events end at version 9",
        );
    }

    #[test]
    fn swaps_are_found() {
        let (rows, head) = stream_of(10);
        // Whole events exchanged: versions 3 and 7 renumbered into each other's place.
        let mut swapped = rows.clone();
        swapped[2].version = 7;
        swapped[6].version = 3;
        swapped.sort_by_key(|r| r.version);
        assert_bad(&verify(&swapped, Some(&head)), 3, "swapped");
        // Contents exchanged, checksums left in place.
        let mut swapped = rows.clone();
        let (a, b) = (swapped[3].clone(), swapped[4].clone());
        swapped[3] = EventRow {
            version: 4,
            checksum: a.checksum.clone(),
            ..b
        };
        swapped[4] = EventRow {
            version: 5,
            checksum: swapped[4].checksum.clone(),
            ..a
        };
        assert_bad(
            &verify(&swapped, Some(&head)),
            4,
            "holds the content of version 5",
        );
    }

    #[test]
    fn copied_checksums_are_found() {
        let (mut rows, head) = stream_of(10);
        rows[5].checksum = rows[1].checksum.clone();
        assert_bad(&verify(&rows, Some(&head)), 6, "copy of version 2");
        let (mut rows, head) = stream_of(10);
        rows[9].checksum = vec![0; 32];
        assert_bad(&verify(&rows, Some(&head)), 10, "checksum was changed");
    }

    #[test]
    fn stream_row_disagreements_are_found() {
        let (rows, head) = stream_of(5);
        assert_bad(
            &verify(
                &rows,
                Some(&StreamRow {
                    version: 4,
                    ..head.clone()
                }),
            ),
            5,
            "says version 4",
        );
        assert_bad(
            &verify(
                &rows,
                Some(&StreamRow {
                    version: 8,
                    ..head.clone()
                }),
            ),
            6,
            "says version 8",
        );
        assert_bad(
            &verify(
                &rows,
                Some(&StreamRow {
                    last_checksum: Some(vec![1; 32]),
                    ..head
                }),
            ),
            5,
            "last checksum",
        );
        assert_bad(&verify(&rows, None), 1, "stream row is missing");
        assert_bad(
            &verify(
                &[],
                Some(&StreamRow {
                    version: 2,
                    last_checksum: None,
                }),
            ),
            1,
            "says version 2",
        );
    }

    /// Random streams, one random damage each: always found, at the right version.
    #[test]
    fn any_single_damage_is_found_at_the_right_version() {
        let seed = rand::random();
        let mut rng = StdRng::seed_from_u64(seed);
        for case in 0..500 {
            let n = rng.gen_range(1..=60);
            let (mut rows, mut head) = stream_of(n);
            let k = rng.gen_range(1..=n);
            let i = k as usize - 1;
            let expected = match rng.gen_range(0..7) {
                0 => {
                    rows[i].payload.push(' ');
                    k
                }
                1 => {
                    rows[i].created_at_unix_micros -= rng.gen_range(1..1_000_000);
                    k
                }
                2 => {
                    rows.remove(i);
                    k
                }
                3 if n > 1 => {
                    let j = loop {
                        let j = rng.gen_range(1..=n);
                        if j != k {
                            break j;
                        }
                    };
                    rows[i].version = j;
                    rows[j as usize - 1].version = k;
                    rows.sort_by_key(|r| r.version);
                    k.min(j)
                }
                4 if n > 1 => {
                    let j = (k % n) as usize;
                    rows[i].checksum = rows[j].checksum.clone();
                    k
                }
                5 => {
                    let claimed = loop {
                        let v = rng.gen_range(0..n + 5);
                        if v != n {
                            break v;
                        }
                    };
                    head.version = claimed;
                    claimed.min(n) + 1
                }
                _ => {
                    rows[i].event_type.push('!');
                    k
                }
            };
            let verdict = verify(&rows, Some(&head));
            assert!(
                !verdict.ok,
                "seed {seed} case {case}: damage not found in {n} events"
            );
            assert_eq!(
                verdict.first_bad_version,
                Some(expected),
                "seed {seed} case {case}: {verdict:?}"
            );
        }
    }
}
