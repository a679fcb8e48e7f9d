//! One client call, as the classifier reads it and every attempt and continuation uses it.

use super::target::RouteTarget;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use std::sync::Arc;
use weir_llm::{Endpoint, Failure, LlmRequest};

/// One client call, as every attempt and continuation needs it.
#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) endpoint: Endpoint,
    pub(crate) headers: HeaderMap,
    pub(crate) id: HeaderValue,
    pub(crate) body: Bytes,
    pub(crate) llm: LlmRequest,
    /// What the metrics layer learns of the call.
    pub(crate) tally: weir_metrics::Tally,
    /// The request's span (disabled when traces are off): each attempt's parent.
    pub(crate) span: tracing::Span,
    /// The target of the last failed attempt (`usize::MAX`: none).
    pub(crate) failed: std::sync::atomic::AtomicUsize,
    /// A streamed chat answer that another target of the route may continue if it is cut.
    pub(crate) resumable: bool,
    /// Responses continuing a stored one: the provider that keeps it, whose targets alone
    /// are tried.
    pub(crate) pinned: Option<Arc<str>>,
    /// Responses, stored: where to remember which provider made it, and the client key.
    pub(crate) owners: Option<(Arc<super::stored::Owners>, Option<Arc<str>>)>,
    /// What the answer's watch learns (usage, events, finish reason), for everyone who
    /// settles or records it.
    pub(crate) meter: weir_llm::stream::Meter,
}

impl Call {
    /// A span for one attempt on `target`, a child of the request's (none when traces are
    /// off), its context passed upstream in `headers` as W3C `traceparent`.
    pub(crate) fn attempt_span(
        &self,
        target: &RouteTarget,
        headers: &mut HeaderMap,
    ) -> tracing::Span {
        if self.span.is_disabled() {
            return tracing::Span::none();
        }
        let span = tracing::info_span!(
            target: "weir::attempt",
            parent: &self.span,
            "attempt",
            otel.name = tracing::field::display(format_args!("{} {}", operation(self.endpoint), target.model)),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            gen_ai.operation.name = operation(self.endpoint),
            gen_ai.provider.name = &*target.upstream.name,
            gen_ai.request.model = &*target.model,
            server.address = target.upstream.models_uri.host().unwrap_or_default(),
        );
        crate::telemetry::inject(&span, headers);
        span
    }
}

/// The GenAI operation name of an endpoint.
pub(crate) fn operation(endpoint: Endpoint) -> &'static str {
    endpoint.operation()
}

/// What one attempt carries from its request to its judgement.
#[derive(Debug)]
pub(crate) struct Attempt {
    pub(crate) call: Arc<Call>,
    pub(crate) span: tracing::Span,
    /// A continuation of an answer cut on the target at this index, made this way.
    pub(crate) resuming: Option<(weir_llm::stream::Continuation, usize)>,
    /// When its request was made: a stream's first event is due `first_token_timeout` after.
    pub(crate) sent: tokio::time::Instant,
}

/// Marks an attempt's span as failed.
pub(crate) fn span_failed(span: &tracing::Span, failure: Failure) {
    span.record("otel.status_code", "ERROR");
    span.record("error.type", failure.as_str());
}
