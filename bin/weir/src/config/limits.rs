//! The limits several sections share: `rate_limit = {...}` and the concurrency keys
//! (`max_concurrency`, `max_queue`, `queue_timeout`, `adaptive_concurrency`).

use super::read::Table;
use std::time::Duration;

/// `rate_limit = { requests_per_minute, tokens_per_minute, ... }`.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    /// Requests per minute, and their burst.
    pub requests: Option<(u32, u32)>,
    /// Tokens per minute (prompt estimate plus `max_tokens`, settled from usage), and burst.
    pub tokens: Option<(u32, u32)>,
    /// How long a request may wait for the limit (a provider's; 0: go to the next target).
    pub wait: Duration,
}

/// A concurrency limit: `max_concurrency`, `max_queue`, `queue_timeout` (and, on a provider,
/// `adaptive_concurrency`).
#[derive(Debug, Clone, PartialEq)]
pub struct Concurrency {
    /// Requests (streams included, to their end) in flight at once.
    pub max: usize,
    /// Requests that may wait for a slot; beyond it they are refused at once (503).
    pub max_queue: usize,
    /// The longest a request waits for a slot before it is refused (503).
    pub queue_timeout: Duration,
    /// The limit follows time to first token, between `min` and `max` (off when `None`).
    pub adaptive: Option<AdaptiveConcurrency>,
}

/// `adaptive_concurrency = { min = 4, first_token_target = "2s" }`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveConcurrency {
    /// The lowest the limit goes.
    pub min: usize,
    /// A first token later than this (or a 429, a 5xx, an error) lowers the limit.
    pub first_token_target: Duration,
}

/// The keys of a `rate_limit` table.
const RATE_KEYS: &[&str] = &[
    "requests_per_minute",
    "tokens_per_minute",
    "request_burst",
    "token_burst",
    "wait",
];

/// The keys of `adaptive_concurrency`.
const ADAPTIVE_KEYS: &[&str] = &["min", "first_token_target"];

/// The rate limit table `name` of `table`; `wait` is allowed where a request can wait for it
/// (a provider's).
pub(super) fn rate_limit(table: &Table<'_>, name: &str, wait_allowed: bool) -> Option<RateLimit> {
    let t = table.table(name, RATE_KEYS)?;
    let positive = |key: &str| match t.whole32(key) {
        Some(v) if v.value == 0 => {
            t.problem(v.span, key, "must be at least 1");
            None
        }
        v => v.map(|v| v.value),
    };
    let requests = positive("requests_per_minute");
    let tokens = positive("tokens_per_minute");
    let request_burst = positive("request_burst");
    let token_burst = positive("token_burst");
    if !t.has("requests_per_minute") && !t.has("tokens_per_minute") {
        t.reader().problem(
            t.span(),
            &table.key(name),
            "needs requests_per_minute or tokens_per_minute",
        );
    }
    if let (false, Some(v)) = (t.has("requests_per_minute"), t.get("request_burst")) {
        t.problem(v.span(), "request_burst", "needs requests_per_minute");
    }
    if let (false, Some(v)) = (t.has("tokens_per_minute"), t.get("token_burst")) {
        t.problem(v.span(), "token_burst", "needs tokens_per_minute");
    }
    if let (false, Some(v)) = (wait_allowed, t.get("wait")) {
        t.problem(
            v.span(),
            "wait",
            "only a provider's limit can be waited for (a client's answers 429 at once)",
        );
    }
    Some(RateLimit {
        requests: requests.map(|r| (r, request_burst.unwrap_or(r))),
        tokens: tokens.map(|t| (t, token_burst.unwrap_or(t))),
        wait: t.duration_or("wait", Duration::ZERO),
    })
}

/// The concurrency limit set by `table`'s keys; `adaptive_concurrency` is read where the
/// table may hold it (a provider's).
pub(super) fn concurrency(table: &Table<'_>, adaptive: bool) -> Option<Concurrency> {
    let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    let Some(max) = table.whole("max_concurrency") else {
        // The other keys mean nothing without a limit: say so rather than ignore them.
        let mut orphans = vec!["max_queue", "queue_timeout"];
        if adaptive {
            orphans.push("adaptive_concurrency");
        }
        for name in orphans {
            if let (false, Some(v)) = (table.has("max_concurrency"), table.get(name)) {
                table.problem(v.span(), name, "needs `max_concurrency` beside it");
            }
        }
        return None;
    };
    if max.value == 0 {
        table.problem(max.span, "max_concurrency", "must be at least 1");
    }
    let max = size(max.value).max(1);
    let adaptive = match adaptive.then(|| table.table("adaptive_concurrency", ADAPTIVE_KEYS)) {
        Some(Some(a)) => {
            let min = match a.whole("min") {
                Some(v) if v.value == 0 || size(v.value) > max => {
                    a.problem(
                        v.span,
                        "min",
                        format!("must be between 1 and max_concurrency ({max})"),
                    );
                    1
                }
                Some(v) => size(v.value),
                None => {
                    a.problem(a.span(), "min", "is required");
                    1
                }
            };
            if !a.has("first_token_target") {
                a.problem(a.span(), "first_token_target", "is required");
            }
            Some(AdaptiveConcurrency {
                min,
                first_token_target: a.duration_or("first_token_target", Duration::ZERO),
            })
        }
        _ => None,
    };
    Some(Concurrency {
        max,
        max_queue: table.whole("max_queue").map_or(max, |v| size(v.value)),
        queue_timeout: table.duration_or("queue_timeout", Duration::from_secs(10)),
        adaptive,
    })
}
