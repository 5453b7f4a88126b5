//! Live statistics: lock-free counters and latency histograms that every
//! backend and worker updates in shared memory with relaxed atomic adds.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Sub-buckets per power of two: percentiles are exact to within 1/8 (12.5 %).
const SUB_BUCKETS: usize = 8;
/// Powers of two covered: up to 2^40 µs (12 days).
const POWERS: usize = 40;
pub const BUCKETS: usize = SUB_BUCKETS * (POWERS + 1);

/// A histogram of durations in microseconds, log-linear buckets.
#[repr(C)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS],
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// The bucket of `micros`: values below 8 get their own bucket; above, each
/// power of two is split into eight equal parts.
fn bucket_of(micros: u64) -> usize {
    if micros < SUB_BUCKETS as u64 {
        return micros as usize;
    }
    let power = 63 - micros.leading_zeros() as usize; // >= 3
    let sub = (micros >> (power - 3)) as usize & (SUB_BUCKETS - 1);
    ((power - 2) * SUB_BUCKETS + sub).min(BUCKETS - 1)
}

/// The largest value that falls in `bucket`.
fn upper_bound(bucket: usize) -> u64 {
    if bucket < SUB_BUCKETS {
        return bucket as u64;
    }
    let power = bucket / SUB_BUCKETS + 2;
    let sub = (bucket % SUB_BUCKETS) as u64;
    ((SUB_BUCKETS as u64 + sub + 1) << (power - 3)) - 1
}

impl Histogram {
    pub fn record(&self, micros: u64) {
        self.counts[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// The value below which a fraction `quantile` of the recordings fall
    /// (the upper bound of its bucket); `None` when empty.
    pub fn quantile(&self, quantile: f64) -> Option<u64> {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((quantile * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (bucket, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(upper_bound(bucket));
            }
        }
        unreachable!("the ranks add up to the total")
    }

    pub fn reset(&self) {
        for count in &self.counts {
            count.store(0, Ordering::Relaxed);
        }
    }
}

/// The counters `allsource.stats()` reports, one set for the server.
#[repr(C)]
#[derive(Default)]
pub struct Counters {
    /// Events written by committed transactions (repeats not counted).
    pub events_appended: AtomicU64,
    /// Committed `append` calls.
    pub appends: AtomicU64,
    /// Committed `append_batch` calls.
    pub batches: AtomicU64,
    /// Events accepted by `enqueue`.
    pub enqueued: AtomicU64,
    /// Wrong expected versions (ZA001), direct or queued.
    pub conflicts: AtomicU64,
    /// Appends refused for other reasons: a deleted stream, a reused id, an
    /// error in a worker.
    pub rejects: AtomicU64,
    /// Transactions committed by ingest workers.
    pub worker_commits: AtomicU64,
    /// Events handed out by `receive` and to subscription handlers (each
    /// time: an event handed out again counts again).
    pub delivered: AtomicU64,
    /// Events a committed `ack` or handler transaction acknowledged.
    pub acked: AtomicU64,
    /// Events a committed `nack` or handler failure parked.
    pub parked: AtomicU64,
    /// Duration of `append` and `append_batch` calls.
    pub append_latency: Histogram,
    /// From `enqueue` to the ticket's result.
    pub ticket_latency: Histogram,
    /// When the counters were last reset (PostgreSQL timestamp).
    pub since: AtomicI64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn reset(&self, now: i64) {
        for counter in [
            &self.events_appended,
            &self.appends,
            &self.batches,
            &self.enqueued,
            &self.conflicts,
            &self.rejects,
            &self.worker_commits,
            &self.delivered,
            &self.acked,
            &self.parked,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        self.append_latency.reset();
        self.ticket_latency.reset();
        self.since.store(now, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut previous = 0;
        for micros in (0..100_000u64).chain([1 << 30, u64::MAX]) {
            let bucket = bucket_of(micros);
            assert!(bucket >= previous, "{micros}");
            previous = bucket;
            if bucket < BUCKETS - 1 {
                assert!(upper_bound(bucket) >= micros, "{micros} above its bucket");
                // Within an eighth of the value.
                assert!(
                    upper_bound(bucket) as f64 <= micros as f64 * 1.125 + 1.0,
                    "{micros}"
                );
            }
        }
    }

    #[test]
    fn quantiles_of_a_known_distribution() {
        let histogram = Histogram::default();
        assert_eq!(histogram.quantile(0.5), None);
        for micros in 1..=1000 {
            histogram.record(micros);
        }
        let p50 = histogram.quantile(0.5).unwrap();
        let p99 = histogram.quantile(0.99).unwrap();
        assert!((500..=563).contains(&p50), "p50 {p50}");
        assert!((990..=1114).contains(&p99), "p99 {p99}");
        histogram.reset();
        assert_eq!(histogram.quantile(0.99), None);
    }

    #[test]
    fn counters_are_shared_between_threads() {
        let counters = Counters::default();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for i in 0..10_000 {
                        Counters::add(&counters.events_appended, 1);
                        counters.append_latency.record(i % 100);
                    }
                });
            }
        });
        assert_eq!(counters.events_appended.load(Ordering::Relaxed), 40_000);
        // 99 falls in the bucket 96..=103.
        assert_eq!(counters.append_latency.quantile(1.0), Some(103));
        counters.reset(5);
        assert_eq!(counters.events_appended.load(Ordering::Relaxed), 0);
        assert_eq!(counters.since.load(Ordering::Relaxed), 5);
    }
}
