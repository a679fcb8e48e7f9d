//! A hostile upstream: it answers every request with exactly the bytes it was given (head,
//! chunk framing and all) and ends them where it was told: a clean close, a reset, or
//! silence, at any byte offset (the upstream's setting, or per request its `x-raw-end`
//! header). Real networks cut streams anywhere: inside a `data:` line,
//! inside a multi-byte character, inside a chunk-size line. [`MockUpstream`](crate::MockUpstream)
//! speaks through hyper, which frames every chunk itself; this one writes the wire.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use weir_test::raw::{chat_answer, sse_response, End, RawUpstream};
//!
//! let wire = sse_response(&chat_answer("chatcmpl-1", "m", &["Hel", "lo"], None));
//! let upstream = RawUpstream::start(wire.clone(), End::CloseAt(wire.len() - 40)).await;
//! // Point a client at upstream.base_url(): it gets the first bytes, then a FIN.
//! # drop(upstream);
//! # }
//! ```

use crate::body::json_str;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How an answer ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// All of it, and the connection stays open for the next request.
    Whole,
    /// The first `n` bytes, then an orderly close (FIN).
    CloseAt(usize),
    /// The first `n` bytes, then (once the reader has taken them) a reset (RST).
    ResetAt(usize),
    /// The first `n` bytes, then nothing, the connection held open.
    StallAt(usize),
}

/// One request the upstream received.
#[derive(Clone, Debug)]
pub struct RawRequest {
    /// The request line and headers.
    pub head: String,
    /// The body.
    pub body: Bytes,
}

#[derive(Debug)]
struct Shared {
    script: Mutex<(Vec<u8>, End)>,
    /// How answers end on a connection's later requests, if not like its first.
    reused: Mutex<Option<End>>,
    /// Bytes sent after a whole answer, after a pause: a server that says more than it was
    /// asked.
    after: Mutex<Option<(Duration, Vec<u8>)>>,
    requests: Mutex<Vec<RawRequest>>,
    connections: AtomicU64,
}

/// A running raw upstream. Dropping it stops it.
#[derive(Debug)]
pub struct RawUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: watch::Sender<()>,
}

impl RawUpstream {
    /// Starts one on `127.0.0.1` that answers `wire` (a whole HTTP response), ended as `end`.
    pub async fn start(wire: Vec<u8>, end: End) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("a bound listener");
        let shared = Arc::new(Shared {
            script: Mutex::new((wire, end)),
            reused: Mutex::new(None),
            after: Mutex::new(None),
            requests: Mutex::new(Vec::new()),
            connections: AtomicU64::new(0),
        });
        let (stop, stopped) = watch::channel(());
        tokio::spawn(accept(listener, shared.clone(), stopped));
        Self {
            addr,
            shared,
            _stop: stop,
        }
    }

    /// The base URL to configure (`http://127.0.0.1:port/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Answers from now on with `wire`, ended as `end`.
    pub fn set(&self, wire: Vec<u8>, end: End) {
        *self.shared.script.lock().expect("script lock") = (wire, end);
    }

    /// After each whole answer, `extra` bytes on the same connection `delay` later (zero: in
    /// the same write).
    pub fn set_after(&self, delay: Duration, extra: Vec<u8>) {
        *self.shared.after.lock().expect("after lock") = Some((delay, extra));
    }

    /// How answers end on a connection's second and later requests (`None`: like the
    /// first): `Some(End::CloseAt(0))` is a server that closed an idle keep-alive connection
    /// just as the client sent on it.
    pub fn set_reused_end(&self, end: Option<End>) {
        *self.shared.reused.lock().expect("script lock") = end;
    }

    /// Only the way answers end changes.
    pub fn set_end(&self, end: End) {
        self.shared.script.lock().expect("script lock").1 = end;
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<RawRequest> {
        self.shared.requests.lock().expect("log lock").clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>, mut stopped: watch::Receiver<()>) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => return,
            },
            _ = stopped.changed() => return,
        };
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = serve(stream, &shared) => {}
                _ = stopped.changed() => {}
            }
        });
    }
}

/// Reads one request (head and a `content-length` body); `None` at the end of the stream.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<RawRequest> {
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = Bytes::copy_from_slice(&buf[head_end..head_end + length]);
    buf.drain(..head_end + length);
    Some(RawRequest { head, body })
}

