//! The body wrapper: watches each frame on its way out and settles the exchange once, when
//! the body ends, fails or is dropped.

use crate::histogram::Gaps;
use crate::layer::Options;
use crate::recorder::{Outcome, Phase, Recorder, Report, Tokens};
use crate::tally::Tally;
use bytes::Buf;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body::{Body, Frame, SizeHint};
use memchr::memmem::Finder;
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tracing::Span;
use weir_llm::scan::{self, UsageScan};

pin_project! {
    /// The response body of [`Metrics`](crate::Metrics): the inner body, frame by frame,
    /// unchanged.
    pub struct ResponseBody<B, R: Recorder> {
        #[pin]
        inner: B,
        // Boxed: hyper keeps a body slot in every connection's state, streams or not.
        open: Option<Box<Open<R>>>,
    }
}

impl<B, R: Recorder> std::fmt::Debug for ResponseBody<B, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("open", &self.open.is_some())
            .finish_non_exhaustive()
    }
}

impl<B, R: Recorder> ResponseBody<B, R> {
    pub(crate) fn new(inner: B, mut open: Box<Open<R>>) -> Self
    where
        B: Body,
    {
        open.empty = inner.is_end_stream();
        Self {
            inner,
            open: Some(open),
        }
    }

    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The inner body, mutably (to change it before it is polled).
    pub fn get_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B: Body, R: Recorder> Body for ResponseBody<B, R> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let polled = ready!(this.inner.as_mut().poll_frame(cx));
        if let Some(open) = this.open {
            match &polled {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        open.observe(data.chunk());
                    }
                    // hyper does not poll a body again once it says it has ended.
                    if this.inner.is_end_stream() {
                        let outcome = open.outcome_by_status();
                        open.end(outcome);
                        *this.open = None;
                    }
                }
                Some(Err(_)) => {
                    let outcome = match open.outcome_by_status() {
                        Outcome::Ok | Outcome::Rescued => Outcome::Truncated,
                        other => other,
                    };
                    open.end(outcome);
                    *this.open = None;
                }
                None => {
                    let outcome = open.outcome_by_status();
                    open.end(outcome);
                    *this.open = None;
                }
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<R: Recorder> Drop for Open<R> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if self.stream.is_none() {
            // The client went away before the answer's head: cancelled, with the status
            // nginx logs for it.
            self.head(
                StatusCode::from_u16(499).expect("a valid status code"),
                None,
            );
            self.end(Outcome::Cancelled);
            return;
        }
        // A body nobody polled to its end: cancelled, unless there was nothing to poll.
        let outcome = if self.empty {
            self.outcome_by_status()
        } else {
            Outcome::Cancelled
        };
        self.end(outcome);
    }
}

/// A finish reason, kept without allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Finish {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
    FunctionCall,
    Other,
}

impl Finish {
    fn from_bytes(b: &[u8]) -> Self {
        match b {
            b"stop" => Self::Stop,
            b"length" => Self::Length,
            b"tool_calls" => Self::ToolCalls,
            b"content_filter" => Self::ContentFilter,
            b"function_call" => Self::FunctionCall,
            _ => Self::Other,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ToolCalls => "tool_calls",
            Self::ContentFilter => "content_filter",
            Self::FunctionCall => "function_call",
            Self::Other => "other",
        }
    }
}

/// The `data:` lines of a frame: found by their line starts (a SIMD `memchr` for each
/// newline), cheaper on short frames than a substring search.
fn data_lines(frame: &[u8]) -> u32 {
    let starts = |at: usize| frame[at..].starts_with(b"data:");
    let first = u32::from(starts(0));
    first
        + memchr::memchr_iter(b'\n', frame)
            .filter(|nl| starts(nl + 1))
            .count() as u32
}
static EMPTY_CHOICES: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"choices\":[]"));

/// How far from a chunk's end its finish reason may be (`"finish_reason":"content_filter"}]}`
/// plus a little).
const FINISH_TAIL: usize = 96;

