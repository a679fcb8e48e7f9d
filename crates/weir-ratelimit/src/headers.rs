//! The rate-limit headers: OpenAI's `x-ratelimit-*` and the IETF `RateLimit-Policy` /
//! `RateLimit` fields, on every answer (a stream's included: they are decided at admission).

use crate::limiter::Standings;
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

/// Header values written one after another into one buffer, each ended with its name: one
/// allocation for all of them (each value a slice of the buffer).
struct Values {
    buf: Vec<u8>,
    ends: [(Option<&'static HeaderName>, usize); 8],
    n: usize,
}

impl Values {
    /// What was written since the last end is `name`'s value.
    fn end(&mut self, name: &'static HeaderName) {
        self.ends[self.n] = (Some(name), self.buf.len());
        self.n += 1;
    }

    fn insert_into(self, headers: &mut HeaderMap) {
        let all = bytes::Bytes::from(self.buf);
        let mut from = 0;
        for (name, end) in &self.ends[..self.n] {
            let value =
                HeaderValue::from_maybe_shared(all.slice(from..*end)).expect("digits and ASCII");
            headers.insert((*name).expect("ended").clone(), value);
            from = *end;
        }
    }
}

/// Writes the headers for `standings` into `headers`. No `fmt` machinery and one allocation:
/// this runs on every answer.
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
    let set = || {
        quotas
            .iter()
            .filter_map(|(name, s, h)| Some((*name, (*s)?, h)))
    };
    if set().next().is_none() {
        return;
    }
    let mut v = Values {
        buf: Vec::with_capacity(192),
        ends: [(None, 0); 8],
        n: 0,
    };
    for (_, standing, [limit, remaining, reset]) in set() {
        push_int(&mut v.buf, u64::from(standing.limit));
        v.end(limit);
        push_int(&mut v.buf, u64::from(standing.remaining));
        v.end(remaining);
        push_openai_duration(&mut v.buf, standing.reset);
        v.end(reset);
    }
    for (i, (name, standing, _)) in set().enumerate() {
        if i > 0 {
            v.buf.extend_from_slice(b", ");
        }
        v.buf.extend_from_slice(name);
        v.buf.extend_from_slice(b";q=");
        push_int(&mut v.buf, u64::from(standing.limit));
        v.buf.extend_from_slice(b";w=60");
    }
    v.end(&POLICY);
    for (i, (name, standing, _)) in set().enumerate() {
        if i > 0 {
            v.buf.extend_from_slice(b", ");
        }
        v.buf.extend_from_slice(name);
        v.buf.extend_from_slice(b";r=");
        push_int(&mut v.buf, u64::from(standing.remaining));
        v.buf.extend_from_slice(b";t=");
        push_int(&mut v.buf, seconds(standing.reset));
    }
    v.end(&RATELIMIT);
    v.insert_into(headers);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::Standing;

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
