//! One failure classification, shared by the breaker, failover and metrics.
//!
//! Every way a call to a provider can go wrong is one [`Failure`]. Each layer asks the class
//! the question it cares about: a breaker counts [`Failure::is_provider_fault`], failover
//! retries what happened [`Failure::before_commit`], metrics label by [`Failure::as_str`].
//!
//! ```
//! use http::{HeaderMap, HeaderValue, StatusCode};
//! use weir_llm::failure::{Failure, Rejection};
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("retry-after", HeaderValue::from_static("7"));
//! let f = Failure::from_response(StatusCode::TOO_MANY_REQUESTS, &headers, b"").unwrap();
//! assert_eq!(f.retry_after(), Some(std::time::Duration::from_secs(7)));
//! assert!(!f.is_provider_fault());
//!
//! let body = br#"{"error":{"code":"context_length_exceeded","message":"too long"}}"#;
//! let f = Failure::from_response(StatusCode::BAD_REQUEST, &HeaderMap::new(), body).unwrap();
//! assert_eq!(f, Failure::Rejected { status: StatusCode::BAD_REQUEST, reason: Rejection::ContextLengthExceeded });
//! ```

use crate::chunk::Chunk;
use http::{HeaderMap, StatusCode};
use std::time::Duration;

/// Why a provider refused a request as the client's fault (a 4xx other than 429).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// The prompt does not fit the model's context window. Another model may take it.
    ContextLengthExceeded,
    /// The provider's content policy refused it. No other target should be tried.
    ContentPolicy,
    /// The provider refused weir's credentials (401/403): a configuration fault.
    Auth,
    /// The provider does not know the model or path (404).
    NotFound,
    /// Any other malformed-request answer.
    InvalidRequest,
}

/// How a call to a provider failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The TCP or TLS connection could not be made (refused, reset, DNS, handshake).
    Connect,
    /// No response headers within the response timeout.
    HeadersTimeout,
    /// Headers came, but no first content token within the first-token timeout.
    FirstTokenTimeout,
    /// 429. `retry_after` from `Retry-After` (seconds) or `retry-after-ms`.
    RateLimited {
        /// How long the provider asked us to wait.
        retry_after: Option<Duration>,
    },
    /// A 5xx answer.
    Upstream5xx {
        /// The status.
        status: StatusCode,
    },
    /// A 4xx answer other than 429: the request's fault, never the provider's.
    Rejected {
        /// The status.
        status: StatusCode,
        /// What the provider said is wrong.
        reason: Rejection,
    },
    /// The stream broke (reset, error) after its first token.
    StreamBroken,
    /// The stream went silent (no content event) for the idle timeout.
    StreamStalled,
    /// After the first token: the provider sent an event that could not be read, or one over
    /// the bound on an event's size.
    MalformedEvent,
    /// Before the first token: a successful answer that is not what was asked for (a streamed
    /// request answered with something other than an event stream, a first event that cannot
    /// be read or is too large). Another target may answer properly.
    MalformedAnswer,
    /// The client went away. Never the provider's fault.
    ClientGone,
    /// The gateway's own concurrency limit for the target was full: no request went out.
    /// Never the provider's fault; another target may have room.
    AtCapacity,
}

