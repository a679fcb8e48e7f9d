//! The watch of the typed-event APIs: OpenAI's Responses and Anthropic's Messages.
//!
//! Both send `event: <type>` and a JSON `data:` line per event; [`Api::kind`] says what each
//! type is. The watch holds to the same rules as the chat watch: whole events only, events
//! that arrived together go out together, nothing after the end, a cut told in the API's own
//! shape, and facts for others in the [`Meter`]. One pass, no JSON parse per event: the type
//! is the `event:` field (or the data's first `"type"`), and usage, stop reasons, ids, indexes
//! and sequence numbers are substring scans of the events that carry them.
//!
//! What a continuation needs ([`Cut`]) is recorded only for an answer that is one text part:
//! a Responses answer whose only output item is one message with one `output_text` part, a
//! Messages answer whose only block is one text block. Tool calls, reasoning and thinking are
//! never continued (their deltas cannot be reproduced, and a thinking block is signed).
//!
//! - **Responses** (replay only): the continuation's opening events are dropped, its text
//!   dropped up to what the client has, and what follows re-labelled: the original response
//!   and item ids, and `sequence_number`s that go on from the client's last one.
//! - **Messages** (prefill, or replay): the continuation's `message_start` and first block
//!   start are dropped; its deltas continue the client's text block; with a prefill, the
//!   `output_tokens` of its `message_delta` count the delivered deltas too.

use super::{apply, Continuation, Cut, Meter, Verdict, Watch};
use crate::api::{Api, EventKind};
use crate::continuation::{json_string, skip_ws, unescape, Replay, Replayed};
use crate::sse::{Event, Framer};
use crate::{ErrorBody, ErrorKind, Failure};
use bytes::{Bytes, BytesMut};
use memchr::memmem::Finder;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::LazyLock;

macro_rules! finder {
    ($name:ident, $needle:expr) => {
        static $name: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new($needle));
    };
}

finder!(TYPE, b"\"type\":");
finder!(ID, b"\"id\":");
finder!(SEQUENCE, b"\"sequence_number\":");
finder!(DELTA, b"\"delta\":");
finder!(TEXT, b"\"text\":");
finder!(INDEX, b"\"index\":");
finder!(OUTPUT_INDEX, b"\"output_index\":");
finder!(INPUT_TOKENS, b"\"input_tokens\":");
finder!(OUTPUT_TOKENS, b"\"output_tokens\":");
finder!(TOTAL_TOKENS, b"\"total_tokens\":");
finder!(CACHE_CREATION, b"\"cache_creation_input_tokens\":");
finder!(CACHE_READ, b"\"cache_read_input_tokens\":");
finder!(STOP_REASON, b"\"stop_reason\":");
finder!(REASON, b"\"reason\":");
finder!(FUNCTION_CALL, b"\"function_call\"");
finder!(CONTENT_BLOCK, b"\"content_block\":");

/// The span of the value after the first `key` (a JSON string with its quotes, or a number).
fn value_at(data: &[u8], key: &Finder<'_>) -> Option<Range<usize>> {
    let at = key.find(data)? + key.needle().len();
    let value = skip_ws(&data[at..]);
    let start = data.len() - value.len();
    let len = match value.first()? {
        b'"' => json_string(value)?.1,
        b'0'..=b'9' => value.iter().take_while(|b| b.is_ascii_digit()).count(),
        _ => return None,
    };
    Some(start..start + len)
}

/// The string after the first `key`, still escaped, without its quotes.
fn string_at<'a>(data: &'a [u8], key: &Finder<'_>) -> Option<&'a [u8]> {
    let r = value_at(data, key)?;
    (data[r.start] == b'"').then(|| &data[r.start + 1..r.end - 1])
}

/// The number after the first `key`.
fn number_at(data: &[u8], key: &Finder<'_>) -> Option<u64> {
    let r = value_at(data, key)?;
    std::str::from_utf8(&data[r]).ok()?.parse().ok()
}

/// `data` with `range` replaced by `with`.
fn replaced(data: &[u8], range: Range<usize>, with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + with.len());
    out.extend_from_slice(&data[..range.start]);
    out.extend_from_slice(with);
    out.extend_from_slice(&data[range.end..]);
    out
}

