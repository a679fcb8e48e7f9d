//! Watching a streamed answer on its way to the client: whole events only, a complete answer
//! told from a cut one, and what it takes to continue a cut one elsewhere.
//!
//! [`Watch`] is the protocol half of a resumable stream: a body wrapper (weir-failover's
//! `StreamBody`) hands it each frame read from the provider and forwards what it returns. The
//! wrapper knows nothing of events; the watch knows nothing of time, targets or bodies.
//! [`ChatWatch`] is the watch for OpenAI-style chat-completion streams:
//!
//! - **whole events only** ([`Framer`]): an event goes out once its blank line has arrived;
//!   events that arrived together go out together, the frame itself when it ends on an event
//!   boundary;
//! - **complete** means `data: [DONE]`, or a finish reason plus the usage chunk when the client
//!   asked for one. Nothing after that changes the answer: events after `[DONE]` are dropped,
//!   and whatever the transport does next (a reset, silence) is not a cut;
//! - **cut** means anything else: the watch says what the client has ([`Cut`]: the id, the
//!   text, the events), and once told to [`resume`](Watch::resume), rewrites the
//!   continuation's events into the original answer's (its `id`, the replayed prefix dropped,
//!   a prefill's usage corrected);
//! - **facts for others** ([`Meter`]): content events, usage and the finish reason, found in
//!   the one pass over each event and shared with whoever settles rate limits, bills or
//!   records metrics.
//!
//! One pass over each frame, nothing parsed: `[DONE]`, in-band errors, usage and finish
//! reasons are found by comparisons and substring scans of the event's data. Only the rare
//! paths allocate (an event dropped from a frame, a continuation's rewritten events).
//!
//! ```
//! use bytes::Bytes;
//! use weir_llm::stream::{ChatWatch, Watch};
//!
//! let mut watch = ChatWatch::new(1 << 20);
//! let out = watch.push(Bytes::from_static(
//!     b"data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\ndata: {\"id\":\"c\",\"choi",
//! )).unwrap().unwrap();
//! assert!(out.ends_with(b"null}]}\n\n"), "the cut event is held back");
//! assert!(!watch.is_complete());
//! watch.push(Bytes::from_static(
//!     b"ces\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
//! )).unwrap();
//! assert!(watch.is_complete());
//! assert_eq!(watch.meter().finish_reason(), Some("stop"));
//! ```

use crate::continuation::{self, Replay, Replayed, Transcript};
use crate::sse::{encode_data, Event, Framer};
use crate::{ErrorBody, ErrorKind, Failure};
use bytes::{Bytes, BytesMut};
use memchr::memmem;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, LazyLock};

/// How a cut answer is continued on another target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Continuation {
    /// The same request again; the new answer's text is dropped up to what the client has,
    /// if it matches exactly.
    Replay,
    /// The request with the partial answer as a final assistant message; the target writes
    /// the rest.
    Prefill,
}

/// What a client has of an answer that was cut: what a continuation needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    /// The completion id the client saw.
    pub id: String,
    /// The text delivered.
    pub delivered: String,
    /// Content events delivered.
    pub events: u64,
}

/// The protocol half of a watched, resumable stream. See the [module docs](self).
pub trait Watch: Send + 'static {
    /// Takes the next frame read from the provider; returns the bytes to forward now (whole
    /// events; `None` when nothing is complete yet). An error ends the stream: an event over
    /// the bound, or (while continuing) a replay that says something else.
    fn push(&mut self, frame: Bytes) -> Result<Option<Bytes>, Failure>;

    /// Data events read so far, forwarded or not: progress, for an idle timeout.
    fn progress(&self) -> u64;

    /// The answer is complete: what the transport does next changes nothing.
    fn is_complete(&self) -> bool;

    /// The answer's end marker has gone out (`[DONE]`): nothing more will be forwarded.
    fn is_done(&self) -> bool;

    /// The provider's own error event has gone out: the client has been told.
    fn told(&self) -> bool;

    /// The upstream's body ended cleanly (what it held back of a last, unterminated event
    /// may still mean something).
    fn ended(&mut self) {}

    /// The upstream ended (or broke) after a complete answer: what to send to finish it
    /// properly (the `[DONE]` it left out), if anything.
    fn finish(&mut self) -> Option<Bytes>;

    /// What the client has, if the answer may be continued elsewhere.
    fn cut(&self) -> Option<Cut>;

    /// From now on, frames come from a continuation of [`cut`](Self::cut), made this way.
    fn resume(&mut self, how: Continuation);

    /// Gives up what was read but held back (an event not yet complete): a continuation's
    /// watch hands it to the watch of the stream it continues.
    fn take_held(&mut self) -> Bytes;

    /// The event that tells the client the answer was cut, saying why.
    fn error_event(&self, failure: Failure, message: &str) -> Bytes;
}

