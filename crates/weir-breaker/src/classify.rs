//! Classifiers: how a call went, for the breaker.
//!
//! A call is classified at its response headers when they settle it (a 503 is a failure, a
//! 400 says nothing about the provider), and otherwise at the end of its body: a stream that
//! breaks after its headers is a failure, one that ends cleanly a success, one whose reader
//! went away says nothing. Errors of the inner service (no response at all) are classified by
//! [`Classify::classify_error`].

use crate::policy::Outcome;
use http::{HeaderMap, StatusCode};
use std::time::Duration;
use tokio::time::Instant;
use weir_llm::Failure;

/// The verdict at response headers.
#[derive(Debug)]
pub enum Classified<E> {
    /// Settled now.
    Now(Verdict),
    /// Settled when the body ends, by this classifier.
    AtEnd(E),
}

/// An outcome, and how long the provider asked to be left alone (its `Retry-After`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// What the call says about the provider.
    pub outcome: Outcome,
    /// Keep calls away for this long, without counting a failure.
    pub cool_down: Option<Duration>,
}

impl From<Outcome> for Verdict {
    fn from(outcome: Outcome) -> Self {
        Self {
            outcome,
            cool_down: None,
        }
    }
}

/// Classifies calls. Cloned into every service clone; called once per call.
pub trait Classify: Clone + Send + Sync + 'static {
    /// Settles a call at the end of its body.
    type Eos: ClassifyEos;

    /// At response headers. `started` is when the call was made.
    fn classify_response(
        &self,
        started: Instant,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Classified<Self::Eos>;

    /// The inner service failed the call (no response).
    fn classify_error(&self, error: &(dyn std::error::Error + 'static)) -> Outcome;
}

/// Settles a call at the end of its body. Exactly one of `end`, `error`, `dropped` is called.
pub trait ClassifyEos: Send + 'static {
    /// A data frame passed (called for each, before it reaches the reader).
    fn data(&mut self, _data: &[u8]) {}
    /// The body ended cleanly.
    fn end(self) -> Outcome;
    /// The body ended with an error.
    fn error(self, error: &(dyn std::error::Error + 'static)) -> Outcome;
    /// The body was dropped before its end: by default this says nothing about the provider
    /// (the client went away).
    fn dropped(self) -> Outcome
    where
        Self: Sized,
    {
        Outcome::Ignored
    }
}

/// The default classifier, in weir's failure vocabulary ([`weir_llm::Failure`]):
/// 5xx, connect errors, timeouts and broken streams are failures; 4xx never are; a client
/// that goes away never is; a 429 cools the provider down for its `Retry-After` and, unless
/// [`LlmClassifier::count_rate_limits`], is not a failure; a first byte slower than
/// [`LlmClassifier::slow_first_byte`] is a failure.
#[derive(Clone, Copy, Debug)]
pub struct LlmClassifier {
    count_rate_limits: bool,
    slow: Option<Duration>,
    in_band_errors: bool,
}

impl Default for LlmClassifier {
    fn default() -> Self {
        Self {
            count_rate_limits: false,
            slow: None,
            in_band_errors: true,
        }
    }
}

impl LlmClassifier {
    /// The defaults above.
    pub fn new() -> Self {
        Self::default()
    }

    /// Scan each frame for an in-band `data: {"error"...}` event (on by default). Turn it off
    /// when a wrapper above already reads the stream and settles such calls itself with
    /// the [`Settle`](crate::Settle) handle in the response's extensions.
    pub fn in_band_errors(mut self, scan: bool) -> Self {
        self.in_band_errors = scan;
        self
    }

    /// Count 429 as a failure too.
    pub fn count_rate_limits(mut self, yes: bool) -> Self {
        self.count_rate_limits = yes;
        self
    }

    /// Count a call whose first body byte comes later than `after` (from the call) as failed.
    pub fn slow_first_byte(mut self, after: Option<Duration>) -> Self {
        self.slow = after;
        self
    }
}

/// [`LlmClassifier`]'s end-of-stream half. A stream that carried an in-band
/// `data: {"error": ...}` event failed, however cleanly it ended.
#[derive(Debug)]
pub struct LlmEos {
    started: Instant,
    slow: Option<Duration>,
    first_byte: Option<Instant>,
    scan: bool,
    in_band_error: bool,
}

static ERROR_OBJECT: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"{\"error\""));

/// An in-band error event as providers send it: `data:` then `{"error"` (one substring scan
/// per frame with a prebuilt searcher, not a parse; an event cut across two frames is
/// missed, which only loses one failure count).
fn has_error_event(data: &[u8]) -> bool {
    let mut from = 0;
    while let Some(at) = ERROR_OBJECT.find(&data[from..]) {
        let before = data[..from + at].trim_ascii_end();
        if before.ends_with(b"data:") {
            return true;
        }
        from += at + 1;
    }
    false
}

impl Classify for LlmClassifier {
    type Eos = LlmEos;

    fn classify_response(
        &self,
        started: Instant,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Classified<LlmEos> {
        match Failure::from_response(status, headers, b"") {
            None => Classified::AtEnd(LlmEos {
                started,
                slow: self.slow,
                first_byte: None,
                scan: self.in_band_errors,
                in_band_error: false,
            }),
            Some(Failure::RateLimited { retry_after }) => Classified::Now(Verdict {
                outcome: if self.count_rate_limits {
                    Outcome::Failure
                } else {
                    Outcome::Ignored
                },
                cool_down: retry_after,
            }),
            Some(failure) if failure.is_provider_fault() => {
                Classified::Now(Outcome::Failure.into())
            }
            Some(_) => Classified::Now(Outcome::Ignored.into()),
        }
    }

    fn classify_error(&self, _: &(dyn std::error::Error + 'static)) -> Outcome {
        Outcome::Failure
    }
}

impl ClassifyEos for LlmEos {
    fn data(&mut self, data: &[u8]) {
        if self.first_byte.is_none() && !data.is_empty() {
            self.first_byte = Some(Instant::now());
        }
        if self.scan && !self.in_band_error && has_error_event(data) {
            self.in_band_error = true;
        }
    }

    fn end(self) -> Outcome {
        if self.in_band_error {
            return Outcome::Failure;
        }
        let slow = self.slow.is_some_and(|limit| {
            self.first_byte
                .is_some_and(|first| first.duration_since(self.started) > limit)
        });
        if slow {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }

    fn error(self, _: &(dyn std::error::Error + 'static)) -> Outcome {
        Outcome::Failure
    }
}

/// Classifies calls for an endpoint that several breakers share a connection to (one
/// provider's models, each with its own [`LlmClassifier`] breaker): any response is a success,
/// since the endpoint answered, however its model did; an error is a failure only when
/// `is_transport` says the connection itself failed (refused, DNS, TLS, reset before any
/// byte), and says nothing otherwise (a slow model is its own breaker's business).
#[derive(Clone, Copy)]
pub struct TransportClassifier {
    is_transport: fn(&(dyn std::error::Error + 'static)) -> bool,
}

impl TransportClassifier {
    /// Counts the errors `is_transport` picks.
    pub fn new(is_transport: fn(&(dyn std::error::Error + 'static)) -> bool) -> Self {
        Self { is_transport }
    }
}

impl std::fmt::Debug for TransportClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TransportClassifier")
    }
}

/// The end-of-body half of a classifier that settles every call at its headers.
#[derive(Debug)]
pub enum NoEos {}

impl ClassifyEos for NoEos {
    fn end(self) -> Outcome {
        match self {}
    }

    fn error(self, _: &(dyn std::error::Error + 'static)) -> Outcome {
        match self {}
    }
}

impl Classify for TransportClassifier {
    type Eos = NoEos;

    fn classify_response(&self, _: Instant, _: StatusCode, _: &HeaderMap) -> Classified<NoEos> {
        Classified::Now(Outcome::Success.into())
    }

    fn classify_error(&self, error: &(dyn std::error::Error + 'static)) -> Outcome {
        if (self.is_transport)(error) {
            Outcome::Failure
        } else {
            Outcome::Ignored
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn at_headers(status: u16, headers: &HeaderMap) -> Option<Verdict> {
        let c = LlmClassifier::new();
        match c.classify_response(
            Instant::now(),
            StatusCode::from_u16(status).unwrap(),
            headers,
        ) {
            Classified::Now(v) => Some(v),
            Classified::AtEnd(_) => None,
        }
    }

    #[test]
    fn statuses() {
        let none = HeaderMap::new();
        assert_eq!(at_headers(200, &none), None, "a 200 is settled at the end");
        assert_eq!(at_headers(503, &none), Some(Outcome::Failure.into()));
        assert_eq!(at_headers(400, &none), Some(Outcome::Ignored.into()));
        assert_eq!(at_headers(401, &none), Some(Outcome::Ignored.into()));
        let mut retry = HeaderMap::new();
        retry.insert("retry-after", HeaderValue::from_static("4"));
        assert_eq!(
            at_headers(429, &retry),
            Some(Verdict {
                outcome: Outcome::Ignored,
                cool_down: Some(Duration::from_secs(4))
            })
        );
    }

    #[test]
    fn the_transport_classifier_counts_failed_connections_only() {
        #[derive(Debug)]
        struct Refused;
        impl std::fmt::Display for Refused {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("refused")
            }
        }
        impl std::error::Error for Refused {}
        let c = TransportClassifier::new(|e| e.is::<Refused>());
        for status in [200, 404, 429, 503] {
            let verdict = c.classify_response(
                Instant::now(),
                StatusCode::from_u16(status).unwrap(),
                &HeaderMap::new(),
            );
            assert!(
                matches!(verdict, Classified::Now(v) if v == Outcome::Success.into()),
                "{status}: the endpoint answered"
            );
        }
        assert_eq!(c.classify_error(&Refused), Outcome::Failure);
        assert_eq!(
            c.classify_error(&std::io::Error::other("timed out")),
            Outcome::Ignored
        );
    }

    #[tokio::test(start_paused = true)]
    async fn slow_first_byte_counts_as_failure() {
        let c = LlmClassifier::new().slow_first_byte(Some(Duration::from_secs(2)));
        let started = Instant::now();
        let eos = |c: &LlmClassifier| match c.classify_response(
            started,
            StatusCode::OK,
            &HeaderMap::new(),
        ) {
            Classified::AtEnd(eos) => eos,
            Classified::Now(_) => panic!("settled at the end"),
        };
        let mut fast = eos(&c);
        fast.data(b"x");
        assert_eq!(fast.end(), Outcome::Success);
        tokio::time::advance(Duration::from_secs(3)).await;
        let mut slow = eos(&c);
        slow.data(b"x");
        assert_eq!(slow.end(), Outcome::Failure);
        assert_eq!(eos(&c).dropped(), Outcome::Ignored);
        let plain = LlmClassifier::new();
        let mut quoted = eos(&plain);
        quoted.data(b"data: {\"choices\":[{\"delta\":{\"content\":\"{\\\"error\\\"\"}}]}\n\n");
        assert_eq!(
            quoted.end(),
            Outcome::Success,
            "text that mentions an error is not one"
        );
        let mut errored = eos(&plain);
        errored.data(b"data: {\"choices\":[]}\n\ndata: {\"error\":{\"message\":\"boom\"}}\n\n");
        assert_eq!(
            errored.end(),
            Outcome::Failure,
            "an in-band error event fails a clean end"
        );
    }
}