/// A continuation's id to replace by the client's, wherever it is quoted.
#[derive(Debug)]
struct Swap {
    from: Finder<'static>,
    to: Box<[u8]>,
}

impl Swap {
    /// `None` when there is nothing to swap.
    fn new(from: &str, to: &str) -> Option<Self> {
        (from != to).then(|| Self {
            from: Finder::new(format!("\"{from}\"").as_bytes()).into_owned(),
            to: format!("\"{to}\"").into_bytes().into(),
        })
    }

    /// Every quoted occurrence in `data` replaced.
    fn apply(&self, data: Vec<u8>) -> Vec<u8> {
        if self.from.find(&data).is_none() {
            return data;
        }
        let mut out = Vec::with_capacity(data.len());
        let mut rest = &data[..];
        while let Some(at) = self.from.find(rest) {
            out.extend_from_slice(&rest[..at]);
            out.extend_from_slice(&self.to);
            rest = &rest[at + self.from.needle().len()..];
        }
        out.extend_from_slice(rest);
        out
    }
}

/// An event's type: its `event:` field, or its data's first `"type"`.
fn event_type<'a>(event: &Event<'a>, data: &'a [u8]) -> &'a [u8] {
    match event.name() {
        Some(name) => name,
        None => string_at(data, &TYPE).unwrap_or_default(),
    }
}

/// `event: <name>` and the data, as one event.
fn encode(name: &[u8], data: &[u8], out: &mut BytesMut) {
    if !name.is_empty() {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name);
        out.extend_from_slice(b"\n");
    }
    crate::sse::encode_data(data, out);
}

/// What the client has of a one-text-part answer.
#[derive(Debug, Default)]
struct Transcript {
    /// The response's (or message's) id.
    id: Option<Box<str>>,
    /// Responses: the message item's id.
    item: Option<Box<str>>,
    /// The text, as escaped JSON string bytes.
    text: Vec<u8>,
    /// Text deltas delivered.
    deltas: u64,
    /// Something else than one text part was delivered: never continued.
    other: bool,
    /// Events that close the text part (by type) the client has: a continuation's are
    /// dropped. Messages: `content_block_stop` of block 0.
    closed: Vec<Box<[u8]>>,
}

impl Transcript {
    fn record(&mut self, api: Api, name: &[u8], data: &[u8]) {
        match (api, name) {
            (
                Api::Responses,
                b"response.created" | b"response.in_progress" | b"response.queued",
            ) => {
                if self.id.is_none() {
                    self.id = string_at(data, &ID)
                        .and_then(|id| std::str::from_utf8(id).ok())
                        .map(Into::into);
                }
            }
            (Api::Responses, b"response.output_item.added") => {
                let message = FUNCTION_CALL.find(data).is_none()
                    && memchr::memmem::find(data, b"\"type\":\"message\"").is_some();
                if self.item.is_some() || !message {
                    self.other = true;
                } else {
                    self.item = string_at(data, &ID)
                        .and_then(|id| std::str::from_utf8(id).ok())
                        .map(Into::into);
                }
            }
            (Api::Responses, b"response.content_part.added") => {
                if memchr::memmem::find(data, b"\"output_text\"").is_none()
                    || !self.closed.is_empty()
                {
                    self.other = true;
                }
            }
            (Api::Responses, b"response.output_text.delta") => match string_at(data, &DELTA) {
                Some(text) if number_at(data, &OUTPUT_INDEX) == Some(0) => {
                    self.text.extend_from_slice(text);
                    self.deltas += 1;
                }
                _ => self.other = true,
            },
            (
                Api::Responses,
                b"response.output_text.done"
                | b"response.content_part.done"
                | b"response.output_item.done",
            ) => self.closed.push(name.into()),
            (Api::Messages, b"message_start") => {
                if self.id.is_none() {
                    self.id = string_at(data, &ID)
                        .and_then(|id| std::str::from_utf8(id).ok())
                        .map(Into::into);
                }
            }
            (Api::Messages, b"content_block_start") => {
                let text = CONTENT_BLOCK
                    .find(data)
                    .and_then(|at| string_at(&data[at..], &TYPE))
                    == Some(b"text");
                if number_at(data, &INDEX) != Some(0) || !text {
                    self.other = true;
                }
            }
            (Api::Messages, b"content_block_delta") => {
                let text = memchr::memmem::find(data, b"\"text_delta\"").is_some();
                match string_at(data, &TEXT) {
                    Some(piece) if text && number_at(data, &INDEX) == Some(0) => {
                        self.text.extend_from_slice(piece);
                        self.deltas += 1;
                    }
                    _ => self.other = true,
                }
            }
            (Api::Messages, b"content_block_stop") => self.closed.push(name.into()),
            (Api::Messages, b"ping" | b"message_delta") => {}
            // Anything else (a refusal part, a reasoning summary, an annotation...).
            (_, _) => self.other = true,
        }
    }
}