/// Facts about one streamed answer, written by its watch as events pass and read by whoever
/// else needs them (rate-limit settling, billing, metrics) without scanning the bytes again.
/// Clones share one record.
#[derive(Clone, Debug, Default)]
pub struct Meter(Arc<MeterInner>);

#[derive(Debug)]
struct MeterInner {
    content_events: AtomicU64,
    prompt: AtomicU64,
    completion: AtomicU64,
    total: AtomicU64,
    finish: AtomicU8,
    complete: AtomicBool,
}

const UNKNOWN: u64 = u64::MAX;

impl Default for MeterInner {
    fn default() -> Self {
        Self {
            content_events: AtomicU64::new(0),
            prompt: AtomicU64::new(UNKNOWN),
            completion: AtomicU64::new(UNKNOWN),
            total: AtomicU64::new(UNKNOWN),
            finish: AtomicU8::new(0),
            complete: AtomicBool::new(false),
        }
    }
}

/// Token usage as the answer reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens, if reported.
    pub prompt: Option<u64>,
    /// Completion tokens, if reported.
    pub completion: Option<u64>,
    /// Total tokens.
    pub total: u64,
}

const FINISH_REASONS: [&str; 6] = [
    "stop",
    "length",
    "tool_calls",
    "content_filter",
    "function_call",
    "other",
];

/// A finish reason as one of a few stable names (`other` for anything else).
pub fn finish_name(reason: &[u8]) -> &'static str {
    FINISH_REASONS[..5]
        .iter()
        .find(|name| name.as_bytes() == reason)
        .copied()
        .unwrap_or("other")
}

impl Meter {
    /// Content events the client received (chunks, not the usage-only chunk or `[DONE]`).
    pub fn content_events(&self) -> u64 {
        self.0.content_events.load(Ordering::Relaxed)
    }

    /// The usage the answer reported, if it did.
    pub fn usage(&self) -> Option<Usage> {
        let read = |v: &AtomicU64| Some(v.load(Ordering::Relaxed)).filter(|v| *v != UNKNOWN);
        Some(Usage {
            total: read(&self.0.total)?,
            prompt: read(&self.0.prompt),
            completion: read(&self.0.completion),
        })
    }

    /// The first finish reason, as a stable name.
    pub fn finish_reason(&self) -> Option<&'static str> {
        match self.0.finish.load(Ordering::Relaxed) {
            0 => None,
            n => FINISH_REASONS.get(usize::from(n) - 1).copied(),
        }
    }

    /// Whether the answer was complete.
    pub fn is_complete(&self) -> bool {
        self.0.complete.load(Ordering::Relaxed)
    }

    /// Reads a whole (non-streamed) answer's usage and finish reason, once, for everyone
    /// who settles or records it.
    pub fn observe_whole(&self, answer: &[u8]) {
        let mut usage = crate::scan::UsageScan::default();
        usage.observe(answer);
        if let Some(total) = usage.total() {
            self.set_usage(usage.prompt(), usage.completion(), total);
        }
        if let Some(reason) = crate::scan::finish_reason(answer) {
            self.set_finish(finish_name(reason));
        }
        self.0.complete.store(true, Ordering::Relaxed);
    }

    /// [`observe_whole`](Self::observe_whole) for an answer of `api` (a Responses
    /// `response` object, a Messages `message`: their usage and stop reason).
    pub fn observe_answer(&self, api: crate::Api, answer: &[u8]) {
        match api {
            crate::Api::Chat => self.observe_whole(answer),
            api => {
                typed::observe_whole(self, api, answer);
                self.0.complete.store(true, Ordering::Relaxed);
            }
        }
    }

    fn set_usage(&self, prompt: Option<u32>, completion: Option<u32>, total: u32) {
        let store = |cell: &AtomicU64, v: Option<u32>| {
            if let Some(v) = v {
                cell.store(u64::from(v), Ordering::Relaxed);
            }
        };
        store(&self.0.prompt, prompt);
        store(&self.0.completion, completion);
        store(&self.0.total, Some(total));
    }

    fn set_finish(&self, name: &'static str) {
        let code = FINISH_REASONS
            .iter()
            .position(|n| *n == name)
            .map_or(6, |i| i + 1);
        self.0.finish.store(code as u8, Ordering::Relaxed);
    }
}

