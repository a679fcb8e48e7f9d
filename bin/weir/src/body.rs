//! The body weir answers with: a small JSON error, or the upstream's body passed through frame
//! by frame.
//!
//! For a stream (`text/event-stream`) weir watches the events as they pass (the decoder copies
//! nothing) so that a client can always tell a complete answer from a cut one:
//!
//! - `data: [DONE]` seen, or the upstream ended with a `finish_reason`: complete. A stream that
//!   had a finish reason but no `[DONE]` gets one, so SDKs end cleanly.
//! - The upstream broke (reset, error), went silent for the idle timeout (SSE comments do not
//!   count as activity), or ended without a finish reason: weir sends one
//!   `data: {"error":{...}}` event and ends the body with an error, so that HTTP/1.1 clients
//!   see an unterminated chunked body and HTTP/2 clients a reset stream. Never `[DONE]` after a
//!   cut.
//! - The upstream sent its own in-band error event and ended: the body ends with an error too.

use crate::proxy::RescuePlan;
use bytes::Bytes;
use bytes::BytesMut;
use http_body::{Body, Frame, SizeHint};
use memchr::memmem;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use weir_breaker::Outcome;
use weir_llm::continuation::{self, Replay, Replayed, Transcript};
use weir_llm::sse::{Line, SseDecoder, SseScanner};
use weir_llm::{ErrorBody, ErrorKind, Failure};

/// The upstream's body as the provider's rate limit, concurrency limit and breaker hand it
/// over.
pub(crate) type Upstream = weir_ratelimit::ResponseBody<
    weir_backpressure::ResponseBody<
        weir_breaker::ResponseBody<
            weir_client::ResponseBody<http_body_util::Full<Bytes>>,
            weir_breaker::classify::LlmEos,
        >,
    >,
    (),
>;

type BreakerBody = weir_breaker::ResponseBody<
    weir_client::ResponseBody<http_body_util::Full<Bytes>>,
    weir_breaker::classify::LlmEos,
>;

/// The breaker's layer of an upstream body (to settle the call's outcome on it).
pub(crate) fn breaker_body(upstream: Pin<&mut Upstream>) -> Option<Pin<&mut BreakerBody>> {
    upstream.inner_pin_mut()?.inner_pin_mut()
}

/// The body type of every weir response.
#[derive(Debug)]
pub struct ResponseBody {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Upstream(Box<UpstreamBody>),
}

impl ResponseBody {
    /// A complete body.
    pub fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::Full(Some(data).filter(|d| !d.is_empty())),
        }
    }

    /// Lets a streamed answer be continued elsewhere if it is cut.
    pub(crate) fn rescue_with(&mut self, plan: Arc<RescuePlan>) {
        if let Kind::Upstream(body) = &mut self.kind {
            body.rescue_with(plan);
        }
    }

    /// weir asked the upstream for usage that the client did not: drop the usage event (and
    /// tell the metrics layer, which no longer sees it, what it said).
    pub(crate) fn strip_usage(&mut self, tally: weir_metrics::Tally) {
        if let Kind::Upstream(body) = &mut self.kind {
            if let Some(watch) = &mut body.sse {
                watch.strip_usage = Some(tally);
            }
        }
    }

    /// Holds the server-wide permit to the end of a streamed answer (a complete answer needs
    /// it no longer).
    pub(crate) fn hold(&mut self, permit: weir_backpressure::Permit) {
        if let Kind::Upstream(body) = &mut self.kind {
            body.permit = Some(permit);
        }
    }

    /// Attaches the call's rate-limit charges: a complete answer settles them now, a stream
    /// when it ends.
    pub(crate) fn bill(&mut self, mut billing: Billing) {
        match &mut self.kind {
            Kind::Upstream(body) => body.billing = Some(Box::new(billing)),
            Kind::Full(Some(data)) => billing.usage.observe(data),
            Kind::Full(None) => {}
        }
    }

    pub(crate) fn upstream(body: UpstreamBody) -> Self {
        Self {
            kind: Kind::Upstream(Box::new(body)),
        }
    }
}

/// A stream that failed after its headers were sent. The client has been told in band.
#[derive(Debug)]
pub struct StreamFailed(Failure);

