//! Verification of a stream's hash chain, streaming: rows go in one at a time
//! in version order, memory stays bounded by a small window kept for
//! diagnosis. Pure Rust, so the detection logic is property-tested without
//! PostgreSQL; the extension's `src/sql/verify.rs` feeds it from the tables.

use crate::checksum::{
    checksum_in, tombstone_checksum, Body, EventFields, Format, TombstoneFields, CHECKSUM_LEN,
    GENESIS,
};
use std::collections::VecDeque;

/// Rows kept before and read after a failure to tell what happened.
pub const DIAGNOSIS_WINDOW: usize = 32;

/// One stored event, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub version: i64,
    pub position: i64,
    pub event_type: String,
    pub event_id: [u8; 16],
    pub tenant: Option<String>,
    /// Its tags, empty for none.
    pub tags: Vec<String>,
    /// `payload::text`
    pub payload: String,
    /// `metadata::text`
    pub metadata: Option<String>,
    /// The digests a hard delete kept in place of payload and metadata.
    pub erased: Option<ErasedDigests>,
    pub created_at_unix_micros: i64,
    pub checksum: Vec<u8>,
    /// What `allsource.event_ids` says of the event's id.
    pub registered: Registered,
}

/// Whether `allsource.event_ids` holds an event's id, pointing at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    Yes,
    Missing,
    /// The id's row points at another partition or position.
    Elsewhere,
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
            tenant: self.tenant.as_deref(),
            tags: &self.tags,
        }
    }

    /// Whether this row, taken as `version` after `link`, has `checksum`
    /// under either format.
    fn fits(
        &self,
        stream_id: &str,
        version: i64,
        link: &[u8; CHECKSUM_LEN],
        checksum: &[u8],
    ) -> bool {
        let fields = self.fields(stream_id, version);
        [Format::V2, Format::V1]
            .into_iter()
            .any(|format| checksum_in(format, &fields, link)[..] == checksum[..])
    }
}

/// The stream row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRow {
    pub version: i64,
    pub last_checksum: Option<Vec<u8>>,
    pub tenant: Option<String>,
    /// `deleted_at` and `deleted_by`, when the stream is deleted.
    pub deletion: Option<Deletion>,
    /// `erased_at` is set.
    pub erased: bool,
    /// The tombstone's link, which `delete_stream` chains to the last checksum.
    pub tombstone_checksum: Option<Vec<u8>>,
}

/// A tombstone as the stream row records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    pub at_unix_micros: i64,
    pub by: Option<String>,
}

impl StreamRow {
    /// A live stream's row.
    pub fn live(version: i64, last_checksum: Option<Vec<u8>>, tenant: Option<String>) -> Self {
        StreamRow {
            version,
            last_checksum,
            tenant,
            deletion: None,
            erased: false,
            tombstone_checksum: None,
        }
    }

    /// The tombstone link a deletion of this stream, after `previous`, comes to.
    pub fn expected_tombstone(
        &self,
        stream_id: &str,
        deletion: &Deletion,
        previous: &[u8; CHECKSUM_LEN],
    ) -> [u8; CHECKSUM_LEN] {
        tombstone_checksum(
            &TombstoneFields {
                stream_id,
                version: self.version,
                tenant: self.tenant.as_deref(),
                deleted_at_unix_micros: deletion.at_unix_micros,
                deleted_by: deletion.by.as_deref(),
            },
            previous,
        )
    }
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

    /// Damage at `version`, or (`None`) in the stream row or store only.
    pub fn bad(events_checked: i64, version: Option<i64>, problem: String) -> Verdict {
        Verdict {
            ok: false,
            events_checked,
            first_bad_version: version,
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
    /// A row that breaks a rule the chain does not express.
    Found {
        version: i64,
        problem: String,
    },
    Mismatch(Box<Mismatch>),
}

/// Checks one stream: feed rows with [`push`](Self::push) while it returns
/// true, then ask [`finish`](Self::finish) for the verdict.
pub struct StreamVerifier<'a> {
    stream_id: &'a str,
    /// The stream row, `None` if it is missing.
    stream: Option<&'a StreamRow>,
    previous: [u8; CHECKSUM_LEN],
    /// The format of the last event: the next one most likely has it too.
    format: Format,
    next_version: i64,
    last_position: Option<i64>,
    checked: i64,
    before: VecDeque<EventRow>,
    state: State,
    /// An anchor's version, and the checksum found there once verified.
    watch: Option<(i64, Option<[u8; CHECKSUM_LEN]>)>,
}

impl<'a> StreamVerifier<'a> {
    pub fn new(stream_id: &'a str, stream: Option<&'a StreamRow>) -> Self {
        StreamVerifier {
            stream_id,
            stream,
            previous: GENESIS,
            format: Format::V2,
            next_version: 1,
            last_position: None,
            checked: 0,
            before: VecDeque::with_capacity(DIAGNOSIS_WINDOW),
            state: State::Checking,
            watch: None,
        }
    }

