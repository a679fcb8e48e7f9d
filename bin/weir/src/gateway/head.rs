//! Reading an upstream's 2xx answer to its commit point: a stream to its first content event
//! (through its watch), a whole answer to its end.

use super::answer::{AttemptEnd, ResponseBody};
use super::call::Attempt;
use super::errors::error;
use super::errors::shorten;
use super::provider::{provider_value, Upstream};
use crate::headers::{self, X_WEIR_PROVIDER};
use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::Response;
use http_body_util::BodyExt;
use std::time::Duration;
use tokio::time::Instant;
use weir_llm::stream::{ApiWatch, ChatWatch, Opaque, TypedWatch, Watch};
use weir_llm::{Api, Endpoint, ErrorBody, ErrorKind, Failure};

/// A 2xx answer read up to its commit point.
pub(crate) enum Head {
    /// The client gets it: the first event (or the whole non-streaming answer) is here.
    Committed(Response<ResponseBody>),
    /// It failed before the client saw anything: the answer to give if nothing better comes.
    Failed(Response<ResponseBody>, Failure),
}

/// The largest non-streaming answer held back until complete (beyond it, it streams).
const WHOLE_ANSWER_LIMIT: usize = 8 << 20;

/// Whether a response is an event stream weir can read (identity-encoded `text/event-stream`).
fn is_event_stream(headers: &HeaderMap) -> bool {
    !headers.contains_key(header::CONTENT_ENCODING)
        && headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// Reads a 2xx answer to its commit point. A stream commits at its first content event
/// (within `first_token`); one that breaks, stays silent or opens with an in-band error
/// before that has shown the client nothing, so it can be retried elsewhere, and so can a
/// streamed request answered with something that is not an event stream. A non-streaming
/// answer commits when it is complete.
pub(crate) async fn read_head(
    response: Response<super::answer::UpstreamBody>,
    upstream: &Upstream,
    first_token: Duration,
    attempt: &Attempt,
) -> Head {
    let (mut parts, mut body) = response.into_parts();
    let settle = parts.extensions.remove::<weir_breaker::Settle>();
    let sse = is_event_stream(&parts.headers);
    let streamed = attempt.call.llm.stream();
    // What a refusal would quote, put in words only if one is made.
    let labels = (
        parts.headers.get(header::CONTENT_TYPE).cloned(),
        parts.headers.get(header::CONTENT_ENCODING).cloned(),
    );
    let shown = || {
        labels
            .0
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map_or_else(|| "none".into(), |v| shorten(v, 64))
    };
    let encoding = || {
        labels
            .1
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(|v| shorten(v, 32))
    };
    parts.headers = headers::client_response_headers(&parts.headers);
    parts
        .headers
        .insert(X_WEIR_PROVIDER.clone(), provider_value(upstream));
    let end = AttemptEnd {
        settle: settle.clone(),
        span: attempt.span.clone(),
        malformed: upstream.malformed.clone(),
    };
    let stream_attempt =
        || weir_failover::stream::Attempt::new(upstream.name.clone(), upstream.idle_timeout);
    // What was wrong with a malformed body's framing, when that is what failed it.
    let mut detail = None;
    let failure = if sse {
        parts.headers.remove(header::CONTENT_LENGTH);
        let mut watch = watch_for(attempt, upstream);
        match first_event(&mut body, &mut watch, attempt.sent + first_token).await {
            Ok(prefix) => {
                if watch.told() {
                    // Its error event came with its first tokens: the breaker hears it now,
                    // before the clean end that follows.
                    if let Some(settle) = &settle {
                        settle.failure("in-band error event");
                    }
                }
                parts.extensions.insert(watch.meter().clone());
                remember(attempt, upstream, prefix.as_deref());
                let mut stream_attempt = stream_attempt().on_end(end);
                if let Some((how, _)) = attempt.resuming {
                    stream_attempt = stream_attempt.continuing(how);
                }
                let stream = weir_failover::StreamBody::new(body, prefix, watch, stream_attempt);
                return Head::Committed(Response::from_parts(parts, ResponseBody::chat(stream)));
            }
            Err(failure) => failure,
        }
    } else if streamed {
        // Asked for a stream, answered with something else: nothing the client could read
        // as one, nothing weir could watch.
        tracing::warn!(provider = %upstream.name, content_type = %shown(), encoding = ?encoding(), "a streamed request was not answered with an event stream");
        Failure::MalformedAnswer
    } else {
        let mut prefix = Vec::new();
        let mut total = 0;
        loop {
            match tokio::time::timeout(upstream.idle_timeout, body.frame()).await {
                Err(_) => break Failure::StreamStalled,
                Ok(Some(Err(e))) => {
                    detail = malformed(&*e);
                    break if detail.is_some() {
                        Failure::MalformedAnswer
                    } else {
                        Failure::StreamBroken
                    };
                }
                Ok(None) => {
                    parts.headers.remove(header::CONTENT_LENGTH);
                    let whole = concat(prefix);
                    // Read once, for every layer that settles or records usage.
                    attempt
                        .call
                        .meter
                        .observe_answer(attempt.call.endpoint.api(), &whole);
                    parts.extensions.insert(attempt.call.meter.clone());
                    remember(attempt, upstream, Some(&whole));
                    return Head::Committed(Response::from_parts(parts, ResponseBody::full(whole)));
                }
                Ok(Some(Ok(frame))) => {
                    let Ok(bytes) = frame.into_data() else {
                        continue;
                    };
                    total += bytes.len();
                    prefix.push(bytes);
                    if total > WHOLE_ANSWER_LIMIT {
                        let stream = weir_failover::StreamBody::new(
                            body,
                            Some(concat(prefix)),
                            Opaque::default(),
                            stream_attempt().on_end(end),
                        );
                        return Head::Committed(Response::from_parts(
                            parts,
                            ResponseBody::opaque(stream),
                        ));
                    }
                }
            }
        }
    };
    // Only weir sees these; a broken stream the breaker has counted already.
    if let Some(settle) = &settle {
        settle.failure(failure.as_str());
    }
    let (kind, what) = match failure {
        Failure::MalformedAnswer if detail.is_some() => (
            ErrorKind::BadGateway,
            format!(
                "sent a malformed response: {}",
                detail.unwrap_or_default()
            ),
        ),
        Failure::FirstTokenTimeout => (
            ErrorKind::GatewayTimeout,
            format!("sent no first token within {first_token:?}"),
        ),
        Failure::MalformedAnswer if !sse => (
            ErrorKind::BadGateway,
            match encoding() {
                Some(encoding) => format!(
                    "answered a streamed request with a `{encoding}`-encoded `{}` body instead of an event stream",
                    shown()
                ),
                None => format!(
                    "answered a streamed request with `content-type: {}` instead of an event stream (`text/event-stream`)",
                    shown()
                ),
            },
        ),
        Failure::MalformedAnswer => (
            ErrorKind::BadGateway,
            format!(
                "sent an event larger than {} bytes before its first token",
                upstream.max_event_bytes
            ),
        ),
        _ => (
            ErrorKind::BadGateway,
            "failed before its first token".to_owned(),
        ),
    };
    let answer = error(
        ErrorBody::new(
            kind,
            format!("The upstream provider `{}` {what}.", upstream.name),
        )
        .code(failure.as_str()),
    );
    Head::Failed(answer, failure)
}

/// What was malformed, when `error` (or an error it wraps) is a malformed upstream response.
fn malformed(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut at = Some(error);
    while let Some(e) = at {
        if let Some(client) = e.downcast_ref::<weir_client::Error>() {
            return client.is_malformed().then(|| client.to_string());
        }
        at = e.source();
    }
    None
}

/// A stored response's id (the first `id` of its answer or its first event), remembered
/// with the provider that made it.
fn remember(attempt: &Attempt, upstream: &Upstream, answer: Option<&[u8]>) {
    let (Some((owners, key)), Some(answer)) = (&attempt.call.owners, answer) else {
        return;
    };
    if let Some(id) = weir_llm::scan::first_id(answer) {
        owners.record(
            id,
            super::stored::Owner {
                provider: upstream.name.clone(),
                key: key.clone(),
            },
        );
    }
}

/// The watch of an attempt's stream, for the API the call speaks.
fn watch_for(attempt: &Attempt, upstream: &Upstream) -> ApiWatch {
    let call = &attempt.call;
    // The call's own stream meters into the call's meter; a continuation's first events go
    // through the original stream's watch, which meters them there.
    let meter = attempt.resuming.is_none().then(|| call.meter.clone());
    match call.endpoint.api() {
        Api::Chat => {
            let mut watch = ChatWatch::new(upstream.max_event_bytes)
                .client_wants_usage(call.llm.include_usage())
                .strip_usage(
                    call.endpoint == Endpoint::ChatCompletions && call.llm.can_ask_for_usage(),
                );
            if call.resumable {
                watch = watch.with_transcript();
            }
            if let Some(meter) = meter {
                watch = watch.with_meter(meter);
            }
            ApiWatch::Chat(watch)
        }
        api => {
            let mut watch = TypedWatch::new(api, upstream.max_event_bytes);
            if call.resumable {
                watch = watch.with_transcript();
            }
            if let Some(meter) = meter {
                watch = watch.with_meter(meter);
            }
            ApiWatch::Typed(Box::new(watch))
        }
    }
}

/// Reads a stream through its watch up to its first content event (by `deadline`): the
/// whole events read, or why there were none (broken, silent, an event too large, or an
/// opening in-band error).
async fn first_event(
    body: &mut super::answer::UpstreamBody,
    watch: &mut ApiWatch,
    deadline: Instant,
) -> Result<Option<Bytes>, Failure> {
    let mut prefix = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(Failure::FirstTokenTimeout),
            Ok(None | Some(Err(_))) => {
                watch.ended();
                if watch.is_complete() {
                    // A whole (empty) answer, ended by `[DONE]` alone.
                    prefix.extend(watch.finish());
                    return Ok(Some(concat(prefix)));
                }
                return Err(Failure::StreamBroken);
            }
            Ok(Some(Ok(frame))) => {
                let Ok(bytes) = frame.into_data() else {
                    continue;
                };
                let out = watch.push(bytes).map_err(|_| Failure::MalformedAnswer)?;
                prefix.extend(out);
                if watch.meter().content_events() > 0 || watch.is_done() {
                    return Ok(Some(concat(prefix)));
                }
                if watch.told() {
                    // The provider's first word was an error: still nothing shown.
                    return Err(Failure::StreamBroken);
                }
            }
        }
    }
}

pub(crate) fn concat(parts: Vec<Bytes>) -> Bytes {
    match parts.len() {
        0 => Bytes::new(),
        1 => parts.into_iter().next().expect("one part"),
        _ => {
            let mut whole = bytes::BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
            for part in parts {
                whole.extend_from_slice(&part);
            }
            whole.freeze()
        }
    }
}
