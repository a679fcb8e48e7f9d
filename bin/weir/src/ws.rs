//! `GET /v1/ws`: chat completions streamed over one WebSocket per client.
//!
//! Each `completion` message becomes an ordinary `POST /v1/chat/completions` request (the
//! connection's headers, its key, a streamed body) that goes through the same service as an
//! HTTP request: the metrics layer, authentication, rate limits, failover and rescue, breakers.
//! Its SSE answer comes back as `chunk` messages and one `done` (or `error`). There is no
//! second code path for any of that: only the framing differs.
//!
//! Client → weir (JSON text): `{"type":"completion","id":..,"model":..,"messages":[..],...}`
//! (other chat parameters pass through), `{"type":"ping"}`, `{"type":"cancel","id":..}`,
//! `{"type":"reset"}`. weir → client: `{"type":"chunk","id":..,"delta":<OpenAI chunk>}`,
//! `{"type":"done","id":..,"usage":{..},"finish_reason":".."}`, `{"type":"pong"}`,
//! `{"type":"error","id":..,"code":"..","message":".."}`.
//!
//! A connection: authenticated at the upgrade (`Authorization`, or the subprotocol
//! `bearer.<key>` next to `weir` for browsers), its `Origin` checked against an allowlist,
//! pinged every `ping_interval`, closed when idle, rate-limited per message (1008), size-limited
//! (1009). What it sends waits in a bounded queue: a client that does not read holds up its
//! completions, which stop reading their upstreams, and the connection's write-stall guard
//! cuts it after `client_stall_timeout`. A drain lets completions finish, then closes with
//! 1001.

use crate::config::WebSocket as Config;
use crate::drain::{Minter, Token};
use crate::gateway::ResponseBody;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tower::ServiceExt;
use weir_llm::{ErrorBody, ErrorKind, SseDecoder};

/// Where the WebSocket endpoint is.
pub(crate) const PATH: &str = "/v1/ws";

/// The service each completion goes through: the same as an HTTP request's.
pub(crate) type Stack =
    weir_metrics::Metrics<crate::current::GatewayService, weir_metrics::PrometheusRecorder>;

/// What every WebSocket connection shares.
#[derive(Debug)]
pub(crate) struct Context {
    pub(crate) config: Config,
    pub(crate) stack: Stack,
    pub(crate) current: Arc<crate::current::Current>,
    pub(crate) minter: Minter,
    pub(crate) stats: Stats,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    open: AtomicI64,
    received: AtomicU64,
    sent: AtomicU64,
    closes: [AtomicU64; Close::ALL.len()],
}

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Close {
    /// The client closed it (or went away).
    Client,
    Idle,
    RateLimited,
    TooBig,
    NoPong,
    /// It stopped reading, or its connection failed.
    Stalled,
    Shutdown,
}

impl Close {
    const ALL: [Close; 7] = [
        Close::Client,
        Close::Idle,
        Close::RateLimited,
        Close::TooBig,
        Close::NoPong,
        Close::Stalled,
        Close::Shutdown,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Close::Client => "client",
            Close::Idle => "idle",
            Close::RateLimited => "rate_limited",
            Close::TooBig => "too_big",
            Close::NoPong => "no_pong",
            Close::Stalled => "stalled",
            Close::Shutdown => "shutdown",
        }
    }

    /// The close frame weir sends, if it sends one.
    fn frame(self, config: &Config) -> Option<CloseFrame> {
        let (code, reason) = match self {
            Close::Client | Close::Stalled => return None,
            Close::Idle => (CloseCode::Normal, "idle timeout".to_owned()),
            Close::RateLimited => (
                CloseCode::Policy,
                format!(
                    "message rate limit exceeded ({} per second, burst {})",
                    config.messages_per_second, config.message_burst
                ),
            ),
            Close::TooBig => (
                CloseCode::Size,
                format!("message larger than {} bytes", config.max_message_bytes),
            ),
            Close::NoPong => (CloseCode::Away, "no pong to the last ping".to_owned()),
            Close::Shutdown => (CloseCode::Away, "server shutting down".to_owned()),
        };
        Some(CloseFrame {
            code,
            reason: reason.into(),
        })
    }
}