    /// Remembers the verified checksum of `version`, for [`finish_against`](Self::finish_against).
    pub fn watch(&mut self, version: i64) {
        self.watch = Some((version, None));
    }

    /// Takes the next row in version order; false once no more rows are needed.
    pub fn push(&mut self, row: EventRow) -> bool {
        match &mut self.state {
            State::Gap { .. } | State::Found { .. } => false,
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
                let Some(link) = self.link(&row) else {
                    self.state = State::Mismatch(Box::new(Mismatch {
                        row,
                        previous: self.previous,
                        after: Vec::new(),
                        copied_from: None,
                    }));
                    return true;
                };
                // After the chain: a changed event says "content changed"
                // rather than what follows from it (its id unregistered, say).
                if let Some(problem) = self.breaks_a_rule(&row) {
                    self.state = State::Found {
                        version: row.version,
                        problem,
                    };
                    return false;
                }
                if let Some((version, found)) = &mut self.watch {
                    if *version == row.version {
                        *found = Some(link);
                    }
                }
                self.previous = link;
                self.next_version += 1;
                self.last_position = Some(row.position);
                if self.before.len() == DIAGNOSIS_WINDOW {
                    self.before.pop_front();
                }
                self.before.push_back(row);
                true
            }
        }
    }

    /// The row's checksum if it is its chain link (in either format).
    fn link(&mut self, row: &EventRow) -> Option<[u8; CHECKSUM_LEN]> {
        let fields = row.fields(self.stream_id, row.version);
        for format in [self.format, self.format.other()] {
            let link = checksum_in(format, &fields, &self.previous);
            if row.checksum[..] == link[..] {
                self.format = format;
                return Some(link);
            }
        }
        None
    }