/// How a continuation's events become the original answer's.
#[derive(Debug)]
struct Splice {
    how: Continuation,
    replay: Option<Replay>,
    /// The ids the client knows, and the continuation's (learned as they pass).
    id: Option<Box<str>>,
    item: Option<Box<str>>,
    new_id: Option<Box<str>>,
    new_item: Option<Box<str>>,
    /// Closing events the client has already.
    closed: Vec<Box<[u8]>>,
    /// Prefill: text deltas the client had (counted as output tokens the continuation did
    /// not count).
    delivered: u64,
    /// Responses: the continuation's first content part (the client has it) went by.
    part_seen: bool,
    /// Responses: the continuation's response and item ids to the client's, made once.
    swaps: Option<[Option<Swap>; 2]>,
}

impl Splice {
    /// The event as the client gets it, `None` to drop it.
    fn rewrite(
        &mut self,
        api: Api,
        name: &[u8],
        data: &[u8],
        next_sequence: u64,
    ) -> Result<Option<Vec<u8>>, Failure> {
        let caught_up = self.replay.as_ref().is_none_or(Replay::caught_up);
        let kind = api.kind(name);
        if self.closed.iter().any(|c| **c == *name)
            && (api == Api::Responses || number_at(data, &INDEX) == Some(0))
        {
            return Ok(None);
        }
        let text_key = match api {
            Api::Responses => &*DELTA,
            _ => &*TEXT,
        };
        let data = match (api, name) {
            (
                Api::Responses,
                b"response.created" | b"response.in_progress" | b"response.queued",
            ) => {
                if self.new_id.is_none() {
                    self.new_id = string_at(data, &ID)
                        .and_then(|id| std::str::from_utf8(id).ok())
                        .map(Into::into);
                }
                return Ok(None);
            }
            (Api::Responses, b"response.output_item.added") if self.new_item.is_none() => {
                if FUNCTION_CALL.find(data).is_some()
                    || memchr::memmem::find(data, b"\"type\":\"message\"").is_none()
                {
                    return Err(Failure::StreamBroken);
                }
                self.new_item = string_at(data, &ID)
                    .and_then(|id| std::str::from_utf8(id).ok())
                    .map(Into::into);
                return Ok(None);
            }
            (Api::Responses, b"response.content_part.added") if !self.part_seen => {
                self.part_seen = true;
                return Ok(None);
            }
            (Api::Messages, b"message_start") => return Ok(None),
            (Api::Messages, b"content_block_start") if number_at(data, &INDEX) == Some(0) => {
                return Ok(None)
            }
            // Text after a block the client saw closed: it cannot be shown as the same block.
            (Api::Messages, b"content_block_delta")
                if caught_up
                    && number_at(data, &INDEX) == Some(0)
                    && self.closed.iter().any(|c| **c == *b"content_block_stop") =>
            {
                match string_at(data, &TEXT) {
                    Some(b"") => return Ok(None),
                    _ => return Err(Failure::StreamBroken),
                }
            }
            (Api::Responses, b"response.output_text.delta")
            | (Api::Messages, b"content_block_delta")
                if !caught_up =>
            {
                let range = value_at(data, text_key).filter(|r| data[r.start] == b'"');
                let text = range
                    .clone()
                    .and_then(|r| unescape(&data[r.start + 1..r.end - 1]));
                let replay = self.replay.as_mut().expect("not caught up: replaying");
                match replay.next(text.as_deref()) {
                    Replayed::Drop => return Ok(None),
                    Replayed::Keep => data.to_vec(),
                    Replayed::Trim(rest) => {
                        let quoted = serde_json::to_string(&rest).expect("strings serialize");
                        replaced(data, range.expect("a text was read"), quoted.as_bytes())
                    }
                    Replayed::Diverged => return Err(Failure::StreamBroken),
                }
            }
            (Api::Messages, b"message_delta") if self.how == Continuation::Prefill => {
                match value_at(data, &OUTPUT_TOKENS) {
                    Some(r) => {
                        let counted: u64 = std::str::from_utf8(&data[r.clone()])
                            .ok()
                            .and_then(|n| n.parse().ok())
                            .unwrap_or(0);
                        replaced(data, r, (counted + self.delivered).to_string().as_bytes())
                    }
                    None => data.to_vec(),
                }
            }
            // Before the replay caught up, only the text may come: anything else means the
            // new answer says something else.
            _ if !caught_up && !matches!(kind, EventKind::Ping | EventKind::Failed) => {
                return Err(Failure::StreamBroken)
            }
            _ => data.to_vec(),
        };
        if api != Api::Responses {
            return Ok(Some(data));
        }
        let mut data = data;
        if self.swaps.is_none() && caught_up {
            // The continuation's ids are known by the time it caught up.
            let swap = |new: &Option<Box<str>>, old: &Option<Box<str>>| {
                Swap::new(new.as_deref()?, old.as_deref()?)
            };
            self.swaps = Some([
                swap(&self.new_id, &self.id),
                swap(&self.new_item, &self.item),
            ]);
        }
        for swap in self.swaps.iter().flatten().flatten() {
            data = swap.apply(data);
        }
        if self.swaps.is_none() {
            for (new, old) in [(&self.new_id, &self.id), (&self.new_item, &self.item)] {
                if let Some(swap) = Swap::new(
                    new.as_deref().unwrap_or_default(),
                    old.as_deref().unwrap_or_default(),
                ) {
                    data = swap.apply(data);
                }
            }
        }
        if let Some(r) = value_at(&data, &SEQUENCE) {
            data = replaced(&data, r, next_sequence.to_string().as_bytes());
        }
        Ok(Some(data))
    }
}

