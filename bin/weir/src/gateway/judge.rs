//! The LLM half of the failover router: each target's request (and continuation request),
//! and each answer read to its commit point and classified.

use super::answer::ResponseBody;
use super::call::{span_failed, Attempt, Call};
use super::errors::error;
use super::head::{read_head, Head};
use super::provider::{provider_value, TokenEstimate, Upstream};
use super::target::RouteTarget;
use crate::config::Continuation;
use crate::headers::{self, X_REQUEST_ID, X_WEIR_PROVIDER};
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use weir_failover::router::{Cut, Judge, Judged, Resumer};
use weir_llm::continuation;
use weir_llm::{Api, Endpoint, ErrorBody, ErrorKind, Failure, LlmRequest};

/// `anthropic-version`.
static ANTHROPIC_VERSION: http::HeaderName = http::HeaderName::from_static("anthropic-version");

/// The LLM half of the failover router: each target's request (and continuation request),
/// and each answer read to its commit point and classified.
#[derive(Clone, Debug)]
pub(crate) struct LlmJudge {
    pub(crate) targets: Arc<[RouteTarget]>,
    pub(crate) first_token: Duration,
    /// With limits shared through Redis: where a model's 429 cool-down is published for the
    /// other replicas.
    pub(crate) shared: Option<weir_ratelimit::RedisStore>,
}

/// The name a model's cool-down is shared under: its provider's and its own, as configured.
pub(crate) fn cool_down_name(provider: &str, model: &str) -> String {
    format!("{provider}:{model}")
}

type Judging = Pin<Box<dyn std::future::Future<Output = Judged<Response<ResponseBody>>> + Send>>;

impl Judge<Arc<Call>> for LlmJudge {
    type Request = Request<Full<Bytes>>;
    type Response = Response<super::answer::UpstreamBody>;
    type Answer = Response<ResponseBody>;
    type Future = Judging;
    type Attempt = Attempt;

    fn request(&self, target: usize, call: &Arc<Call>) -> (Request<Full<Bytes>>, Attempt) {
        let target = &self.targets[target];
        let mut request = outgoing_request(target, call, self.first_token);
        call.tally.sent();
        let span = call.attempt_span(target, request.headers_mut());
        let attempt = Attempt {
            call: call.clone(),
            span,
            resuming: None,
            sent: tokio::time::Instant::now(),
        };
        (request, attempt)
    }

    /// A replay (the same request) or a prefill (the partial answer as a final assistant
    /// message), as the target's `continuation` says.
    fn resume(
        &self,
        target: usize,
        call: &Arc<Call>,
        cut: &Cut,
    ) -> Option<(Request<Full<Bytes>>, Attempt)> {
        let t = &self.targets[target];
        let original = || call.llm.upstream_body(&call.body, &t.model, true);
        let delivered = &cut.answer.delivered;
        let replay = || (original(), weir_llm::stream::Continuation::Replay);
        let (body, how) = match (t.continuation, call.endpoint.api()) {
            (Continuation::None, _) => return None,
            // A response is one piece of state at its provider: only made again whole.
            (_, Api::Responses) => replay(),
            (Continuation::Prefill, api) => {
                // Anthropic refuses a final assistant message that ends in whitespace: it is
                // sent without it (the watch drops it from the continuation's start).
                let (prefill, _) = continuation::prefill_text(api, delivered);
                if prefill.is_empty() {
                    replay()
                } else {
                    (
                        continuation::prefill_request(&original(), prefill)?,
                        weir_llm::stream::Continuation::Prefill,
                    )
                }
            }
            (Continuation::Replay, _) => replay(),
        };
        let mut request = outgoing_request(t, call, self.first_token);
        *request.body_mut() = Full::new(body);
        let span = call.attempt_span(t, request.headers_mut());
        tracing::info!(
            from = %self.targets[cut.from].upstream.name,
            to = %t.upstream.name,
            failure = %cut.failure,
            "stream cut after its first token; continuing elsewhere"
        );
        let attempt = Attempt {
            call: call.clone(),
            span,
            resuming: Some((how, cut.from)),
            sent: tokio::time::Instant::now(),
        };
        Some((request, attempt))
    }

    fn committed(
        &self,
        _target: usize,
        call: &Arc<Call>,
        answer: &mut Response<ResponseBody>,
        resumer: impl FnOnce() -> Resumer<Response<ResponseBody>>,
    ) {
        if !call.resumable {
            return;
        }
        if let Some(stream) = answer.body_mut().chat_mut() {
            let resumer =
                resumer().map(|answer: Response<ResponseBody>| answer.into_body().into_chat());
            stream.resume_with(resumer);
        }
    }

