//! A committed stream on its way to the client: watched, ended honestly, and continued on
//! another target if it is cut.
//!
//! [`StreamBody`] wraps the body of the attempt whose answer committed. Each frame it reads
//! goes through the protocol's [`Watch`] (for chat completions, [`weir_llm::stream::ChatWatch`]),
//! and only what the watch returns goes on: whole events, never half of one. Then:
//!
//! - **the answer is complete** (`[DONE]`, or a finish reason): the body ends cleanly, with the
//!   `[DONE]` the upstream left out if it left it out, whatever the transport does next: a
//!   reset, a close without the last chunk, silence or trailers after `[DONE]` change nothing.
//!   The upstream's own end, when it has not arrived yet, is awaited by a short task of its
//!   own, so that its connection can be reused, not by the client;
//! - **the stream is cut** (reset, closed early, silent for the idle timeout, an event over the
//!   bound): if the body was given a [`Resumer`], the cut answer is
//!   continued as one more attempt of the router (target readiness, the retry budget and the
//!   deadline apply), and the continuation's events are spliced in by the watch; otherwise, or
//!   if no target can continue it, the client gets one error event and the body ends with an
//!   error, so that no client mistakes a cut answer for a whole one;
//! - each attempt hears how its stream ended ([`OnEnd`]): the stall or the unreadable event that
//!   only this body sees, and the complete answer it ended early, reach the attempt's breaker
//!   through whatever handle the judge gave.
//!
//! Every error is preceded by one `Pending` after the last data frame, so that a server that
//! drops its write buffer when a body fails (hyper does) flushes what the client was sent.
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, StreamBody as Frames};
//! use std::time::Duration;
//! use weir_failover::stream::{Attempt, StreamBody};
//! use weir_llm::stream::ChatWatch;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // An upstream that sends one event, half of the next, and breaks.
//! let frames: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = vec![
//!     Ok(http_body::Frame::data(Bytes::from_static(b"data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {\"id\""))),
//!     Err(std::io::Error::other("reset")),
//! ];
//! let upstream = Frames::new(futures_util::stream::iter(frames));
//! let body = StreamBody::new(
//!     upstream,
//!     None,
//!     ChatWatch::new(1 << 20),
//!     Attempt::new("openai".into(), Duration::from_secs(30)),
//! );
//! let mut body = std::pin::pin!(body);
//! let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
//! assert_eq!(&first[..], &b"data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n"[..]);
//! let told = body.frame().await.unwrap().unwrap().into_data().unwrap();
//! assert!(told.starts_with(b"data: {\"error\""));
//! assert!(body.frame().await.unwrap().is_err(), "and the body fails: never a clean end");
//! # }
//! ```

use crate::router::Resumer;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use weir_llm::stream::{Continuation, Watch};
use weir_llm::Failure;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How an attempt's stream ended, as the stream body judged it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The answer was complete.
    Complete,
    /// The provider failed it (cut, silent, unreadable, or its own error event).
    Failed(Failure),
}

/// Hears how an attempt's stream ended. Called once per attempt, before the attempt's body is
/// dropped (the attempt's own layers may have settled already: a clean end they saw), with
/// the stream's watch, to read what it counted.
pub trait OnEnd<W>: Send + 'static {
    /// The stream ended.
    fn ended(&mut self, how: Ended, watch: &mut W);
}

impl<W> OnEnd<W> for () {
    fn ended(&mut self, _: Ended, _: &mut W) {}
}

impl<W, F: FnMut(Ended) + Send + 'static> OnEnd<W> for F {
    fn ended(&mut self, how: Ended, _: &mut W) {
        self(how)
    }
}

/// What the stream body knows of the attempt it reads: the target's name (for the messages a
/// client reads), its idle timeout, and who hears how it ended.
#[derive(Debug)]
pub struct Attempt<E = ()> {
    label: Arc<str>,
    idle: Duration,
    on_end: Option<E>,
    resuming: Option<Continuation>,
}