/// The state of a typed-event stream, apart from its framing.
#[derive(Debug)]
struct Typed {
    api: Api,
    done: bool,
    /// Messages: a `message_delta` with a stop reason came (only `message_stop` is missing).
    finished: bool,
    told: bool,
    progress: u64,
    content: u64,
    malformed: u64,
    /// Responses: the sequence number the next event to the client carries.
    next_sequence: u64,
    /// Responses: a function call is in the answer.
    tool_call: bool,
    /// Messages: input tokens from `message_start`.
    input: Option<u64>,
    transcript: Option<Transcript>,
    meter: Meter,
}

impl Typed {
    fn dispatch(&mut self, name: &[u8], data: &[u8]) -> Verdict {
        if self.done {
            return Verdict::Drop;
        }
        let kind = self.api.kind(name);
        if !super::looks_like_object(data) {
            self.malformed += 1;
            return Verdict::Drop;
        }
        if self.api == Api::Responses {
            if let Some(n) = number_at(data, &SEQUENCE) {
                self.next_sequence = n + 1;
            }
        }
        match kind {
            EventKind::Ping => return Verdict::Keep,
            EventKind::Failed => {
                // The client has been told; the body still ends broken when the upstream's
                // does, like any failed stream.
                self.told = true;
                self.usage(name, data);
                return Verdict::Keep;
            }
            EventKind::End => {
                self.done = true;
                self.usage(name, data);
                self.finish(name, data);
            }
            EventKind::Opener => {
                if self.api == Api::Messages && name == b"message_start" {
                    self.usage(name, data);
                }
                if self.api == Api::Responses && FUNCTION_CALL.find(data).is_some() {
                    self.tool_call = true;
                }
            }
            EventKind::Content => {
                self.content += 1;
                if self.api == Api::Messages && name == b"message_delta" {
                    self.usage(name, data);
                    self.finish(name, data);
                }
            }
        }
        if let Some(transcript) = &mut self.transcript {
            transcript.record(self.api, name, data);
        }
        self.complete_now();
        Verdict::Keep
    }

