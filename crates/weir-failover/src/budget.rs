//! A retry budget: retries (and failovers) may be at most `ratio` of the requests seen over a
//! sliding window, plus a small floor per second, so that an outage never multiplies the load
//! on the providers (Envoy's retry budget, tower's `TpsBudget`). Time is tokio's, so paused
//! test time drives it.

use std::time::Duration;
use tokio::time::Instant;

/// See the [module docs](self).
#[derive(Clone, Debug)]
pub struct RetryBudget {
    ratio: f64,
    floor_per_second: f64,
    window: Duration,
    /// Requests and retries.
    counts: weir_util::Window,
}

impl RetryBudget {
    /// Retries up to `ratio` of requests over `window`, plus `floor_per_second` retries per
    /// second of the window.
    pub fn new(ratio: f64, floor_per_second: f64, window: Duration, now: Instant) -> Self {
        Self {
            ratio,
            floor_per_second,
            window,
            counts: weir_util::Window::new(window, now),
        }
    }

    /// 20% of requests over 10 s, plus 1 retry per second.
    pub fn standard(now: Instant) -> Self {
        Self::new(0.2, 1.0, Duration::from_secs(10), now)
    }

    /// A new request (each one earns a share of a retry).
    pub fn deposit(&mut self, now: Instant) {
        self.counts.record(now, 1, 0);
    }

    /// Takes one retry from the budget; false (and nothing taken) when it is spent.
    pub fn withdraw(&mut self, now: Instant) -> bool {
        let (requests, retries) = self.counts.totals(now);
        let allowed =
            self.ratio * requests as f64 + self.floor_per_second * self.window.as_secs_f64();
        if (retries as f64) < allowed {
            self.counts.record(now, 0, 1);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_a_share_of_requests_plus_a_floor() {
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(0.2, 0.0, Duration::from_secs(10), t0);
        for _ in 0..100 {
            budget.deposit(t0);
        }
        let granted = (0..100).filter(|_| budget.withdraw(t0)).count();
        assert_eq!(granted, 20);

        let mut floor = RetryBudget::new(0.2, 0.5, Duration::from_secs(10), t0);
        let granted = (0..100).filter(|_| floor.withdraw(t0)).count();
        assert_eq!(
            granted, 5,
            "with no traffic, the floor alone: 0.5/s over 10 s"
        );
    }

    #[test]
    fn the_window_slides() {
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(0.5, 0.0, Duration::from_secs(10), t0);
        for _ in 0..10 {
            budget.deposit(t0);
        }
        assert_eq!((0..10).filter(|_| budget.withdraw(t0)).count(), 5);
        let later = t0 + Duration::from_secs(11);
        assert!(
            !budget.withdraw(later),
            "old requests no longer earn retries"
        );
        budget.deposit(later);
        budget.deposit(later);
        assert!(budget.withdraw(later));
        assert!(!budget.withdraw(later));
    }
}