static EMPTY_CHOICES: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"choices\":[]"));

/// Whether an event's data is an in-band error object (`{"error": ...}`).
pub fn is_error_event(data: &[u8]) -> bool {
    let trimmed = data.trim_ascii_start();
    trimmed.starts_with(b"{\"error\"") || trimmed.starts_with(b"{ \"error\"")
}

/// A chunk event is a JSON object. An O(1) check that catches truncation and garbage.
fn looks_like_object(data: &[u8]) -> bool {
    let data = data.trim_ascii();
    data.first() == Some(&b'{') && data.last() == Some(&b'}')
}

/// The usage-only chunk (`"choices":[]` and a `usage` object). Content chunks end with their
/// `choices` array (`]}`), so only events ending in `}}` are searched.
pub fn is_usage_event(data: &[u8]) -> bool {
    data.trim_ascii_end().ends_with(b"}}") && EMPTY_CHOICES.find(data).is_some()
}

/// What one event asks of the frame it is in.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    Keep,
    Drop,
    /// Goes on with this data instead (the usage field weir asked for, taken out).
    Replace(Bytes),
}

/// The state of a chat stream, apart from its framing.
#[derive(Debug, Default)]
struct Chat {
    done: bool,
    /// The stream ended with `data: [DONE]` cut from its blank line.
    trailing_done: bool,
    told: bool,
    finished: bool,
    usage_seen: bool,
    client_usage: bool,
    strip_usage: bool,
    progress: u64,
    content: u64,
    malformed: u64,
    transcript: Option<Transcript>,
    meter: Meter,
}

impl Chat {
    /// Reads one event's data and says whether it goes to the client.
    fn dispatch(&mut self, data: &[u8]) -> Verdict {
        if self.done {
            return Verdict::Drop;
        }
        if data == b"[DONE]" {
            self.done = true;
            self.complete_now();
            return Verdict::Keep;
        }
        if is_error_event(data) {
            self.told = true;
            return Verdict::Keep;
        }
        if !looks_like_object(data) {
            self.malformed += 1;
            return Verdict::Drop;
        }
        let has_usage = data.trim_ascii_end().ends_with(b"}}");
        if has_usage {
            let mut usage = crate::scan::UsageScan::default();
            usage.observe(data);
            if let Some(total) = usage.total() {
                self.usage_seen = true;
                self.meter
                    .set_usage(usage.prompt(), usage.completion(), total);
            }
            if self.strip_usage && EMPTY_CHOICES.find(data).is_some() {
                self.complete_now();
                return Verdict::Drop;
            }
        }
        // The usage weir asked for, riding on a chunk with content (LiteLLM's shape), or the
        // `"usage":null` some servers then put on every chunk: the field goes, the rest stays.
        let replaced = if self.strip_usage
            && (has_usage || data.trim_ascii_end().ends_with(b"\"usage\":null}"))
        {
            crate::scan::without_field(data, b"usage").map(Bytes::from)
        } else {
            None
        };
        if !(has_usage && EMPTY_CHOICES.find(data).is_some()) {
            self.content += 1;
        }
        if let Some(transcript) = &mut self.transcript {
            transcript.record(data);
        }
        if !self.finished && !data.trim_ascii_end().ends_with(b"null}]}") {
            if let Some(reason) = crate::scan::finish_reason(data) {
                self.finished = true;
                self.meter.set_finish(finish_name(reason));
            }
        }
        self.complete_now();
        match replaced {
            Some(data) => Verdict::Replace(data),
            None => Verdict::Keep,
        }
    }

    fn is_complete(&self) -> bool {
        self.done
            || self.trailing_done
            || (self.finished && (self.usage_seen || !self.client_usage))
    }

    fn store_events(&self) {
        self.meter
            .0
            .content_events
            .store(self.content, Ordering::Relaxed);
    }

