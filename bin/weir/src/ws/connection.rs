//! One connection: its messages read, its completions started and cancelled, its answers
//! written in order through a bounded queue.

use crate::drain::Token;
use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::complete::complete;
use super::outbox::{error_message, write_loop, Outbox};
use super::stats::Close;
use super::Context;

/// A token bucket: `rate` messages per second, `burst` at once.
#[derive(Debug)]
pub(super) struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    pub(super) fn new(rate: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst),
            at: Instant::now(),
        }
    }

    pub(super) fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One client message, as far as the session needs it.
pub(super) enum ClientMessage {
    Completion { id: String, body: Bytes },
    Ping { id: Option<String> },
    Cancel { id: String },
    Reset,
    Invalid { id: Option<String>, message: String },
}

/// A client id, kept as the JSON it was sent as (a string or a number).
fn id_of(value: Option<&serde_json::Value>) -> Option<String> {
    match value? {
        v @ (serde_json::Value::String(_) | serde_json::Value::Number(_)) => Some(v.to_string()),
        _ => None,
    }
}

pub(super) fn parse(text: &str) -> ClientMessage {
    let Ok(serde_json::Value::Object(mut message)) = serde_json::from_str(text) else {
        return ClientMessage::Invalid {
            id: None,
            message: "Messages are JSON objects with a `type`.".to_owned(),
        };
    };
    let kind = message.remove("type");
    let id = id_of(message.get("id"));
    match kind.as_ref().and_then(|t| t.as_str()) {
        Some("completion") => {
            let Some(id) = id else {
                return ClientMessage::Invalid {
                    id: None,
                    message: "A completion needs an `id` (a string or a number).".to_owned(),
                };
            };
            message.remove("id");
            message.insert("stream".to_owned(), serde_json::Value::Bool(true));
            // The `done` message reports usage.
            message.insert(
                "stream_options".to_owned(),
                serde_json::json!({ "include_usage": true }),
            );
            let body = serde_json::to_vec(&message).expect("JSON values serialize");
            ClientMessage::Completion {
                id,
                body: body.into(),
            }
        }
        Some("ping") => ClientMessage::Ping { id },
        Some("cancel") => match id {
            Some(id) => ClientMessage::Cancel { id },
            None => ClientMessage::Invalid {
                id: None,
                message: "`cancel` needs the `id` of a completion.".to_owned(),
            },
        },
        Some("reset") => ClientMessage::Reset,
        Some(other) => ClientMessage::Invalid {
            id,
            message: format!(
                "Unknown message type `{}`: use completion, ping, cancel or reset.",
                other.chars().take(64).collect::<String>()
            ),
        },
        None => ClientMessage::Invalid {
            id,
            message: "Messages need a `type`: completion, ping, cancel or reset.".to_owned(),
        },
    }
}

/// The connection as the server hands it to hyper.
type Conn = TokioIo<weir_backpressure::WriteStall<tokio::net::TcpStream>>;

