//! The mock's streamed answer: a small state machine polled by hyper, with no task, channel or
//! buffer per stream, so that the mock is never the bottleneck of a benchmark.
//!
//! Each poll yields one SSE event. Chat and Completions streams are `data:` chunks, a finish
//! chunk, an optional usage chunk and `[DONE]`. Responses and Messages streams are
//! `event:`/`data:` pairs: opening events ([`Phase::Open`]), one delta per content chunk, and
//! closing events ([`Phase::Close`]).

use crate::script::{Fault, Script};
use crate::shapes::{self, ResponseObject};
use bytes::{BufMut, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

/// The error a mock body ends with when its script says so (the connection is then reset).
#[derive(Debug)]
pub struct Injected(pub &'static str);

impl std::fmt::Display for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "injected fault: {}", self.0)
    }
}

impl std::error::Error for Injected {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Responses and Messages: the opening event of this index.
    Open(u8),
    Content,
    Finish,
    /// Responses and Messages: the closing event of this index.
    Close(u8),
    Usage,
    Done,
    End,
}

/// Which API the answer speaks (the chunk shapes differ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// Chat Completions.
    Chat,
    /// Legacy Completions.
    Text,
    /// The OpenAI Responses API.
    Responses,
    /// The Anthropic Messages API.
    Messages,
}

/// What a Responses or Messages stream needs beyond a chat one.
#[derive(Debug)]
pub(crate) struct ApiStream {
    /// The `N` of the stream's ids (`resp_mock_N`, `msg_mock_N`, `toolu_mock_N`...).
    pub(crate) tag: String,
    /// Responses: the `response` object.
    pub(crate) response: Option<ResponseObject>,
}

#[derive(Debug)]
struct ApiState {
    tag: String,
    response: Option<ResponseObject>,
    /// Responses: the next event's `sequence_number`.
    seq: u64,
    /// The text (or tool arguments) streamed so far.
    text: String,
}

/// A streamed (`text/event-stream`) answer.
#[derive(Debug)]
pub struct StreamBody {
    id: Arc<str>,
    model: Arc<str>,
    shape: Shape,
    script: Script,
    include_usage: bool,
    prompt_tokens: u64,
    /// The rest of a token cut by a prefill, sent first.
    first_piece: Option<String>,
    next: u32,
    emitted: u32,
    waited: bool,
    malformed_sent: bool,
    yielded: bool,
    phase: Phase,
    sleep: Option<Pin<Box<Sleep>>>,
    stats: Arc<StreamStats>,
    /// Responses and Messages only.
    api: Option<Box<ApiState>>,
}

pub(crate) struct StreamParams {
    pub id: Arc<str>,
    pub model: Arc<str>,
    pub shape: Shape,
    pub script: Script,
    pub include_usage: bool,
    pub prompt_tokens: u64,
    pub prefill: Option<String>,
    pub stats: Arc<StreamStats>,
    /// Set for Responses and Messages.
    pub api: Option<ApiStream>,
}

impl StreamBody {
    pub(crate) fn new(mut p: StreamParams) -> Self {
        let api = p.api.take().map(|api| {
            Box::new(ApiState {
                tag: api.tag,
                response: api.response,
                seq: 0,
                text: String::new(),
            })
        });
        if api.is_some() && p.script.tool.is_some() {
            // The chunks are the pieces of the tool call's arguments, which no prefill covers.
            p.script.chunks = p.script.tool_pieces();
            p.prefill = None;
        }
        let (first_piece, next) = match &p.prefill {
            Some(prefix) => resume_point(prefix, &p.script),
            None => (None, 0),
        };
        Self {
            id: p.id,
            model: p.model,
            shape: p.shape,
            phase: if api.is_some() {
                Phase::Open(0)
            } else {
                Phase::Content
            },
            api,
            script: p.script,
            include_usage: p.include_usage,
            prompt_tokens: p.prompt_tokens,
            first_piece,
            next,
            emitted: 0,
            waited: false,
            malformed_sent: false,
            yielded: false,
            sleep: None,
            stats: p.stats,
        }
    }