async fn serve(mut stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    let mut served = 0;
    while let Some(request) = read_request(&mut stream, &mut buf).await {
        let asked = asked_end(&request.head);
        shared.requests.lock().expect("log lock").push(request);
        let (wire, mut end) = shared.script.lock().expect("script lock").clone();
        if let (true, Some(reused)) = (served > 0, *shared.reused.lock().expect("script lock")) {
            end = reused;
        }
        if let Some(asked) = asked {
            end = asked;
        }
        served += 1;
        let upto = |n: usize| &wire[..n.min(wire.len())];
        match end {
            End::Whole => {
                let after = shared.after.lock().expect("after lock").clone();
                let mut wire = wire;
                let late = match after {
                    Some((delay, extra)) if delay.is_zero() => {
                        wire.extend_from_slice(&extra);
                        None
                    }
                    other => other,
                };
                if stream.write_all(&wire).await.is_err() {
                    return;
                }
                if let Some((delay, extra)) = late {
                    tokio::time::sleep(delay).await;
                    if stream.write_all(&extra).await.is_err() {
                        return;
                    }
                }
            }
            End::CloseAt(n) => {
                let _ = stream.write_all(upto(n)).await;
                let _ = stream.shutdown().await;
                // Read on until the peer closes too (a FIN, not an RST, for unread input).
                let mut rest = [0u8; 1024];
                while matches!(stream.read(&mut rest).await, Ok(n) if n > 0) {}
                return;
            }
            End::ResetAt(n) => {
                let _ = stream.write_all(upto(n)).await;
                // An RST makes the peer's kernel drop what its reader has not taken yet: let
                // it take the bytes first (under paused time this waits until every task is
                // idle, which is exactly that).
                tokio::time::sleep(Duration::from_millis(1)).await;
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                return;
            }
            End::StallAt(n) => {
                let _ = stream.write_all(upto(n)).await;
                std::future::pending::<()>().await;
            }
        }
    }
}

/// The end a request asks for in its `x-raw-end` header (`whole`, `close:N`, `reset:N`,
/// `stall:N`), which wins over the upstream's: a client several layers away (an SDK behind a
/// proxy) picks the cut of each request.
fn asked_end(head: &str) -> Option<End> {
    let value = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("x-raw-end")
            .then(|| value.trim().to_owned())
    })?;
    if value == "whole" {
        return Some(End::Whole);
    }
    let (how, at) = value.split_once(':')?;
    let at = at.parse().ok()?;
    match how {
        "close" => Some(End::CloseAt(at)),
        "reset" => Some(End::ResetAt(at)),
        "stall" => Some(End::StallAt(at)),
        _ => None,
    }
}

/// A response head: `200 OK` with these headers (`name: value` lines).
pub fn head(headers: &[&str]) -> Vec<u8> {
    let mut out = b"HTTP/1.1 200 OK\r\n".to_vec();
    for h in headers {
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A chunked body: one chunk per piece, then the last chunk.
pub fn chunked<P: AsRef<[u8]>>(pieces: &[P]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in pieces {
        let piece = piece.as_ref();
        if piece.is_empty() {
            continue;
        }
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// A whole `text/event-stream` response, one chunk per event.
pub fn sse_response<P: AsRef<[u8]>>(events: &[P]) -> Vec<u8> {
    let mut wire = head(&[
        "content-type: text/event-stream",
        "transfer-encoding: chunked",
    ]);
    wire.extend_from_slice(&chunked(events));
    wire
}

/// The events of a chat-completion stream: one chunk per token, the finish chunk, a usage
/// chunk when `usage` is `(prompt, completion)`, then `[DONE]`. Each ends with its blank line.
pub fn chat_answer<T: AsRef<str>>(
    id: &str,
    model: &str,
    tokens: &[T],
    usage: Option<(u32, u32)>,
) -> Vec<String> {
    let chunk = |delta: String, finish: &str| {
        format!(
            "data: {{\"id\":{},\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":{},\"choices\":[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}]}}\n\n",
            json_str(id),
            json_str(model)
        )
    };
    let mut events: Vec<String> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let role = if i == 0 {
                "\"role\":\"assistant\","
            } else {
                ""
            };
            chunk(
                format!("{{{role}\"content\":{}}}", json_str(t.as_ref())),
                "null",
            )
        })
        .collect();
    events.push(chunk("{}".into(), "\"stop\""));
    if let Some((prompt, completion)) = usage {
        events.push(format!(
            "data: {{\"id\":{},\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":{},\"choices\":[],\"usage\":{{\"prompt_tokens\":{prompt},\"completion_tokens\":{completion},\"total_tokens\":{}}}}}\n\n",
            json_str(id),
            json_str(model),
            prompt + completion
        ));
    }
    events.push("data: [DONE]\n\n".into());
    events
}
