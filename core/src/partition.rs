//! The stable partition hash. Any client can compute it: the first 8 bytes of
//! SHA-256 over the stream id's UTF-8 bytes, read as a big-endian unsigned
//! 64-bit integer, modulo the partition count. It depends on no Rust or
//! PostgreSQL version (unlike `DefaultHasher` or `hashtext`).

use sha2::{Digest, Sha256};

/// The partition count used when `allsource.partitions` is not set.
pub const DEFAULT_PARTITIONS: i32 = 32;
/// The largest partition count we accept.
pub const MAX_PARTITIONS: i32 = 1024;

/// The first 8 bytes of SHA-256(`key`) as a big-endian u64.
pub fn stable_hash(key: &str) -> u64 {
    let digest = Sha256::digest(key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The partition of `stream_id` among `partition_count` partitions.
pub fn partition_for(stream_id: &str, partition_count: u32) -> u32 {
    assert!(partition_count > 0, "partition_count must be positive");
    (stable_hash(stream_id) % u64::from(partition_count)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test vectors, also published in docs/sql-reference.md. Recompute with Python:
    /// `int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "big") % n`.
    #[test]
    fn test_vectors() {
        let vectors: &[(&str, u64, u32, u32)] = &[
            ("", 0xe3b0c44298fc1c14, 32, 20),
            ("order-1", 0x0bafe22156d2698c, 32, 12),
            ("order-1", 0x0bafe22156d2698c, 7, 0),
            ("customer-42", 0xa045eb33f8797f35, 32, 21),
            ("customer-42", 0xa045eb33f8797f35, 1024, 821),
            ("Äpfel-ünd-Birnen", 0xbb4b5badb44f3275, 32, 21),
        ];
        for &(stream_id, hash, count, partition) in vectors {
            assert_eq!(stable_hash(stream_id), hash, "hash of {stream_id:?}");
            assert_eq!(
                partition_for(stream_id, count),
                partition,
                "partition of {stream_id:?}"
            );
        }
    }

    #[test]
    fn every_partition_is_in_range_and_used() {
        let mut seen = [false; 32];
        for i in 0..10_000 {
            let p = partition_for(&format!("stream-{i}"), 32);
            assert!(p < 32);
            seen[p as usize] = true;
        }
        assert!(
            seen.iter().all(|&s| s),
            "10,000 streams reach all 32 partitions"
        );
    }

    #[test]
    fn one_partition_takes_everything() {
        assert_eq!(partition_for("anything", 1), 0);
    }
}