    /// What the chain does not say but must hold: positions rise with
    /// versions, the event is its stream's tenant's, its id is registered,
    /// and erased digests stand in only for content really erased.
    fn breaks_a_rule(&self, row: &EventRow) -> Option<String> {
        let v = row.version;
        if let Some(previous) = self.last_position.filter(|&p| row.position <= p) {
            return Some(format!(
                "version {v}'s position {} is not after version {}'s position {previous}: the events' order was changed",
                row.position,
                v - 1
            ));
        }
        // Names no tenant: the caller may be of either.
        if self.stream.is_some_and(|s| s.tenant != row.tenant) {
            return Some(format!(
                "version {v} is of another tenant than its stream row: a stream or its events were moved between tenants"
            ));
        }
        if let Some(problem) =
            registry_problem(v, &uuid::Uuid::from_bytes(row.event_id), row.registered)
        {
            return Some(problem);
        }
        if row.erased.is_some() {
            let stream_erased = self
                .stream
                .is_some_and(|s| s.erased && s.deletion.is_some());
            if !stream_erased {
                return Some(format!(
                    "version {v} has erased digests in allsource.erased_events, but its stream was not erased"
                ));
            }
            if row.payload != "null" || row.metadata.is_some() {
                return Some(format!(
                    "version {v} has erased digests in allsource.erased_events, but its payload or metadata is not erased"
                ));
            }
        }
        None
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

    /// The verdict.
    pub fn finish(self) -> Verdict {
        let checked = self.checked;
        let stream = self.stream;
        match self.state {
            State::Gap { expected, found } if found > expected => Verdict::bad(
                checked,
                Some(expected),
                format!("version {expected} is missing (the next event found is version {found})"),
            ),
            State::Gap { expected, found } => Verdict::bad(
                checked,
                Some(expected),
                format!("version {found} appears again where version {expected} belongs"),
            ),
            State::Found { version, problem } => Verdict::bad(checked, Some(version), problem),
            State::Mismatch(mismatch) => {
                let version = mismatch.row.version;
                let problem = diagnose(self.stream_id, &mismatch, &self.before, stream);
                Verdict::bad(checked, Some(version), problem)
            }
            State::Checking => {
                let last = self.next_version - 1;
                let Some(head) = stream else {
                    return if checked == 0 {
                        Verdict::sound(0)
                    } else {
                        Verdict::bad(
                            checked,
                            Some(1),
                            "events exist but the stream row is missing".into(),
                        )
                    };
                };
                if head.version != last {
                    return Verdict::bad(
                        checked,
                        Some(head.version.min(last) + 1),
                        format!(
                            "the stream row says version {}, but the events end at version {last}",
                            head.version
                        ),
                    );
                }
                let last_checksum = head.last_checksum.as_deref();
                if (last > 0 && last_checksum != Some(&self.previous[..]))
                    || (last == 0 && last_checksum.is_some())
                {
                    return Verdict::bad(
                        checked,
                        Some(last.max(1)),
                        format!("the stream row's last checksum does not match version {last}"),
                    );
                }
                match tombstone_problem(self.stream_id, head, &self.previous) {
                    Some(problem) => Verdict::bad(checked, None, problem),
                    None => Verdict::sound(checked),
                }
            }
        }
    }

    /// The verdict, and whether the stream still holds an anchor someone
    /// recorded: `checksum` at `version` (an event's checksum, or the
    /// stream's tombstone when `version` is its last). Call
    /// [`watch`](Self::watch)`(version)` before pushing rows.
    pub fn finish_against(self, version: i64, checksum: &[u8]) -> Verdict {
        let found = self
            .watch
            .and_then(|(watched, found)| found.filter(|_| watched == version));
        let stream = self.stream;
        let verdict = self.finish();
        if !verdict.ok {
            return verdict;
        }
        let (head_version, tombstone) =
            stream.map_or((0, None), |s| (s.version, s.tombstone_checksum.as_deref()));
        if version > head_version {
            return Verdict::bad(
                verdict.events_checked,
                Some(head_version + 1),
                format!(
                    "the stream ends at version {head_version}, before the anchor's version {version}: events were removed from its tail"
                ),
            );
        }
        let holds = found.is_some_and(|found| found[..] == checksum[..])
            || (version == head_version && tombstone == Some(checksum));
        if holds {
            verdict
        } else {
            Verdict::bad(
                verdict.events_checked,
                Some(version.max(1)),
                format!(
                    "version {version} no longer has the anchor's checksum: the stream was rewritten from there on (or its tombstone removed), or the anchor is not this stream's"
                ),
            )
        }
    }
}

/// What is wrong with an event's row in `allsource.event_ids`, if anything.
pub fn registry_problem(version: i64, id: &uuid::Uuid, registered: Registered) -> Option<String> {
    match registered {
        Registered::Yes => None,
        Registered::Missing => Some(format!(
            "version {version}'s event id {id} is missing from allsource.event_ids, so it could be appended again"
        )),
        Registered::Elsewhere => Some(format!(
            "allsource.event_ids maps version {version}'s event id {id} to another event"
        )),
    }
}

/// Whether the stream row's tombstone is the one `delete_stream` sealed.
fn tombstone_problem(
    stream_id: &str,
    head: &StreamRow,
    previous: &[u8; CHECKSUM_LEN],
) -> Option<String> {
    let problem = match (&head.deletion, head.tombstone_checksum.as_deref()) {
        (None, None) if head.erased => {
            "the stream row says it was erased but not deleted: its tombstone was removed"
        }
        (None, None) => return None,
        (Some(deletion), Some(sealed)) => {
            if head.expected_tombstone(stream_id, deletion, previous)[..] == sealed[..] {
                return None;
            }
            "the tombstone does not match the stream row: its deletion time, role, tenant or version was changed"
        }
        (Some(_), None) => {
            "the stream row says it was deleted, but has no tombstone checksum: it was not deleted by delete_stream"
        }
        (None, Some(_)) => {
            "the stream row has a tombstone checksum but says it is not deleted: a deleted stream was brought back"
        }
    };
    Some(problem.to_string())
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
        if other.fits(stream_id, k, &m.previous, &m.row.checksum) {
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
            if m.row.fits(stream_id, candidate, &link, &m.row.checksum) {
                return format!(
                    "the event at version {k} was written as version {candidate}: events were swapped or reordered"
                );
            }
        }
    }
    // The checksum is genuine if what comes after still chains to it: then the content changed.
    let next_link_holds = match m.after.first() {
        Some(next) if next.version == k + 1 => <[u8; CHECKSUM_LEN]>::try_from(&m.row.checksum[..])
            .is_ok_and(|link| next.fits(stream_id, k + 1, &link, &next.checksum)),
        Some(_) => false,
        None => stream.is_some_and(|s| {
            s.version == k && s.last_checksum.as_deref() == Some(&m.row.checksum[..])
        }),
    };
    if next_link_holds {
        format!("the content of version {k} was changed: its type, event id, payload, metadata, created_at or tenant no longer match its checksum")
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

    /// A sound stream of `n` events with distinct content: the first third
    /// in format 1 (written before 0.4.0), the rest in format 2.
    fn stream_of(n: i64) -> (Vec<EventRow>, StreamRow) {
        let mut previous = GENESIS;
        let mut rows = vec![];
        for version in 1..=n {
            let mut row = EventRow {
                version,
                position: version * 10,
                event_type: format!("Type{}", version % 3),
                event_id: (version as u128 * 7919).to_be_bytes(),
                tenant: None,
                tags: if version % 4 == 0 {
                    vec![format!("tag:{version}")]
                } else {
                    vec![]
                },
                payload: format!(r#"{{"n": {version}}}"#),
                metadata: (version % 2 == 0).then(|| format!(r#"{{"m": {version}}}"#)),
                created_at_unix_micros: 1_767_225_600_000_000 + version / 3,
                checksum: vec![],
                erased: None,
                registered: Registered::Yes,
            };
            let format = if version <= n / 3 {
                Format::V1
            } else {
                Format::V2
            };
            previous = checksum_in(format, &row.fields(STREAM, version), &previous);
            row.checksum = previous.to_vec();
            rows.push(row);
        }
        let head = StreamRow::live(n, (n > 0).then(|| previous.to_vec()), None);
        (rows, head)
    }

    /// `head` deleted (and erased) by delete_stream: its tombstone sealed.
    fn deleted(head: &StreamRow, erased: bool) -> StreamRow {
        let deletion = Deletion {
            at_unix_micros: 1_767_229_200_000_000,
            by: Some("app".into()),
        };
        let previous = head
            .last_checksum
            .as_deref()
            .map_or(GENESIS, |c| c.try_into().unwrap());
        StreamRow {
            tombstone_checksum: Some(
                head.expected_tombstone(STREAM, &deletion, &previous)
                    .to_vec(),
            ),
            deletion: Some(deletion),
            erased,
            ..head.clone()
        }
    }

    fn verifier<'a>(
        rows: &[EventRow],
        head: Option<&'a StreamRow>,
        watch: Option<i64>,
    ) -> StreamVerifier<'a> {
        let mut verifier = StreamVerifier::new(STREAM, head);
        if let Some(version) = watch {
            verifier.watch(version);
        }
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
        verifier
    }

    fn verify(rows: &[EventRow], head: Option<&StreamRow>) -> Verdict {
        verifier(rows, head, None).finish()
    }

    fn assert_bad(verdict: &Verdict, version: i64, words: &str) {
        assert_bad_at(verdict, Some(version), words);
    }

    fn assert_bad_at(verdict: &Verdict, version: Option<i64>, words: &str) {
        assert!(!verdict.ok, "{verdict:?}");
        assert_eq!(verdict.first_bad_version, version, "{verdict:?}");
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
        let head = deleted(&head, true);
        let mut erased = erase(&rows);
        assert!(verify(&erased, Some(&head)).ok);
        erased[3].erased.as_mut().unwrap().payload[0] ^= 1;
        assert_bad(&verify(&erased, Some(&head)), 4, "");
    }

    /// Digests stand in for content only where a hard delete erased it.
    #[test]
    fn digests_of_live_content_are_found() {
        let (rows, head) = stream_of(6);
        // The digests of version 3's content, then another content.
        let mut forged = rows.clone();
        forged[2].erased = erase(&rows)[2].erased.clone();
        forged[2].payload = r#"{"n": -3}"#.into();
        assert_bad(
            &verify(&forged, Some(&head)),
            3,
            "its stream was not erased",
        );
        // The same in a stream only soft-deleted.
        assert_bad(
            &verify(&forged, Some(&deleted(&head, false))),
            3,
            "not erased",
        );
        // An erased stream whose event got a content back.
        let mut revived = erase(&rows);
        revived[4].payload = rows[4].payload.clone();
        assert_bad(
            &verify(&revived, Some(&deleted(&head, true))),
            5,
            "payload or metadata is not erased",
        );
    }

    #[test]
    fn positions_must_rise_with_versions() {
        let (mut rows, head) = stream_of(6);
        rows[3].position = rows[1].position;
        assert_bad(&verify(&rows, Some(&head)), 4, "position");
    }

    #[test]
    fn tenants_are_checked_and_covered() {
        let (mut rows, mut head) = stream_of(6);
        head.tenant = Some("acme".into());
        assert_bad(&verify(&rows, Some(&head)), 1, "another tenant");
        // Everything moved to another tenant: format 2 events no longer verify.
        for row in &mut rows {
            row.tenant = Some("acme".into());
        }
        assert_bad(&verify(&rows, Some(&head)), 3, "");
        // Format 1 events do not cover the tenant: only the stream row's is checked.
        assert!(
            verify(
                &rows[..2],
                Some(&StreamRow {
                    version: 2,
                    last_checksum: Some(rows[1].checksum.clone()),
                    ..head.clone()
                })
            )
            .ok
        );
    }

    #[test]
    fn the_event_id_registry_is_checked() {
        let (mut rows, head) = stream_of(6);
        rows[1].registered = Registered::Missing;
        assert_bad(
            &verify(&rows, Some(&head)),
            2,
            "missing from allsource.event_ids",
        );
        rows[1].registered = Registered::Yes;
        rows[5].registered = Registered::Elsewhere;
        assert_bad(&verify(&rows, Some(&head)), 6, "maps version 6's event id");
    }

    #[test]
    fn tombstones_are_sealed() {
        for n in [0, 1, 5] {
            let (rows, head) = stream_of(n);
            let gone = deleted(&head, false);
            assert!(verify(&rows, Some(&gone)).ok, "{n}");
            // Brought back: deleted_at cleared.
            let back = StreamRow {
                deletion: None,
                ..gone.clone()
            };
            assert_bad_at(&verify(&rows, Some(&back)), None, "brought back");
            // Deleted by hand, without a tombstone.
            let forged = StreamRow {
                tombstone_checksum: None,
                ..gone.clone()
            };
            assert_bad_at(
                &verify(&rows, Some(&forged)),
                None,
                "not deleted by delete_stream",
            );
            // Its time or role changed.
            let mut changed = gone.clone();
            changed.deletion.as_mut().unwrap().by = Some("mallory".into());
            assert_bad_at(
                &verify(&rows, Some(&changed)),
                None,
                "tombstone does not match",
            );
            // Erased, its tombstone removed entirely.
            let erased = StreamRow {
                deletion: None,
                tombstone_checksum: None,
                ..deleted(&head, true)
            };
            assert_bad_at(
                &verify(&rows, Some(&erased)),
                None,
                "erased but not deleted",
            );
        }
    }

    #[test]
    fn anchors_catch_a_truncated_tail_and_a_removed_tombstone() {
        let (rows, head) = stream_of(6);
        let anchor = |rows: &[EventRow], head: &StreamRow, version: i64, checksum: &[u8]| {
            verifier(rows, Some(head), Some(version)).finish_against(version, checksum)
        };
        assert!(anchor(&rows, &head, 6, &rows[5].checksum).ok);
        assert!(anchor(&rows, &head, 2, &rows[1].checksum).ok);
        // The tail cut off and the stream row set back: sound by itself, not against the anchor.
        let cut = StreamRow::live(5, Some(rows[4].checksum.clone()), None);
        assert!(verify(&rows[..5], Some(&cut)).ok);
        assert_bad(
            &anchor(&rows[..5], &cut, 6, &rows[5].checksum),
            6,
            "ends at version 5",
        );
        assert!(anchor(&rows[..5], &cut, 4, &rows[3].checksum).ok);
        assert_bad(
            &anchor(&rows, &head, 4, &rows[2].checksum),
            4,
            "no longer has the anchor's checksum",
        );
        // A deleted stream's head is its tombstone; removing the tombstone breaks it.
        let gone = deleted(&head, false);
        let tombstone = gone.tombstone_checksum.clone().unwrap();
        assert!(anchor(&rows, &gone, 6, &tombstone).ok);
        assert_bad(&anchor(&rows, &head, 6, &tombstone), 6, "tombstone removed");
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
            &verify(&[], Some(&StreamRow::live(2, None, None))),
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