    fn judge(
        &self,
        target: usize,
        attempt: Attempt,
        result: Result<Response<super::answer::UpstreamBody>, weir_breaker::BoxError>,
    ) -> Judging {
        let this = self.targets[target].clone_parts();
        let first_token = self.first_token;
        let shared = self.shared.clone();
        let cut_from = attempt
            .resuming
            .map(|(_, from)| self.targets[from].upstream.name.clone());
        Box::pin(async move {
            let (upstream, model) = this;
            if let Ok(response) = &result {
                attempt
                    .span
                    .record("http.response.status_code", response.status().as_u16());
            }
            let judged = match result {
                Ok(response) if response.status().is_success() => {
                    match read_head(response, &upstream, first_token, &attempt).await {
                        Head::Committed(response) => Judged::Commit(response),
                        Head::Failed(answer, failure) => Judged::Failed(answer, Some(failure)),
                    }
                }
                Ok(response)
                    if response
                        .extensions()
                        .get::<weir_backpressure::Shed>()
                        .is_some()
                        || response
                            .extensions()
                            .get::<weir_ratelimit::Limited>()
                            .is_some() =>
                {
                    // weir's own limit for this provider is full: nothing went upstream.
                    let (parts, body) = response.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let mut answer = Response::from_parts(parts, ResponseBody::full(body));
                    answer
                        .headers_mut()
                        .insert(X_WEIR_PROVIDER.clone(), provider_value(&upstream));
                    Judged::Failed(answer, Some(Failure::AtCapacity))
                }
                Ok(response) => {
                    let (answer, failure) = buffered_answer(response, &upstream).await;
                    if let (
                        Some(store),
                        Some(Failure::RateLimited {
                            retry_after: Some(wait),
                        }),
                    ) = (&shared, &failure)
                    {
                        store.publish_cool_down(&cool_down_name(&upstream.name, &model), *wait);
                    }
                    Judged::Failed(answer, failure)
                }
                Err(e) => {
                    let (answer, failure) = client_failure(&e, &upstream);
                    Judged::Failed(answer, Some(failure))
                }
            };
            match &judged {
                Judged::Failed(_, failure) => {
                    if attempt.resuming.is_none() {
                        attempt
                            .call
                            .failed
                            .store(target, std::sync::atomic::Ordering::Relaxed);
                    }
                    if let Some(failure) = failure {
                        span_failed(&attempt.span, *failure);
                    }
                }
                Judged::Commit(_) => {
                    if let Some(from) = cut_from {
                        let tally = &attempt.call.tally;
                        tally.failover(
                            from,
                            upstream.name.clone(),
                            weir_metrics::Phase::AfterFirstToken,
                        );
                        tally.provider(upstream.name.clone(), model);
                    }
                }
            }
            judged
        })
    }
}

impl RouteTarget {
    fn clone_parts(&self) -> (Arc<Upstream>, Arc<str>) {
        (self.upstream.clone(), self.model.clone())
    }
}

/// The request of `call` as it goes to `target`: its model, its provider's headers, the
/// request id. A stream's start has one deadline, `first_token` from now to its first event:
/// its headers must come within it too (the provider's `response_timeout` is for whole
/// answers).
pub(crate) fn outgoing_request(
    target: &RouteTarget,
    call: &Call,
    first_token: Duration,
) -> Request<Full<Bytes>> {
    let (endpoint, llm, body) = (call.endpoint, &call.llm, &call.body);
    let upstream = &target.upstream;
    let mut headers = headers::upstream_request_headers(&call.headers, &upstream.headers);
    headers.insert(X_REQUEST_ID.clone(), call.id.clone());
    if endpoint.api() == Api::Messages && !headers.contains_key(&ANTHROPIC_VERSION) {
        // The client's own version goes as it is; else the provider's.
        headers.insert(
            ANTHROPIC_VERSION.clone(),
            upstream.config.anthropic_version.clone(),
        );
    }
    // Streamed chat: weir asks for usage (its own accounting needs it) and, if the client did
    // not, drops the usage event on the way back.
    let ask_usage = endpoint == Endpoint::ChatCompletions;
    let mut outgoing = Request::new(Full::new(llm.upstream_body(body, &target.model, ask_usage)));
    *outgoing.method_mut() = Method::POST;
    *outgoing.uri_mut() = upstream.uri(endpoint);
    *outgoing.headers_mut() = headers;
    if llm.stream() {
        outgoing
            .extensions_mut()
            .insert(weir_client::ResponseTimeout(Some(first_token)));
    }
    if upstream.rate_limiter.is_some() {
        // The provider's limit charges the estimate, and settles from the usage the call's
        // watch meters (no scan of its own).
        let extensions = outgoing.extensions_mut();
        extensions.insert(TokenEstimate(token_estimate(llm)));
        extensions.insert(call.meter.clone());
    }
    outgoing
}

