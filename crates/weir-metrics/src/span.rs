//! The server span: OpenTelemetry's GenAI semantic conventions on a `tracing` span, filled in
//! when the exchange ends.

use crate::recorder::{Outcome, Report};
use http::{HeaderMap, Request};
use tracing::field::Empty;
use tracing::Span;

/// The span of one request. Its fields are declared here (a `tracing` span cannot gain fields
/// later) and recorded by [`finish`].
pub(crate) fn request_span<B>(request: &Request<B>) -> Span {
    let span = tracing::info_span!(
        target: "weir::request",
        "request",
        otel.name = Empty,
        otel.kind = "server",
        otel.status_code = Empty,
        otel.status_description = Empty,
        http.request.method = %request.method(),
        url.path = request.uri().path(),
        http.response.status_code = Empty,
        gen_ai.operation.name = Empty,
        gen_ai.provider.name = Empty,
        gen_ai.request.model = Empty,
        gen_ai.response.model = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        gen_ai.response.finish_reasons = Empty,
        weir.outcome = Empty,
        weir.attempts = Empty,
        weir.time_to_first_token = Empty,
        error.type = Empty,
    );
    #[cfg(feature = "opentelemetry")]
    otel::set_parent(&span, request.headers());
    span
}

/// Records what the exchange came to on its span.
pub(crate) fn finish(span: &Span, report: &Report<'_>, operation: Option<&'static str>) {
    let labels = report.labels;
    if let Some(operation) = operation {
        span.record("gen_ai.operation.name", operation);
        if !labels.route.is_empty() {
            let name = format!("{operation} {}", labels.route);
            // A span already started takes its new name through OpenTelemetry's API.
            #[cfg(feature = "opentelemetry")]
            otel::rename(span, name.clone());
            span.record("otel.name", name);
        }
    }
    if !labels.route.is_empty() {
        span.record("gen_ai.request.model", &*labels.route);
        span.record("gen_ai.provider.name", &*labels.provider);
        span.record("gen_ai.response.model", &*labels.model);
        span.record("gen_ai.usage.input_tokens", report.tokens.input);
        span.record("gen_ai.usage.output_tokens", report.tokens.output);
    }
    if let Some(reason) = report.finish_reason {
        span.record("gen_ai.response.finish_reasons", reason);
    }
    if let Some(first) = report.first_token {
        span.record("weir.time_to_first_token", first.as_secs_f64());
    }
    span.record("http.response.status_code", report.status.as_u16());
    span.record("weir.outcome", report.outcome.as_str());
    span.record("weir.attempts", report.attempts);
    match report.outcome {
        // A client's error is not the server's (OpenTelemetry's HTTP conventions).
        Outcome::Ok | Outcome::Rescued | Outcome::ClientError | Outcome::RateLimited => {
            span.record("otel.status_code", "OK");
        }
        Outcome::UpstreamError | Outcome::Truncated | Outcome::Cancelled => {
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", report.outcome.as_str());
            span.record("error.type", report.outcome.as_str());
        }
    }
}

static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// The trace id of a W3C `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`), if valid.
pub(crate) fn traceparent_id(headers: &HeaderMap) -> Option<[u8; 32]> {
    let value = headers.get(&TRACEPARENT)?.as_bytes();
    let id = value.get(3..35)?;
    let valid = value.len() >= 55
        && value.starts_with(b"00-")
        && id
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        && id.iter().any(|b| *b != b'0');
    valid.then(|| id.try_into().expect("32 bytes"))
}

/// The trace id for the access log: the span's, when it is exported; else the client's.
pub(crate) fn trace_id(span: &Span, traceparent: Option<[u8; 32]>) -> Option<[u8; 32]> {
    #[cfg(feature = "opentelemetry")]
    if let Some(id) = otel::trace_id(span) {
        return Some(id);
    }
    let _ = span;
    traceparent
}

#[cfg(feature = "opentelemetry")]
mod otel {
    use http::HeaderMap;
    use opentelemetry::propagation::Extractor;
    use opentelemetry::trace::TraceContextExt;
    use tracing::Span;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    struct Headers<'a>(&'a HeaderMap);

    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }

        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }

    /// The client's trace context (W3C `traceparent` / `tracestate`, through the global
    /// propagator) becomes the span's parent.
    pub(super) fn set_parent(span: &Span, headers: &HeaderMap) {
        if span.is_disabled() || !headers.contains_key("traceparent") {
            return;
        }
        let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
        let _ = span.set_parent(cx);
    }

    pub(super) fn rename(span: &Span, name: String) {
        span.context().span().update_name(name);
    }

    pub(super) fn trace_id(span: &Span) -> Option<[u8; 32]> {
        if span.is_disabled() {
            return None;
        }
        let cx = span.context();
        let id = cx.span().span_context().trace_id();
        if id == opentelemetry::trace::TraceId::INVALID {
            return None;
        }
        let hex = format!("{id}");
        hex.as_bytes().try_into().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_read_only_when_valid() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            traceparent_id(&headers).as_ref().map(|t| &t[..]),
            Some(&b"4bf92f3577b34da6a3ce929d0e0e4736"[..])
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6",
        ] {
            headers.insert("traceparent", bad.parse().unwrap());
            assert_eq!(traceparent_id(&headers), None, "{bad}");
        }
    }
}
