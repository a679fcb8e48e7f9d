//! `[[routes]]`: a model name clients ask for, and the targets that serve it.

use super::limits::{self, RateLimit};
use super::read::{shorten, Table};
use std::time::Duration;

/// `[[routes]]`: a model name clients ask for, and where it goes.
#[derive(Debug, Clone)]
pub struct Route {
    /// The model name clients send.
    pub model: String,
    /// The upstreams that serve it, in order of preference: a request goes to the first whose
    /// breaker admits it, and fails over down the list.
    pub targets: Vec<Target>,
    /// `strategy = "weighted"`: each call draws its order of targets by weight.
    pub weighted: bool,
    /// How long retries and failovers may go on before the client gets the last answer.
    pub request_timeout: Duration,
    /// How long a stream may take from its headers to its first event before weir fails over.
    pub first_token_timeout: Duration,
    /// With no first event after this long, also start the request on the next target; the
    /// first to answer wins.
    pub hedge_after: Option<Duration>,
    /// Retry limits by failure class (`retry = {...}`).
    pub retry: weir_failover::RetryPolicy,
    /// Retries and failovers as a share of requests (`retry_budget = {...}`).
    pub retry_budget: RetryBudgetConfig,
    /// Limits on every client of this route together.
    pub rate_limit: Option<RateLimit>,
}

/// `retry_budget = { ratio, per_second, window }`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetConfig {
    /// Retries allowed per request over the window (0.2: one in five).
    pub ratio: f64,
    /// Retries allowed per second of the window regardless of traffic.
    pub per_second: f64,
    /// The window.
    pub window: Duration,
}

/// One target of a route.
#[derive(Debug, Clone)]
pub struct Target {
    /// Index into [`Config::providers`](super::Config::providers).
    pub provider: usize,
    /// The model name sent upstream.
    pub model: String,
    /// The model's context window in tokens (`context_window`, else the catalogue's), if
    /// known: after `context_length_exceeded`, only targets with a larger (or unknown) window
    /// and another model are tried.
    pub context_window: Option<u32>,
    /// How this target may continue an answer cut on another.
    pub continuation: Continuation,
    /// Its share of first attempts under `strategy = "weighted"`.
    pub weight: u32,
}

/// How a target continues an answer that broke elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continuation {
    /// Re-send the request; keep the new answer past what the client has, if it matches.
    Replay,
    /// Send the partial answer as a final assistant message; the target writes the rest.
    Prefill,
    /// Never continue an answer here.
    None,
}

/// The keys a `[[routes]]` entry takes.
pub(super) const KEYS: &[&str] = &[
    "model",
    "strategy",
    "targets",
    "request_timeout",
    "first_token_timeout",
    "hedge_after",
    "retry",
    "retry_budget",
    "rate_limit",
];

const TARGET_KEYS: &[&str] = &[
    "provider",
    "model",
    "context_window",
    "continuation",
    "weight",
];

const RETRY_KEYS: &[&str] = &[
    "rate_limit_wait_ceiling",
    "rate_limit_attempts",
    "server_error_retries",
    "connect_retries",
    "backoff",
    "max_backoff",
];

const BUDGET_KEYS: &[&str] = &["ratio", "per_second", "window"];