impl Attempt<()> {
    /// An attempt on the target called `label`, cut after `idle` without an event.
    pub fn new(label: Arc<str>, idle: Duration) -> Self {
        Self {
            label,
            idle,
            on_end: Some(()),
            resuming: None,
        }
    }
}

impl<E> Attempt<E> {
    /// Who hears how the attempt's stream ended.
    pub fn on_end<F>(self, on_end: F) -> Attempt<F> {
        Attempt {
            label: self.label,
            idle: self.idle,
            on_end: Some(on_end),
            resuming: self.resuming,
        }
    }

    /// This attempt continues a cut answer, made this way (see [`Continuation`]).
    pub fn continuing(mut self, how: Continuation) -> Self {
        self.resuming = Some(how);
        self
    }

    /// The target's name.
    pub fn label(&self) -> &Arc<str> {
        &self.label
    }
}

/// The stream was cut and the client told so in band; what cut it.
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Streaming,
    /// An error event went out (or the provider's own): yield once before failing.
    Flush(Failure),
    Fail(Failure),
    Done,
}

/// What a poll of the body returns.
type Polled = Poll<Option<Result<Frame<Bytes>, StreamFailed>>>;

type Continuing<B, W, E> = Pin<Box<dyn Future<Output = Option<StreamBody<B, W, E>>> + Send>>;

/// The longest an upstream's end is awaited after a complete answer, and the most it may send
/// meanwhile, so that its connection can go back to its pool.
const DRAIN_TIME: Duration = Duration::from_secs(2);
const DRAIN_BYTES: usize = 64 * 1024;

/// A committed stream, watched and resumable. See the [module docs](self).
pub struct StreamBody<B, W, E = ()> {
    inner: Option<B>,
    /// Whole events read before the commit point (already watched): sent first.
    prefix: Option<Bytes>,
    /// A continuation's first events, not yet through this body's watch.
    unwatched: Option<Bytes>,
    watch: W,
    attempt: Attempt<E>,
    resume: Option<Resumer<StreamBody<B, W, E>>>,
    continuing: Option<(Continuing<B, W, E>, Failure)>,
    progress: u64,
    progress_at: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
    state: State,
}

impl<B, W, E> std::fmt::Debug for StreamBody<B, W, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamBody")
            .field("target", &self.attempt.label)
            .field("state", &self.state)
            .field("resumable", &self.resume.is_some())
            .field("continuing", &self.continuing.is_some())
            .finish_non_exhaustive()
    }
}

