//! The per-stream hash chain. Each event's checksum is
//! `SHA-256(encoding(event) ‖ previous checksum)`, the previous checksum being
//! 32 zero bytes for version 1. The encoding, every integer big-endian:
//!
//! ```text
//! 0x02                                   format version (0x01 before 0.4.0)
//! u32 length ‖ stream_id                 UTF-8
//! i64 version
//! u32 length ‖ event_type                UTF-8
//! 16 bytes event_id                      the UUID's bytes
//! 32 bytes SHA-256(payload jsonb text)
//! 0x00                                   metadata is NULL, or
//! 0x01 ‖ 32 bytes SHA-256(metadata jsonb text)
//! i64 created_at                         microseconds since 1970-01-01 UTC
//! 0x00                                   no tenant, or           (format 2 only)
//! 0x01 ‖ u32 length ‖ tenant_id          UTF-8                   (format 2 only)
//! 0x00                                   no tags, or             (format 2 only)
//! 0x01 ‖ u32 count ‖ (u32 length ‖ tag)… in the stored order     (format 2 only)
//! ```
//!
//! Format 1 (events written before 0.4.0) ends after `created_at`. The format
//! byte is hashed, so a checksum is valid under one format only: a verifier
//! may try both. Payload and metadata enter through their digests, so a
//! stream whose payloads are erased on request can still prove its chain from
//! the digests. Positions are not covered: moving a partition to another node
//! renumbers them (docs/scaling-out.md, "A router over several nodes").
//!
//! A soft or hard delete seals the stream with a tombstone link,
//! `SHA-256(tombstone encoding ‖ last checksum)`, kept in the stream row:
//!
//! ```text
//! 0x80                                   a tombstone
//! u32 length ‖ stream_id
//! i64 version                            the stream's last version
//! 0x00 | 0x01 ‖ u32 length ‖ tenant_id
//! i64 deleted_at                         microseconds since 1970-01-01 UTC
//! 0x00 | 0x01 ‖ u32 length ‖ deleted_by  the deleting role
//! ```

use sha2::{Digest, Sha256};

/// Bytes in a checksum.
pub const CHECKSUM_LEN: usize = 32;
/// The "previous checksum" of version 1.
pub const GENESIS: [u8; CHECKSUM_LEN] = [0; CHECKSUM_LEN];
/// The first byte of a tombstone's encoding.
pub const TOMBSTONE: u8 = 0x80;
/// PostgreSQL counts timestamps from 2000-01-01; Unix from 1970-01-01.
pub const POSTGRES_EPOCH_IN_UNIX_MICROS: i64 = 946_684_800_000_000;

/// The fields of one event that its checksum covers.
#[derive(Debug, Clone, Copy)]
pub struct EventFields<'a> {
    pub stream_id: &'a str,
    pub version: i64,
    pub event_type: &'a str,
    pub event_id: [u8; 16],
    /// The payload's jsonb text, or its digest once erased.
    pub payload: Body<'a>,
    /// The metadata's, if any.
    pub metadata: Option<Body<'a>>,
    /// Microseconds since 1970-01-01 UTC.
    pub created_at_unix_micros: i64,
    /// The stream's tenant (format 2 covers it).
    pub tenant: Option<&'a str>,
    /// The event's tags, empty for none (format 2 covers them).
    pub tags: &'a [String],
}

/// An encoding format of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Before 0.4.0: no tenant.
    V1 = 1,
    /// Since 0.4.0: the tenant and the tags too. What appends write.
    V2 = 2,
}

impl Format {
    /// The other format: what a verifier tries when one does not fit.
    pub fn other(self) -> Format {
        match self {
            Format::V1 => Format::V2,
            Format::V2 => Format::V1,
        }
    }
}

/// The fields of a tombstone that its link covers.
#[derive(Debug, Clone, Copy)]
pub struct TombstoneFields<'a> {
    pub stream_id: &'a str,
    pub version: i64,
    pub tenant: Option<&'a str>,
    pub deleted_at_unix_micros: i64,
    pub deleted_by: Option<&'a str>,
}

/// A payload or metadata as the chain sees it: the jsonb text, or (after a
/// hard delete erased the text) its SHA-256 digest, which the chain covers
/// either way.
#[derive(Debug, Clone, Copy)]
pub enum Body<'a> {
    Text(&'a str),
    Digest(&'a [u8; CHECKSUM_LEN]),
}

impl Body<'_> {
    pub fn digest(self) -> [u8; CHECKSUM_LEN] {
        match self {
            Body::Text(text) => digest(text),
            Body::Digest(digest) => *digest,
        }
    }
}

/// SHA-256 of a jsonb text: what the chain covers of a payload or metadata.
pub fn digest(text: &str) -> [u8; CHECKSUM_LEN] {
    Sha256::digest(text.as_bytes()).into()
}