impl Stats {
    /// The `weir_websocket_*` families.
    pub(crate) fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP weir_websocket_connections WebSocket connections open at /v1/ws.\n# TYPE weir_websocket_connections gauge\nweir_websocket_connections {}",
            self.open.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP weir_websocket_messages_total WebSocket messages received from and sent to clients.\n# TYPE weir_websocket_messages_total counter\nweir_websocket_messages_total{{direction=\"received\"}} {}\nweir_websocket_messages_total{{direction=\"sent\"}} {}",
            self.received.load(Ordering::Relaxed),
            self.sent.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP weir_websocket_closes_total WebSocket connections ended, by reason.\n# TYPE weir_websocket_closes_total counter"
        );
        for (close, n) in Close::ALL.iter().zip(&self.closes) {
            let _ = writeln!(
                out,
                "weir_websocket_closes_total{{reason=\"{}\"}} {}",
                close.as_str(),
                n.load(Ordering::Relaxed)
            );
        }
    }
}

/// The subprotocol weir speaks; browsers pass their key as `bearer.<key>` beside it.
const PROTOCOL: &str = "weir";
const BEARER_PROTOCOL: &str = "bearer.";

/// Headers of the upgrade request that do not carry over to the completions.
fn connection_only(name: &HeaderName) -> bool {
    crate::headers::is_hop_by_hop(name)
        || name.as_str().starts_with("sec-websocket-")
        || [header::CONTENT_LENGTH, header::ORIGIN, header::HOST].contains(name)
}

/// An OpenAI-style refusal with its own status.
fn refuse(
    status: StatusCode,
    kind: ErrorKind,
    message: &str,
    code: &'static str,
) -> Response<ResponseBody> {
    let mut response = crate::gateway::error(ErrorBody::new(kind, message.to_owned()).code(code));
    *response.status_mut() = status;
    response
}

/// Answers an upgrade request at `/v1/ws`: 101 and a session, or an OpenAI-style refusal.
pub(crate) fn upgrade(
    ctx: &Arc<Context>,
    mut request: Request<Incoming>,
) -> Response<ResponseBody> {
    if !ctx.config.enabled {
        return refuse(
            StatusCode::NOT_FOUND,
            ErrorKind::NotFound,
            "WebSockets are not enabled on this server.",
            "unknown_url",
        );
    }
    let headers = request.headers();
    let has = |name: HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    if request.method() != Method::GET || !has(header::UPGRADE, "websocket") {
        let mut response = refuse(
            StatusCode::UPGRADE_REQUIRED,
            ErrorKind::InvalidRequest,
            "This endpoint takes a WebSocket: GET with `Upgrade: websocket`.",
            "upgrade_required",
        );
        response
            .headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return response;
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let version_13 = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let (Some(key), true, true) = (key, version_13, has(header::CONNECTION, "upgrade")) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            ErrorKind::InvalidRequest,
            "A WebSocket upgrade needs `Connection: Upgrade`, `Sec-WebSocket-Version: 13` and a `Sec-WebSocket-Key`.",
            "invalid_upgrade",
        );
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default().to_ascii_lowercase();
        let allowed = ctx
            .config
            .origins
            .iter()
            .any(|o| o == "*" || *o == origin.trim_end_matches('/'));
        if !allowed {
            return refuse(
                StatusCode::FORBIDDEN,
                ErrorKind::Permission,
                "This origin may not open a WebSocket here.",
                "origin_not_allowed",
            );
        }
    }
    // Subprotocols: `weir`, and for browsers (which cannot set headers) `bearer.<key>`.
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .collect();
    let bearer = offered
        .iter()
        .find_map(|p| p.strip_prefix(BEARER_PROTOCOL))
        .map(str::to_owned);
    if !offered.is_empty() && !offered.iter().any(|p| p == PROTOCOL) {
        return refuse(
            StatusCode::BAD_REQUEST,
            ErrorKind::InvalidRequest,
            "Offer the subprotocol `weir` (and `bearer.<key>` to authenticate from a browser).",
            "invalid_upgrade",
        );
    }
    // Owned copies: the session keeps them for its life.
    let mut carried = crate::headers::owned_copy(headers, connection_only);
    if let (Some(key), false) = (&bearer, carried.contains_key(header::AUTHORIZATION)) {
        if let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {key}")) {
            value.set_sensitive(true);
            carried.insert(header::AUTHORIZATION, value);
        }
    }
    if !ctx.current.get().authenticates(&carried) {
        return crate::gateway::unauthorized();
    }
    let Some(token) = ctx
        .minter
        .token()
        .filter(|t| t.phase() == crate::drain::Phase::Serving)
    else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Unavailable,
            "The server is shutting down.",
            "shutting_down",
        );
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    let session_ctx = ctx.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => session(session_ctx, upgraded, carried, token).await,
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    });
    let mut response = Response::new(ResponseBody::full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(
            &tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
        )
        .expect("base64 is a valid header value"),
    );
    if !offered.is_empty() {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(PROTOCOL),
        );
    }
    response
}

