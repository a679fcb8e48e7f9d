use crate::policy::{Admit, Outcome, Policy, PolicyConfig, State};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// One breaker: the policy behind a lock, shared by every service (and clone) built with it,
/// and by whoever else reports on the provider (health probes, a stall detector above).
#[derive(Clone, Debug)]
pub struct Breaker {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    policy: Mutex<Policy>,
    /// Bumped on every state change, so that waiting services re-check.
    changed: watch::Sender<u64>,
    last_failure: Mutex<Option<String>>,
}

/// A view of a breaker, for admin pages and metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The state.
    pub state: State,
    /// Failure rate over the window.
    pub failure_rate: f64,
    /// Calls in the window.
    pub calls: u32,
    /// State changes so far.
    pub transitions: u64,
    /// The last failure reported with a reason.
    pub last_failure: Option<String>,
    /// How long until calls may be admitted, when known (open period or cool-down).
    pub retry_after: Option<Duration>,
}

impl Breaker {
    /// A closed breaker with `config`.
    pub fn new(config: PolicyConfig) -> Self {
        Self::with_policy(Policy::new(config, Instant::now()))
    }

    /// A breaker around a policy built by the caller (injected jitter, a given start time).
    pub fn with_policy(policy: Policy) -> Self {
        Self {
            shared: Arc::new(Shared {
                policy: Mutex::new(policy),
                changed: watch::channel(0).0,
                last_failure: Mutex::new(None),
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Policy, Instant) -> T) -> T {
        let mut policy = self.shared.policy.lock().expect("breaker lock");
        let before = policy.transitions();
        let out = f(&mut policy, Instant::now());
        if policy.transitions() != before {
            let version = policy.transitions();
            drop(policy);
            self.shared.changed.send_replace(version);
        }
        out
    }

    /// The state now.
    pub fn state(&self) -> State {
        self.with(|p, now| p.state(now))
    }

    /// The state and counters now.
    pub fn snapshot(&self) -> Snapshot {
        let (state, (failure_rate, calls), transitions, retry_after) = self.with(|p, now| {
            (
                p.state(now),
                p.failure_rate(now),
                p.transitions(),
                p.retry_after(now),
            )
        });
        Snapshot {
            state,
            failure_rate,
            calls,
            transitions,
            last_failure: self.shared.last_failure.lock().expect("lock").clone(),
            retry_after,
        }
    }

    pub(crate) fn admit(&self) -> Admit {
        self.with(|p, now| p.admit(now))
    }

    pub(crate) fn settle(&self, outcome: Outcome, probe: bool) {
        self.with(|p, now| p.record(now, outcome, probe));
    }

    pub(crate) fn note_failure(&self, reason: &str) {
        *self.shared.last_failure.lock().expect("lock") = Some(reason.to_owned());
    }

    /// Reports a health probe's result (`reason` says why it failed).
    pub fn probe_result(&self, healthy: bool, reason: Option<&str>) {
        if let (false, Some(reason)) = (healthy, reason) {
            *self.shared.last_failure.lock().expect("lock") = Some(reason.to_owned());
        }
        self.with(|p, now| p.probe_result(now, healthy));
    }

    /// Keeps calls away for `wait` (a provider's `Retry-After`), without a failure.
    pub fn cool_down(&self, wait: Duration) {
        self.with(|p, now| p.cool_down(now, wait));
    }

    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }
}
