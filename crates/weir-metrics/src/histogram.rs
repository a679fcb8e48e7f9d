//! Histograms with buckets that suit LLM latencies, and a per-stream tally of inter-token gaps
//! that costs no shared memory traffic until the stream ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) for a whole request: a streamed answer runs for seconds to minutes.
pub const DURATION_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];

/// Upper bounds (seconds) for time to first token: tens of milliseconds (a cache) to tens of
/// seconds (a reasoning model).
pub const FIRST_TOKEN_BUCKETS: &[f64] = &[
    0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
];

/// Upper bounds (seconds) for the gap between two chunks of a stream.
pub const INTER_TOKEN_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5,
];

/// Upper bounds for output tokens per second after the first token.
pub const TOKENS_PER_SECOND_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 500.0, 1000.0,
];

/// Upper bounds (seconds) for the gateway's own time before the upstream request left.
pub const OVERHEAD_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0,
];

/// A histogram shared by every stream of one label set: one atomic per bucket.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), then the `+Inf` bucket.
    counts: Box<[AtomicU64]>,
    /// The sum of observed values, as `f64` bits.
    sum: AtomicU64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending upper bounds).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Records one value.
    pub fn observe(&self, value: f64) {
        let bucket = self.bounds.partition_point(|b| *b < value);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.add_sum(value);
    }

    /// Adds a stream's gaps (their buckets must be [`INTER_TOKEN_BUCKETS`]).
    pub fn merge(&self, gaps: &Gaps) {
        debug_assert_eq!(self.bounds.len() + 1, gaps.counts.len());
        for (shared, local) in self.counts.iter().zip(gaps.counts.iter()) {
            if *local > 0 {
                shared.fetch_add(u64::from(*local), Ordering::Relaxed);
            }
        }
        if gaps.count() > 0 {
            self.add_sum(Duration::from_nanos(gaps.sum_nanos).as_secs_f64());
        }
    }

    fn add_sum(&self, value: f64) {
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    /// The bucket bounds, the cumulative counts (the last is `+Inf`, the total) and the sum.
    pub fn snapshot(&self) -> (&'static [f64], Vec<u64>, f64) {
        let mut total = 0;
        let cumulative = self
            .counts
            .iter()
            .map(|c| {
                total += c.load(Ordering::Relaxed);
                total
            })
            .collect();
        (
            self.bounds,
            cumulative,
            f64::from_bits(self.sum.load(Ordering::Relaxed)),
        )
    }
}

/// One stream's inter-token gaps, counted in its own memory (no atomics per chunk) and
/// merged into the shared histogram when the stream ends. Buckets: [`INTER_TOKEN_BUCKETS`].
#[derive(Clone, Debug, Default)]
pub struct Gaps {
    counts: [u32; 14],
    sum_nanos: u64,
}

/// [`INTER_TOKEN_BUCKETS`] in nanoseconds, for the per-chunk path.
const GAP_BOUNDS_NANOS: [u64; 13] = [
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    20_000_000,
    35_000_000,
    50_000_000,
    75_000_000,
    100_000_000,
    200_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
];

impl Gaps {
    /// Records one gap.
    pub fn add(&mut self, gap: Duration) {
        let nanos = u64::try_from(gap.as_nanos()).unwrap_or(u64::MAX);
        let bucket = GAP_BOUNDS_NANOS.partition_point(|b| *b < nanos);
        self.counts[bucket] += 1;
        self.sum_nanos = self.sum_nanos.saturating_add(nanos);
    }

    /// Records `n` gaps of zero (events that arrived together).
    pub fn add_zeros(&mut self, n: u32) {
        self.counts[0] = self.counts[0].saturating_add(n);
    }

    /// How many gaps were recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| u64::from(*c)).sum()
    }

    /// Their sum.
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_nanos)
    }

    /// The count in each bucket of [`INTER_TOKEN_BUCKETS`] (not cumulative), then `+Inf`.
    pub fn buckets(&self) -> &[u32] {
        &self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_bounds_match_the_published_buckets() {
        assert_eq!(GAP_BOUNDS_NANOS.len(), INTER_TOKEN_BUCKETS.len());
        for (nanos, secs) in GAP_BOUNDS_NANOS.iter().zip(INTER_TOKEN_BUCKETS) {
            assert_eq!(*nanos, Duration::from_secs_f64(*secs).as_nanos() as u64);
        }
    }

    #[test]
    fn values_land_in_their_bucket_and_merge() {
        let h = Histogram::new(INTER_TOKEN_BUCKETS);
        h.observe(0.001); // on the bound: le="0.001"
        h.observe(0.004);
        let mut gaps = Gaps::default();
        gaps.add(Duration::from_millis(30));
        gaps.add(Duration::from_secs(9));
        h.merge(&gaps);
        let (_, cumulative, sum) = h.snapshot();
        assert_eq!(cumulative[0], 1);
        assert_eq!(cumulative[2], 2); // le="0.005"
        assert_eq!(cumulative[5], 3); // le="0.035"
        assert_eq!(cumulative[12], 3); // le="2.5"
        assert_eq!(cumulative[13], 4); // +Inf
        assert!((sum - 9.035).abs() < 1e-9, "{sum}");
    }
}