    fn chunk(&self, content: Option<&str>, finish: Option<&str>) -> Bytes {
        let mut out = BytesMut::with_capacity(256);
        let _ = write!(
            Writer(&mut out),
            "data: {{\"id\":\"{}\",\"object\":\"{}\",\"created\":1700000000,\"model\":{},\"choices\":[{{\"index\":0,",
            self.id,
            match self.shape {
                Shape::Chat => "chat.completion.chunk",
                // Only Chat and Completions streams are made of these chunks.
                _ => "text_completion",
            },
            json_str(&self.model),
        );
        match self.shape {
            Shape::Chat => {
                out.put_slice(b"\"delta\":{");
                if self.emitted == 0 && content.is_some() {
                    out.put_slice(b"\"role\":\"assistant\",");
                }
                if let Some(content) = content {
                    let _ = write!(Writer(&mut out), "\"content\":{}", json_str(content));
                } else if out.ends_with(b",") {
                    out.truncate(out.len() - 1);
                }
                out.put_slice(b"},");
            }
            _ => {
                let _ = write!(
                    Writer(&mut out),
                    "\"text\":{},",
                    json_str(content.unwrap_or(""))
                );
            }
        }
        match finish {
            Some(reason) => {
                let _ = write!(Writer(&mut out), "\"finish_reason\":\"{reason}\"}}]}}\n\n");
            }
            None => out.put_slice(b"\"logprobs\":null,\"finish_reason\":null}]}\n\n"),
        }
        out.freeze()
    }

    fn usage_chunk(&self) -> Bytes {
        let completion = u64::from(self.emitted);
        Bytes::from(format!(
            "data: {{\"id\":\"{}\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":{},\"choices\":[],\"usage\":{{\"prompt_tokens\":{},\"completion_tokens\":{},\"total_tokens\":{}}}}}\n\n",
            self.id,
            json_str(&self.model),
            self.prompt_tokens,
            completion,
            self.prompt_tokens + completion
        ))
    }

    /// Responses: the next `sequence_number`.
    fn seq(api: &mut ApiState) -> u64 {
        api.seq += 1;
        api.seq - 1
    }

    /// Responses and Messages: how many opening events come before the first chunk.
    fn open_steps(&self) -> u8 {
        match self.shape {
            // created, in_progress, output_item.added, content_part.added (not for a tool call)
            Shape::Responses => 4 - u8::from(self.script.tool.is_some()),
            // message_start, content_block_start, ping
            _ => 3,
        }
    }

    /// Responses and Messages: how many closing events come after the last chunk.
    fn close_steps(&self) -> u8 {
        let all = match self.shape {
            // output_text.done, content_part.done (not for a tool call), output_item.done,
            // completed
            Shape::Responses => 4 - u8::from(self.script.tool.is_some()),
            // content_block_stop, message_delta, message_stop
            _ => 3,
        };
        // `no_done`: all but `response.completed` or `message_stop`.
        all - u8::from(self.script.fault == Some(Fault::NoDone))
    }

    fn open_event(&mut self, step: u8) -> Bytes {
        let tool = self.script.tool.as_deref();
        let api = self.api.as_deref_mut().expect("an API stream");
        if self.shape == Shape::Messages {
            return match step {
                0 => sse(
                    "message_start",
                    format_args!(
                        r#"{{"type":"message_start","message":{{"id":"msg_mock_{}","type":"message","role":"assistant","content":[],"model":{},"stop_reason":null,"stop_sequence":null,"usage":{{"input_tokens":{},"output_tokens":1}}}}}}"#,
                        api.tag,
                        json_str(&self.model),
                        self.prompt_tokens
                    ),
                ),
                1 => sse(
                    "content_block_start",
                    format_args!(
                        r#"{{"type":"content_block_start","index":0,"content_block":{}}}"#,
                        shapes::content_block_start(&api.tag, tool)
                    ),
                ),
                _ => Bytes::from_static(MESSAGES_PING),
            };
        }
        let seq = Self::seq(api);
        let response = api
            .response
            .as_ref()
            .expect("a Responses stream has its object");
        match step {
            0 | 1 => {
                let kind = if step == 0 {
                    "response.created"
                } else {
                    "response.in_progress"
                };
                sse(
                    kind,
                    format_args!(
                        r#"{{"type":"{kind}","sequence_number":{seq},"response":{}}}"#,
                        response.render("in_progress", "[]", None)
                    ),
                )
            }
            2 => {
                let item = match tool {
                    Some(name) => shapes::function_call_item(&api.tag, "in_progress", name, ""),
                    None => shapes::message_item(&api.tag, "in_progress", None),
                };
                sse(
                    "response.output_item.added",
                    format_args!(
                        r#"{{"type":"response.output_item.added","sequence_number":{seq},"output_index":0,"item":{item}}}"#
                    ),
                )
            }
            _ => sse(
                "response.content_part.added",
                format_args!(
                    r#"{{"type":"response.content_part.added","sequence_number":{seq},"item_id":"msg_mock_{}","output_index":0,"content_index":0,"part":{}}}"#,
                    api.tag,
                    shapes::output_text("")
                ),
            ),
        }
    }

