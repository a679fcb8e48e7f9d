//! The rate-limit headers: OpenAI's `x-ratelimit-*` and the IETF `RateLimit-Policy` /
//! `RateLimit` fields, on every answer (a stream's included: they are decided at admission).

use crate::limiter::{Standing, Standings};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::time::Duration;

/// Appends `n` in decimal.
fn push_int(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends OpenAI's duration format: `20ms`, `1s`, `6m0s`.
fn push_openai_duration(out: &mut Vec<u8>, d: Duration) {
    let ms = d.as_millis();
    if ms < 1000 {
        push_int(out, ms as u64);
        out.extend_from_slice(b"ms");
        return;
    }
    let secs = seconds(d);
    if secs >= 60 {
        push_int(out, secs / 60);
        out.push(b'm');
        push_int(out, secs % 60);
    } else {
        push_int(out, secs);
    }
    out.push(b's');
}

#[cfg(test)]
fn openai_duration(d: Duration) -> String {
    let mut out = Vec::new();
    push_openai_duration(&mut out, d);
    String::from_utf8(out).expect("ASCII")
}

/// Whole seconds, rounded up.
pub(crate) fn seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn value(bytes: Vec<u8>) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(bytes)).expect("digits and ASCII")
}

static LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
static REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
static RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
static LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
static REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
static RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");
static POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Whether a limit (further in) has written its headers already: the innermost limit is the
/// most specific one (a client's before its route's before the server's), and its figures are
/// the ones shown.
pub(crate) fn written(headers: &HeaderMap) -> bool {
    // `RateLimit-Policy` goes with either family: one lookup.
    headers.contains_key(&POLICY)
}

/// Writes the headers for `standings` into `headers`. No `fmt` machinery: this runs on every
/// answer.
pub fn write(headers: &mut HeaderMap, standings: &Standings) {
    let quotas = [
        (
            &b"\"requests\""[..],
            standings.requests,
            [&LIMIT_REQUESTS, &REMAINING_REQUESTS, &RESET_REQUESTS],
        ),
        (
            &b"\"tokens\""[..],
            standings.tokens,
            [&LIMIT_TOKENS, &REMAINING_TOKENS, &RESET_TOKENS],
        ),
    ];
    let mut policy = Vec::with_capacity(64);
    let mut current = Vec::with_capacity(64);
    for (name, standing, [limit_h, remaining_h, reset_h]) in quotas {
        let Some(Standing {
            limit,
            remaining,
            reset,
        }) = standing
        else {
            continue;
        };
        headers.insert(limit_h.clone(), HeaderValue::from(limit));
        headers.insert(remaining_h.clone(), HeaderValue::from(remaining));
        let mut reset_value = Vec::with_capacity(8);
        push_openai_duration(&mut reset_value, reset);
        headers.insert(reset_h.clone(), value(reset_value));
        if !policy.is_empty() {
            policy.extend_from_slice(b", ");
            current.extend_from_slice(b", ");
        }
        policy.extend_from_slice(name);
        policy.extend_from_slice(b";q=");
        push_int(&mut policy, u64::from(limit));
        policy.extend_from_slice(b";w=60");
        current.extend_from_slice(name);
        current.extend_from_slice(b";r=");
        push_int(&mut current, u64::from(remaining));
        current.extend_from_slice(b";t=");
        push_int(&mut current, seconds(reset));
    }
    if !policy.is_empty() {
        headers.insert(POLICY.clone(), value(policy));
        headers.insert(RATELIMIT.clone(), value(current));
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
        assert_eq!(openai_duration(Duration::from_millis(1500)), "2s");
        assert_eq!(openai_duration(Duration::from_secs(59)), "59s");
        assert_eq!(openai_duration(Duration::from_secs(61)), "1m1s");
    }
}
