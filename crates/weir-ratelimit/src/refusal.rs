//! The answer to a call over its limit.

use crate::headers;
use crate::limiter::{Refusal, Standings};
use bytes::Bytes;
use http::{header, HeaderValue, Response};
use weir_llm::{ErrorBody, ErrorKind};

/// In the extensions of a 429 that a rate limit answered itself (not an upstream's): why.
/// Layers around it read it (a rate limit outside gives its own charge back; a router reads a
/// provider's local 429 as "this target is full", not as the provider's answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited(Refusal);

impl Limited {
    /// Why the call was refused.
    pub fn refusal(&self) -> Refusal {
        self.0
    }
}

/// The 429 for `refusal`, with the rate-limit headers; `body` makes the body type.
pub fn refusal_response<B>(
    refusal: Refusal,
    standings: &Standings,
    body: impl FnOnce(Bytes) -> B,
) -> Response<B> {
    let error = match refusal {
        Refusal::Requests { .. } => ErrorBody::new(
            ErrorKind::RateLimited,
            "Rate limit reached for requests per minute; retry after the time in Retry-After.",
        )
        .code("rate_limit_exceeded"),
        Refusal::Tokens { .. } => ErrorBody::new(
            ErrorKind::RateLimited,
            "Rate limit reached for tokens per minute; retry after the time in Retry-After.",
        )
        .code("rate_limit_exceeded"),
        Refusal::Unavailable => ErrorBody::new(
            ErrorKind::Unavailable,
            "The shared rate limit could not be checked in time; retry shortly.",
        )
        .code("rate_limit_unavailable"),
        Refusal::TooLarge { tokens, burst } => ErrorBody::new(
            ErrorKind::RateLimited,
            format!(
                "Request too large: it may use up to {tokens} tokens, and the limit is {burst} tokens per minute. Send a shorter prompt or a lower max_tokens."
            ),
        )
        .code("request_too_large"),
    };
    let mut response = Response::new(body(error.to_json()));
    *response.status_mut() = error.status();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(wait) = refusal.retry_after() {
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from(headers::seconds(wait).max(1)),
        );
    }
    headers::write(h, standings);
    response.extensions_mut().insert(Limited(refusal));
    response
}