    fn complete_now(&self) {
        if self.is_complete() {
            self.meter.0.complete.store(true, Ordering::Relaxed);
        }
    }
}

/// How a continuation's events become the original answer's.
#[derive(Debug)]
struct Splice {
    id: String,
    replay: Option<Replay>,
    /// Prefill: content events the client had before the cut (the continuation counts them
    /// as prompt; its usage is corrected to count them as completion).
    prefilled: Option<u64>,
}

impl Splice {
    /// The event's data as the client gets it, `None` to drop it.
    fn rewrite(&mut self, data: &[u8]) -> Result<Option<Bytes>, Failure> {
        if data == b"[DONE]" || is_error_event(data) {
            return Ok(Some(Bytes::copy_from_slice(data)));
        }
        let data: Bytes = match &mut self.replay {
            None => match self.prefilled {
                Some(delivered) if is_usage_event(data) => {
                    continuation::add_delivered_usage(data, delivered)
                        .unwrap_or_else(|| Bytes::copy_from_slice(data))
                }
                _ => Bytes::copy_from_slice(data),
            },
            Some(replay) => {
                let content = crate::Chunk::parse(data)
                    .ok()
                    .and_then(|c| c.content.map(|c| c.into_owned()));
                match replay.next(content.as_deref()) {
                    Replayed::Drop => return Ok(None),
                    Replayed::Keep => Bytes::copy_from_slice(data),
                    Replayed::Trim(rest) => {
                        continuation::with_content(data, &rest).ok_or(Failure::StreamBroken)?
                    }
                    Replayed::Diverged => return Err(Failure::StreamBroken),
                }
            }
        };
        Ok(Some(continuation::relabel(&data, &self.id)))
    }
}

/// The watch of an OpenAI-style chat-completion stream. See the [module docs](self).
#[derive(Debug)]
pub struct ChatWatch {
    framer: Framer,
    chat: Chat,
    splice: Option<Box<Splice>>,
    /// Raw ranges of events to drop from the frame being pushed.
    /// Events of the current frame to drop (`None`) or to send rewritten.
    drops: Vec<(Range<usize>, Option<Bytes>)>,
}

impl ChatWatch {
    /// A watch that refuses events over `max_event` bytes.
    pub fn new(max_event: usize) -> Self {
        Self {
            framer: Framer::new(max_event),
            chat: Chat::default(),
            splice: None,
            drops: Vec::new(),
        }
    }

    /// Records what the client receives, so that a cut answer can be continued elsewhere.
    pub fn with_transcript(mut self) -> Self {
        self.chat.transcript = Some(Transcript::default());
        self
    }

    /// weir asked for usage the client did not: the usage chunk is dropped on the way out
    /// (its figures still reach the [`Meter`]).
    pub fn strip_usage(mut self, strip: bool) -> Self {
        self.chat.strip_usage = strip;
        self
    }

    /// The client asked for usage (`stream_options.include_usage`): the answer is complete
    /// only with it, or with `[DONE]`.
    pub fn client_wants_usage(mut self, wants: bool) -> Self {
        self.chat.client_usage = wants;
        self
    }

    /// Shares this meter instead of a fresh one.
    pub fn with_meter(mut self, meter: Meter) -> Self {
        self.chat.meter = meter;
        self
    }

    /// What the watch learns of the answer.
    pub fn meter(&self) -> &Meter {
        &self.chat.meter
    }

    /// Data events dropped because they were not JSON objects, since the last call.
    pub fn take_malformed(&mut self) -> u64 {
        std::mem::take(&mut self.chat.malformed)
    }

    fn push_spliced(&mut self, frame: Bytes) -> Result<Option<Bytes>, Failure> {
        let splice = self.splice.as_mut().expect("splicing");
        let chat = &mut self.chat;
        let mut out = BytesMut::new();
        let mut failed = None;
        self.framer
            .push(frame, |event: &Event<'_>| {
                if failed.is_some() {
                    return;
                }
                let Some(data) = event.joined_data() else {
                    return;
                };
                chat.progress += 1;
                match splice.rewrite(&data) {
                    Ok(Some(data)) => match chat.dispatch(&data) {
                        Verdict::Keep => encode_data(&data, &mut out),
                        Verdict::Replace(data) => encode_data(&data, &mut out),
                        Verdict::Drop => {}
                    },
                    Ok(None) => {}
                    Err(f) => failed = Some(f),
                }
            })
            .map_err(|_| Failure::MalformedEvent)?;
        chat.store_events();
        if let Some(f) = failed {
            return Err(f);
        }
        Ok((!out.is_empty()).then(|| out.freeze()))
    }
}