impl StreamFailed {
    /// What happened.
    pub fn failure(&self) -> Failure {
        self.0
    }
}

impl std::fmt::Display for StreamFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "upstream stream failed: {}", self.0)
    }
}

impl std::error::Error for StreamFailed {}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = StreamFailed;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamFailed>>> {
        match &mut self.kind {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Upstream(body) => body.poll(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(data) => data.is_none(),
            Kind::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Upstream(body) if body.sse.is_none() => body.inner.size_hint(),
            // weir may add an event: the length is not the upstream's.
            Kind::Upstream(_) => SizeHint::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Streaming,
    /// The error event was sent; yield once so hyper flushes it before the error drops it.
    Flush(Failure),
    Fail(Failure),
    Done,
}

/// What weir watches in an SSE stream: lines, not events; nothing parsed.
#[derive(Debug, Default)]
struct Watch {
    scanner: SseScanner,
    /// The event being read has a `data:` line.
    has_data: bool,
    done: bool,
    upstream_error: bool,
    /// The last two data lines (the finish chunk may be followed by the usage chunk), copied:
    /// whether the answer finished is asked only if the stream ends without `[DONE]`.
    last: [Vec<u8>; 2],
    /// What the client has received, when the stream may be rescued.
    transcript: Option<Transcript>,
    /// weir asked for usage on the client's behalf: drop the usage event on the way out, and
    /// note its figures here.
    strip_usage: Option<weir_metrics::Tally>,
}

static EMPTY_CHOICES: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"choices\":[]"));

/// The usage-only chunk (`"choices":[]` and a `usage` object). Content chunks end with their
/// `choices` array (`]}`), so only events ending in `}}` are searched.
fn is_usage_event(data: &[u8]) -> bool {
    data.trim_ascii_end().ends_with(b"}}") && EMPTY_CHOICES.find(data).is_some()
}

/// What one frame held, for the body.
struct Observed {
    /// A content event was completed.
    progress: bool,
    /// Data events that are not JSON objects (truncated, garbled).
    malformed: u32,
    /// Events to drop on the way out (malformed ones, and a usage event nobody asked for).
    dropped: u32,
    /// The frame began on an event boundary (no event of an earlier frame was pending).
    clean_start: bool,
}

/// A chunk event is a JSON object. An O(1) check that catches truncation, the way providers'
/// events break, without parsing every event.
fn looks_like_object(data: &[u8]) -> bool {
    let data = data.trim_ascii();
    data.first() == Some(&b'{') && data.last() == Some(&b'}')
}

/// Whether an event's JSON carries a non-null `finish_reason`. A substring scan, not a parse.
fn has_finish_reason(data: &[u8]) -> bool {
    weir_llm::scan::finish_reason(data).is_some()
}

pub(crate) fn is_error_event(data: &[u8]) -> bool {
    let trimmed = data.trim_ascii_start();
    trimmed.starts_with(b"{\"error\"") || trimmed.starts_with(b"{ \"error\"")
}

impl Watch {
    /// Reads the lines in `data`.
    fn observe(&mut self, data: &[u8]) -> Result<Observed, Failure> {
        let mut progress = false;
        let mut malformed = 0;
        let mut dropped = 0;
        let strip_usage = self.strip_usage.is_some();
        let clean_start = !self.has_data && !self.scanner.has_partial_line();
        let Self {
            scanner,
            has_data,
            done,
            upstream_error,
            last,
            transcript,
            strip_usage: stripped,
        } = self;
        scanner
            .scan(data, |line| match line {
                Line::Field {
                    name: b"data",
                    value,
                } => {
                    *has_data = true;
                    if value == b"[DONE]" {
                        *done = true;
                    } else if is_error_event(value) {
                        *upstream_error = true;
                    } else if !looks_like_object(value) {
                        malformed += 1;
                        dropped += 1;
                    } else if strip_usage && is_usage_event(value) {
                        dropped += 1;
                        let mut usage = weir_llm::scan::UsageScan::default();
                        usage.observe(value);
                        if let (Some(tally), Some(prompt), Some(completion)) =
                            (&*stripped, usage.prompt(), usage.completion())
                        {
                            tally.usage(prompt, completion);
                        }
                    } else {
                        if let Some(transcript) = transcript {
                            transcript.record(value);
                        }
                        last.swap(0, 1);
                        last[1].clear();
                        last[1].extend_from_slice(value);
                    }
                }
                Line::Blank => progress |= std::mem::take(has_data),
                _ => {}
            })
            .map_err(|_| Failure::MalformedEvent)?;
        Ok(Observed {
            progress,
            malformed,
            dropped,
            clean_start,
        })
    }