/// The largest error body weir reads to classify (and pass on) a refusal.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// A non-2xx answer, read whole (bounded) so that its error code can be classified, and kept
/// so that the client gets it as it was if no other attempt helps.
pub(crate) async fn buffered_answer(
    response: Response<super::answer::UpstreamBody>,
    upstream: &Upstream,
) -> (Response<ResponseBody>, Option<Failure>) {
    buffered(response, upstream, ERROR_BODY_LIMIT).await
}

/// An answer read whole (up to `limit`), classified, scrubbed of the provider's secrets, with
/// the headers a client may see.
pub(crate) async fn buffered<B>(
    response: Response<B>,
    upstream: &Upstream,
    limit: usize,
) -> (Response<ResponseBody>, Option<Failure>)
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<weir_breaker::BoxError>,
{
    let (mut parts, body) = response.into_parts();
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let failure = Failure::from_response(parts.status, &parts.headers, &bytes);
    let bytes = scrub(bytes, &upstream.secrets);
    parts.headers = headers::client_response_headers(&parts.headers);
    parts
        .headers
        .insert(X_WEIR_PROVIDER.clone(), provider_value(upstream));
    (
        Response::from_parts(parts, ResponseBody::full(bytes)),
        failure,
    )
}

/// No response at all: the failure class, and the answer the client gets if it stays so.
pub(crate) fn client_failure(
    failed: &weir_breaker::BoxError,
    upstream: &Upstream,
) -> (Response<ResponseBody>, Failure) {
    tracing::warn!(provider = %upstream.name, error = %failed, "upstream request failed");
    let client = failed.downcast_ref::<weir_client::Error>();
    let (kind, code, what, failure) = if client.is_some_and(|e| e.is_timeout()) {
        (
            ErrorKind::GatewayTimeout,
            "upstream_timeout",
            "did not answer in time",
            Failure::HeadersTimeout,
        )
    } else if client.is_some_and(|e| e.is_connect()) {
        (
            ErrorKind::BadGateway,
            "upstream_connect_error",
            "could not be reached",
            Failure::Connect,
        )
    } else if let Some(e) = client.filter(|e| e.is_malformed()) {
        // A broken server, not a broken network: say what was wrong.
        let body = ErrorBody::new(
            ErrorKind::BadGateway,
            format!(
                "The upstream provider `{}` sent a malformed response: {e}.",
                upstream.name
            ),
        )
        .code("malformed_answer");
        return (error(body), Failure::MalformedAnswer);
    } else {
        // Reset or closed before the headers: as good as a failed connection.
        (
            ErrorKind::BadGateway,
            "upstream_error",
            "closed the connection",
            Failure::Connect,
        )
    };
    let body = ErrorBody::new(
        kind,
        format!("The upstream provider `{}` {what}.", upstream.name),
    )
    .code(code);
    (error(body), failure)
}

/// `body` with every occurrence of a secret replaced by `[redacted]` (a provider that quotes
/// the key it was sent in its error message must not hand it to the client).
pub(crate) fn scrub(body: Bytes, secrets: &[Vec<u8>]) -> Bytes {
    let mut body = body;
    for secret in secrets {
        if memchr::memmem::find(&body, secret).is_none() {
            continue;
        }
        let mut out = Vec::with_capacity(body.len());
        let mut rest: &[u8] = &body;
        while let Some(at) = memchr::memmem::find(rest, secret) {
            out.extend_from_slice(&rest[..at]);
            out.extend_from_slice(b"[redacted]");
            rest = &rest[at + secret.len()..];
        }
        out.extend_from_slice(rest);
        body = out.into();
    }
    body
}

/// Tokens a request may use: the prompt's estimate plus its answer's cap (or 1,024 for an
/// uncapped answer; an embedding has none). Settled from the usage at the end.
pub(crate) fn token_estimate(llm: &LlmRequest) -> u32 {
    let answer = match llm.endpoint() {
        Endpoint::Embeddings => 0,
        _ => llm.max_tokens().unwrap_or(1024),
    };
    llm.prompt_token_estimate().saturating_add(answer)
}
