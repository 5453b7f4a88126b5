//! AllSource's core: everything an append, a read or a verification decides
//! that needs no PostgreSQL, as plain Rust, unit-tested and benchmarked on its
//! own (`cargo test -p allsource-core`, `cargo bench -p allsource-core`). The
//! extension crate (`src/`) calls it from SQL and gives it PostgreSQL's data.
//!
//! - [`error`]: the errors users see, every SQLSTATE the project raises.
//! - [`validate`]: arguments checked before anything is written.
//! - [`batch`]: `append_batch`'s JSON array parsed into requests.
//! - [`boundary`]: tags, queries over types and tags, and the locks of a conditional append.
//! - [`idempotency`]: whether an append with known event ids is a retry.
//! - [`plan`]: which versions and positions a set of appends gets, which are repeats.
//! - [`lease`]: which session holds which member of a subscription.
//! - [`jsontext`]: PostgreSQL's `jsonb` text, as the checksum hashes it.
//! - [`checksum`]: the SHA-256 hash chain's encoding.
//! - [`verify`]: walking a stream's chain and reporting what does not match.
//! - [`partition`]: a stream's partition.
//! - [`watermark`]: the in-flight registry's rule and its proof.
//! - [`ingest`]: the ingest queue's events, tickets and results.
//! - [`ring`]: the queue's lock-free ring buffer.
//! - [`stats`]: the counters behind `allsource.stats()`.

#![warn(clippy::undocumented_unsafe_blocks)]

pub mod batch;
pub mod boundary;
pub mod checksum;
pub mod error;
pub mod idempotency;
pub mod ingest;
pub mod jsontext;
pub mod lease;
pub mod partition;
pub mod plan;
pub mod ring;
pub mod stats;
pub mod validate;
pub mod verify;
pub mod watermark;