    /// Usage from the events that carry it.
    fn usage(&mut self, name: &[u8], data: &[u8]) {
        match self.api {
            Api::Responses => {
                let (Some(input), Some(output)) = (
                    number_at(data, &INPUT_TOKENS),
                    number_at(data, &OUTPUT_TOKENS),
                ) else {
                    return;
                };
                let total = number_at(data, &TOTAL_TOKENS).unwrap_or(input + output);
                self.meter.set_usage(
                    u32::try_from(input).ok(),
                    u32::try_from(output).ok(),
                    u32::try_from(total).unwrap_or(u32::MAX),
                );
            }
            Api::Messages => {
                // Input counted once: the uncached tokens, and those written to or read from
                // the cache (which are billed too).
                let input = number_at(data, &INPUT_TOKENS).map(|n| {
                    n + number_at(data, &CACHE_CREATION).unwrap_or(0)
                        + number_at(data, &CACHE_READ).unwrap_or(0)
                });
                if name == b"message_start" {
                    self.input = input;
                    return;
                }
                if let Some(input) = input {
                    self.input = Some(input);
                }
                let Some(output) = number_at(data, &OUTPUT_TOKENS) else {
                    return;
                };
                let input = self.input.unwrap_or(0);
                self.meter.set_usage(
                    u32::try_from(input).ok(),
                    u32::try_from(output).ok(),
                    u32::try_from(input + output).unwrap_or(u32::MAX),
                );
            }
            Api::Chat => {}
        }
    }

    /// The finish reason, in chat's names.
    fn finish(&mut self, name: &[u8], data: &[u8]) {
        let reason = match self.api {
            Api::Responses => match name {
                b"response.incomplete" => match string_at(data, &REASON) {
                    Some(b"max_output_tokens") => "length",
                    Some(b"content_filter") => "content_filter",
                    _ => "other",
                },
                _ if self.tool_call => "tool_calls",
                _ => "stop",
            },
            Api::Messages => {
                if name == b"message_stop" {
                    return;
                }
                let reason = match string_at(data, &STOP_REASON) {
                    Some(b"end_turn" | b"stop_sequence") => "stop",
                    Some(b"max_tokens") => "length",
                    Some(b"tool_use") => "tool_calls",
                    Some(b"refusal") => "content_filter",
                    Some(_) => "other",
                    None => return,
                };
                self.finished = true;
                reason
            }
            Api::Chat => return,
        };
        if self.meter.finish_reason().is_none() {
            self.meter.set_finish(reason);
        }
    }

    fn is_complete(&self) -> bool {
        (self.done && !self.told) || self.finished
    }

    fn complete_now(&self) {
        if self.is_complete() {
            self.meter.0.complete.store(true, Ordering::Relaxed);
        }
    }
}

/// Reads a whole (non-streamed) answer of `api`: its usage and its finish reason.
pub(super) fn observe_whole(meter: &Meter, api: Api, answer: &[u8]) {
    let mut typed = TypedWatch::new(api, 0).with_meter(meter.clone()).typed;
    match api {
        Api::Responses => {
            let incomplete = memchr::memmem::find(answer, b"\"status\":\"incomplete\"").is_some();
            typed.tool_call = FUNCTION_CALL.find(answer).is_some();
            let name: &[u8] = if incomplete {
                b"response.incomplete"
            } else {
                b"response.completed"
            };
            typed.usage(name, answer);
            typed.finish(name, answer);
        }
        _ => {
            // A message: its usage object has both counts, its stop reason is at the top.
            typed.usage(b"message_start", answer);
            typed.usage(b"message_delta", answer);
            typed.finish(b"message_delta", answer);
        }
    }
}

