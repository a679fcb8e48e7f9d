use std::time::Duration;
use tokio::time::Instant;

const BUCKETS: usize = 10;

/// Two counts (`a`, `b`) over a sliding window of ten buckets: what is older than the window
/// no longer counts. Time is passed in, so that the users' policies stay pure.
#[derive(Clone, Debug)]
pub struct Window {
    width: Duration,
    buckets: [(u64, u64); BUCKETS],
    /// The current bucket covers `[start, start + width)`.
    start: Instant,
    current: usize,
}

impl Window {
    /// A window of `length` starting at `now` (each bucket a tenth of it, 1 ms at least).
    pub fn new(length: Duration, now: Instant) -> Self {
        Self {
            width: (length / BUCKETS as u32).max(Duration::from_millis(1)),
            buckets: [(0, 0); BUCKETS],
            start: now,
            current: 0,
        }
    }

    fn advance(&mut self, now: Instant) {
        let mut steps = 0;
        while now >= self.start + self.width && steps <= BUCKETS {
            self.current = (self.current + 1) % BUCKETS;
            self.buckets[self.current] = (0, 0);
            self.start += self.width;
            steps += 1;
        }
        if now >= self.start + self.width {
            // Idle for longer than the window: everything has aged out.
            self.clear(now);
        }
    }

    /// Adds `a` and `b` at `now`.
    pub fn record(&mut self, now: Instant, a: u64, b: u64) {
        self.advance(now);
        let bucket = &mut self.buckets[self.current];
        bucket.0 += a;
        bucket.1 += b;
    }

    /// Both counts over the window that ends at `now`.
    pub fn totals(&mut self, now: Instant) -> (u64, u64) {
        self.advance(now);
        self.buckets
            .iter()
            .fold((0, 0), |(a, b), (ba, bb)| (a + ba, b + bb))
    }

    /// Forgets everything; the window starts again at `now`.
    pub fn clear(&mut self, now: Instant) {
        self.buckets = [(0, 0); BUCKETS];
        self.start = now;
        self.current = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_slide_out_bucket_by_bucket() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(10), t0);
        w.record(t0, 1, 0);
        w.record(t0 + Duration::from_secs(5), 0, 2);
        assert_eq!(w.totals(t0 + Duration::from_secs(9)), (1, 2));
        assert_eq!(
            w.totals(t0 + Duration::from_secs(10)),
            (0, 2),
            "the first bucket left"
        );
        assert_eq!(w.totals(t0 + Duration::from_secs(16)), (0, 0));
        w.record(t0 + Duration::from_secs(100), 4, 4);
        assert_eq!(w.totals(t0 + Duration::from_secs(100)), (4, 4));
        w.clear(t0 + Duration::from_secs(100));
        assert_eq!(w.totals(t0 + Duration::from_secs(100)), (0, 0));
    }
}
