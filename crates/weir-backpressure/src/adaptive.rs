//! An adaptive limit: additive increase, multiplicative decrease, on time to first byte.
//!
//! Each finished sample moves the limit: a call whose first byte came within the target, and
//! that met no overload, adds `1 / limit` (so a whole limit's worth of good calls adds one
//! permit); a call that was slower, or that met an error, a 429 or a 5xx, multiplies the limit
//! by `backoff`. The limit stays within `[min, max]`. This is TCP's congestion rule applied to
//! a provider: the limit settles where the provider still answers in time.

use std::time::Duration;

/// Bounds and rule of an adaptive limit: additive increase, multiplicative decrease, on time
/// to first byte. A call whose first byte came within the target, and that met no overload,
/// adds `1 / limit` (a whole limit's worth of good calls adds one permit); a slower call, or
/// one that met an error, a 429 or a 5xx, multiplies the limit by `backoff`. The limit stays
/// within `[min, max]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Aimd {
    min: usize,
    max: usize,
    first_byte_target: Duration,
    backoff: f64,
}

impl Aimd {
    /// A limit between `min` and `max` that backs off when the first byte takes longer than
    /// `first_byte_target`. The backoff factor is 0.9.
    pub fn new(min: usize, max: usize, first_byte_target: Duration) -> Self {
        let min = min.max(1);
        Self {
            min,
            max: max.max(min),
            first_byte_target,
            backoff: 0.9,
        }
    }

    /// The factor a slow or overloaded sample multiplies the limit by, in `(0, 1)`.
    pub fn backoff(mut self, factor: f64) -> Self {
        self.backoff = factor.clamp(0.01, 0.99);
        self
    }
}

/// The moving limit.
#[derive(Debug)]
pub(crate) struct AimdState {
    rule: Aimd,
    limit: f64,
}

impl AimdState {
    pub(crate) fn new(rule: Aimd, initial: usize) -> Self {
        let limit = initial.clamp(rule.min, rule.max) as f64;
        Self { rule, limit }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit as usize
    }

    /// Moves the limit by one sample; returns the new whole limit.
    pub(crate) fn sample(&mut self, first_byte: Duration, overloaded: bool) -> usize {
        let (min, max) = (self.rule.min as f64, self.rule.max as f64);
        self.limit = if overloaded || first_byte > self.rule.first_byte_target {
            (self.limit * self.rule.backoff).max(min)
        } else {
            (self.limit + 1.0 / self.limit).min(max)
        };
        self.limit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: Duration = Duration::from_millis(500);

    #[test]
    fn good_samples_add_one_permit_per_limit_and_stop_at_max() {
        let mut state = AimdState::new(Aimd::new(1, 12, TARGET), 10);
        // 10 + 1/10 + 1/10.1 + ...: the eleventh good sample crosses 11.
        for _ in 0..10 {
            state.sample(Duration::from_millis(100), false);
        }
        assert_eq!(state.limit(), 10);
        state.sample(Duration::from_millis(100), false);
        assert_eq!(state.limit(), 11);
        for _ in 0..1000 {
            state.sample(Duration::from_millis(100), false);
        }
        assert_eq!(state.limit(), 12);
    }

    #[test]
    fn slow_or_overloaded_samples_back_off_down_to_min() {
        let mut state = AimdState::new(Aimd::new(2, 100, TARGET), 100);
        assert_eq!(state.sample(Duration::from_secs(1), false), 90);
        assert_eq!(state.sample(Duration::from_millis(1), true), 81);
        for _ in 0..100 {
            state.sample(Duration::from_secs(1), false);
        }
        assert_eq!(state.limit(), 2);
    }

    #[test]
    fn the_start_is_clamped_into_the_bounds() {
        assert_eq!(AimdState::new(Aimd::new(4, 8, TARGET), 100).limit(), 8);
        assert_eq!(AimdState::new(Aimd::new(0, 8, TARGET), 0).limit(), 1);
    }
}
