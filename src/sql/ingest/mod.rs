//! The ingest queue: `enqueue`, `await_ticket`, `ingest_workers()` and the
//! workers that append queued events.
//!
//! Shared memory, sized at server start from `allsource.queue_size`,
//! `allsource.ingest_workers` and `allsource.max_databases`, holds a lane
//! group per database the workers serve ([`queue`]), and one lane per worker
//! in each: a lock-free ring
//! ([`allsource_core::ring`]) of encoded events ([`allsource_core::ingest::QueuedEvent`]) and
//! a table of ticket results ([`allsource_core::ingest::ResultCell`]). A stream's
//! events always go to the same lane, so one worker appends them in order.
//!
//! A worker takes a batch, appends it in one transaction through the path of
//! `append_batch` ([`super::append::append_requests`]), where each event is
//! decided alone, stages the results, commits, then publishes them and wakes
//! the waiters. The batch's ring slots are freed only after that: a worker
//! that dies mid-batch leaves its events in the ring, and its successor
//! either confirms them (the transaction committed) or appends them again.
//!
//! The shared memory is [`crate::sql::queue`]; here are the SQL functions
//! ([`functions`]) and the workers' loop ([`worker`]).

mod functions;
mod worker;

pub use worker::start as start_worker;

/// From `_PG_init`: when preloading, reserves the queue's shared memory
/// (the launcher starts the workers).
pub fn init() {
    if !super::backend::preloading() {
        return;
    }
    crate::sql::queue::reserve_shared_memory();
}