pub(super) async fn session(
    ctx: Arc<Context>,
    upgraded: hyper::upgrade::Upgraded,
    headers: HeaderMap,
    mut token: Token,
) {
    let config = &ctx.config;
    // tungstenite's defaults (128 KiB read buffer allocated up front, 64 MiB messages, an
    // unbounded write buffer) are far too large for a proxy holding thousands of clients.
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(config.max_message_bytes.max(64 * 1024) * 2)
        .max_message_size(Some(config.max_message_bytes))
        .max_frame_size(Some(config.max_message_bytes));
    // The socket itself, not hyper's wrapper: the wrapper keeps hyper's 8 KiB read buffer
    // alive for the connection's life (through the bytes read ahead of the upgrade, even none).
    let Ok(parts) = upgraded.downcast::<Conn>() else {
        tracing::error!("a WebSocket upgrade on an unexpected connection type");
        return;
    };
    let early = parts.read_buf.to_vec();
    drop(parts.read_buf);
    let ws = tokio_tungstenite::WebSocketStream::from_partially_read(
        parts.io.into_inner(),
        early,
        Role::Server,
        Some(ws_config),
    )
    .await;
    let (sink, mut stream) = ws.split();
    let (tx, rx) = mpsc::channel(config.send_queue);
    let writer = tokio::spawn(write_loop(sink, rx));
    let outbox = Outbox {
        tx,
        ctx: ctx.clone(),
    };
    ctx.stats.open.fetch_add(1, Ordering::Relaxed);

    let mut completions: JoinSet<()> = JoinSet::new();
    let mut in_flight: HashMap<String, AbortHandle> = HashMap::new();
    let mut bucket = Bucket::new(config.messages_per_second, config.message_burst);
    let mut last_active = Instant::now();
    let mut ping =
        tokio::time::interval_at(last_active + config.ping_interval, config.ping_interval);
    let mut awaiting_pong = false;
    let mut draining = false;
    let mut deadline = token.clone();
    let close = loop {
        let idle_at = last_active + config.idle_timeout;
        tokio::select! {
            biased;
            _ = deadline.deadline() => break Close::Shutdown,
            _ = token.draining(), if !draining => {
                draining = true;
                if in_flight.is_empty() {
                    break Close::Shutdown;
                }
            }
            _ = outbox.tx.closed() => break Close::Stalled,
            Some(_) = completions.join_next(), if !completions.is_empty() => {
                in_flight.retain(|_, task| !task.is_finished());
                last_active = Instant::now();
                if draining && in_flight.is_empty() {
                    break Close::Shutdown;
                }
            }
            _ = tokio::time::sleep_until(idle_at), if in_flight.is_empty() => break Close::Idle,
            _ = ping.tick() => {
                if std::mem::replace(&mut awaiting_pong, true) {
                    break Close::NoPong;
                }
                // A full queue means the client is not reading: the stall guard handles it.
                let _ = outbox.tx.try_send(Message::Ping(Bytes::new()));
            }
            received = stream.next() => {
                let message = match received {
                    None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => break Close::Client,
                    Some(Err(WsError::Capacity(_))) => break Close::TooBig,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "WebSocket read failed");
                        break Close::Client;
                    }
                    Some(Ok(message)) => message,
                };
                match message {
                    Message::Pong(_) => awaiting_pong = false,
                    Message::Close(_) => break Close::Client,
                    Message::Frame(_) | Message::Ping(_) => {}
                    Message::Binary(_) | Message::Text(_) => {
                        ctx.stats.received.fetch_add(1, Ordering::Relaxed);
                        if !bucket.take() {
                            break Close::RateLimited;
                        }
                        last_active = Instant::now();
                        let Message::Text(text) = message else {
                            let _ = outbox.send(error_message(None, "invalid_message", "Binary messages are not supported: send JSON text.")).await;
                            continue;
                        };
                        on_text(&ctx, &outbox, &headers, text.as_str(), draining, &mut completions, &mut in_flight).await;
                    }
                }
            }
        }
    };
    ctx.stats.open.fetch_sub(1, Ordering::Relaxed);
    ctx.stats.closes[Close::ALL.iter().position(|c| *c == close).expect("listed")]
        .fetch_add(1, Ordering::Relaxed);
    // Completions still running end here: their answers are dropped, their upstream requests
    // cancelled.
    completions.abort_all();
    if let Some(frame) = close.frame(config) {
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            outbox.tx.send(Message::Close(Some(frame))),
        )
        .await;
    }
    drop(outbox);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    drop((token, deadline));
}

/// tungstenite's read buffer: allocated when the connection opens, so it is what an idle
/// connection costs; messages larger than it are read in several steps.
const READ_BUFFER: usize = 2048;

async fn on_text(
    ctx: &Arc<Context>,
    outbox: &Outbox,
    headers: &HeaderMap,
    text: &str,
    draining: bool,
    completions: &mut JoinSet<()>,
    in_flight: &mut HashMap<String, AbortHandle>,
) {
    match parse(text) {
        ClientMessage::Invalid { id, message } => {
            let _ = outbox
                .send(error_message(id.as_deref(), "invalid_message", &message))
                .await;
        }
        ClientMessage::Ping { id } => {
            let text = match id {
                Some(id) => format!(r#"{{"type":"pong","id":{id}}}"#),
                None => r#"{"type":"pong"}"#.to_owned(),
            };
            let _ = outbox.send(Message::text(text)).await;
        }
        ClientMessage::Cancel { id } => match in_flight.remove(&id) {
            Some(task) => {
                task.abort();
                let _ = outbox
                    .send(error_message(
                        Some(&id),
                        "cancelled",
                        "Cancelled by the client.",
                    ))
                    .await;
            }
            None => {
                let _ = outbox
                    .send(error_message(
                        Some(&id),
                        "unknown_id",
                        "No completion with this id is in flight.",
                    ))
                    .await;
            }
        },
        ClientMessage::Reset => {
            for (id, task) in in_flight.drain() {
                task.abort();
                let _ = outbox
                    .send(error_message(
                        Some(&id),
                        "cancelled",
                        "Cancelled by a reset.",
                    ))
                    .await;
            }
        }
        ClientMessage::Completion { id, body } => {
            in_flight.retain(|_, task| !task.is_finished());
            let refusal = if draining {
                Some((
                    "shutting_down",
                    "The server is shutting down: no new completions.".to_owned(),
                ))
            } else if in_flight.contains_key(&id) {
                Some((
                    "duplicate_id",
                    "A completion with this id is already in flight.".to_owned(),
                ))
            } else if in_flight.len() >= ctx.config.max_in_flight {
                Some((
                    "too_many_completions",
                    format!(
                        "At most {} completions may run at once on one connection.",
                        ctx.config.max_in_flight
                    ),
                ))
            } else {
                None
            };
            if let Some((code, message)) = refusal {
                let _ = outbox.send(error_message(Some(&id), code, &message)).await;
                return;
            }
            let mut request = Request::new(Full::new(body));
            *request.method_mut() = Method::POST;
            *request.uri_mut() = http::Uri::from_static("/v1/chat/completions");
            *request.headers_mut() = headers.clone();
            request.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            let task = completions.spawn(complete(
                ctx.stack.clone(),
                request,
                id.clone(),
                outbox.clone(),
            ));
            in_flight.insert(id, task);
        }
    }
}