    /// Responses and Messages: the delta of the next chunk.
    fn api_delta(&mut self) -> Bytes {
        let tool = self.script.tool.is_some();
        let piece = match self.first_piece.take() {
            Some(piece) => piece,
            None => {
                self.next += 1;
                if tool {
                    self.script.tool_piece(self.next - 1).to_owned()
                } else {
                    self.script.token(self.next - 1)
                }
            }
        };
        let api = self.api.as_deref_mut().expect("an API stream");
        api.text.push_str(&piece);
        let piece = json_str(&piece);
        match (self.shape, tool) {
            (Shape::Responses, false) => {
                let seq = Self::seq(api);
                sse(
                    "response.output_text.delta",
                    format_args!(
                        r#"{{"type":"response.output_text.delta","sequence_number":{seq},"item_id":"msg_mock_{}","output_index":0,"content_index":0,"delta":{piece},"logprobs":[]}}"#,
                        api.tag
                    ),
                )
            }
            (Shape::Responses, true) => {
                let seq = Self::seq(api);
                sse(
                    "response.function_call_arguments.delta",
                    format_args!(
                        r#"{{"type":"response.function_call_arguments.delta","sequence_number":{seq},"item_id":"fc_mock_{}","output_index":0,"delta":{piece}}}"#,
                        api.tag
                    ),
                )
            }
            (_, false) => sse(
                "content_block_delta",
                format_args!(
                    r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":{piece}}}}}"#
                ),
            ),
            (_, true) => sse(
                "content_block_delta",
                format_args!(
                    r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"input_json_delta","partial_json":{piece}}}}}"#
                ),
            ),
        }
    }

    fn close_event(&mut self, step: u8) -> Bytes {
        let tool = self.script.tool.as_deref();
        let emitted = u64::from(self.emitted);
        let api = self.api.as_deref_mut().expect("an API stream");
        if self.shape == Shape::Messages {
            return match step {
                0 => Bytes::from_static(
                    b"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
                ),
                1 => sse(
                    "message_delta",
                    format_args!(
                        r#"{{"type":"message_delta","delta":{{"stop_reason":"{}","stop_sequence":null}},"usage":{{"output_tokens":{emitted}}}}}"#,
                        if tool.is_some() { "tool_use" } else { "end_turn" }
                    ),
                ),
                _ => Bytes::from_static(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
            };
        }
        let seq = Self::seq(api);
        let (tag, text) = (&api.tag, &api.text);
        let item = || match tool {
            Some(name) => shapes::function_call_item(tag, "completed", name, text),
            None => shapes::message_item(tag, "completed", Some(text)),
        };
        // A tool call has no content part: its steps skip `content_part.done`.
        let step = if tool.is_some() && step > 0 {
            step + 1
        } else {
            step
        };
        match (step, tool) {
            (0, Some(name)) => sse(
                "response.function_call_arguments.done",
                format_args!(
                    r#"{{"type":"response.function_call_arguments.done","sequence_number":{seq},"item_id":"fc_mock_{tag}","output_index":0,"name":{},"arguments":{}}}"#,
                    json_str(name),
                    json_str(text)
                ),
            ),
            (0, None) => sse(
                "response.output_text.done",
                format_args!(
                    r#"{{"type":"response.output_text.done","sequence_number":{seq},"item_id":"msg_mock_{tag}","output_index":0,"content_index":0,"text":{},"logprobs":[]}}"#,
                    json_str(text)
                ),
            ),
            (1, _) => sse(
                "response.content_part.done",
                format_args!(
                    r#"{{"type":"response.content_part.done","sequence_number":{seq},"item_id":"msg_mock_{tag}","output_index":0,"content_index":0,"part":{}}}"#,
                    shapes::output_text(text)
                ),
            ),
            (2, _) => sse(
                "response.output_item.done",
                format_args!(
                    r#"{{"type":"response.output_item.done","sequence_number":{seq},"output_index":0,"item":{}}}"#,
                    item()
                ),
            ),
            _ => {
                let response = api
                    .response
                    .as_ref()
                    .expect("a Responses stream has its object");
                sse(
                    "response.completed",
                    format_args!(
                        r#"{{"type":"response.completed","sequence_number":{seq},"response":{}}}"#,
                        response.render(
                            "completed",
                            &format!("[{}]", item()),
                            Some((self.prompt_tokens, emitted))
                        )
                    ),
                )
            }
        }
    }

    /// The in-band error event of `error_event_at`.
    fn error_event(&mut self) -> Bytes {
        match self.shape {
            Shape::Chat | Shape::Text => Bytes::from_static(
                b"data: {\"error\":{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\",\"code\":null}}\n\n",
            ),
            Shape::Responses => {
                let seq = Self::seq(self.api.as_deref_mut().expect("an API stream"));
                sse(
                    "error",
                    format_args!(
                        r#"{{"type":"error","code":"server_error","message":"The server had an error while processing your request.","param":null,"sequence_number":{seq}}}"#
                    ),
                )
            }
            Shape::Messages => Bytes::from_static(
                b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
            ),
        }
    }

    /// The broken event of `malformed_at`.
    fn malformed_event(&self) -> &'static [u8] {
        match (self.shape, self.script.tool.is_some()) {
            (Shape::Chat | Shape::Text, _) => b"data: {\"choices\":[{\"delta\":{\"content\n\n",
            (Shape::Responses, false) => b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"tok\n\n",
            (Shape::Responses, true) => b"event: response.function_call_arguments.delta\ndata: {\"type\":\"response.function_call_arguments.delta\",\"delta\":\"{\n\n",
            (Shape::Messages, _) => b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\n\n",
        }
    }

    fn wait(&mut self, cx: &mut Context<'_>, pause: Duration) -> Poll<()> {
        if self.sleep.is_none() && !pause.is_zero() {
            self.sleep = Some(Box::pin(tokio::time::sleep(pause)));
        }
        if let Some(sleep) = &mut self.sleep {
            ready!(sleep.as_mut().poll(cx));
            self.sleep = None;
        }
        Poll::Ready(())
    }
}

