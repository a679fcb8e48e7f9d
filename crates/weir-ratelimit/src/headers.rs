//! The rate-limit headers: OpenAI's `x-ratelimit-*` and the IETF `RateLimit-Policy` /
//! `RateLimit` fields, on every answer (a stream's included: they are decided at admission).

use crate::limiter::{Standing, Standings};
use http::{HeaderMap, HeaderValue};
use std::fmt::Write;
use std::time::Duration;

/// OpenAI's duration format: `20ms`, `1s`, `6m0s`.
fn openai_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    if secs < 60 {
        format!("{secs}s")
    } else {
        format!("{}m{}s", secs / 60, secs % 60)
    }
}

/// Whole seconds, rounded up.
pub(crate) fn seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(name, value);
    }
}

/// Writes the headers for `standings` into `headers`.
pub fn write(headers: &mut HeaderMap, standings: &Standings) {
    let quotas = [
        ("requests", standings.requests),
        ("tokens", standings.tokens),
    ];
    let mut policy = String::new();
    let mut current = String::new();
    for (name, standing) in quotas {
        let Some(Standing {
            limit,
            remaining,
            reset,
        }) = standing
        else {
            continue;
        };
        let (limit_h, remaining_h, reset_h) = match name {
            "requests" => (
                "x-ratelimit-limit-requests",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
            ),
            _ => (
                "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens",
            ),
        };
        insert(headers, limit_h, limit.to_string());
        insert(headers, remaining_h, remaining.to_string());
        insert(headers, reset_h, openai_duration(reset));
        let sep = |s: &String| if s.is_empty() { "" } else { ", " };
        let _ = write!(policy, "{}\"{name}\";q={limit};w=60", sep(&policy));
        let _ = write!(
            current,
            "{}\"{name}\";r={remaining};t={}",
            sep(&current),
            seconds(reset)
        );
    }
    if !policy.is_empty() {
        insert(headers, "ratelimit-policy", policy);
        insert(headers, "ratelimit", current);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_families_are_written() {
        let mut headers = HeaderMap::new();
        write(
            &mut headers,
            &Standings {
                requests: Some(Standing {
                    limit: 60,
                    remaining: 59,
                    reset: Duration::from_secs(1),
                }),
                tokens: Some(Standing {
                    limit: 1000,
                    remaining: 0,
                    reset: Duration::from_secs(360),
                }),
            },
        );
        assert_eq!(headers["x-ratelimit-limit-requests"], "60");
        assert_eq!(headers["x-ratelimit-remaining-requests"], "59");
        assert_eq!(headers["x-ratelimit-reset-requests"], "1s");
        assert_eq!(headers["x-ratelimit-reset-tokens"], "6m0s");
        assert_eq!(
            headers["ratelimit-policy"],
            "\"requests\";q=60;w=60, \"tokens\";q=1000;w=60"
        );
        assert_eq!(
            headers["ratelimit"],
            "\"requests\";r=59;t=1, \"tokens\";r=0;t=360"
        );
        assert_eq!(openai_duration(Duration::from_millis(20)), "20ms");
    }
}
