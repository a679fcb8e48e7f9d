//! What to do after an attempt failed before the commit point (before the client has seen
//! anything): retry the same target, move to the next one, or give the client the answer.
//!
//! | failure | decision |
//! |---|---|
//! | 429 with `Retry-After` ≤ ceiling (5 s) | wait that long, retry the same target (up to `rate_limit_attempts`) |
//! | 429 with a longer `Retry-After` | next target at once (the breaker keeps this one out until then) |
//! | 429 without `Retry-After` | exponential backoff with jitter, same target, `rate_limit_attempts` in all; then next |
//! | 5xx | one retry on the same target after a short backoff; then next |
//! | connect error (refused, reset before headers) | one retry at once (a fresh connection); then next |
//! | no headers in time, no first token in time | next target: a silent target is not retried |
//! | an answer not in the shape asked for (no event stream, an unreadable first event) | next target |
//! | the gateway's own limit for the target is full | next target |
//! | 400 `context_length_exceeded` | next target with a larger context window, never the same model |
//! | any other 4xx | the client gets the provider's answer |
//!
//! Pure: the caller passes the jitter sample, so tests are deterministic.

use std::time::Duration;
use weir_llm::Failure;

/// The retry settings. [`RetryPolicy::default`] gives the table in the module docs.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// The longest `Retry-After` weir waits out on the same target.
    pub rate_limit_wait_ceiling: Duration,
    /// Attempts on one target answered 429 before moving on.
    pub rate_limit_attempts: u32,
    /// Retries of a 5xx on the same target.
    pub server_error_retries: u32,
    /// Retries of a connect error on the same target.
    pub connect_retries: u32,
    /// The first backoff; it doubles per attempt.
    pub backoff: Duration,
    /// The longest backoff.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            rate_limit_wait_ceiling: Duration::from_secs(5),
            rate_limit_attempts: 3,
            server_error_retries: 1,
            connect_retries: 1,
            backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(4),
        }
    }
}

/// What to do next.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decision {
    /// Try the same target again after this pause.
    RetrySame {
        /// The pause.
        after: Duration,
    },
    /// Try the next target (for a context-window failure: the next with a larger window).
    NextTarget,
    /// No other attempt can help: the client gets this answer.
    GiveUp,
}

