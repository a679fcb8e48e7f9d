//! The breaker's policy: a pure state machine that takes `now` as an argument.
//!
//! - **Closed** admits every call. It opens on `consecutive_failures` failures in a row, or
//!   when the failure rate over the sliding `window` exceeds `failure_rate` with at least
//!   `min_calls` calls in the window.
//! - **Open** admits nothing until `open_until`. Each trip in a row opens for longer:
//!   `open_for × 2^(trips-1)`, capped at `max_open_for`, with ± `jitter` (a fraction) so that
//!   many breakers do not probe in step.
//! - **Half-open** admits at most `half_open_probes` calls at a time; that many successes in a
//!   row close it, one failure opens it again.
//!
//! Health probes feed the same machine ([`Policy::probe_result`]): `unhealthy_after` failed
//! probes in a row open a closed breaker, and `healthy_after` successful ones close an open or
//! half-open one, so a provider that recovers is back within one probe interval even with no
//! traffic. A `Retry-After` from the provider keeps calls out until it passes
//! ([`Policy::cool_down`]) without counting as a failure.

use std::time::Duration;
use tokio::time::Instant;

/// The policy's settings. Build with [`PolicyConfig::default`] and adjust.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyConfig {
    /// Open after this many failures in a row (`None`: this rule is off). Default 3.
    pub consecutive_failures: Option<u32>,
    /// Open when the failure rate over the window exceeds this (`None`: off). Default 0.10.
    pub failure_rate: Option<f64>,
    /// The sliding window of the failure rate. Default 30 s.
    pub window: Duration,
    /// Calls needed in the window before the rate counts. Default 20.
    pub min_calls: u32,
    /// How long the first trip opens for. Default 10 s.
    pub open_for: Duration,
    /// The longest an open period may grow to. Default 5 min.
    pub max_open_for: Duration,
    /// ± this fraction of random jitter on each open period. Default 0.1.
    pub jitter: f64,
    /// Calls admitted at once while half-open; as many successes close it. Default 1. With 0,
    /// no call is used as a probe: only a health probe ([`Policy::probe_result`]) closes an
    /// open breaker (for providers with active health checks, so that no user request is
    /// risked on a provider that was failing).
    pub half_open_probes: u32,
    /// Failed health probes in a row that open a closed breaker. Default 3.
    pub unhealthy_after: u32,
    /// Successful health probes in a row that close an open breaker. Default 1.
    pub healthy_after: u32,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: Some(3),
            failure_rate: Some(0.10),
            window: Duration::from_secs(30),
            min_calls: 20,
            open_for: Duration::from_secs(10),
            max_open_for: Duration::from_secs(300),
            jitter: 0.1,
            half_open_probes: 1,
            unhealthy_after: 3,
            healthy_after: 1,
        }
    }
}

/// The breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Calls flow.
    Closed,
    /// No calls until `until`.
    Open {
        /// When the breaker turns half-open.
        until: Instant,
    },
    /// A few probe calls are let through.
    HalfOpen,
}

impl State {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open { .. } => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// What the policy says to a call that wants in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Go ahead.
    Yes,
    /// Go ahead as one of the half-open probes: report its outcome with `probe = true`.
    Probe,
    /// Not now. `retry_after` is when the state may change (`None`: when a probe finishes).
    No {
        /// How long until the breaker may admit calls again, when known.
        retry_after: Option<Duration>,
    },
}

/// How a call went, for the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It worked.
    Success,
    /// The provider failed it.
    Failure,
    /// It says nothing about the provider's health (the client's fault, the client left).
    Ignored,
}

/// A source of jitter: uniform in `[0, 1)`.
pub trait Jitter: Send {
    /// The next sample.
    fn sample(&mut self) -> f64;
}

impl<F: FnMut() -> f64 + Send> Jitter for F {
    fn sample(&mut self) -> f64 {
        self()
    }
}

/// A small xorshift generator, seeded per process: the default jitter source.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl Default for XorShift {
    fn default() -> Self {
        use std::hash::BuildHasher;
        let seed = std::collections::hash_map::RandomState::new().hash_one(0u64);
        Self(seed | 1)
    }
}

impl Jitter for XorShift {
    fn sample(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

use weir_util::Window;

/// The state machine. See the [module docs](self).
pub struct Policy {
    config: PolicyConfig,
    state: State,
    window: Window,
    consecutive: u32,
    trips: u32,
    probes_out: u32,
    probe_successes: u32,
    health_failures: u32,
    health_successes: u32,
    cool_until: Option<Instant>,
    transitions: u64,
    jitter: Box<dyn Jitter>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("state", &self.state)
            .field("consecutive", &self.consecutive)
            .field("trips", &self.trips)
            .finish_non_exhaustive()
    }
}

impl Policy {
    /// A closed breaker with jitter from [`XorShift`].
    pub fn new(config: PolicyConfig, now: Instant) -> Self {
        Self::with_jitter(config, now, XorShift::default())
    }

    /// A closed breaker with an injected jitter source (deterministic tests).
    pub fn with_jitter(config: PolicyConfig, now: Instant, jitter: impl Jitter + 'static) -> Self {
        Self {
            window: Window::new(config.window, now),
            config,
            state: State::Closed,
            consecutive: 0,
            trips: 0,
            probes_out: 0,
            probe_successes: 0,
            health_failures: 0,
            health_successes: 0,
            cool_until: None,
            transitions: 0,
            jitter: Box::new(jitter),
        }
    }

    /// The state at `now` (an open breaker whose time is up reads as half-open).
    pub fn state(&mut self, now: Instant) -> State {
        self.tick(now);
        self.state
    }