impl Failure {
    /// Classifies a response by status, headers and (for 4xx) its body's error `code`/`type`.
    /// `None` for 1xx-3xx. Pass an empty body when it was not read.
    pub fn from_response(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Option<Self> {
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Some(Self::RateLimited {
                retry_after: retry_after(headers),
            });
        }
        if status.is_server_error() {
            return Some(Self::Upstream5xx { status });
        }
        if !status.is_client_error() {
            return None;
        }
        let reason = match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Rejection::Auth,
            StatusCode::NOT_FOUND => Rejection::NotFound,
            _ => rejection_from_body(body),
        };
        Some(Self::Rejected { status, reason })
    }

    /// Whether this counts against the provider's health (breakers, failure rates). The
    /// client's faults, rate limits and clients leaving do not.
    pub fn is_provider_fault(&self) -> bool {
        !matches!(
            self,
            Self::Rejected { .. } | Self::RateLimited { .. } | Self::ClientGone | Self::AtCapacity
        )
    }

    /// Whether another attempt (the same target later, or another one) may succeed. False for
    /// the client's own faults, except a context window that another model may have.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Rejected { reason, .. } => *reason == Rejection::ContextLengthExceeded,
            Self::ClientGone => false,
            _ => true,
        }
    }

    /// Whether this failure happens before the first token reaches the client (so the client
    /// has seen nothing and a retry is invisible).
    pub fn before_commit(&self) -> bool {
        !matches!(
            self,
            Self::StreamBroken | Self::StreamStalled | Self::MalformedEvent | Self::ClientGone
        )
    }

    /// The provider's `Retry-After`, for a 429.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }

    /// A short stable name, for metric labels and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Connect => "connect_error",
            Self::HeadersTimeout => "headers_timeout",
            Self::FirstTokenTimeout => "first_token_timeout",
            Self::RateLimited { .. } => "rate_limited",
            Self::Upstream5xx { .. } => "upstream_5xx",
            Self::Rejected { reason, .. } => match reason {
                Rejection::ContextLengthExceeded => "context_length_exceeded",
                Rejection::ContentPolicy => "content_policy",
                Rejection::Auth => "upstream_auth",
                Rejection::NotFound => "upstream_not_found",
                Rejection::InvalidRequest => "invalid_request",
            },
            Self::StreamBroken => "stream_broken",
            Self::StreamStalled => "stream_stalled",
            Self::MalformedEvent => "malformed_event",
            Self::MalformedAnswer => "malformed_answer",
            Self::ClientGone => "client_gone",
            Self::AtCapacity => "at_capacity",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn rejection_from_body(body: &[u8]) -> Rejection {
    let Some(error) = Chunk::parse(body).ok().and_then(|c| c.error) else {
        return Rejection::InvalidRequest;
    };
    let names = [error.code.as_deref(), error.kind.as_deref()];
    for name in names.into_iter().flatten() {
        match name {
            "context_length_exceeded" | "string_above_max_length" => {
                return Rejection::ContextLengthExceeded
            }
            "content_policy_violation" | "content_filter" => return Rejection::ContentPolicy,
            _ => {}
        }
    }
    // Anthropic says it in the message of an `invalid_request_error`.
    if error
        .message
        .as_deref()
        .is_some_and(|m| m.starts_with("prompt is too long"))
    {
        return Rejection::ContextLengthExceeded;
    }
    Rejection::InvalidRequest
}

/// The wait a 429 or 503 asks for: `retry-after-ms` (OpenAI, Azure) or `Retry-After` in
/// seconds. An HTTP-date `Retry-After` is not read (providers send seconds).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let read = |name: &str| {
        headers
            .get(name)?
            .to_str()
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    if let Some(ms) = read("retry-after-ms") {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    read("retry-after").map(Duration::from_secs_f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn classify(status: u16, body: &str) -> Failure {
        Failure::from_response(
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            body.as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn four_hundreds_by_code() {
        let reason = |f: Failure| match f {
            Failure::Rejected { reason, .. } => reason,
            other => panic!("not a rejection: {other:?}"),
        };
        assert_eq!(
            reason(classify(
                400,
                r#"{"error":{"code":"content_policy_violation"}}"#
            )),
            Rejection::ContentPolicy
        );
        assert_eq!(
            reason(classify(
                400,
                r#"{"error":{"type":"context_length_exceeded","code":null}}"#
            )),
            Rejection::ContextLengthExceeded
        );
        // Anthropic's: an `invalid_request_error` that says so.
        assert_eq!(
            reason(classify(
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 201234 tokens > 200000 maximum"}}"#
            )),
            Rejection::ContextLengthExceeded
        );
        assert_eq!(
            reason(classify(
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: field required"}}"#
            )),
            Rejection::InvalidRequest
        );
        assert_eq!(reason(classify(400, "not json")), Rejection::InvalidRequest);
        assert_eq!(reason(classify(401, "")), Rejection::Auth);
        assert_eq!(reason(classify(404, "")), Rejection::NotFound);
        assert_eq!(reason(classify(422, "{}")), Rejection::InvalidRequest);
    }

    #[test]
    fn what_counts_against_a_provider() {
        assert!(classify(503, "").is_provider_fault());
        assert!(Failure::StreamStalled.is_provider_fault());
        assert!(!classify(400, "").is_provider_fault());
        assert!(!classify(429, "").is_provider_fault());
        assert!(!Failure::ClientGone.is_provider_fault());
        assert!(!Failure::AtCapacity.is_provider_fault());
        assert!(Failure::AtCapacity.is_retryable() && Failure::AtCapacity.before_commit());
        assert!(!classify(400, "").is_retryable());
        assert!(classify(400, r#"{"error":{"code":"context_length_exceeded"}}"#).is_retryable());
        assert!(Failure::Connect.before_commit());
        assert!(!Failure::StreamBroken.before_commit());
        assert!(Failure::from_response(StatusCode::OK, &HeaderMap::new(), b"").is_none());
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("-1"));
        assert_eq!(retry_after(&h), None);
    }
}