impl Watch for ChatWatch {
    fn push(&mut self, frame: Bytes) -> Result<Option<Bytes>, Failure> {
        if self.chat.done {
            return Ok(None);
        }
        if self.splice.is_some() {
            return self.push_spliced(frame);
        }
        let chat = &mut self.chat;
        let drops = &mut self.drops;
        let mut done_at = None;
        let out = self
            .framer
            .push(frame, |event: &Event<'_>| {
                let was_done = chat.done;
                let verdict = match event.joined_data() {
                    Some(data) => {
                        chat.progress += 1;
                        chat.dispatch(&data)
                    }
                    // An event without data (`retry:`, `id:` alone) dispatches nothing.
                    None if chat.done => Verdict::Drop,
                    None => Verdict::Keep,
                };
                if chat.done && !was_done {
                    done_at = Some(event.range().end);
                } else if done_at.is_none() {
                    match verdict {
                        Verdict::Keep => {}
                        Verdict::Drop => drops.push((event.range(), None)),
                        Verdict::Replace(data) => {
                            let mut rewritten = BytesMut::with_capacity(data.len() + 8);
                            encode_data(&data, &mut rewritten);
                            drops.push((event.range(), Some(rewritten.freeze())));
                        }
                    }
                }
            })
            .map_err(|_| Failure::MalformedEvent)?;
        chat.store_events();
        Ok(out.and_then(|out| apply(out, done_at, drops)))
    }

    fn progress(&self) -> u64 {
        self.chat.progress
    }

    fn is_complete(&self) -> bool {
        self.chat.is_complete()
    }

    fn is_done(&self) -> bool {
        self.chat.done
    }

    fn told(&self) -> bool {
        self.chat.told
    }

    fn ended(&mut self) {
        // An end marker cut from its blank line by the end of the stream is still one.
        let partial = self.framer.partial();
        self.chat.trailing_done = partial
            .split(|b| *b == b'\n' || *b == b'\r')
            .any(|line| line == b"data: [DONE]" || line == b"data:[DONE]");
        self.chat.complete_now();
    }

    fn finish(&mut self) -> Option<Bytes> {
        if self.chat.done || !self.chat.is_complete() {
            return None;
        }
        self.chat.done = true;
        self.chat.complete_now();
        Some(Bytes::from_static(b"data: [DONE]\n\n"))
    }

    fn cut(&self) -> Option<Cut> {
        let transcript = self.chat.transcript.as_ref()?;
        if transcript.has_tool_calls() {
            // Neither a replay nor a prefill reproduces a tool call's argument deltas.
            return None;
        }
        Some(Cut {
            id: transcript.id()?.to_owned(),
            delivered: transcript.text()?,
            events: transcript.events(),
        })
    }

    fn resume(&mut self, how: Continuation) {
        let Some(cut) = self.cut() else {
            return;
        };
        self.framer = Framer::new(self.framer.max_event());
        self.splice = Some(Box::new(Splice {
            id: cut.id,
            replay: (how == Continuation::Replay).then(|| Replay::new(cut.delivered)),
            prefilled: (how == Continuation::Prefill).then_some(cut.events),
        }));
    }

    fn take_held(&mut self) -> Bytes {
        self.framer.take_partial()
    }

    fn error_event(&self, failure: Failure, message: &str) -> Bytes {
        ErrorBody::new(ErrorKind::BadGateway, message.to_owned())
            .code(failure.as_str())
            .to_sse_event()
    }
}