    /// State changes so far.
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    /// The failure rate over the window, and the calls it is over.
    pub fn failure_rate(&mut self, now: Instant) -> (f64, u32) {
        let (s, f) = self.window.totals(now);
        let total = s + f;
        (
            if total == 0 {
                0.0
            } else {
                f as f64 / total as f64
            },
            u32::try_from(total).unwrap_or(u32::MAX),
        )
    }

    /// Whether a call may go now. A [`Admit::Probe`] must be reported with `probe = true`, or
    /// released with [`Policy::release_probe`].
    pub fn admit(&mut self, now: Instant) -> Admit {
        self.tick(now);
        if let Some(until) = self.cool_until {
            if now < until {
                return Admit::No {
                    retry_after: Some(until - now),
                };
            }
            self.cool_until = None;
        }
        match self.state {
            State::Closed => Admit::Yes,
            State::Open { until } => Admit::No {
                retry_after: Some(until.saturating_duration_since(now)),
            },
            State::HalfOpen if self.probes_out < self.config.half_open_probes => {
                self.probes_out += 1;
                Admit::Probe
            }
            State::HalfOpen => Admit::No { retry_after: None },
        }
    }

    /// A probe admitted by [`Policy::admit`] ended without an outcome (it was dropped).
    pub fn release_probe(&mut self) {
        self.probes_out = self.probes_out.saturating_sub(1);
    }

    /// How long until calls may be admitted, when known: the rest of an open period or of a
    /// cool-down; `None` when calls are admitted now or wait for a probe.
    pub fn retry_after(&mut self, now: Instant) -> Option<Duration> {
        match self.admit_peek(now) {
            Admit::No { retry_after } => retry_after,
            _ => None,
        }
    }

    fn admit_peek(&mut self, now: Instant) -> Admit {
        self.tick(now);
        if let Some(until) = self.cool_until.filter(|u| now < *u) {
            return Admit::No {
                retry_after: Some(until - now),
            };
        }
        match self.state {
            State::Open { until } => Admit::No {
                retry_after: Some(until.saturating_duration_since(now)),
            },
            State::HalfOpen if self.probes_out >= self.config.half_open_probes => {
                Admit::No { retry_after: None }
            }
            _ => Admit::Yes,
        }
    }

    /// Reports how an admitted call went.
    pub fn record(&mut self, now: Instant, outcome: Outcome, probe: bool) {
        self.tick(now);
        if probe {
            self.release_probe();
        }
        match (self.state, outcome) {
            (_, Outcome::Ignored) => {}
            (State::HalfOpen, Outcome::Success) if probe => {
                self.probe_successes += 1;
                if self.probe_successes >= self.config.half_open_probes {
                    self.close(now);
                }
            }
            (State::HalfOpen, Outcome::Failure) if probe => self.trip(now),
            // Calls admitted before the breaker opened finish; they change nothing now.
            (State::Open { .. } | State::HalfOpen, _) => {}
            (State::Closed, Outcome::Success) => {
                self.consecutive = 0;
                self.window.record(now, 1, 0);
            }
            (State::Closed, Outcome::Failure) => {
                self.consecutive += 1;
                self.window.record(now, 0, 1);
                if self.should_trip(now) {
                    self.trip(now);
                }
            }
        }
    }

    /// Reports a health probe's result.
    pub fn probe_result(&mut self, now: Instant, healthy: bool) {
        self.tick(now);
        if healthy {
            self.health_failures = 0;
            self.health_successes += 1;
            if self.state != State::Closed && self.health_successes >= self.config.healthy_after {
                self.close(now);
            }
        } else {
            self.health_successes = 0;
            self.health_failures += 1;
            if self.state == State::Closed && self.health_failures >= self.config.unhealthy_after {
                self.trip(now);
            }
        }
    }

    /// Keeps calls out until `now + wait` (a provider's `Retry-After`), without a trip.
    pub fn cool_down(&mut self, now: Instant, wait: Duration) {
        let until = now + wait;
        if self.cool_until.is_none_or(|u| u < until) {
            self.cool_until = Some(until);
        }
    }

    fn should_trip(&mut self, now: Instant) -> bool {
        if self
            .config
            .consecutive_failures
            .is_some_and(|n| self.consecutive >= n)
        {
            return true;
        }
        let Some(threshold) = self.config.failure_rate else {
            return false;
        };
        let (rate, calls) = self.failure_rate(now);
        calls >= self.config.min_calls && rate > threshold
    }

    fn trip(&mut self, now: Instant) {
        self.trips += 1;
        let factor = 2u32.saturating_pow(self.trips.saturating_sub(1).min(20));
        let base = self
            .config
            .open_for
            .saturating_mul(factor)
            .min(self.config.max_open_for);
        let spread = (self.jitter.sample() * 2.0 - 1.0) * self.config.jitter;
        let open_for = base.mul_f64((1.0 + spread).max(0.0));
        self.set(State::Open {
            until: now + open_for,
        });
        self.probes_out = 0;
        self.probe_successes = 0;
        self.health_successes = 0;
    }

    fn close(&mut self, now: Instant) {
        self.set(State::Closed);
        self.trips = 0;
        self.consecutive = 0;
        self.probes_out = 0;
        self.probe_successes = 0;
        self.health_failures = 0;
        self.window.clear(now);
    }

    fn set(&mut self, state: State) {
        if std::mem::discriminant(&state) != std::mem::discriminant(&self.state) {
            self.transitions += 1;
        }
        self.state = state;
    }

    fn tick(&mut self, now: Instant) {
        if let State::Open { until } = self.state {
            if now >= until {
                self.set(State::HalfOpen);
                self.probes_out = 0;
                self.probe_successes = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests;