/// One exchange being observed: allocated once when the request arrives, carried by the
/// response future, then by the body.
pub(crate) struct Open<R: Recorder> {
    recorder: Arc<R>,
    options: Arc<Options>,
    /// The recorder's handle, from the head on.
    stream: Option<R::Stream>,
    /// Settled.
    done: bool,
    tally: Tally,
    pub(crate) span: Span,
    start: Instant,
    status: StatusCode,
    sse: bool,
    /// The inner body had nothing to send (`is_end_stream` at the head).
    pub(crate) empty: bool,
    first: Option<Duration>,
    last: Option<Instant>,
    gaps: Gaps,
    /// Content events seen (a stream's `[DONE]` and usage event excluded).
    events: u32,
    usage: UsageScan,
    finish: Option<Finish>,
    /// What the stream's watch learned (events, usage, finish reason), when the service put
    /// one in the response's extensions: then this layer scans nothing itself.
    pub(crate) meter: Option<weir_llm::stream::Meter>,
    request_id: Option<HeaderValue>,
    traceparent: Option<[u8; 32]>,
}

impl<R: Recorder> Open<R> {
    pub(crate) fn new(
        recorder: Arc<R>,
        options: Arc<Options>,
        tally: Tally,
        span: Span,
        start: Instant,
        traceparent: Option<[u8; 32]>,
    ) -> Self {
        Self {
            recorder,
            options,
            stream: None,
            done: false,
            tally,
            span,
            start,
            status: StatusCode::OK,
            sse: false,
            empty: false,
            first: None,
            last: None,
            gaps: Gaps::default(),
            events: 0,
            usage: UsageScan::default(),
            finish: None,
            meter: None,
            request_id: None,
            traceparent,
        }
    }

    /// The answer's head is out: a stream opens in the recorder.
    pub(crate) fn head(&mut self, status: StatusCode, headers: Option<&HeaderMap>) {
        self.status = status;
        self.sse = headers
            .and_then(|h| h.get(http::header::CONTENT_TYPE))
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        self.request_id = headers
            .and_then(|h| h.get(&self.options.request_id))
            .cloned();
        self.stream = Some(self.recorder.open(&self.tally.peek_labels()));
    }

    /// Reads one data frame: timing, events, usage, finish reason. Substring scans only.
    fn observe(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        // Events that arrived together come in one frame: the first is timed from the one
        // before, the others arrived with it (a gap of zero each), as the client saw them.
        let together = match &self.meter {
            Some(meter) => {
                let seen = meter.content_events();
                let new = seen.saturating_sub(u64::from(self.events));
                if new == 0 {
                    return;
                }
                self.events = u32::try_from(seen).unwrap_or(u32::MAX);
                new - 1
            }
            None => 0,
        };
        self.gaps
            .add_zeros(u32::try_from(together).unwrap_or(u32::MAX));
        let now = Instant::now();
        match self.last {
            None => {
                let first = now - self.start;
                self.first = Some(first);
                if !self.span.is_disabled() {
                    let seconds = first.as_secs_f64();
                    tracing::debug!(
                        target: "weir::request",
                        parent: &self.span,
                        { gen_ai.time_to_first_token = seconds },
                        "gen_ai.first_token"
                    );
                }
            }
            Some(last) => self.gaps.add(now - last),
        }
        self.last = Some(now);
        if self.meter.is_some() {
            return;
        }
        if !self.sse {
            self.usage.observe(data);
            if self.finish.is_none() {
                self.finish = scan::finish_reason(data).map(Finish::from_bytes);
            }
            return;
        }
        let trimmed = data.trim_ascii_end();
        let mut events = data_lines(data);
        if trimmed.ends_with(b"[DONE]") {
            events = events.saturating_sub(1);
        } else if trimmed.ends_with(b"}}") {
            // A usage object closes the event that carries it.
            self.usage.observe(data);
            if EMPTY_CHOICES.find(data).is_some() {
                events = events.saturating_sub(1);
            }
        }
        self.events += events;
        // Most chunks end `"finish_reason":null}]}`: only the others are searched, and only
        // near their end.
        if self.finish.is_none() && !trimmed.ends_with(b"null}]}") {
            let tail = &data[data.len().saturating_sub(FINISH_TAIL)..];
            self.finish = scan::finish_reason(tail).map(Finish::from_bytes);
        }
    }