/// The watch of a Responses or Messages stream. See the [module docs](self).
#[derive(Debug)]
pub struct TypedWatch {
    framer: Framer,
    typed: Typed,
    splice: Option<Box<Splice>>,
    drops: Vec<(Range<usize>, Option<Bytes>)>,
    /// The end event a clean end cut from its blank line, framed, for [`Watch::finish`].
    tail: Option<Bytes>,
}

impl TypedWatch {
    /// A watch of a stream of `api` (Responses or Messages) that refuses events over
    /// `max_event` bytes.
    pub fn new(api: Api, max_event: usize) -> Self {
        Self {
            framer: Framer::new(max_event),
            typed: Typed {
                api,
                done: false,
                finished: false,
                told: false,
                progress: 0,
                content: 0,
                malformed: 0,
                next_sequence: 0,
                tool_call: false,
                input: None,
                transcript: None,
                meter: Meter::default(),
            },
            splice: None,
            drops: Vec::new(),
            tail: None,
        }
    }

    /// Records what the client receives, so that a cut answer can be continued elsewhere.
    pub fn with_transcript(mut self) -> Self {
        self.typed.transcript = Some(Transcript::default());
        self
    }

    /// Shares this meter instead of a fresh one.
    pub fn with_meter(mut self, meter: Meter) -> Self {
        self.typed.meter = meter;
        self
    }

    /// What the watch learns of the answer.
    pub fn meter(&self) -> &Meter {
        &self.typed.meter
    }

    /// Data events dropped because they were not JSON objects, since the last call.
    pub fn take_malformed(&mut self) -> u64 {
        std::mem::take(&mut self.typed.malformed)
    }

    fn push_spliced(&mut self, frame: Bytes) -> Result<Option<Bytes>, Failure> {
        let splice = self.splice.as_mut().expect("splicing");
        let typed = &mut self.typed;
        let mut out = BytesMut::new();
        let mut failed = None;
        self.framer
            .push(frame, |event: &Event<'_>| {
                if failed.is_some() || typed.done {
                    return;
                }
                let Some(data) = event.joined_data() else {
                    return;
                };
                typed.progress += 1;
                let name = event_type(event, &data);
                match splice.rewrite(typed.api, name, &data, typed.next_sequence) {
                    Ok(Some(data)) => {
                        if typed.dispatch(name, &data) == Verdict::Keep {
                            encode(name, &data, &mut out);
                        }
                    }
                    Ok(None) => {}
                    Err(f) => failed = Some(f),
                }
            })
            .map_err(|_| Failure::MalformedEvent)?;
        typed.store_events();
        if let Some(f) = failed {
            return Err(f);
        }
        Ok((!out.is_empty()).then(|| out.freeze()))
    }
}

impl Typed {
    fn store_events(&self) {
        self.meter
            .0
            .content_events
            .store(self.content, Ordering::Relaxed);
    }
}