/// Where encoded bytes go: a buffer (to show them) or a hasher (to hash them).
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Sink for Sha256 {
    fn put(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

fn put_text(sink: &mut impl Sink, text: &str) {
    let len = u32::try_from(text.len()).expect("names are at most 255 bytes");
    sink.put(&len.to_be_bytes());
    sink.put(text.as_bytes());
}

fn put_optional_text(sink: &mut impl Sink, text: Option<&str>) {
    match text {
        None => sink.put(&[0]),
        Some(text) => {
            sink.put(&[1]);
            put_text(sink, text);
        }
    }
}

fn encode_into(sink: &mut impl Sink, format: Format, event: &EventFields) {
    sink.put(&[format as u8]);
    put_text(sink, event.stream_id);
    sink.put(&event.version.to_be_bytes());
    put_text(sink, event.event_type);
    sink.put(&event.event_id);
    sink.put(&event.payload.digest());
    match event.metadata {
        None => sink.put(&[0]),
        Some(metadata) => {
            sink.put(&[1]);
            sink.put(&metadata.digest());
        }
    }
    sink.put(&event.created_at_unix_micros.to_be_bytes());
    if format == Format::V2 {
        put_optional_text(sink, event.tenant);
        if event.tags.is_empty() {
            sink.put(&[0]);
        } else {
            sink.put(&[1]);
            let count = u32::try_from(event.tags.len()).expect("at most 64 tags");
            sink.put(&count.to_be_bytes());
            for tag in event.tags {
                put_text(sink, tag);
            }
        }
    }
}

/// The canonical encoding of `event` in `format`, as documented above.
pub fn encode(format: Format, event: &EventFields) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    encode_into(&mut out, format, event);
    out
}

/// The checksum of `event` chained to `previous`, as appends write it (format 2).
pub fn checksum(event: &EventFields, previous: &[u8; CHECKSUM_LEN]) -> [u8; CHECKSUM_LEN] {
    checksum_in(Format::V2, event, previous)
}

/// The checksum of `event` in `format` chained to `previous`.
pub fn checksum_in(
    format: Format,
    event: &EventFields,
    previous: &[u8; CHECKSUM_LEN],
) -> [u8; CHECKSUM_LEN] {
    let mut hasher = Sha256::new();
    encode_into(&mut hasher, format, event);
    hasher.update(previous);
    hasher.finalize().into()
}

/// The encoding of a tombstone, as documented above.
pub fn encode_tombstone(tombstone: &TombstoneFields) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    encode_tombstone_into(&mut out, tombstone);
    out
}

fn encode_tombstone_into(sink: &mut impl Sink, t: &TombstoneFields) {
    sink.put(&[TOMBSTONE]);
    put_text(sink, t.stream_id);
    sink.put(&t.version.to_be_bytes());
    put_optional_text(sink, t.tenant);
    sink.put(&t.deleted_at_unix_micros.to_be_bytes());
    put_optional_text(sink, t.deleted_by);
}

/// The tombstone's link, chained to the stream's last checksum (`previous`,
/// 32 zero bytes for a stream without events).
pub fn tombstone_checksum(
    tombstone: &TombstoneFields,
    previous: &[u8; CHECKSUM_LEN],
) -> [u8; CHECKSUM_LEN] {
    let mut hasher = Sha256::new();
    encode_tombstone_into(&mut hasher, tombstone);
    hasher.update(previous);
    hasher.finalize().into()
}

