//! The mock's streamed answer: a small state machine polled by hyper, with no task, channel or
//! buffer per stream, so that the mock is never the bottleneck of a benchmark.

use crate::script::{Fault, Script};
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
    Content,
    Finish,
    Usage,
    Done,
    End,
}

/// Whether the answer is chat or legacy completions (the chunk shapes differ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    Chat,
    Text,
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
}

impl StreamBody {
    pub(crate) fn new(p: StreamParams) -> Self {
        let (first_piece, next) = match &p.prefill {
            Some(prefix) => resume_point(prefix, &p.script),
            None => (None, 0),
        };
        Self {
            id: p.id,
            model: p.model,
            shape: p.shape,
            script: p.script,
            include_usage: p.include_usage,
            prompt_tokens: p.prompt_tokens,
            first_piece,
            next,
            emitted: 0,
            waited: false,
            malformed_sent: false,
            yielded: false,
            phase: Phase::Content,
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
                Shape::Text => "text_completion",
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
            Shape::Text => {
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

pub(crate) fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// Where to resume the answer after `prefix`: the rest of a cut token, and the next token.
fn resume_point(prefix: &str, script: &Script) -> (Option<String>, u32) {
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
                            let comment = Bytes::from_static(b": ping\n\n");
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
                            let event = Bytes::from_static(
                                b"data: {\"error\":{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\",\"code\":null}}\n\n",
                            );
                            return Poll::Ready(Some(Ok(Frame::data(event))));
                        }
                        Some(Fault::MalformedAt(k))
                            if this.emitted == k && !this.malformed_sent =>
                        {
                            this.malformed_sent = true;
                            let event = Bytes::from_static(
                                b"data: {\"choices\":[{\"delta\":{\"content\n\n",
                            );
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
                    let content = match this.first_piece.take() {
                        Some(piece) => piece,
                        None => {
                            this.next += 1;
                            this.script.token(this.next - 1)
                        }
                    };
                    let frame = this.chunk(Some(&content), None);
                    this.emitted += 1;
                    return Poll::Ready(Some(Ok(Frame::data(frame))));
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