/// Counts streams dropped before their end (the client, or a proxy, went away).
#[derive(Debug, Default)]
pub(crate) struct StreamStats {
    pub(crate) cancelled: std::sync::atomic::AtomicU64,
    /// Body bytes handed to the server, all streams together.
    pub(crate) bytes_sent: std::sync::atomic::AtomicU64,
    pub(crate) notify: tokio::sync::Notify,
}

impl Drop for StreamBody {
    fn drop(&mut self) {
        if self.phase != Phase::End {
            self.stats
                .cancelled
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            self.stats.notify.notify_waiters();
        }
    }
}

struct Writer<'a>(&'a mut BytesMut);

impl std::fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// An `event: {kind}` with `data` as its JSON.
fn sse(kind: &str, data: std::fmt::Arguments<'_>) -> Bytes {
    let mut out = BytesMut::with_capacity(256);
    let _ = write!(Writer(&mut out), "event: {kind}\ndata: {data}\n\n");
    out.freeze()
}

/// Anthropic's keep-alive event, spacing and all.
const MESSAGES_PING: &[u8] = b"event: ping\ndata: {\"type\": \"ping\"}\n\n";

pub(crate) fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// Where to resume the answer after `prefix`: the rest of a cut token, and the next token.
pub(crate) fn resume_point(prefix: &str, script: &Script) -> (Option<String>, u32) {
    let chunks = script.chunks;
    let mut done = 0;
    for i in 0..chunks {
        let t = script.token(i);
        if done + t.len() > prefix.len() {
            let cut = prefix.len() - done;
            return (Some(t[cut..].to_owned()), i + 1);
        }
        done += t.len();
    }
    (None, chunks)
}