    /// Whether one of the last data events carried a finish reason.
    fn finished(&self) -> bool {
        self.last.iter().any(|line| has_finish_reason(line))
    }
}

/// What to do with a data frame.
enum OnData {
    Forward,
    Replace(Bytes),
    Fail(Poll<Option<Result<Frame<Bytes>, StreamFailed>>>),
}

/// The frame's events without the malformed ones, and without a usage event when weir asked
/// for it on the client's behalf (a rare path per stream: decoded and re-encoded).
fn without_dropped(frame: &Bytes, strip_usage: bool) -> Bytes {
    let mut decoder = SseDecoder::new();
    decoder.push(frame.clone());
    let mut out = BytesMut::with_capacity(frame.len());
    while let Ok(Some(event)) = decoder.next_event() {
        let keep = event.is_done()
            || (looks_like_object(&event.data) && !(strip_usage && is_usage_event(&event.data)));
        if keep {
            weir_llm::sse::encode_data(&event.data, &mut out);
        }
    }
    out.freeze()
}

/// A continuation being set up on another target.
type Continuing = Pin<Box<dyn Future<Output = Option<Continued>> + Send>>;

/// A cut answer: what the client has of it.
#[derive(Debug)]
pub(crate) struct Cut {
    pub(crate) id: String,
    pub(crate) delivered: String,
    pub(crate) tool_calls: bool,
    /// Content events the client received.
    pub(crate) events: u64,
    /// The provider whose stream was cut.
    pub(crate) provider: Arc<str>,
}

/// A continuation that has produced its first event, ready to be spliced in.
pub(crate) struct Continued {
    pub(crate) inner: Upstream,
    pub(crate) prefix: Vec<Bytes>,
    pub(crate) splice: Splice,
    pub(crate) plan: Arc<RescuePlan>,
    pub(crate) provider: Arc<str>,
    pub(crate) malformed: Arc<AtomicU64>,
    pub(crate) idle: Duration,
    /// The continuation's attempt span.
    pub(crate) span: tracing::Span,
}

/// Turns a continuation's events into the original stream's: its `id`, and (replay) without
/// the text the client already has. Rare path: it decodes events and re-encodes them.
#[derive(Debug)]
pub(crate) struct Splice {
    id: String,
    decoder: SseDecoder,
    replay: Option<Replay>,
    /// Prefill: the content events the client had before the cut. The continuation counts
    /// them as prompt; its usage event is corrected so that usage covers what was delivered
    /// (one token per content event, as OpenAI-style streams send them: an estimate).
    prefilled: Option<u64>,
    out: std::collections::VecDeque<Result<Bytes, ()>>,
}

