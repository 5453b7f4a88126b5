//! The per-stream hash chain. Each event's checksum is
//! `SHA-256(encoding(event) ‖ previous checksum)`, the previous checksum being
//! 32 zero bytes for version 1. The encoding (format 1), every integer
//! big-endian:
//!
//! ```text
//! 0x01                                   format version
//! u32 length ‖ stream_id                 UTF-8
//! i64 version
//! u32 length ‖ event_type                UTF-8
//! 16 bytes event_id                      the UUID's bytes
//! 32 bytes SHA-256(payload jsonb text)
//! 0x00                                   metadata is NULL, or
//! 0x01 ‖ 32 bytes SHA-256(metadata jsonb text)
//! i64 created_at                         microseconds since 1970-01-01 UTC
//! ```
//!
//! Payload and metadata enter through their digests, so a stream whose
//! payloads are erased on request can still prove its chain from the digests.

use sha2::{Digest, Sha256};

/// Bytes in a checksum.
pub const CHECKSUM_LEN: usize = 32;
/// The "previous checksum" of version 1.
pub const GENESIS: [u8; CHECKSUM_LEN] = [0; CHECKSUM_LEN];
/// The encoding format this module writes.
pub const FORMAT_VERSION: u8 = 1;
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

fn encode_into(sink: &mut impl Sink, event: &EventFields) {
    sink.put(&[FORMAT_VERSION]);
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
}

/// The canonical encoding of `event`, as documented above.
pub fn encode(event: &EventFields) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    encode_into(&mut out, event);
    out
}

/// The checksum of `event` chained to `previous`.
pub fn checksum(event: &EventFields, previous: &[u8; CHECKSUM_LEN]) -> [u8; CHECKSUM_LEN] {
    let mut hasher = Sha256::new();
    encode_into(&mut hasher, event);
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
        }
    }

    /// The README's worked example; `scripts/verify_checksum.py` recomputes it.
    #[test]
    fn test_vector() {
        let event = sample();
        let encoding = encode(&event);
        assert_eq!(encoding.len(), 1 + 4 + 7 + 8 + 4 + 11 + 16 + 32 + 1 + 8);
        assert_eq!(
            hex(&checksum(&event, &GENESIS)),
            "205e6ad34393386b772f1c2bed4f777b9309d9093d5ca47f74a5299f50659aa7",
            "encoding was {}",
            hex(&encoding)
        );
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
        assert_ne!(encode(&a), encode(&b));
    }

    #[test]
    fn epochs() {
        // 2000-01-01 in PostgreSQL is 946684800 seconds after 1970-01-01.
        assert_eq!(unix_micros_from_postgres(0), 946_684_800_000_000);
    }
}