impl RetryPolicy {
    /// The backoff before attempt `attempt + 1` on a target (`attempt` ≥ 1 attempts made),
    /// with full jitter: uniform in `[base/2, base]`, `jitter` in `[0, 1)`.
    pub fn backoff(&self, attempt: u32, jitter: f64) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        let base = self.backoff.saturating_mul(factor).min(self.max_backoff);
        base.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// Decides after `attempts` attempts on the current target, the last failing with
    /// `failure` (before the commit point).
    pub fn decide(&self, failure: Failure, attempts: u32, jitter: f64) -> Decision {
        if !failure.is_retryable() {
            // The client's own fault (or the client left): no attempt anywhere can help.
            return Decision::GiveUp;
        }
        match failure {
            Failure::RateLimited {
                retry_after: Some(wait),
            } => {
                if wait <= self.rate_limit_wait_ceiling && attempts < self.rate_limit_attempts {
                    Decision::RetrySame { after: wait }
                } else {
                    Decision::NextTarget
                }
            }
            Failure::RateLimited { retry_after: None } => {
                if attempts < self.rate_limit_attempts {
                    Decision::RetrySame {
                        after: self.backoff(attempts, jitter),
                    }
                } else {
                    Decision::NextTarget
                }
            }
            Failure::Upstream5xx { .. } => {
                if attempts <= self.server_error_retries {
                    Decision::RetrySame {
                        after: self.backoff(attempts, jitter),
                    }
                } else {
                    Decision::NextTarget
                }
            }
            Failure::Connect => {
                if attempts <= self.connect_retries {
                    Decision::RetrySame {
                        after: Duration::ZERO,
                    }
                } else {
                    Decision::NextTarget
                }
            }
            Failure::HeadersTimeout | Failure::FirstTokenTimeout => Decision::NextTarget,
            // The gateway's own limit for this target is full: another may have room.
            Failure::AtCapacity => Decision::NextTarget,
            // Broken or stalled before the first token: like a connection that failed.
            Failure::StreamBroken
            | Failure::StreamStalled
            | Failure::MalformedEvent
            | Failure::MalformedAnswer => Decision::NextTarget,
            // What is left of the refusals is a context window: another model may have a
            // larger one, the same model never will.
            Failure::Rejected { .. } | Failure::ClientGone => Decision::NextTarget,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use weir_llm::Rejection;

    fn policy() -> RetryPolicy {
        RetryPolicy::default()
    }

    #[test]
    fn rate_limits() {
        let p = policy();
        let short = Failure::RateLimited {
            retry_after: Some(Duration::from_secs(2)),
        };
        assert_eq!(
            p.decide(short, 1, 0.0),
            Decision::RetrySame {
                after: Duration::from_secs(2)
            }
        );
        assert_eq!(p.decide(short, 3, 0.0), Decision::NextTarget, "bounded");
        let long = Failure::RateLimited {
            retry_after: Some(Duration::from_secs(30)),
        };
        assert_eq!(p.decide(long, 1, 0.0), Decision::NextTarget);
        let unknown = Failure::RateLimited { retry_after: None };
        assert_eq!(
            p.decide(unknown, 1, 0.0),
            Decision::RetrySame {
                after: Duration::from_millis(125)
            }
        );
        assert_eq!(
            p.decide(unknown, 2, 0.5),
            Decision::RetrySame {
                after: Duration::from_millis(375)
            }
        );
        assert_eq!(p.decide(unknown, 3, 0.5), Decision::NextTarget);
    }

    #[test]
    fn server_errors_and_connects_retry_once() {
        let p = policy();
        let five = Failure::Upstream5xx {
            status: StatusCode::BAD_GATEWAY,
        };
        assert!(matches!(p.decide(five, 1, 0.5), Decision::RetrySame { .. }));
        assert_eq!(p.decide(five, 2, 0.5), Decision::NextTarget);
        assert_eq!(
            p.decide(Failure::Connect, 1, 0.5),
            Decision::RetrySame {
                after: Duration::ZERO
            }
        );
        assert_eq!(p.decide(Failure::Connect, 2, 0.5), Decision::NextTarget);
    }

    #[test]
    fn silence_and_client_faults() {
        let p = policy();
        assert_eq!(
            p.decide(Failure::HeadersTimeout, 1, 0.5),
            Decision::NextTarget
        );
        assert_eq!(
            p.decide(Failure::FirstTokenTimeout, 1, 0.5),
            Decision::NextTarget
        );
        let context = Failure::Rejected {
            status: StatusCode::BAD_REQUEST,
            reason: Rejection::ContextLengthExceeded,
        };
        assert_eq!(p.decide(context, 1, 0.5), Decision::NextTarget);
        let policy_refusal = Failure::Rejected {
            status: StatusCode::BAD_REQUEST,
            reason: Rejection::ContentPolicy,
        };
        assert_eq!(p.decide(policy_refusal, 1, 0.5), Decision::GiveUp);
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        let p = policy();
        assert_eq!(p.backoff(1, 1.0), Duration::from_millis(250));
        assert_eq!(p.backoff(2, 1.0), Duration::from_millis(500));
        assert_eq!(p.backoff(3, 0.0), Duration::from_millis(500));
        assert_eq!(p.backoff(30, 1.0), Duration::from_secs(4));
    }

    proptest::proptest! {
        #[test]
        fn never_a_tight_loop(attempts in 1u32..10, jitter in 0.0f64..1.0) {
            // Whatever fails, a retry on the same target waits, or the loop moves on.
            let p = policy();
            for failure in [Failure::RateLimited { retry_after: None }, Failure::Upstream5xx { status: StatusCode::INTERNAL_SERVER_ERROR }] {
                match p.decide(failure, attempts, jitter) {
                    Decision::RetrySame { after } => proptest::prop_assert!(after >= Duration::from_millis(125)),
                    Decision::NextTarget | Decision::GiveUp => {}
                }
            }
            // And the attempts on one target are bounded.
            proptest::prop_assert_eq!(p.decide(Failure::RateLimited { retry_after: None }, 3 + attempts, jitter), Decision::NextTarget);
        }
    }
}