impl Body for StreamBody {
    type Data = Bytes;
    type Error = Injected;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Injected>>> {
        let frame = ready!(self.as_mut().poll_script(cx));
        if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
            let len = data.map_or(0, |d| d.len() as u64);
            self.stats
                .bytes_sent
                .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.phase == Phase::End
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl StreamBody {
    /// The next frame of the script.
    fn poll_script(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Injected>>> {
        let this = &mut *self;
        loop {
            match this.phase {
                Phase::Content => {
                    let more = this.first_piece.is_some() || this.next < this.script.chunks;
                    if !more {
                        this.phase = Phase::Finish;
                        continue;
                    }
                    match this.script.fault {
                        Some(Fault::StallAfter(k)) if this.emitted == k => {
                            let Some(ping) = this.script.ping else {
                                return Poll::Pending;
                            };
                            ready!(this.wait(cx, ping));
                            let comment = Bytes::from_static(if this.shape == Shape::Messages {
                                MESSAGES_PING
                            } else {
                                b": ping\n\n"
                            });
                            return Poll::Ready(Some(Ok(Frame::data(comment))));
                        }
                        Some(Fault::ResetAfter(k)) if this.emitted == k => {
                            // An abort, not an RST: an RST would make the peer's kernel drop
                            // the K chunks its reader has not taken yet. Yield once first, so
                            // that hyper flushes them (it drops its write buffer on error).
                            if !std::mem::replace(&mut this.yielded, true) {
                                cx.waker().wake_by_ref();
                                return Poll::Pending;
                            }
                            return Poll::Ready(Some(Err(Injected("reset after chunks"))));
                        }
                        Some(Fault::EndAfter(k)) if this.emitted == k => {
                            this.phase = Phase::End;
                            return Poll::Ready(None);
                        }
                        Some(Fault::ErrorEventAt(k)) if this.emitted == k => {
                            this.phase = Phase::End;
                            let event = this.error_event();
                            return Poll::Ready(Some(Ok(Frame::data(event))));
                        }
                        Some(Fault::MalformedAt(k))
                            if this.emitted == k && !this.malformed_sent =>
                        {
                            this.malformed_sent = true;
                            let event = Bytes::from_static(this.malformed_event());
                            return Poll::Ready(Some(Ok(Frame::data(event))));
                        }
                        _ => {}
                    }
                    if !this.waited {
                        let pause = if this.emitted == 0 {
                            this.script.first
                        } else {
                            this.script.delay
                        };
                        ready!(this.wait(cx, pause));
                        this.waited = true;
                    }
                    this.waited = false;
                    let frame = if this.api.is_none() {
                        let content = match this.first_piece.take() {
                            Some(piece) => piece,
                            None => {
                                this.next += 1;
                                this.script.token(this.next - 1)
                            }
                        };
                        this.chunk(Some(&content), None)
                    } else {
                        this.api_delta()
                    };
                    this.emitted += 1;
                    return Poll::Ready(Some(Ok(Frame::data(frame))));
                }
                Phase::Open(step) => {
                    if step >= this.open_steps() {
                        this.phase = Phase::Content;
                        continue;
                    }
                    this.phase = Phase::Open(step + 1);
                    return Poll::Ready(Some(Ok(Frame::data(this.open_event(step)))));
                }
                Phase::Finish if this.api.is_some() => {
                    this.phase = Phase::Close(0);
                    continue;
                }
                Phase::Close(step) => {
                    this.phase = if step + 1 >= this.close_steps() {
                        Phase::End
                    } else {
                        Phase::Close(step + 1)
                    };
                    return Poll::Ready(Some(Ok(Frame::data(this.close_event(step)))));
                }
                Phase::Finish => {
                    this.phase = if this.script.fault == Some(Fault::NoDone) {
                        Phase::End
                    } else if this.include_usage {
                        Phase::Usage
                    } else {
                        Phase::Done
                    };
                    return Poll::Ready(Some(Ok(Frame::data(this.chunk(None, Some("stop"))))));
                }
                Phase::Usage => {
                    this.phase = Phase::Done;
                    return Poll::Ready(Some(Ok(Frame::data(this.usage_chunk()))));
                }
                Phase::Done => {
                    this.phase = Phase::End;
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                        b"data: [DONE]\n\n",
                    )))));
                }
                Phase::End => return Poll::Ready(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_inside_and_between_tokens() {
        let s = Script {
            chunks: 3,
            ..Script::default()
        };
        assert_eq!(resume_point("", &s), (Some("tok0 ".into()), 1));
        assert_eq!(resume_point("tok0 to", &s), (Some("k1 ".into()), 2));
        assert_eq!(resume_point("tok0 tok1 ", &s), (Some("tok2 ".into()), 3));
        assert_eq!(resume_point("tok0 tok1 tok2 ", &s), (None, 3));
    }
}