impl Splice {
    pub(crate) fn new(id: String, replay: Option<Replay>, prefilled: Option<u64>) -> Self {
        Self {
            id,
            decoder: SseDecoder::new(),
            replay,
            prefilled,
            out: std::collections::VecDeque::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    fn next(&mut self) -> Option<Result<Bytes, ()>> {
        self.out.pop_front()
    }

    fn feed(&mut self, frame: Bytes) {
        self.decoder.push(frame);
        while let Ok(Some(event)) = self.decoder.next_event() {
            if event.is_done() || is_error_event(&event.data) {
                let mut out = BytesMut::new();
                weir_llm::sse::encode_data(&event.data, &mut out);
                self.out.push_back(Ok(out.freeze()));
                continue;
            }
            let data = match &mut self.replay {
                None => match self.prefilled {
                    Some(delivered) if is_usage_event(&event.data) => {
                        continuation::add_delivered_usage(&event.data, delivered)
                            .unwrap_or(event.data)
                    }
                    _ => event.data,
                },
                Some(replay) => {
                    let content = weir_llm::Chunk::parse(&event.data)
                        .ok()
                        .and_then(|c| c.content.map(|c| c.into_owned()));
                    match replay.next(content.as_deref()) {
                        Replayed::Drop => continue,
                        Replayed::Keep => event.data,
                        Replayed::Trim(rest) => {
                            match continuation::with_content(&event.data, &rest) {
                                Some(data) => data,
                                None => {
                                    self.out.push_back(Err(()));
                                    return;
                                }
                            }
                        }
                        Replayed::Diverged => {
                            self.out.push_back(Err(()));
                            return;
                        }
                    }
                }
            };
            let mut out = BytesMut::new();
            weir_llm::sse::encode_data(&continuation::relabel(&data, &self.id), &mut out);
            self.out.push_back(Ok(out.freeze()));
        }
    }
}

/// The upstream's body, forwarded frame by frame. See the [module docs](self).
pub(crate) struct UpstreamBody {
    inner: Upstream,
    prefix: std::collections::VecDeque<Bytes>,
    /// How to continue the answer elsewhere if this stream is cut.
    rescue: Option<Arc<RescuePlan>>,
    /// A continuation in progress, and what cut the stream it continues.
    continuing: Option<(Continuing, Failure)>,
    /// A continued stream's events, re-labelled (and past the replayed prefix).
    splice: Option<Box<Splice>>,
    sse: Option<Watch>,
    provider: Arc<str>,
    /// The provider's count of malformed events dropped.
    malformed: Arc<AtomicU64>,
    idle: Duration,
    last_progress: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
    state: State,
    /// The server-wide concurrency permit, released with the body.
    permit: Option<weir_backpressure::Permit>,
    /// The client-side rate-limit charges, settled from the answer's usage.
    billing: Option<Box<Billing>>,
    /// The upstream attempt's trace span (disabled when traces are off): open to the end.
    attempt: tracing::Span,
}

/// A call's client-side rate-limit charges, settled when the answer is dropped from the usage
/// it reported (without one, the estimates stand).
#[derive(Debug, Default)]
pub(crate) struct Billing {
    /// A key's, a route's and the server's (the three scopes), in one allocation.
    pub(crate) charges: [Option<weir_ratelimit::Charge<()>>; 3],
    pub(crate) usage: weir_ratelimit::UsageScan,
}

impl Drop for Billing {
    fn drop(&mut self) {
        if let Some(used) = self.usage.total() {
            for charge in self.charges.iter_mut().filter_map(Option::take) {
                charge.settle(used);
            }
        }
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("provider", &self.provider)
            .field("state", &self.state)
            .field("sse", &self.sse.is_some())
            .field("continuing", &self.continuing.is_some())
            .finish_non_exhaustive()
    }
}

impl UpstreamBody {
    /// `prefix`: frames read before the commit point, sent first (and watched like the rest).
    pub(crate) fn new(
        inner: Upstream,
        prefix: Vec<Bytes>,
        sse: bool,
        provider: Arc<str>,
        malformed: Arc<AtomicU64>,
        idle: Duration,
    ) -> Self {
        Self {
            inner,
            prefix: prefix.into(),
            rescue: None,
            continuing: None,
            splice: None,
            sse: sse.then(Watch::default),
            provider,
            malformed,
            idle,
            last_progress: Instant::now(),
            sleep: None,
            state: State::Streaming,
            permit: None,
            billing: None,
            attempt: tracing::Span::none(),
        }
    }

    /// The attempt's span lives as long as its stream.
    pub(crate) fn with_span(mut self, span: tracing::Span) -> Self {
        self.attempt = span;
        self
    }

    /// Ends the stream as failed. An SSE client first gets an error event, unless the upstream
    /// sent its own; every path then yields once (so that hyper flushes what it holds: it drops
    /// its write buffer when a body errors) before the body ends with the error.
    fn fail(
        &mut self,
        cx: &mut Context<'_>,
        failure: Failure,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamFailed>>> {
        if self.state == State::Streaming && self.try_rescue(failure) {
            return self.poll(cx);
        }
        self.state = State::Flush(failure);
        crate::proxy::span_failed(&self.attempt, failure);
        // The provider's breaker hears it from here: only weir sees a stall or an unreadable
        // event (a broken stream it has counted already; settling twice counts once).
        if let Some(inner) = breaker_body(Pin::new(&mut self.inner)) {
            inner.settle(Outcome::Failure, Some(failure.as_str()));
        }
        let told = self.sse.as_ref().is_none_or(|w| w.upstream_error);
        if told {
            return self.poll(cx);
        }
        let message = match failure {
            Failure::StreamStalled => format!(
                "The upstream provider `{}` stopped sending for {:?}; the answer is incomplete.",
                self.provider, self.idle
            ),
            Failure::MalformedEvent => format!(
                "The upstream provider `{}` sent an unreadable event; the answer is incomplete.",
                self.provider
            ),
            _ => format!(
                "The upstream provider `{}` ended the stream before the answer was complete.",
                self.provider
            ),
        };
        let event = ErrorBody::new(ErrorKind::BadGateway, message)
            .code(failure.as_str())
            .to_sse_event();
        Poll::Ready(Some(Ok(Frame::data(event))))
    }

    /// Lets a cut stream be continued on the plan's next targets.
    pub(crate) fn rescue_with(&mut self, plan: Arc<RescuePlan>) {
        if let Some(watch) = &mut self.sse {
            watch.transcript = Some(Transcript::default());
            self.rescue = Some(plan);
        }
    }

    /// Starts continuing the answer on another target, if this cut can be rescued.
    fn try_rescue(&mut self, failure: Failure) -> bool {
        let (Some(plan), Some(watch)) = (&self.rescue, &self.sse) else {
            return false;
        };
        if watch.upstream_error
            || watch.done
            || !matches!(failure, Failure::StreamBroken | Failure::StreamStalled)
        {
            return false;
        }
        let Some(transcript) = &watch.transcript else {
            return false;
        };
        let (Some(id), Some(delivered)) = (transcript.id(), transcript.text()) else {
            return false;
        };
        let cut = Cut {
            id: id.to_owned(),
            delivered,
            tool_calls: transcript.has_tool_calls(),
            events: transcript.events(),
            provider: self.provider.clone(),
        };
        crate::proxy::span_failed(&self.attempt, failure);
        // This stream's breaker learns of the cut; the continuation is a new call.
        if let Some(inner) = breaker_body(Pin::new(&mut self.inner)) {
            inner.settle(Outcome::Failure, Some(failure.as_str()));
        }
        let plan = plan.clone();
        tracing::info!(provider = %self.provider, %failure, "stream cut after its first token; continuing elsewhere");
        let continuation = async move { crate::proxy::continue_answer(&plan, cut).await };
        self.continuing = Some((Box::pin(continuation), failure));
        true
    }

    /// Watches one data frame on its way out: forward it, forward a cleaned copy (malformed
    /// events dropped), or end the stream.
    fn on_data(&mut self, cx: &mut Context<'_>, data: &Bytes) -> OnData {
        let progress = match &mut self.sse {
            Some(watch) => {
                let had_error = watch.upstream_error;
                match watch.observe(data) {
                    Ok(observed) => {
                        if watch.upstream_error && !had_error {
                            // The provider said in band that it failed.
                            if let Some(inner) = breaker_body(Pin::new(&mut self.inner)) {
                                inner.settle(Outcome::Failure, Some("in-band error event"));
                            }
                        }
                        if observed.dropped > 0 {
                            let strip_usage = watch.strip_usage.is_some();
                            if observed.malformed > 0 {
                                self.malformed
                                    .fetch_add(u64::from(observed.malformed), Ordering::Relaxed);
                                if !observed.clean_start {
                                    // Part of the bad event went out with an earlier frame.
                                    return OnData::Fail(self.fail(cx, Failure::MalformedEvent));
                                }
                                tracing::debug!(provider = %self.provider, "malformed event dropped");
                            } else if !observed.clean_start {
                                // A usage event begun in an earlier frame: let it through.
                                return OnData::Forward;
                            }
                            if observed.progress {
                                self.last_progress = Instant::now();
                            }
                            return OnData::Replace(without_dropped(data, strip_usage));
                        }
                        observed.progress
                    }
                    Err(failure) => return OnData::Fail(self.fail(cx, failure)),
                }
            }
            None => !data.is_empty(),
        };
        if progress {
            self.last_progress = Instant::now();
        }
        OnData::Forward
    }

    /// Sends a data frame on, as the watch decides.
    fn emit(
        &mut self,
        cx: &mut Context<'_>,
        data: Bytes,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamFailed>>> {
        if let Some(billing) = &mut self.billing {
            // Before the usage event may be stripped.
            billing.usage.observe(&data);
        }
        match self.on_data(cx, &data) {
            OnData::Forward => Poll::Ready(Some(Ok(Frame::data(data)))),
            OnData::Replace(clean) => Poll::Ready(Some(Ok(Frame::data(clean)))),
            OnData::Fail(failed) => failed,
        }
    }

    /// Pending unless the idle timeout has passed since the last content.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.last_progress + self.idle;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut().poll(cx)
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, StreamFailed>>> {
        match self.state {
            State::Streaming => {}
            State::Flush(failure) => {
                self.state = State::Fail(failure);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            State::Fail(failure) => {
                self.state = State::Done;
                return Poll::Ready(Some(Err(StreamFailed(failure))));
            }
            State::Done => return Poll::Ready(None),
        }
        if let Some((continuing, cut_by)) = &mut self.continuing {
            let Poll::Ready(continued) = continuing.as_mut().poll(cx) else {
                return Poll::Pending;
            };
            let cut_by = *cut_by;
            self.continuing = None;
            let Some(continued) = continued else {
                // Nowhere to continue: the client is told the answer is cut, and why.
                self.rescue = None;
                return self.fail(cx, cut_by);
            };
            self.provider = continued.provider;
            self.malformed = continued.malformed;
            self.idle = continued.idle;
            self.attempt = continued.span;
            self.inner = continued.inner;
            self.rescue = Some(continued.plan);
            self.last_progress = Instant::now();
            let mut splice = Box::new(continued.splice);
            for frame in continued.prefix {
                splice.feed(frame);
            }
            self.splice = Some(splice);
        }
        if let Some(data) = self.prefix.pop_front() {
            return self.emit(cx, data);
        }
        if let Some(splice) = &mut self.splice {
            match splice.next() {
                Some(Ok(data)) => return self.emit(cx, data),
                Some(Err(())) => {
                    // The replayed answer said something else: stop, honestly.
                    self.rescue = None;
                    return self.fail(cx, Failure::StreamBroken);
                }
                None => {}
            }
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(splice) = &mut self.splice {
                    if let Ok(data) = frame.into_data() {
                        splice.feed(data);
                    }
                    return self.poll(cx);
                }
                match frame.into_data() {
                    Ok(data) => self.emit(cx, data),
                    Err(frame) => Poll::Ready(Some(Ok(frame))),
                }
            }
            Poll::Ready(Some(Err(_))) => self.fail(cx, Failure::StreamBroken),
            Poll::Ready(None) => match &self.sse {
                None => {
                    self.state = State::Done;
                    Poll::Ready(None)
                }
                Some(watch) if watch.done => {
                    self.state = State::Done;
                    Poll::Ready(None)
                }
                Some(watch) if !watch.upstream_error && watch.finished() => {
                    self.state = State::Done;
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                        b"data: [DONE]\n\n",
                    )))))
                }
                Some(_) => self.fail(cx, Failure::StreamBroken),
            },
            Poll::Pending => match self.poll_idle(cx) {
                Poll::Ready(()) => self.fail(cx, Failure::StreamStalled),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self.state {
            State::Done => true,
            State::Streaming => {
                self.prefix.is_empty()
                    && self.continuing.is_none()
                    && self.splice.as_ref().is_none_or(|s| s.is_empty())
                    && self.inner.is_end_stream()
                    && self.sse.as_ref().is_none_or(|w| w.done)
            }
            State::Flush(_) | State::Fail(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_reason_scan() {
        assert!(has_finish_reason(
            br#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#
        ));
        assert!(has_finish_reason(
            br#"{"choices": [{"finish_reason": "length"}]}"#
        ));
        assert!(!has_finish_reason(
            br#"{"choices":[{"delta":{"content":"x"},"finish_reason":null}]}"#
        ));
        assert!(!has_finish_reason(
            br#"{"choices":[{"delta":{"content":"\"finish_reason\""}}]}"#
        ));
        assert!(is_error_event(br#" {"error":{"message":"x"}}"#));
        assert!(!is_error_event(br#"{"choices":[]}"#));
    }
}
