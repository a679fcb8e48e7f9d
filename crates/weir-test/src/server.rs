use crate::body::{json_str, Injected, Shape, StreamBody, StreamParams, StreamStats};
use crate::script::{Fault, Script};
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
    /// When set, requests must carry `Authorization: Bearer <api_key>` or get a 401.
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

fn internal_error() -> Response<MockBody> {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "internal",
        "The server had an error",
    )
}

fn overloaded() -> Response<MockBody> {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "overloaded",
        "The engine is currently overloaded",
    )
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
    if let Some(key) = &shared.config.api_key {
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
    // Like OpenAI-compatible servers (LiteLLM, vLLM), a body is read as JSON only when it is
    // labelled so: a form-encoded body has no `messages`.
    let json_body = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if parts.method == Method::POST && !json_body {
        return Ok(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "missing_required_parameter",
            "Missing required parameter: 'messages'.",
        ));
    }
    let path = parts.uri.path();
    let defaults = shared.defaults.lock().expect("defaults lock").clone();
    if parts.method == Method::GET && path.ends_with("/models") {
        let mut script = Script::default();
        if let Some(defaults) = &defaults {
            let _ = script.apply(defaults);
        }
        match script.fault {
            Some(Fault::ServerError | Fault::ServerErrorOnce) => {
                return Ok(internal_error());
            }
            Some(Fault::Unavailable) => {
                return Ok(overloaded());
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
    let shape = if path.ends_with("/chat/completions") {
        Shape::Chat
    } else if path.ends_with("/completions") {
        Shape::Text
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
        Err(message) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "mock_directive",
                &message,
            ))
        }
    };
    if let Some(max) = parsed.max_tokens {
        script.chunks = script.chunks.min(max);
    }

    if !script.headers.is_zero() {
        tokio::time::sleep(script.headers).await;
    }
    match script.fault {
        Some(Fault::TooManyRequests) => {
            let mut resp = error(
                StatusCode::TOO_MANY_REQUESTS,
                "requests",
                "rate_limit_exceeded",
                "Rate limit reached for requests",
            );
            if let Some(secs) = script.retry_after {
                resp.headers_mut().insert(header::RETRY_AFTER, secs.into());
            }
            return Ok(resp);
        }
        Some(Fault::ServerError) => {
            return Ok(internal_error());
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
                return Ok(internal_error());
            }
        }
        Some(Fault::Unavailable) => {
            return Ok(overloaded());
        }
        Some(Fault::ContextLength) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "context_length_exceeded",
                "This model's maximum context length is 8192 tokens.",
            ));
        }
        Some(Fault::ContentPolicy) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "content_policy_violation",
                "Your request was rejected as a result of our safety system.",
            ));
        }
        Some(Fault::EchoKey) => {
            let presented = parts
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default()
                .to_owned();
            return Ok(error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "invalid_api_key",
                &format!("Incorrect API key provided: {presented}. Check your key."),
            ));
        }
        Some(Fault::Reset) => {
            reset.store(true, Ordering::Release);
            return Err(Injected("reset before headers"));
        }
        Some(Fault::Silent) => std::future::pending::<()>().await,
        _ => {}
    }

    let prefill = match parsed.messages.last() {
        Some(last) if last.get("role").and_then(|r| r.as_str()) == Some("assistant") => last
            .get("content")
            .and_then(|c| c.as_str())
            .filter(|text| script.answer().starts_with(text))
            .map(str::to_owned),
        _ => None,
    };
    let id: Arc<str> = format!(
        "chatcmpl-mock-{}",
        shared.ids.fetch_add(1, Ordering::Relaxed)
    )
    .into();
    let include_usage = parsed
        .stream_options
        .as_ref()
        .and_then(|o| o.get("include_usage"))
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let prompt_tokens = (body.len() / 4) as u64;

    if parsed.stream {
        let body = StreamBody::new(StreamParams {
            id,
            model: model.into(),
            shape,
            script,
            include_usage,
            prompt_tokens,
            prefill,
            stats: shared.streams.clone(),
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
    };
    Ok(json(StatusCode::OK, body))
}
