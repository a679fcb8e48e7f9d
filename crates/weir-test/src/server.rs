use crate::body::{
    json_str, resume_point, ApiStream, Injected, Shape, StreamBody, StreamParams, StreamStats,
};
use crate::script::{Fault, Script, TOOL_ARGUMENTS};
use crate::shapes::{self, ResponseObject, ResponsesReq};
use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

type MockBody = Either<Full<Bytes>, StreamBody>;

/// How the mock behaves for every request.
#[derive(Clone, Debug, Default)]
pub struct MockConfig {
    /// When set, requests must carry `Authorization: Bearer <api_key>` or get a 401. On the
    /// Anthropic paths (`.../messages`, `.../messages/count_tokens`) the key is read from
    /// `x-api-key` or, without one, from `Authorization: Bearer` (as the `anthropic` SDK 2.x
    /// sends it), and the 401 is Anthropic-shaped.
    pub api_key: Option<String>,
    /// Keep no request log (for benchmarks).
    pub no_log: bool,
    /// Directives applied to every request before its own (see [`crate::script`]).
    pub defaults: Option<String>,
    /// Serve TLS (ALPN `h2` and `http/1.1`) instead of plain TCP: see [`crate::tls`].
    pub tls: Option<crate::tls::Tls>,
}

/// One request the mock received.
#[derive(Clone, Debug)]
pub struct LoggedRequest {
    /// When the request's headers arrived (tokio's clock).
    pub at: Instant,
    /// Method.
    pub method: Method,
    /// Path.
    pub path: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// Request body.
    pub body: Bytes,
    /// The `model` field of the body, if any.
    pub model: Option<String>,
}

#[derive(Debug)]
struct Shared {
    config: MockConfig,
    /// Directives applied before each request's own; changeable while running.
    defaults: Mutex<Option<String>>,
    /// Directives for one model's completions (by the model name before any `@`), applied
    /// after `defaults`: one model of a provider failing while another answers.
    model_defaults: Mutex<std::collections::HashMap<String, String>>,
    log: Mutex<Vec<LoggedRequest>>,
    counters: Mutex<HashMap<String, u32>>,
    ids: AtomicU64,
    connections: AtomicU64,
    streams: Arc<StreamStats>,
}

/// A running mock upstream. Dropping it stops the server and closes its connections.
#[derive(Debug)]
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
}

impl MockUpstream {
    /// Starts a mock on `127.0.0.1` on a free port.
    pub async fn start() -> Self {
        Self::start_with(MockConfig::default()).await
    }

