use super::*;
use proptest::prelude::*;

fn no_jitter() -> impl Jitter {
    || 0.5
}

fn config() -> PolicyConfig {
    PolicyConfig {
        failure_rate: None,
        jitter: 0.0,
        ..PolicyConfig::default()
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn opens_after_consecutive_failures_and_probes_after_open_for() {
    let t0 = Instant::now();
    let mut p = Policy::with_jitter(config(), t0, no_jitter());
    for _ in 0..2 {
        assert_eq!(p.admit(t0), Admit::Yes);
        p.record(t0, Outcome::Failure, false);
    }
    p.record(t0, Outcome::Success, false); // a success resets the run
    for _ in 0..3 {
        p.record(t0, Outcome::Failure, false);
    }
    assert_eq!(
        p.state(t0),
        State::Open {
            until: t0 + secs(10)
        }
    );
    assert_eq!(
        p.admit(t0 + secs(4)),
        Admit::No {
            retry_after: Some(secs(6))
        }
    );
    // Half-open: one probe at a time.
    let t = t0 + secs(10);
    assert_eq!(p.admit(t), Admit::Probe);
    assert_eq!(p.admit(t), Admit::No { retry_after: None });
    p.record(t, Outcome::Success, true);
    assert_eq!(p.state(t), State::Closed);
    assert_eq!(p.transitions(), 3);
}

#[test]
fn repeated_trips_open_longer_up_to_the_cap() {
    let t0 = Instant::now();
    let mut p = Policy::with_jitter(
        PolicyConfig {
            max_open_for: secs(35),
            ..config()
        },
        t0,
        no_jitter(),
    );
    for _ in 0..3 {
        p.record(t0, Outcome::Failure, false);
    }
    let mut t = t0;
    for expected in [10, 20, 35, 35] {
        let State::Open { until } = p.state(t) else {
            panic!("open")
        };
        assert_eq!(until - t, secs(expected));
        t = until;
        assert_eq!(p.admit(t), Admit::Probe);
        p.record(t, Outcome::Failure, true);
    }
}

#[test]
fn jitter_spreads_open_periods() {
    let t0 = Instant::now();
    let jittered = |sample: f64| {
        let mut p = Policy::with_jitter(
            PolicyConfig {
                jitter: 0.1,
                ..config()
            },
            t0,
            move || sample,
        );
        for _ in 0..3 {
            p.record(t0, Outcome::Failure, false);
        }
        match p.state(t0) {
            State::Open { until } => until - t0,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(jittered(0.0), secs(9));
    assert_eq!(jittered(0.5), secs(10));
    assert_eq!(jittered(1.0), secs(11));
}

#[test]
fn failure_rate_needs_enough_calls() {
    let t0 = Instant::now();
    let cfg = PolicyConfig {
        consecutive_failures: None,
        failure_rate: Some(0.10),
        min_calls: 20,
        ..config()
    };
    let mut p = Policy::with_jitter(cfg, t0, no_jitter());
    // One failure at low traffic does not trip it.
    p.record(t0, Outcome::Failure, false);
    assert_eq!(p.state(t0), State::Closed);
    // 18 successes and a second failure: 2 of 20 is 10%, not above it.
    for _ in 0..18 {
        p.record(t0, Outcome::Success, false);
    }
    p.record(t0, Outcome::Failure, false);
    assert_eq!(p.state(t0), State::Closed);
    p.record(t0, Outcome::Failure, false); // 3 of 21
    assert!(matches!(p.state(t0), State::Open { .. }));
}

#[test]
fn old_failures_age_out_of_the_window() {
    let t0 = Instant::now();
    let cfg = PolicyConfig {
        consecutive_failures: None,
        failure_rate: Some(0.5),
        min_calls: 4,
        ..config()
    };
    let mut p = Policy::with_jitter(cfg, t0, no_jitter());
    for _ in 0..3 {
        p.record(t0, Outcome::Failure, false);
    }
    let later = t0 + secs(31);
    assert_eq!(p.failure_rate(later), (0.0, 0));
    p.record(later, Outcome::Failure, false);
    assert_eq!(p.state(later), State::Closed, "1 call is under min_calls");
}

#[test]
fn ignored_outcomes_change_nothing() {
    let t0 = Instant::now();
    let mut p = Policy::with_jitter(config(), t0, no_jitter());
    for _ in 0..10 {
        p.record(t0, Outcome::Ignored, false);
    }
    assert_eq!(p.failure_rate(t0), (0.0, 0));
    assert_eq!(p.state(t0), State::Closed);
}

#[test]
fn health_probes_open_and_close() {
    let t0 = Instant::now();
    let mut p = Policy::with_jitter(config(), t0, no_jitter());
    p.probe_result(t0, false);
    p.probe_result(t0, false);
    p.probe_result(t0, true); // resets the run
    p.probe_result(t0, false);
    p.probe_result(t0, false);
    assert_eq!(p.state(t0), State::Closed);
    p.probe_result(t0, false);
    assert!(matches!(p.state(t0), State::Open { .. }));
    // Recovery is seen by the probe, long before open_for ends.
    p.probe_result(t0 + secs(1), true);
    assert_eq!(p.state(t0 + secs(1)), State::Closed);
}

#[test]
fn retry_after_cools_down_without_a_trip() {
    let t0 = Instant::now();
    let mut p = Policy::with_jitter(config(), t0, no_jitter());
    p.cool_down(t0, secs(7));
    assert_eq!(
        p.admit(t0 + secs(2)),
        Admit::No {
            retry_after: Some(secs(5))
        }
    );
    assert_eq!(p.state(t0), State::Closed);
    assert_eq!(p.admit(t0 + secs(7)), Admit::Yes);
}

#[test]
fn zero_half_open_probes_leaves_recovery_to_health_probes() {
    let t0 = Instant::now();
    let mut p = Policy::with_jitter(
        PolicyConfig {
            half_open_probes: 0,
            ..config()
        },
        t0,
        no_jitter(),
    );
    for _ in 0..3 {
        p.record(t0, Outcome::Failure, false);
    }
    let t = t0 + secs(60);
    assert_eq!(
        p.admit(t),
        Admit::No { retry_after: None },
        "no user call is risked"
    );
    assert_eq!(p.retry_after(t), None);
    p.probe_result(t, true);
    assert_eq!(p.admit(t), Admit::Yes);
}

#[test]
fn dropped_probe_frees_its_slot() {
    let t0 = Instant::now();
    let mut p = Policy::with_jitter(config(), t0, no_jitter());
    for _ in 0..3 {
        p.record(t0, Outcome::Failure, false);
    }
    let t = t0 + secs(10);
    assert_eq!(p.admit(t), Admit::Probe);
    p.release_probe();
    assert_eq!(p.admit(t), Admit::Probe);
}

// ---- the policy against a reference model -------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Advance(u64),
    Call(Outcome),
    Health(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..15_000).prop_map(Op::Advance),
        prop_oneof![
            Just(Outcome::Success),
            Just(Outcome::Failure),
            Just(Outcome::Ignored)
        ]
        .prop_map(Op::Call),
        any::<bool>().prop_map(Op::Health),
    ]
}

/// The rules, written as plainly as possible (consecutive failures only, no jitter).
#[derive(Debug)]
struct Model {
    open_until: Option<u64>,
    half_open: bool,
    consecutive: u32,
    trips: u32,
    health_failures: u32,
}

impl Model {
    fn tick(&mut self, now: u64) {
        if self.open_until.is_some_and(|until| now >= until) {
            self.open_until = None;
            self.half_open = true;
        }
    }

    fn trip(&mut self, now: u64) {
        self.trips += 1;
        let open_for = (10_000u64 << (self.trips - 1).min(20)).min(300_000);
        self.open_until = Some(now + open_for);
        self.half_open = false;
    }

    fn close(&mut self) {
        *self = Model {
            open_until: None,
            half_open: false,
            consecutive: 0,
            trips: 0,
            health_failures: 0,
        };
    }

    /// A call arriving at `now` with `outcome`: whether it was admitted (and as a probe).
    fn call(&mut self, now: u64, outcome: Outcome) -> Admit {
        self.tick(now);
        if self.open_until.is_some() {
            return Admit::No { retry_after: None };
        }
        if self.half_open {
            match outcome {
                Outcome::Success => self.close(),
                Outcome::Failure => self.trip(now),
                Outcome::Ignored => {}
            }
            return Admit::Probe;
        }
        match outcome {
            Outcome::Success => self.consecutive = 0,
            Outcome::Failure => {
                self.consecutive += 1;
                if self.consecutive >= 3 {
                    self.trip(now);
                }
            }
            Outcome::Ignored => {}
        }
        Admit::Yes
    }

    fn health(&mut self, now: u64, healthy: bool) {
        self.tick(now);
        let closed = self.open_until.is_none() && !self.half_open;
        if healthy {
            self.health_failures = 0;
            if !closed {
                self.close();
            }
        } else {
            self.health_failures += 1;
            if closed && self.health_failures >= 3 {
                self.trip(now);
            }
        }
    }
}

proptest! {
    #[test]
    fn policy_matches_the_reference_model(ops in proptest::collection::vec(op(), 1..200)) {
        let t0 = Instant::now();
        let mut policy = Policy::with_jitter(config(), t0, no_jitter());
        let mut model = Model { open_until: None, half_open: false, consecutive: 0, trips: 0, health_failures: 0 };
        let mut now = 0u64;
        for op in ops {
            let at = t0 + Duration::from_millis(now);
            match op {
                Op::Advance(ms) => now += ms,
                Op::Call(outcome) => {
                    let expected = model.call(now, outcome);
                    let got = policy.admit(at);
                    let kind = |a: Admit| std::mem::discriminant(&a);
                    prop_assert_eq!(kind(got), kind(expected), "at {}ms", now);
                    if got != (Admit::No { retry_after: None }) && !matches!(got, Admit::No { .. }) {
                        policy.record(at, outcome, got == Admit::Probe);
                    }
                }
                Op::Health(healthy) => {
                    model.health(now, healthy);
                    policy.probe_result(at, healthy);
                }
            }
            let at = t0 + Duration::from_millis(now);
            let state = policy.state(at);
            model.tick(now);
            let expected = match (model.open_until, model.half_open) {
                (Some(until), _) => State::Open { until: t0 + Duration::from_millis(until) },
                (None, true) => State::HalfOpen,
                (None, false) => State::Closed,
            };
            prop_assert_eq!(state, expected, "at {}ms", now);
        }
    }
}