/// A token bucket: `rate` messages per second, `burst` at once.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst),
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
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
enum ClientMessage {
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

fn parse(text: &str) -> ClientMessage {
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

/// An `error` message.
fn error_message(id: Option<&str>, code: &str, message: &str) -> Message {
    let text = format!(
        r#"{{"type":"error","id":{},"code":{},"message":{}}}"#,
        id.unwrap_or("null"),
        serde_json::Value::from(code),
        serde_json::Value::from(message)
    );
    Message::text(text)
}

/// The queue to the writer, counting what is sent.
#[derive(Clone, Debug)]
struct Outbox {
    tx: mpsc::Sender<Message>,
    ctx: Arc<Context>,
}

impl Outbox {
    /// Waits for room: a client that does not read holds its completions up here.
    async fn send(&self, message: Message) -> Result<(), ()> {
        self.tx.send(message).await.map_err(|_| ())?;
        self.ctx.stats.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The connection as the server hands it to hyper.
type Conn = TokioIo<weir_backpressure::WriteStall<tokio::net::TcpStream>>;

async fn session(
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

/// The largest error answer read to relay its message.
const ERROR_LIMIT: usize = 64 * 1024;

/// Runs one completion through the stack and relays its answer.
async fn complete(stack: Stack, request: Request<Full<Bytes>>, id: String, outbox: Outbox) {
    let Ok(response) = stack.oneshot(request).await;
    let (parts, body) = response.into_parts();
    if !parts.status.is_success() {
        let bytes = Limited::new(body, ERROR_LIMIT)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let (code, message) = error_fields(&bytes, parts.status);
        let _ = outbox.send(error_message(Some(&id), &code, &message)).await;
        return;
    }
    let mut body = body;
    let mut decoder = SseDecoder::new();
    let mut usage: Option<Bytes> = None;
    let mut finish: Option<String> = None;
    loop {
        let frame = match body.frame().await {
            Some(Ok(frame)) => frame,
            Some(Err(failed)) => {
                let message = format!("The answer was cut: {failed}.");
                let _ = outbox
                    .send(error_message(Some(&id), "stream_failed", &message))
                    .await;
                return;
            }
            None => {
                let _ = outbox
                    .send(error_message(
                        Some(&id),
                        "stream_failed",
                        "The answer ended before it was complete.",
                    ))
                    .await;
                return;
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        decoder.push(data);
        while let Ok(Some(event)) = decoder.next_event() {
            let data = &event.data;
            if event.is_done() {
                let text = format!(
                    r#"{{"type":"done","id":{id},"usage":{},"finish_reason":{}}}"#,
                    usage
                        .as_deref()
                        .map_or("null", |u| std::str::from_utf8(u).unwrap_or("null")),
                    finish
                        .as_deref()
                        .map_or("null".to_owned(), |f| serde_json::Value::from(f)
                            .to_string()),
                );
                let _ = outbox.send(Message::text(text)).await;
                // Read to the body's end (right after `[DONE]`), as hyper does for HTTP: the
                // upstream connection goes back to its pool and the metrics settle as
                // complete. An upstream that holds the stream open past it is not waited for
                // long.
                let rest = async { while let Some(Ok(_)) = body.frame().await {} };
                let _ = tokio::time::timeout(Duration::from_secs(1), rest).await;
                return;
            }
            if weir_llm::stream::is_error_event(data) {
                let (code, message) = error_fields(data, StatusCode::BAD_GATEWAY);
                let _ = outbox.send(error_message(Some(&id), &code, &message)).await;
                return;
            }
            if let Some(object) = usage_object(data) {
                usage = Some(object);
                continue;
            }
            if let Some(reason) = weir_llm::scan::finish_reason(data) {
                finish = Some(String::from_utf8_lossy(reason).into_owned());
            }
            let mut text = String::with_capacity(data.len() + id.len() + 32);
            text.push_str(r#"{"type":"chunk","id":"#);
            text.push_str(&id);
            text.push_str(r#","delta":"#);
            text.push_str(std::str::from_utf8(data).unwrap_or("null"));
            text.push('}');
            if outbox.send(Message::text(text)).await.is_err() {
                return;
            }
        }
    }
}

/// The `usage` object of a usage-only event (`"choices":[]`), as JSON text.
fn usage_object(data: &[u8]) -> Option<Bytes> {
    if !data.trim_ascii_end().ends_with(b"}}") {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(data).ok()?;
    let empty = value.get("choices")?.as_array()?.is_empty();
    let usage = value.get("usage").filter(|u| u.is_object() && empty)?;
    Some(serde_json::to_vec(usage).ok()?.into())
}

/// The code and message of an OpenAI-style error body.
fn error_fields(bytes: &[u8], status: StatusCode) -> (String, String) {
    let value: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    let error = &value["error"];
    let code = error["code"]
        .as_str()
        .or_else(|| error["type"].as_str())
        .map_or_else(|| format!("http_{}", status.as_u16()), str::to_owned);
    let message = error["message"].as_str().map_or_else(
        || format!("The request failed with status {status}."),
        str::to_owned,
    );
    (code, message)
}

async fn write_loop<S>(mut sink: S, mut rx: mpsc::Receiver<Message>)
where
    S: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    while let Some(message) = rx.recv().await {
        let closing = matches!(message, Message::Close(_));
        if sink.feed(message).await.is_err() {
            return;
        }
        // Several queued messages go out in one write.
        if (rx.is_empty() || closing) && sink.flush().await.is_err() {
            return;
        }
        if closing {
            break;
        }
    }
    let _ = sink.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_read_into_requests_and_refusals() {
        let ClientMessage::Completion { id, body } = parse(
            r#"{"type":"completion","id":"c1","model":"gpt-test","messages":[],"temperature":0.2,"stream":false}"#,
        ) else {
            panic!("a completion")
        };
        assert_eq!(id, r#""c1""#);
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"model":"gpt-test","messages":[],"temperature":0.2,"stream":true,"stream_options":{"include_usage":true}})
        );
        assert!(
            matches!(parse(r#"{"type":"cancel","id":7}"#), ClientMessage::Cancel { id } if id == "7")
        );
        assert!(matches!(
            parse(r#"{"type":"ping"}"#),
            ClientMessage::Ping { id: None }
        ));
        assert!(matches!(parse(r#"{"type":"reset"}"#), ClientMessage::Reset));
        for bad in [
            "not json",
            "[1,2]",
            r#"{"type":"completion","model":"m"}"#,
            r#"{"type":"completion","id":{"x":1}}"#,
            r#"{"type":"dance"}"#,
            r#"{"id":1}"#,
            r#"{"type":"cancel"}"#,
        ] {
            assert!(matches!(parse(bad), ClientMessage::Invalid { .. }), "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_refills_at_its_rate_up_to_its_burst() {
        let mut bucket = Bucket::new(2, 3);
        assert!((0..3).all(|_| bucket.take()));
        assert!(!bucket.take());
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(bucket.take());
        assert!(!bucket.take());
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!((0..10).filter(|_| bucket.take()).count(), 3);
    }

    #[test]
    fn usage_and_errors_are_read_from_events() {
        assert_eq!(
            usage_object(br#"{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#).as_deref(),
            Some(&br#"{"completion_tokens":4,"prompt_tokens":3,"total_tokens":7}"#[..])
        );
        assert_eq!(
            usage_object(br#"{"choices":[{"delta":{}}],"usage":null}"#),
            None
        );
        assert_eq!(
            error_fields(br#"{"error":{"message":"No such model.","type":"invalid_request_error","code":"model_not_found"}}"#, StatusCode::NOT_FOUND),
            ("model_not_found".to_owned(), "No such model.".to_owned())
        );
        assert_eq!(error_fields(b"", StatusCode::BAD_GATEWAY).0, "http_502");
    }
}