/// Converts a PostgreSQL `TimestampTz` to microseconds since the Unix epoch.
pub fn unix_micros_from_postgres(timestamp: i64) -> i64 {
    timestamp + POSTGRES_EPOCH_IN_UNIX_MICROS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn sample() -> EventFields<'static> {
        EventFields {
            stream_id: "order-1",
            version: 1,
            event_type: "OrderPlaced",
            event_id: [
                0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
                0xee, 0xff,
            ],
            payload: Body::Text(r#"{"total": 42}"#),
            metadata: None,
            // 2026-01-01 00:00:00 UTC
            created_at_unix_micros: 1_767_225_600_000_000,
            tenant: None,
            tags: &[],
        }
    }

    /// The test vectors of docs/integrity.md; `scripts/audit_checksums.py --self-test`
    /// recomputes them.
    #[test]
    fn test_vectors() {
        let event = sample();
        let encoding = encode(Format::V1, &event);
        assert_eq!(encoding.len(), 1 + 4 + 7 + 8 + 4 + 11 + 16 + 32 + 1 + 8);
        assert_eq!(
            hex(&checksum_in(Format::V1, &event, &GENESIS)),
            "205e6ad34393386b772f1c2bed4f777b9309d9093d5ca47f74a5299f50659aa7",
            "encoding was {}",
            hex(&encoding)
        );
        assert_eq!(
            hex(&checksum(&event, &GENESIS)),
            "96dc918ec4350f56ee0cf65a1a9f0239719ee5d096d6b7dd410d0a2a5207f451"
        );
        let acme = EventFields {
            tenant: Some("acme"),
            ..event
        };
        assert_eq!(encode(Format::V2, &acme).len(), 93 + 4 + 4 + 1);
        let first = checksum(&acme, &GENESIS);
        assert_eq!(
            hex(&first),
            "8ed1d4ea6ae0c21d0cd8b4a895ea41a2185830b01d585104ed8d09058cee8982"
        );
        let tags = ["course:7".to_string(), "student:42".to_string()];
        let tagged = EventFields {
            tags: &tags,
            ..acme
        };
        assert_eq!(
            encode(Format::V2, &tagged).len(),
            93 + 4 + 4 + 1 + 4 + (4 + 8) + (4 + 10)
        );
        assert_eq!(
            hex(&checksum(&tagged, &GENESIS)),
            "2f68ba0cd87e4b3f9a176afff3ebc8b76dded24f7e6fc4d193fd78e24434cfa5"
        );
        let tombstone = TombstoneFields {
            stream_id: "order-1",
            version: 1,
            tenant: Some("acme"),
            // 2026-01-01 01:00:00 UTC
            deleted_at_unix_micros: 1_767_229_200_000_000,
            deleted_by: Some("app"),
        };
        assert_eq!(
            hex(&encode_tombstone(&tombstone)),
            "80000000076f726465722d310000000000000001010000000461636d65000647491cb3e4000100000003617070"
        );
        assert_eq!(
            hex(&tombstone_checksum(&tombstone, &first)),
            "4930955b5779f9fd2f9d021fa2b0a9cc90d3882b90b537cd6d534e1fd93cc147"
        );
    }

    /// A checksum fits one format only, and format 1 ignores the tenant.
    #[test]
    fn formats_are_told_apart_by_their_checksums() {
        let event = sample();
        let v1 = checksum_in(Format::V1, &event, &GENESIS);
        assert_ne!(v1, checksum_in(Format::V2, &event, &GENESIS));
        let acme = EventFields {
            tenant: Some("acme"),
            ..event
        };
        assert_eq!(v1, checksum_in(Format::V1, &acme, &GENESIS));
        assert_ne!(
            checksum_in(Format::V2, &acme, &GENESIS),
            checksum_in(Format::V2, &event, &GENESIS)
        );
        assert_eq!(Format::V1.other(), Format::V2);
    }

    /// A hard delete keeps the digests: the chain still verifies.
    #[test]
    fn a_digest_stands_in_for_its_text() {
        let mut erased = sample();
        let payload = digest(r#"{"total": 42}"#);
        let metadata = digest("{}");
        erased.payload = Body::Digest(&payload);
        let mut with_metadata = sample();
        with_metadata.metadata = Some(Body::Text("{}"));
        let mut erased_metadata = erased;
        erased_metadata.metadata = Some(Body::Digest(&metadata));
        assert_eq!(checksum(&erased, &GENESIS), checksum(&sample(), &GENESIS));
        assert_eq!(
            checksum(&erased_metadata, &GENESIS),
            checksum(&with_metadata, &GENESIS)
        );
    }

    #[test]
    fn every_field_changes_the_checksum() {
        let base = checksum(&sample(), &GENESIS);
        let mut variants = vec![];
        let mut e = sample();
        e.stream_id = "order-2";
        variants.push(e);
        let mut e = sample();
        e.version = 2;
        variants.push(e);
        let mut e = sample();
        e.event_type = "OrderPaid";
        variants.push(e);
        let one_tag = ["course:7".to_string()];
        let two_tags = ["student:42".to_string(), "course:7".to_string()];
        let reordered = ["course:7".to_string(), "student:42".to_string()];
        for tags in [&one_tag[..], &two_tags[..], &reordered[..]] {
            let mut e = sample();
            e.tags = tags;
            variants.push(e);
        }
        let mut e = sample();
        e.event_id[15] ^= 1;
        variants.push(e);
        let mut e = sample();
        e.payload = Body::Text(r#"{"total": 43}"#);
        variants.push(e);
        let mut e = sample();
        e.metadata = Some(Body::Text("{}"));
        variants.push(e);
        let mut e = sample();
        e.created_at_unix_micros += 1;
        variants.push(e);
        let mut e = sample();
        e.tenant = Some("acme");
        variants.push(e);
        for variant in &variants {
            assert_ne!(checksum(variant, &GENESIS), base, "{variant:?}");
        }
        assert_ne!(
            checksum(&sample(), &[1; CHECKSUM_LEN]),
            base,
            "the chain link counts"
        );
    }

    #[test]
    fn length_prefixes_keep_fields_apart() {
        let mut a = sample();
        a.stream_id = "ab";
        a.event_type = "c";
        let mut b = sample();
        b.stream_id = "a";
        b.event_type = "bc";
        assert_ne!(encode(Format::V2, &a), encode(Format::V2, &b));
    }

    #[test]
    fn epochs() {
        // 2000-01-01 in PostgreSQL is 946684800 seconds after 1970-01-01.
        assert_eq!(unix_micros_from_postgres(0), 946_684_800_000_000);
    }
}