    pub(crate) fn outcome_by_status(&self) -> Outcome {
        if self.status == http::StatusCode::TOO_MANY_REQUESTS {
            Outcome::RateLimited
        } else if self.status.is_client_error() {
            Outcome::ClientError
        } else if self.status.is_server_error() {
            Outcome::UpstreamError
        } else {
            Outcome::Ok
        }
    }

    /// Settles the exchange: the recorder, the span, the access log.
    pub(crate) fn end(&mut self, mut outcome: Outcome) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let Some(stream) = self.stream.take() else {
            return;
        };
        let duration = self.start.elapsed();
        let notes = self.tally.take();
        let labels = notes.labels.unwrap_or_default();
        if outcome == Outcome::Ok
            && notes
                .failovers
                .iter()
                .any(|f| f.phase == Phase::AfterFirstToken)
        {
            outcome = Outcome::Rescued;
        }
        if let Some(meter) = &self.meter {
            self.events = u32::try_from(meter.content_events()).unwrap_or(u32::MAX);
            if let Some(usage) = meter.usage() {
                let n = |v: Option<u64>| v.map(|v| u32::try_from(v).unwrap_or(u32::MAX));
                self.usage = UsageScan::from_parts(
                    n(usage.prompt),
                    n(usage.completion),
                    n(Some(usage.total)),
                );
            }
            self.finish = meter
                .finish_reason()
                .map(|f| Finish::from_bytes(f.as_bytes()));
        }
        let tokens = match (self.usage.prompt(), self.usage.completion(), notes.usage) {
            (Some(input), Some(output), _) | (_, _, Some((input, output))) => Tokens {
                input,
                output,
                reported: true,
            },
            _ => Tokens {
                input: notes.input_estimate.unwrap_or(0),
                output: self.events,
                reported: false,
            },
        };
        let report = Report {
            labels: &labels,
            status: self.status,
            outcome,
            duration,
            first_token: self.first,
            gaps: &self.gaps,
            tokens,
            cost_usd: notes.price.map(|p| p.cost(tokens.input, tokens.output)),
            attempts: notes.attempts,
            failovers: &notes.failovers,
            overhead: notes
                .sent
                .map(|sent| sent.saturating_duration_since(self.start)),
            finish_reason: self.finish.map(Finish::as_str),
        };
        self.recorder.close(stream, &report);
        if !self.span.is_disabled() {
            crate::span::finish(&self.span, &report, notes.operation);
        }
        if self.options.access_log {
            self.log(&report);
        }
    }

    fn log(&self, report: &Report<'_>) {
        let trace_id = crate::span::trace_id(&self.span, self.traceparent);
        let trace_id = trace_id.as_ref().and_then(|t| std::str::from_utf8(t).ok());
        let request_id = self.request_id.as_ref().and_then(|v| v.to_str().ok());
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        tracing::info!(
            target: "weir::access",
            request_id,
            trace_id,
            route = &*report.labels.route,
            provider = &*report.labels.provider,
            model = &*report.labels.model,
            status = report.status.as_u16(),
            outcome = report.outcome.as_str(),
            attempts = report.attempts,
            ttft_ms = report.first_token.map(ms),
            duration_ms = ms(report.duration),
            tokens_in = report.tokens.input,
            tokens_out = report.tokens.output,
            finish_reason = report.finish_reason,
            "request"
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn data_lines_are_counted_at_line_starts() {
        assert_eq!(super::data_lines(b"data: {\"a\":1}\n\n"), 1);
        assert_eq!(
            super::data_lines(b"data: {}\n\ndata: {}\r\n\r\ndata: [DONE]\n\n"),
            3
        );
        assert_eq!(super::data_lines(b": ping\n\n"), 0);
        assert_eq!(
            super::data_lines(b"event: x\ndata: {\"t\":\"no data: here\"}\n\n"),
            1
        );
        assert_eq!(super::data_lines(b""), 0);
    }
}