impl Watch for TypedWatch {
    fn push(&mut self, frame: Bytes) -> Result<Option<Bytes>, Failure> {
        if self.typed.done {
            return Ok(None);
        }
        if self.splice.is_some() {
            return self.push_spliced(frame);
        }
        let typed = &mut self.typed;
        let drops = &mut self.drops;
        let mut done_at = None;
        let out = self
            .framer
            .push(frame, |event: &Event<'_>| {
                let was_done = typed.done;
                let verdict = match event.joined_data() {
                    Some(data) => {
                        typed.progress += 1;
                        typed.dispatch(event_type(event, &data), &data)
                    }
                    None if typed.done => Verdict::Drop,
                    None => Verdict::Keep,
                };
                if typed.done && !was_done {
                    done_at = Some(event.range().end);
                } else if done_at.is_none() && verdict == Verdict::Drop {
                    drops.push((event.range(), None));
                }
            })
            .map_err(|_| Failure::MalformedEvent)?;
        typed.store_events();
        Ok(out.and_then(|out| apply(out, done_at, drops)))
    }

    fn progress(&self) -> u64 {
        self.typed.progress
    }

    fn is_complete(&self) -> bool {
        self.typed.is_complete()
    }

    fn is_done(&self) -> bool {
        self.typed.done
    }

    fn told(&self) -> bool {
        self.typed.told
    }

    fn ended(&mut self) {
        // The end of an answer cut from its blank line by a clean end of the stream is still
        // its end, when its data is whole JSON (a clean end right after a `}` inside it is
        // not): it goes on, framed. (Chat's watch does the same for `[DONE]`.)
        let partial = self.framer.partial();
        if self.typed.done || partial.is_empty() {
            return;
        }
        let mut name: &[u8] = b"";
        let mut data: Option<&[u8]> = None;
        for line in partial.split(|b| *b == b'\n' || *b == b'\r') {
            if let Some(v) = line.strip_prefix(b"event:") {
                name = v.trim_ascii();
            } else if let Some(v) = line.strip_prefix(b"data:") {
                if data.replace(v.trim_ascii()).is_some() {
                    return;
                }
            }
        }
        let Some(data) = data else {
            return;
        };
        if name.is_empty() {
            name = string_at(data, &TYPE).unwrap_or_default();
        }
        let api = self.typed.api;
        let ends = api.kind(name) == EventKind::End
            || (api == Api::Messages
                && name == b"message_delta"
                && string_at(data, &STOP_REASON).is_some());
        if !ends || serde_json::from_slice::<serde::de::IgnoredAny>(data).is_err() {
            return;
        }
        let mut framed = partial.to_vec();
        framed.extend_from_slice(if framed.ends_with(b"\n") {
            b"\n"
        } else {
            b"\n\n"
        });
        self.framer = Framer::new(self.framer.max_event());
        if let Ok(out) = self.push(Bytes::from(framed)) {
            self.tail = out.filter(|_| self.typed.is_complete());
        }
    }

    fn finish(&mut self) -> Option<Bytes> {
        let tail = self.tail.take();
        if !self.typed.is_complete() {
            return None;
        }
        // Messages: the stop reason came, the `message_stop` did not.
        let stop = (!self.typed.done && self.typed.api == Api::Messages)
            .then_some(&b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"[..]);
        self.typed.done = true;
        match (tail, stop) {
            (tail, None) => tail,
            (None, Some(stop)) => Some(Bytes::from_static(stop)),
            (Some(tail), Some(stop)) => Some([&tail[..], stop].concat().into()),
        }
    }

    fn cut(&self) -> Option<Cut> {
        let transcript = self.typed.transcript.as_ref()?;
        if transcript.other {
            return None;
        }
        Some(Cut {
            id: transcript.id.as_deref().unwrap_or_default().to_owned(),
            delivered: unescape(&transcript.text)?,
            events: transcript.deltas,
        })
    }

    fn resume(&mut self, how: Continuation) {
        let Some(cut) = self.cut() else {
            return;
        };
        let transcript = self
            .typed
            .transcript
            .as_ref()
            .expect("a cut has a transcript");
        self.framer = Framer::new(self.framer.max_event());
        self.splice = Some(Box::new(Splice {
            how,
            replay: match how {
                Continuation::Replay => Some(Replay::new(cut.delivered)),
                // The whitespace a prefill could not send, said again first by the
                // continuation.
                Continuation::Prefill => {
                    let (_, unsent) =
                        crate::continuation::prefill_text(self.typed.api, &cut.delivered);
                    (!unsent.is_empty()).then(|| Replay::new(unsent.to_owned()))
                }
            },
            id: transcript.id.clone(),
            item: transcript.item.clone(),
            new_id: None,
            new_item: None,
            closed: transcript.closed.clone(),
            delivered: cut.events,
            part_seen: false,
            swaps: None,
        }));
    }

    fn take_held(&mut self) -> Bytes {
        self.framer.take_partial()
    }

    fn error_event(&self, failure: Failure, message: &str) -> Bytes {
        let body = ErrorBody::new(ErrorKind::BadGateway, message.to_owned()).code(failure.as_str());
        self.typed.api.error_event(&body, self.typed.next_sequence)
    }
}

#[cfg(test)]
mod tests;