impl<B, W, E> StreamBody<B, W, E>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
    W: Watch,
    E: OnEnd<W>,
{
    /// The stream of `attempt`'s answer: `inner` positioned after `prefix` (the whole events
    /// read up to the commit point, which went through `watch` already).
    pub fn new(inner: B, prefix: Option<Bytes>, watch: W, attempt: Attempt<E>) -> Self {
        Self {
            inner: Some(inner),
            prefix: prefix.filter(|p| !p.is_empty()),
            unwatched: None,
            watch,
            attempt,
            resume: None,
            continuing: None,
            progress: 0,
            progress_at: Instant::now(),
            sleep: None,
            state: State::Streaming,
        }
    }

    /// Lets a cut answer be continued elsewhere.
    pub fn resume_with(&mut self, resumer: Resumer<StreamBody<B, W, E>>) {
        self.resume = Some(resumer);
    }

    /// The watch (what it learned of the answer).
    pub fn watch(&self) -> &W {
        &self.watch
    }

    /// The attempt being read (the last one, after a continuation).
    pub fn attempt(&self) -> &Attempt<E> {
        &self.attempt
    }

    fn end_attempt(&mut self, how: Ended) {
        if let Some(mut on_end) = self.attempt.on_end.take() {
            on_end.ended(how, &mut self.watch);
        }
    }

    /// The answer is complete and its end marker went out: the attempt ended well. Its body
    /// is read to its end here if that end has already arrived (the connection stays
    /// reusable), or by a task of its own for a while.
    fn finish_inner(&mut self, cx: &mut Context<'_>) {
        self.end_attempt(Ended::Complete);
        let Some(mut inner) = self.inner.take() else {
            return;
        };
        for _ in 0..8 {
            match Pin::new(&mut inner).poll_frame(cx) {
                Poll::Ready(None | Some(Err(_))) => return,
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Pending => break,
            }
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(inner));
        }
    }

    fn note_progress(&mut self) {
        let progress = self.watch.progress();
        if progress != self.progress {
            self.progress = progress;
            self.progress_at = Instant::now();
        }
    }

    /// Pending unless the idle timeout has passed since the last event.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.progress_at + self.attempt.idle;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut().poll(cx)
    }

    /// The attempt's stream ended (broke, closed, stalled, or failed the watch): end the
    /// answer properly if it is complete, else continue it elsewhere or tell the client.
    fn cut(&mut self, cx: &mut Context<'_>, failure: Failure) -> Polled {
        if self.watch.is_complete() {
            self.end_attempt(Ended::Complete);
            self.inner = None;
            self.state = State::Done;
            return Poll::Ready(self.watch.finish().map(|tail| Ok(Frame::data(tail))));
        }
        let failure = if self.watch.told() {
            Failure::StreamBroken
        } else {
            failure
        };
        self.end_attempt(Ended::Failed(failure));
        self.inner = None;
        if !self.watch.told() {
            if let (Some(resumer), Some(cut)) = (self.resume.take(), self.watch.cut()) {
                let continuing = resumer.resume(cut, failure);
                self.continuing = Some((Box::pin(continuing), failure));
                return self.poll(cx);
            }
        }
        self.fail(cx, failure)
    }

    /// Tells the client the answer is cut (unless the provider did), then fails the body.
    fn fail(&mut self, cx: &mut Context<'_>, failure: Failure) -> Polled {
        self.inner = None;
        self.resume = None;
        self.state = State::Flush(failure);
        if self.watch.told() {
            return self.poll(cx);
        }
        let label = &self.attempt.label;
        let message = match failure {
            Failure::StreamStalled => format!(
                "The upstream provider `{label}` stopped sending for {:?}; the answer is incomplete.",
                self.attempt.idle
            ),
            Failure::MalformedEvent => format!(
                "The upstream provider `{label}` sent an event that cannot be read or is too large; the answer is incomplete."
            ),
            _ => format!(
                "The upstream provider `{label}` ended the stream before the answer was complete."
            ),
        };
        Poll::Ready(Some(Ok(Frame::data(
            self.watch.error_event(failure, &message),
        ))))
    }

    /// A continuation committed: its stream replaces the cut one, through this watch.
    /// Goes on with `continued`, the answer's continuation after `cut_by`. The client first
    /// reads an SSE comment saying who finishes the answer (clients skip comments).
    fn splice(&mut self, continued: StreamBody<B, W, E>, cut_by: Failure) {
        let note = format!(
            ": weir continued this answer on {} ({} {})\n\n",
            continued.attempt.label, self.attempt.label, cut_by
        );
        let StreamBody {
            inner,
            prefix,
            mut watch,
            attempt,
            resume,
            ..
        } = continued;
        self.watch
            .resume(attempt.resuming.unwrap_or(Continuation::Replay));
        // What the continuation's own watch read: its whole events, and the start of the
        // next one it held back.
        let held = watch.take_held();
        self.unwatched = match prefix {
            None => Some(held).filter(|h| !h.is_empty()),
            Some(prefix) if held.is_empty() => Some(prefix),
            Some(prefix) => {
                let mut joined = bytes::BytesMut::with_capacity(prefix.len() + held.len());
                joined.extend_from_slice(&prefix);
                joined.extend_from_slice(&held);
                Some(joined.freeze())
            }
        };
        self.prefix = Some(Bytes::from(note));
        self.inner = inner;
        self.attempt = attempt;
        self.resume = resume;
        self.progress = self.watch.progress();
        self.progress_at = Instant::now();
    }

    /// Watches one frame: the frame to send on, or `None` to read on.
    fn watched(&mut self, cx: &mut Context<'_>, data: Bytes) -> Result<Option<Bytes>, Polled> {
        match self.watch.push(data) {
            Ok(out) => {
                self.note_progress();
                if self.watch.told() {
                    // The provider said in band that it failed: its attempt hears it now,
                    // before the clean end that usually follows.
                    self.end_attempt(Ended::Failed(Failure::StreamBroken));
                }
                if out.is_some() && self.watch.is_done() {
                    self.finish_inner(cx);
                }
                Ok(out)
            }
            Err(failure) => Err(self.cut(cx, failure)),
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Polled {
        loop {
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
                let continued = ready!(continuing.as_mut().poll(cx));
                let cut_by = *cut_by;
                self.continuing = None;
                match continued {
                    Some(continued) => self.splice(continued, cut_by),
                    // Nowhere to continue: the client is told the answer is cut, and why.
                    None => return self.fail(cx, cut_by),
                }
            }
            if let Some(prefix) = self.prefix.take() {
                if self.watch.is_done() {
                    self.finish_inner(cx);
                }
                return Poll::Ready(Some(Ok(Frame::data(prefix))));
            }
            if self.watch.is_done() {
                self.finish_inner(cx);
                self.state = State::Done;
                return Poll::Ready(None);
            }
            if let Some(data) = self.unwatched.take() {
                match self.watched(cx, data) {
                    Ok(Some(out)) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                    Ok(None) => continue,
                    Err(poll) => return poll,
                }
            }
            let Some(inner) = self.inner.as_mut() else {
                self.state = State::Done;
                return Poll::Ready(None);
            };
            match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        // Trailers of an event stream carry nothing a client needs.
                        continue;
                    };
                    match self.watched(cx, data) {
                        Ok(Some(out)) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                        Ok(None) => continue,
                        Err(poll) => return poll,
                    }
                }
                Poll::Ready(Some(Err(_))) => return self.cut(cx, Failure::StreamBroken),
                // A clean end without a complete answer is a truncation.
                Poll::Ready(None) => {
                    self.watch.ended();
                    return self.cut(cx, Failure::StreamBroken);
                }
                Poll::Pending => {
                    return match self.poll_idle(cx) {
                        Poll::Ready(()) => self.cut(cx, Failure::StreamStalled),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}

/// Reads an upstream body to its end (bounded), so that its connection may be reused.
async fn drain<B>(mut inner: B)
where
    B: Body<Data = Bytes> + Unpin,
{
    let read = async {
        let mut total = 0;
        while let Some(Ok(frame)) =
            std::future::poll_fn(|cx| Pin::new(&mut inner).poll_frame(cx)).await
        {
            total += frame.data_ref().map_or(0, Bytes::len);
            if total > DRAIN_BYTES {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}

impl<B, W, E> Body for StreamBody<B, W, E>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
    W: Watch + Unpin,
    E: OnEnd<W> + Unpin,
{
    type Data = Bytes;
    type Error = StreamFailed;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        self.get_mut().poll(cx)
    }

    fn is_end_stream(&self) -> bool {
        match self.state {
            State::Done => true,
            State::Streaming => {
                self.watch.is_done()
                    && self.inner.is_none()
                    && self.prefix.is_none()
                    && self.unwatched.is_none()
                    && self.continuing.is_none()
            }
            State::Flush(_) | State::Fail(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        // The watch may hold events back, drop them or add one: the length is not the
        // upstream's.
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests;