/// The complete events of a frame as they go on: cut after the end marker at `done_at`
/// (nothing after it reaches the client), without the events `drops` names (or with their
/// replacements). `None` when nothing is left.
fn apply(
    mut out: Bytes,
    done_at: Option<usize>,
    drops: &mut Vec<(Range<usize>, Option<Bytes>)>,
) -> Option<Bytes> {
    if let Some(end) = done_at {
        out.truncate(end);
    }
    if drops.is_empty() {
        return (!out.is_empty()).then_some(out);
    }
    // Rare: an event dropped from the middle of a frame, or one rewritten.
    let mut kept = BytesMut::with_capacity(out.len());
    let mut at = 0;
    for (range, replacement) in drops.drain(..) {
        if range.start >= out.len() {
            break;
        }
        kept.extend_from_slice(&out[at..range.start]);
        if let Some(replacement) = replacement {
            kept.extend_from_slice(&replacement);
        }
        at = range.end;
    }
    if at < out.len() {
        kept.extend_from_slice(&out[at..]);
    }
    (!kept.is_empty()).then(|| kept.freeze())
}

/// The watch of a stream of any [`Api`](crate::Api): the chat watch, or the typed-event one.
#[derive(Debug)]
// The chat watch is what most streams hold, inline: boxing it would cost an allocation per
// chat stream; the typed one is boxed instead.
#[allow(clippy::large_enum_variant)]
pub enum ApiWatch {
    /// Chat Completions (and legacy completions).
    Chat(ChatWatch),
    /// Responses or Messages (boxed: the enum stays the chat watch's size).
    Typed(Box<TypedWatch>),
}

impl ApiWatch {
    /// What the watch learns of the answer.
    pub fn meter(&self) -> &Meter {
        match self {
            Self::Chat(w) => w.meter(),
            Self::Typed(w) => w.meter(),
        }
    }

    /// Data events dropped because they were not JSON objects, since the last call.
    pub fn take_malformed(&mut self) -> u64 {
        match self {
            Self::Chat(w) => w.take_malformed(),
            Self::Typed(w) => w.take_malformed(),
        }
    }
}

/// Calls the same method of whichever watch this is.
macro_rules! each {
    ($self:ident, $w:ident => $e:expr) => {
        match $self {
            ApiWatch::Chat($w) => $e,
            ApiWatch::Typed($w) => $e,
        }
    };
}

impl Watch for ApiWatch {
    fn push(&mut self, frame: Bytes) -> Result<Option<Bytes>, Failure> {
        each!(self, w => w.push(frame))
    }

    fn progress(&self) -> u64 {
        each!(self, w => w.progress())
    }

    fn is_complete(&self) -> bool {
        each!(self, w => w.is_complete())
    }

    fn is_done(&self) -> bool {
        each!(self, w => w.is_done())
    }

    fn told(&self) -> bool {
        each!(self, w => w.told())
    }

    fn ended(&mut self) {
        each!(self, w => w.ended())
    }

    fn finish(&mut self) -> Option<Bytes> {
        each!(self, w => w.finish())
    }

    fn cut(&self) -> Option<Cut> {
        each!(self, w => w.cut())
    }

    fn resume(&mut self, how: Continuation) {
        each!(self, w => w.resume(how))
    }

    fn take_held(&mut self) -> Bytes {
        each!(self, w => w.take_held())
    }

    fn error_event(&self, failure: Failure, message: &str) -> Bytes {
        each!(self, w => w.error_event(failure, message))
    }
}

/// The watch of a body that is not an event stream (a whole answer too large to hold back):
/// its bytes pass as they come, and it is complete when it ends cleanly.
#[derive(Debug, Default)]
pub struct Opaque {
    progress: u64,
    ended: bool,
}

impl Watch for Opaque {
    fn push(&mut self, frame: Bytes) -> Result<Option<Bytes>, Failure> {
        self.progress += 1;
        Ok((!frame.is_empty()).then_some(frame))
    }

    fn progress(&self) -> u64 {
        self.progress
    }

    fn is_complete(&self) -> bool {
        self.ended
    }

    fn is_done(&self) -> bool {
        false
    }

    fn told(&self) -> bool {
        false
    }

    fn ended(&mut self) {
        self.ended = true;
    }

    fn finish(&mut self) -> Option<Bytes> {
        None
    }

    fn cut(&self) -> Option<Cut> {
        None
    }

    fn resume(&mut self, _: Continuation) {}

    fn take_held(&mut self) -> Bytes {
        Bytes::new()
    }

    fn error_event(&self, _: Failure, _: &str) -> Bytes {
        // Nothing can be said inside a body of another format: the broken body says it.
        Bytes::new()
    }
}

pub mod typed;
pub use typed::TypedWatch;

#[cfg(test)]
mod tests;