/// Reads one `[[routes]]` entry; `providers` are the providers' names in file order.
pub(super) fn read(t: &Table<'_>, providers: &[&str]) -> Route {
    let model = t.required("model");
    if let Some(m) = &model {
        if m.value.is_empty() {
            t.problem(m.span.clone(), "model", "must not be empty");
        }
    }
    let targets = match t.tables("targets", TARGET_KEYS) {
        Some(list) => {
            if list.value.is_empty() {
                t.problem(list.span, "targets", "needs at least one target");
            }
            list.value
                .iter()
                .map(|target| self::target(target, providers))
                .collect()
        }
        None => {
            if !t.has("targets") {
                t.problem(t.span(), "targets", "is required");
            }
            Vec::new()
        }
    };
    let several = targets.len() > 1;
    Route {
        model: model.map_or_else(String::new, |m| m.value.to_owned()),
        targets,
        weighted: t.choice("strategy", &[("failover", false), ("weighted", true)]),
        request_timeout: t.duration_or("request_timeout", Duration::from_secs(120)),
        // With somewhere else to go, a silent or slow start is left for it within 15 s; with
        // one target there is nowhere to go, and a slow model is waited for.
        first_token_timeout: t.duration_or(
            "first_token_timeout",
            Duration::from_secs(if several { 15 } else { 60 }),
        ),
        hedge_after: t.duration("hedge_after").map(|d| d.value),
        retry: retry(t.table("retry", RETRY_KEYS).as_ref()),
        retry_budget: budget(t.table("retry_budget", BUDGET_KEYS).as_ref()),
        rate_limit: limits::rate_limit(t, "rate_limit", false),
    }
}

fn target(t: &Table<'_>, providers: &[&str]) -> Target {
    let provider = match t.required("provider") {
        None => 0,
        Some(name) => match providers.iter().position(|p| *p == name.value) {
            Some(index) => index,
            None => {
                t.problem(
                    name.span,
                    "provider",
                    format!("no provider is named `{}`", shorten(name.value)),
                );
                0
            }
        },
    };
    let model = t.required("model");
    if let Some(m) = &model {
        if m.value.is_empty() {
            t.problem(m.span.clone(), "model", "must not be empty");
        }
    }
    let weight = match t.whole32("weight") {
        Some(w) if w.value == 0 => {
            t.problem(w.span, "weight", "must be at least 1");
            1
        }
        Some(w) => w.value,
        None => 1,
    };
    let model = model.map_or_else(String::new, |m| m.value.to_owned());
    // The config wins; else the catalogue of known models knows many.
    let context_window = t
        .whole32("context_window")
        .map(|c| c.value)
        .or_else(|| super::catalogue::lookup(&model).map(|m| m.context_window));
    Target {
        provider,
        model,
        context_window,
        continuation: t.choice(
            "continuation",
            &[
                ("replay", Continuation::Replay),
                ("prefill", Continuation::Prefill),
                ("none", Continuation::None),
            ],
        ),
        weight,
    }
}

/// `retry = {...}`: each unset key keeps its default.
fn retry(t: Option<&Table<'_>>) -> weir_failover::RetryPolicy {
    let d = weir_failover::RetryPolicy::default();
    let Some(t) = t else {
        return d;
    };
    let count = |name: &str, default: u32| t.whole32(name).map_or(default, |v| v.value);
    weir_failover::RetryPolicy {
        rate_limit_wait_ceiling: t
            .duration_or("rate_limit_wait_ceiling", d.rate_limit_wait_ceiling),
        rate_limit_attempts: count("rate_limit_attempts", d.rate_limit_attempts),
        server_error_retries: count("server_error_retries", d.server_error_retries),
        connect_retries: count("connect_retries", d.connect_retries),
        backoff: t.duration_or("backoff", d.backoff),
        max_backoff: t.duration_or("max_backoff", d.max_backoff),
    }
}

/// `retry_budget = {...}`.
fn budget(t: Option<&Table<'_>>) -> RetryBudgetConfig {
    let mut budget = RetryBudgetConfig {
        ratio: 0.2,
        per_second: 1.0,
        window: Duration::from_secs(10),
    };
    let Some(t) = t else {
        return budget;
    };
    match t.number("ratio") {
        Some(v) if !(0.0..=10.0).contains(&v.value) => {
            t.problem(v.span, "ratio", "must be between 0 and 10")
        }
        Some(v) => budget.ratio = v.value,
        None => {}
    }
    match t.number("per_second") {
        Some(v) if v.value < 0.0 || v.value.is_infinite() => {
            t.problem(v.span, "per_second", "must be a number, 0 or more")
        }
        Some(v) => budget.per_second = v.value,
        None => {}
    }
    budget.window = t.duration_or("window", budget.window);
    budget
}