    /// Starts a mock with `config` on `127.0.0.1` on a free port.
    pub async fn start_with(config: MockConfig) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind a loopback port");
        Self::serve(listener, config)
    }

    /// Serves on a bound listener.
    pub fn serve(listener: TcpListener, config: MockConfig) -> Self {
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let shared = Arc::new(Shared {
            defaults: Mutex::new(config.defaults.clone()),
            model_defaults: Mutex::default(),
            config,
            log: Mutex::new(Vec::new()),
            counters: Mutex::new(HashMap::new()),
            ids: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            streams: Arc::default(),
        });
        let (shutdown, stop) = watch::channel(false);
        tokio::spawn(accept_loop(listener, shared.clone(), stop));
        Self {
            addr,
            shared,
            shutdown,
        }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to configure as a provider's (`http://127.0.0.1:port/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The requests received so far, in arrival order.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared.log.lock().expect("log lock").clone()
    }

    /// Changes the directives applied to every request (`Some("fault=503")`: the provider is
    /// down; `None`: healthy again). Health probes (`GET .../models`) get the same faults.
    pub fn set_defaults(&self, directives: Option<&str>) {
        *self.shared.defaults.lock().expect("defaults lock") = directives.map(str::to_owned);
    }

    /// Sets (or, with `None`, clears) the directives of one model's completions, applied
    /// after the defaults: `set_model_defaults("gpt-4.1", Some("fault=503"))` fails that model
    /// while the provider's others answer.
    pub fn set_model_defaults(&self, model: &str, directives: Option<&str>) {
        let mut all = self.shared.model_defaults.lock().expect("defaults lock");
        match directives {
            Some(d) => all.insert(model.to_owned(), d.to_owned()),
            None => all.remove(model),
        };
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Streams dropped before their end so far (their reader went away).
    pub fn cancelled_streams(&self) -> u64 {
        self.shared.streams.cancelled.load(Ordering::Acquire)
    }

    /// Streamed body bytes handed to the server so far, every stream together: how much of
    /// its answers a proxy has pulled.
    pub fn bytes_sent(&self) -> u64 {
        self.shared.streams.bytes_sent.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` streams have been dropped before their end.
    pub async fn wait_cancelled(&self, n: u64) {
        loop {
            let notified = self.shared.streams.notify.notified();
            if self.cancelled_streams() >= n {
                return;
            }
            notified.await;
        }
    }

    /// Stops accepting and closes every connection.
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(_) => {
                    // Out of descriptors or similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let reset = Arc::new(AtomicBool::new(false));
            let socket = ResetOnDrop {
                stream,
                reset: reset.clone(),
            };
            let tls = shared.config.tls.clone();
            let handler = shared.clone();
            let service =
                hyper::service::service_fn(move |req| handle(handler.clone(), reset.clone(), req));
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new());
            match tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(socket), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.changed() => {}
                    }
                }
                Some(tls) => {
                    let Ok(stream) = tls.acceptor().accept(socket).await else {
                        return;
                    };
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.changed() => {}
                    }
                }
            }
        });
    }
}

/// The accepted socket; when a script asks for a reset, dropping it sends a TCP RST
/// (`SO_LINGER` 0) instead of an orderly FIN.
struct ResetOnDrop {
    stream: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if self.reset.load(Ordering::Acquire) {
            let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
        }
    }
}

impl AsyncRead for ResetOnDrop {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResetOnDrop {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

fn json(status: StatusCode, body: String) -> Response<MockBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Either::Left(Full::new(Bytes::from(body))))
        .expect("a valid response")
}

fn error(status: StatusCode, kind: &str, code: &str, message: &str) -> Response<MockBody> {
    json(
        status,
        format!(
            r#"{{"error":{{"message":{},"type":"{kind}","param":null,"code":"{code}"}}}}"#,
            json_str(message)
        ),
    )
}

/// Whose error shapes (and API key header) a path uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dialect {
    /// Chat Completions, Completions, Responses: `{"error":{...}}`, `Authorization: Bearer`.
    OpenAi,
    /// Messages: `{"type":"error","error":{...}}`, `x-api-key`.
    Anthropic,
}

fn anthropic_error(status: StatusCode, kind: &str, message: &str) -> Response<MockBody> {
    json(status, shapes::anthropic_error(kind, message))
}

/// An invalid request, in the path's shape.
fn invalid(dialect: Dialect, code: &str, message: &str) -> Response<MockBody> {
    match dialect {
        Dialect::OpenAi => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            code,
            message,
        ),
        Dialect::Anthropic => {
            anthropic_error(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }
}

fn internal_error(dialect: Dialect) -> Response<MockBody> {
    match dialect {
        Dialect::OpenAi => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal",
            "The server had an error",
        ),
        Dialect::Anthropic => anthropic_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "Internal server error",
        ),
    }
}

fn overloaded(dialect: Dialect) -> Response<MockBody> {
    match dialect {
        Dialect::OpenAi => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "overloaded",
            "The engine is currently overloaded",
        ),
        Dialect::Anthropic => anthropic_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded_error",
            "Overloaded",
        ),
    }
}

/// Anthropic's overload status.
fn overloaded_529(dialect: Dialect) -> Response<MockBody> {
    let status = StatusCode::from_u16(529).expect("529 is a valid status");
    match dialect {
        Dialect::OpenAi => error(status, "server_error", "overloaded", "Overloaded"),
        Dialect::Anthropic => anthropic_error(status, "overloaded_error", "Overloaded"),
    }
}

/// What a request asks for, past the models list and embeddings.
#[derive(Debug)]
enum Endpoint {
    /// An answer (streamed or whole) in this shape.
    Answer(Shape),
    /// `POST .../messages/count_tokens`.
    CountTokens,
    /// `GET .../responses/{id}` (and `.../input_items`: an empty list).
    GetResponse(String),
    /// `DELETE .../responses/{id}`.
    DeleteResponse(String),
}

/// The API key of an Anthropic request: its `x-api-key`, or else its `Authorization: Bearer`
/// (the official `anthropic` SDK, 2.x, sends the key that way).
fn anthropic_key(headers: &HeaderMap) -> Option<&str> {
    match headers.get("x-api-key") {
        Some(key) => key.to_str().ok(),
        None => headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ")),
    }
}

/// The id of a `.../responses/{id}` path.
fn response_id(path: &str) -> Option<&str> {
    let (_, id) = path.rsplit_once("/responses/")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// The text of an assistant message's content: a string, or (`blocks`) an array of text
/// blocks, concatenated.
fn message_text(content: &serde_json::Value, blocks: bool) -> Option<std::borrow::Cow<'_, str>> {
    match content {
        serde_json::Value::String(text) => Some(text.as_str().into()),
        serde_json::Value::Array(parts) if blocks => parts
            .iter()
            .map(|part| match part.get("type").and_then(|t| t.as_str()) {
                Some("text") => part.get("text").and_then(|t| t.as_str()),
                _ => None,
            })
            .collect::<Option<String>>()
            .map(Into::into),
        _ => None,
    }
}

#[derive(serde::Deserialize, Default)]
struct Req {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<serde_json::Value>,
    #[serde(default)]
    messages: Vec<serde_json::Value>,
    #[serde(default)]
    max_tokens: Option<u32>,
}

async fn handle(
    shared: Arc<Shared>,
    reset: Arc<AtomicBool>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, Injected> {
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, 8 << 20).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return Err(Injected("request body failed")),
    };
    let parsed: Req = serde_json::from_slice(&body).unwrap_or_default();
    if !shared.config.no_log {
        shared.log.lock().expect("log lock").push(LoggedRequest {
            at,
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            headers: parts.headers.clone(),
            body: body.clone(),
            model: parsed.model.clone(),
        });
    }
    let path = parts.uri.path();
    let dialect = if path.ends_with("/messages") || path.ends_with("/messages/count_tokens") {
        Dialect::Anthropic
    } else {
        Dialect::OpenAi
    };
    if let Some(key) = &shared.config.api_key {
        match dialect {
            Dialect::OpenAi => {
                let expected = format!("Bearer {key}");
                if parts
                    .headers
                    .get(header::AUTHORIZATION)
                    .map(|v| v.as_bytes())
                    != Some(expected.as_bytes())
                {
                    return Ok(error(
                        StatusCode::UNAUTHORIZED,
                        "invalid_request_error",
                        "invalid_api_key",
                        "Incorrect API key provided.",
                    ));
                }
            }
            Dialect::Anthropic => {
                if anthropic_key(&parts.headers) != Some(key.as_str()) {
                    return Ok(anthropic_error(
                        StatusCode::UNAUTHORIZED,
                        "authentication_error",
                        "invalid x-api-key",
                    ));
                }
            }
        }
    }
    if dialect == Dialect::Anthropic && !parts.headers.contains_key("anthropic-version") {
        return Ok(invalid(
            dialect,
            "missing_required_header",
            "anthropic-version: header is required",
        ));
    }
    // Like OpenAI-compatible servers (LiteLLM, vLLM), a body is read as JSON only when it is
    // labelled so: a form-encoded body has no `messages`.
    let json_body = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if parts.method == Method::POST && !json_body {
        return Ok(match dialect {
            Dialect::OpenAi => error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "missing_required_parameter",
                "Missing required parameter: 'messages'.",
            ),
            Dialect::Anthropic => invalid(dialect, "", "messages: Field required"),
        });
    }
    let defaults = shared.defaults.lock().expect("defaults lock").clone();
    if parts.method == Method::GET && path.ends_with("/models") {
        let mut script = Script::default();
        if let Some(defaults) = &defaults {
            let _ = script.apply(defaults);
        }
        match script.fault {
            Some(Fault::ServerError | Fault::ServerErrorOnce) => {
                return Ok(internal_error(Dialect::OpenAi));
            }
            Some(Fault::Unavailable) => {
                return Ok(overloaded(Dialect::OpenAi));
            }
            Some(Fault::Overloaded) => {
                return Ok(overloaded_529(Dialect::OpenAi));
            }
            Some(Fault::Reset) => {
                reset.store(true, Ordering::Release);
                return Err(Injected("reset before headers"));
            }
            Some(Fault::Silent) => std::future::pending::<()>().await,
            _ => {}
        }
        return Ok(json(
            StatusCode::OK,
            r#"{"object":"list","data":[{"id":"mock","object":"model","created":1700000000,"owned_by":"weir-test"}]}"#.to_owned(),
        ));
    }
    let endpoint = if path.ends_with("/chat/completions") {
        Endpoint::Answer(Shape::Chat)
    } else if path.ends_with("/completions") {
        Endpoint::Answer(Shape::Text)
    } else if path.ends_with("/responses") {
        Endpoint::Answer(Shape::Responses)
    } else if path.ends_with("/messages") {
        Endpoint::Answer(Shape::Messages)
    } else if path.ends_with("/messages/count_tokens") {
        Endpoint::CountTokens
    } else if parts.method == Method::GET && path.ends_with("/input_items") {
        // A stored response's input: none kept, an empty page.
        return Ok(json(
            StatusCode::OK,
            r#"{"object":"list","data":[],"first_id":null,"last_id":null,"has_more":false}"#
                .to_owned(),
        ));
    } else if let (Some(id), true) = (
        response_id(path),
        matches!(parts.method, Method::GET | Method::DELETE),
    ) {
        if parts.method == Method::GET {
            Endpoint::GetResponse(id.to_owned())
        } else {
            Endpoint::DeleteResponse(id.to_owned())
        }
    } else if path.ends_with("/embeddings") {
        let model = parsed.model.unwrap_or_default();
        return Ok(json(
            StatusCode::OK,
            format!(
                r#"{{"object":"list","data":[{{"object":"embedding","index":0,"embedding":[0.25,-0.5,0.125]}}],"model":{},"usage":{{"prompt_tokens":{},"total_tokens":{}}}}}"#,
                json_str(&model),
                body.len() / 4,
                body.len() / 4
            ),
        ));
    } else {
        return Ok(error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_url",
            "Unknown request URL",
        ));
    };

    let model = parsed.model.clone().unwrap_or_default();
    let header = parts.headers.get("x-mock").and_then(|v| v.to_str().ok());
    let base = model.split('@').next().unwrap_or_default();
    let own = shared
        .model_defaults
        .lock()
        .expect("defaults lock")
        .get(base)
        .cloned();
    let defaults = match (defaults, own) {
        (Some(all), Some(own)) => Some(format!("{all},{own}")),
        (all, own) => all.or(own),
    };
    let mut script = match Script::for_request(defaults.as_deref(), &model, header) {
        Ok(script) => script,
        Err(message) => return Ok(invalid(dialect, "mock_directive", &message)),
    };
    // The Responses API's own request fields, read only for it.
    let responses = matches!(endpoint, Endpoint::Answer(Shape::Responses))
        .then(|| serde_json::from_slice::<ResponsesReq>(&body).unwrap_or_default());
    let max = match &responses {
        Some(req) => req.max_output_tokens,
        None => parsed.max_tokens,
    };
    if let Some(max) = max {
        script.chunks = script.chunks.min(max);
    }
    let shape = match endpoint {
        Endpoint::Answer(shape) => Some(shape),
        _ => None,
    };
    let tool = match shape {
        Some(Shape::Responses | Shape::Messages) | None => script.tool.clone(),
        Some(Shape::Chat | Shape::Text) => None,
    };
    if tool.is_some() {
        script.chunks = script.tool_pieces();
    }

    if !script.headers.is_zero() {
        tokio::time::sleep(script.headers).await;
    }
    match script.fault {
        Some(Fault::TooManyRequests) => {
            let mut resp = match dialect {
                Dialect::OpenAi => error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "requests",
                    "rate_limit_exceeded",
                    "Rate limit reached for requests",
                ),
                Dialect::Anthropic => anthropic_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    "Number of request tokens has exceeded your per-minute rate limit",
                ),
            };
            if let Some(secs) = script.retry_after {
                resp.headers_mut().insert(header::RETRY_AFTER, secs.into());
            }
            return Ok(resp);
        }
        Some(Fault::ServerError) => {
            return Ok(internal_error(dialect));
        }
        Some(Fault::ServerErrorOnce) => {
            let key = script
                .key
                .clone()
                .unwrap_or_else(|| format!("{model}|{}", header.unwrap_or_default()));
            let mut counters = shared.counters.lock().expect("counter lock");
            let seen = counters.entry(key).or_insert(0);
            *seen += 1;
            if *seen == 1 {
                return Ok(internal_error(dialect));
            }
        }
        Some(Fault::Unavailable) => {
            return Ok(overloaded(dialect));
        }
        Some(Fault::Overloaded) => {
            return Ok(overloaded_529(dialect));
        }
        Some(Fault::ContextLength) => {
            return Ok(match dialect {
                Dialect::OpenAi => error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "context_length_exceeded",
                    "This model's maximum context length is 8192 tokens.",
                ),
                Dialect::Anthropic => invalid(
                    dialect,
                    "",
                    "prompt is too long: 210000 tokens > 200000 maximum",
                ),
            });
        }
        Some(Fault::ContentPolicy) => {
            return Ok(match dialect {
                Dialect::OpenAi => error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "content_policy_violation",
                    "Your request was rejected as a result of our safety system.",
                ),
                Dialect::Anthropic => {
                    invalid(dialect, "", "Output blocked by content filtering policy")
                }
            });
        }
        Some(Fault::EchoKey) => {
            return Ok(match dialect {
                Dialect::OpenAi => {
                    let presented = parts
                        .headers
                        .get(header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("Bearer "))
                        .unwrap_or_default()
                        .to_owned();
                    error(
                        StatusCode::UNAUTHORIZED,
                        "invalid_request_error",
                        "invalid_api_key",
                        &format!("Incorrect API key provided: {presented}. Check your key."),
                    )
                }
                Dialect::Anthropic => {
                    let presented = anthropic_key(&parts.headers).unwrap_or_default();
                    anthropic_error(
                        StatusCode::UNAUTHORIZED,
                        "authentication_error",
                        &format!("invalid x-api-key: {presented}"),
                    )
                }
            });
        }
        Some(Fault::Reset) => {
            reset.store(true, Ordering::Release);
            return Err(Injected("reset before headers"));
        }
        Some(Fault::Silent) => std::future::pending::<()>().await,
        _ => {}
    }

    let prompt_tokens = (body.len() / 4) as u64;
    let shape = match endpoint {
        Endpoint::Answer(shape) => shape,
        Endpoint::CountTokens => {
            return Ok(json(
                StatusCode::OK,
                format!(r#"{{"input_tokens":{prompt_tokens}}}"#),
            ));
        }
        Endpoint::DeleteResponse(id) => {
            return Ok(json(
                StatusCode::OK,
                format!(
                    r#"{{"id":{},"object":"response","deleted":true}}"#,
                    json_str(&id)
                ),
            ));
        }
        Endpoint::GetResponse(id) => {
            // Any id is a completed response of the script's answer.
            let tag = id.strip_prefix("resp_mock_").unwrap_or(&id).to_owned();
            let output = match &tool {
                Some(name) => shapes::function_call_item(&tag, "completed", name, TOOL_ARGUMENTS),
                None => shapes::message_item(&tag, "completed", Some(&script.answer())),
            };
            let object = ResponseObject::new(id, "mock", &ResponsesReq::default());
            return Ok(json(
                StatusCode::OK,
                object.render(
                    "completed",
                    &format!("[{output}]"),
                    Some((0, u64::from(script.chunks))),
                ),
            ));
        }
    };

    let prefill = match parsed.messages.last() {
        Some(last)
            if tool.is_none() && last.get("role").and_then(|r| r.as_str()) == Some("assistant") =>
        {
            last.get("content")
                .and_then(|c| message_text(c, shape == Shape::Messages))
                .filter(|text| script.answer().starts_with(&**text))
                .map(std::borrow::Cow::into_owned)
        }
        _ => None,
    };
    // Responses and messages are numbered across every mock in the process, as a provider's
    // ids are unique: a gateway remembering which provider made which response must never
    // see two mocks hand out the same one.
    static TYPED_IDS: AtomicU64 = AtomicU64::new(0);
    let n = match shape {
        Shape::Chat | Shape::Text => shared.ids.fetch_add(1, Ordering::Relaxed),
        Shape::Responses | Shape::Messages => TYPED_IDS.fetch_add(1, Ordering::Relaxed),
    };
    let id: Arc<str> = match shape {
        Shape::Chat | Shape::Text => format!("chatcmpl-mock-{n}"),
        Shape::Responses => format!("resp_mock_{n}"),
        Shape::Messages => format!("msg_mock_{n}"),
    }
    .into();
    let include_usage = parsed
        .stream_options
        .as_ref()
        .and_then(|o| o.get("include_usage"))
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let response = responses
        .as_ref()
        .map(|req| ResponseObject::new(id.to_string(), &model, req));

    if parsed.stream {
        let api = match shape {
            Shape::Chat | Shape::Text => None,
            Shape::Responses | Shape::Messages => Some(ApiStream {
                tag: n.to_string(),
                response,
            }),
        };
        let body = StreamBody::new(StreamParams {
            id,
            model: model.into(),
            shape,
            script,
            include_usage,
            prompt_tokens,
            prefill,
            stats: shared.streams.clone(),
            api,
        });
        return Ok(Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Either::Right(body))
            .expect("a valid response"));
    }

    // Not streaming: the whole answer after the time it would have taken to generate.
    match script.fault {
        Some(Fault::ResetAfter(_)) => {
            reset.store(true, Ordering::Release);
            return Err(Injected("reset before headers"));
        }
        Some(Fault::StallAfter(_)) => std::future::pending::<()>().await,
        _ => {}
    }
    let generation = script.first + script.delay * script.chunks.saturating_sub(1);
    if !generation.is_zero() {
        tokio::time::sleep(generation).await;
    }
    let full = script.answer();
    let text = match &prefill {
        Some(prefix) => &full[prefix.len()..],
        None => &full[..],
    };
    let usage = format!(
        r#""usage":{{"prompt_tokens":{prompt_tokens},"completion_tokens":{},"total_tokens":{}}}"#,
        script.chunks,
        prompt_tokens + u64::from(script.chunks)
    );
    let body = match shape {
        Shape::Chat => format!(
            r#"{{"id":"{id}","object":"chat.completion","created":1700000000,"model":{},"choices":[{{"index":0,"message":{{"role":"assistant","content":{}}},"logprobs":null,"finish_reason":"stop"}}],{usage}}}"#,
            json_str(&model),
            json_str(text)
        ),
        Shape::Text => format!(
            r#"{{"id":"{id}","object":"text_completion","created":1700000000,"model":{},"choices":[{{"index":0,"text":{},"logprobs":null,"finish_reason":"stop"}}],{usage}}}"#,
            json_str(&model),
            json_str(text)
        ),
        Shape::Responses => {
            let tag = n.to_string();
            let output = match &tool {
                Some(name) => shapes::function_call_item(&tag, "completed", name, TOOL_ARGUMENTS),
                None => shapes::message_item(&tag, "completed", Some(text)),
            };
            response
                .expect("a Responses request has its object")
                .render(
                    "completed",
                    &format!("[{output}]"),
                    Some((prompt_tokens, u64::from(script.chunks))),
                )
        }
        Shape::Messages => match (&tool, n.to_string()) {
            (Some(name), tag) => shapes::message(
                &tag,
                &model,
                &shapes::tool_use(&tag, name, TOOL_ARGUMENTS),
                "tool_use",
                prompt_tokens,
                u64::from(script.chunks),
            ),
            (None, tag) => {
                // Only the chunks after a prefill are generated.
                let generated = match &prefill {
                    Some(prefix) => {
                        let (piece, next) = resume_point(prefix, &script);
                        u32::from(piece.is_some()) + script.chunks - next
                    }
                    None => script.chunks,
                };
                shapes::message(
                    &tag,
                    &model,
                    &format!(r#"{{"type":"text","text":{}}}"#, json_str(text)),
                    "end_turn",
                    prompt_tokens,
                    u64::from(generated),
                )
            }
        },
    };
    Ok(json(StatusCode::OK, body))
}
