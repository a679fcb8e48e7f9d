//! The TOML configuration file.
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:8080"
//! admin_listen = "127.0.0.1:9090"
//!
//! [[providers]]
//! name = "openai"
//! base_url = "https://api.openai.com/v1"
//! api_key = "${OPENAI_API_KEY}"
//!
//! [[routes]]
//! model = "gpt-4.1"
//! targets = [{ provider = "openai", model = "gpt-4.1" }]
//! ```
//!
//! Loading never half-succeeds: every unknown key, wrong type, dangling reference or missing
//! environment variable is refused with the file, the line and the key. Upstream API keys come
//! only from the environment (`"${VAR}"`) and are held in [`Secret`], whose `Debug` is redacted.

use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`
    pub server: Server,
    /// `[telemetry]`
    pub telemetry: Telemetry,
    /// `[websocket]`: the `GET /v1/ws` endpoint.
    pub websocket: WebSocket,
    /// `[[providers]]`, in file order.
    pub providers: Vec<Provider>,
    /// `[[routes]]`, in file order.
    pub routes: Vec<Route>,
    /// `[[keys]]`: the client keys (none: every client is accepted).
    pub keys: Vec<ClientKey>,
    /// `[prices]`: USD per million tokens, by the model name sent upstream.
    pub prices: HashMap<String, weir_metrics::Price>,
}

/// `[[keys]]`: one client key, stored as its SHA-256 hash.
#[derive(Debug, Clone)]
pub struct ClientKey {
    /// Its name: the only way it appears in metrics and logs.
    pub name: String,
    /// SHA-256 of the key.
    pub hash: [u8; 32],
    /// The routes' models it may use (`None`: all).
    pub models: Option<Vec<String>>,
    /// Its own rate limits (`limits = {...}`).
    pub limits: Option<RateLimit>,
}

/// `rate_limit = { requests_per_minute, tokens_per_minute, ... }`.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    /// Requests per minute, and their burst.
    pub requests: Option<(u32, u32)>,
    /// Tokens per minute (prompt estimate plus `max_tokens`, settled from usage), and burst.
    pub tokens: Option<(u32, u32)>,
    /// How long a request may wait for the limit (a provider's; 0: go to the next target).
    pub wait: Duration,
}

/// `[server]`: listeners and limits of the client-facing side.
#[derive(Debug, Clone)]
pub struct Server {
    /// The public address (OpenAI-compatible API).
    pub listen: SocketAddr,
    /// The admin address (`/healthz`, `/readyz`). Keep it off the public network.
    pub admin_listen: SocketAddr,
    /// The largest request body accepted (413 above).
    pub max_request_bytes: usize,
    /// How long a client may take to send its request headers (slowloris bound).
    pub header_read_timeout: Duration,
    /// On SIGTERM, how long in-flight streams may run before weir exits anyway.
    pub drain_timeout: Duration,
    /// The limit on requests in flight across every route (`max_concurrency`, ...).
    pub concurrency: Option<Concurrency>,
    /// A client that reads nothing for this long is cut, which cancels its upstream request.
    pub client_stall_timeout: Duration,
    /// Limits on every client together.
    pub rate_limit: Option<RateLimit>,
}

/// A concurrency limit: `max_concurrency`, `max_queue`, `queue_timeout` (and, on a provider,
/// `adaptive_concurrency`).
#[derive(Debug, Clone, PartialEq)]
pub struct Concurrency {
    /// Requests (streams included, to their end) in flight at once.
    pub max: usize,
    /// Requests that may wait for a slot; beyond it they are refused at once (503).
    pub max_queue: usize,
    /// The longest a request waits for a slot before it is refused (503).
    pub queue_timeout: Duration,
    /// The limit follows time to first token, between `min` and `max` (off when `None`).
    pub adaptive: Option<AdaptiveConcurrency>,
}

/// `adaptive_concurrency = { min = 4, first_token_target = "2s" }`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveConcurrency {
    /// The lowest the limit goes.
    pub min: usize,
    /// A first token later than this (or a 429, a 5xx, an error) lowers the limit.
    pub first_token_target: Duration,
}

/// `[websocket]`: completions streamed over one WebSocket per client at `GET /v1/ws`.
#[derive(Debug, Clone, PartialEq)]
pub struct WebSocket {
    /// Whether `/v1/ws` is served.
    pub enabled: bool,
    /// Browser origins allowed to connect (`Origin`); `*` for any. A request without `Origin`
    /// (not a browser) is always allowed; one from an origin not listed gets 403.
    pub origins: Vec<String>,
    /// How often weir pings; a connection that has not answered the last ping by the next is
    /// closed.
    pub ping_interval: Duration,
    /// A connection with nothing in flight that sends no message for this long is closed.
    pub idle_timeout: Duration,
    /// The largest message (and frame) a client may send; close 1009 above.
    pub max_message_bytes: usize,
    /// Completions in flight at once on one connection.
    pub max_in_flight: usize,
    /// Messages a connection may send per second, and its burst; close 1008 beyond.
    pub messages_per_second: u32,
    /// See `messages_per_second`.
    pub message_burst: u32,
    /// Messages waiting to be written to one client; a completion whose client does not read
    /// waits (and stops reading its upstream) when it is full.
    pub send_queue: usize,
}

/// `[telemetry]`: logs, the access log and trace export.
#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    /// `text` or `json` log lines on stderr.
    pub log_format: LogFormat,
    /// An `EnvFilter` directive (`info`, `weir=debug`, ...). `WEIR_LOG` overrides it.
    pub log_level: String,
    /// One line per request (target `weir::access`, level INFO) when its answer ends.
    pub access_log: bool,
    /// Trace export over OTLP (`None`: no spans are made).
    pub otlp: Option<Otlp>,
}

/// Where and how spans are exported: `otlp_endpoint` and its companions, or the standard
/// `OTEL_*` variables for what the file leaves out.
#[derive(Debug, Clone, PartialEq)]
pub struct Otlp {
    /// The collector: `http://host:4317` (gRPC) or `http://host:4318` (HTTP; `/v1/traces`
    /// is added unless the path already names it).
    pub endpoint: String,
    /// `grpc` or `http/protobuf`.
    pub protocol: OtlpProtocol,
    /// `service.name` of the resource.
    pub service_name: String,
    /// The share of new traces kept (a client's sampled flag is followed).
    pub sample_ratio: f64,
    /// Spans waiting for export; more are dropped (and counted), never waited for.
    pub max_queue: usize,
    /// The most spans in one export.
    pub max_batch: usize,
    /// How long an export may take before it is abandoned.
    pub export_timeout: Duration,
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    HttpProtobuf,
}

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// A value that must never be shown: `Debug` and `Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself. Call it only where the value is sent upstream.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// `[[providers]]`: one upstream API.
#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    /// The name routes refer to.
    pub name: String,
    /// The base URL, without a trailing `/` (`https://api.openai.com/v1`).
    pub base_url: http::Uri,
    /// Sent as `Authorization: Bearer <key>`.
    pub api_key: Option<Secret>,
    /// Extra headers sent on every request (values may be `${VAR}`; they are treated as
    /// secrets).
    pub headers: Vec<(http::HeaderName, Secret)>,
    /// Plain `http://` allowed (local models, tests).
    pub allow_http: bool,
    /// `auto` (HTTP/2 when TLS negotiates it), `http1`, or `http2` (h2c on plain http).
    pub http_version: weir_client::HttpVersion,
    /// TLS roots: `webpki` (built in) or `native` (the OS store).
    pub tls_roots: weir_client::TlsRoots,
    /// Certificates trusted besides those roots (`tls_ca`, a PEM file).
    pub extra_roots: Vec<weir_client::CertificateDer<'static>>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Time allowed for the response headers (for a non-streaming request, the whole answer).
    pub response_timeout: Duration,
    /// Longest silence allowed between two events of a stream.
    pub idle_timeout: Duration,
    /// The largest event of a stream: a larger one fails the attempt.
    pub max_event_bytes: usize,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// Idle pooled connections kept.
    pub pool_max_idle: usize,
    /// The circuit breaker's policy (`breaker = {...}`).
    pub breaker: weir_breaker::PolicyConfig,
    /// Count 429 as a failure (by default it only keeps the provider out for `Retry-After`).
    pub breaker_counts_rate_limits: bool,
    /// A first byte later than this counts as a failure.
    pub slow_first_byte: Option<Duration>,
    /// Active health probes (`health = {...}`).
    pub health: Health,
    /// The limit on requests in flight to this provider.
    pub concurrency: Option<Concurrency>,
    /// Open connections per host at most (in use and idle); a request that needs one more
    /// waits for one to come back.
    pub max_connections: Option<usize>,
    /// The provider's own published limits: weir keeps under them.
    pub rate_limit: Option<RateLimit>,
}

/// Active health probing of a provider.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// What a probe sends.
    pub probe: Probe,
    /// Time between probes.
    pub interval: Duration,
    /// How long a probe may take.
    pub timeout: Duration,
}

/// What a health probe sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// No active probes: the breaker learns from traffic only.
    Off,
    /// `GET {base_url}/models`.
    Models,
    /// A one-token chat completion to this model.
    Completion(String),
}

/// `[[routes]]`: a model name clients ask for, and where it goes.
#[derive(Debug, Clone)]
pub struct Route {
    /// The model name clients send.
    pub model: String,
    /// The upstreams that serve it, in order of preference: a request goes to the first whose
    /// breaker admits it, and fails over down the list.
    pub targets: Vec<Target>,
    /// `strategy = "weighted"`: each call draws its order of targets by weight.
    pub weighted: bool,
    /// How long retries and failovers may go on before the client gets the last answer.
    pub request_timeout: Duration,
    /// How long a stream may take from its headers to its first event before weir fails over.
    pub first_token_timeout: Duration,
    /// With no first event after this long, also start the request on the next target; the
    /// first to answer wins.
    pub hedge_after: Option<Duration>,
    /// Retry limits by failure class (`retry = {...}`).
    pub retry: weir_failover::RetryPolicy,
    /// Retries and failovers as a share of requests (`retry_budget = {...}`).
    pub retry_budget: RetryBudgetConfig,
    /// Limits on every client of this route together.
    pub rate_limit: Option<RateLimit>,
}

/// `retry_budget = { ratio, per_second, window }`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetConfig {
    /// Retries allowed per request over the window (0.2: one in five).
    pub ratio: f64,
    /// Retries allowed per second of the window regardless of traffic.
    pub per_second: f64,
    /// The window.
    pub window: Duration,
}

/// One target of a route.
#[derive(Debug, Clone)]
pub struct Target {
    /// Index into [`Config::providers`].
    pub provider: usize,
    /// The model name sent upstream.
    pub model: String,
    /// The model's context window in tokens, if known: after `context_length_exceeded`, only
    /// targets with a larger window are tried.
    pub context_window: Option<u32>,
    /// How this target may continue an answer cut on another.
    pub continuation: Continuation,
    /// Its share of first attempts under `strategy = "weighted"`.
    pub weight: u32,
}

/// How a target continues an answer that broke elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continuation {
    /// Re-send the request; keep the new answer past what the client has, if it matches.
    Replay,
    /// Send the partial answer as a final assistant message; the target writes the rest.
    Prefill,
    /// Never continue an answer here.
    None,
}

/// Why a configuration was refused. `Display` is the message for the operator:
/// `file:line:column: key: what is wrong`.
#[derive(Debug)]
pub struct ConfigError {
    file: PathBuf,
    line: usize,
    column: usize,
    key: String,
    message: String,
}

impl ConfigError {
    /// The 1-based line of the offending key or value (0 when the error is about the file).
    pub fn line(&self) -> usize {
        self.line
    }

    /// The key at fault (dotted path), empty when unknown.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

// ---- raw file shape ----------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: Spanned<RawServer>,
    #[serde(default)]
    keys: Vec<Spanned<RawKey>>,
    #[serde(default)]
    telemetry: Option<RawTelemetry>,
    #[serde(default)]
    prices: BTreeMap<Spanned<String>, RawPrice>,
    #[serde(default)]
    websocket: Option<RawWebSocket>,
    #[serde(default)]
    providers: Vec<Spanned<RawProvider>>,
    #[serde(default)]
    routes: Vec<Spanned<RawRoute>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Spanned<String>,
    admin_listen: Spanned<String>,
    #[serde(default)]
    max_request_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    header_read_timeout: Option<Spanned<String>>,
    #[serde(default)]
    drain_timeout: Option<Spanned<String>>,
    #[serde(default)]
    max_concurrency: Option<Spanned<u64>>,
    #[serde(default)]
    max_queue: Option<Spanned<u64>>,
    #[serde(default)]
    queue_timeout: Option<Spanned<String>>,
    #[serde(default)]
    client_stall_timeout: Option<Spanned<String>>,
    #[serde(default)]
    rate_limit: Option<Spanned<RawRate>>,
    #[serde(default)]
    auth: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    #[serde(default)]
    requests_per_minute: Option<Spanned<u32>>,
    #[serde(default)]
    tokens_per_minute: Option<Spanned<u32>>,
    #[serde(default)]
    request_burst: Option<Spanned<u32>>,
    #[serde(default)]
    token_burst: Option<Spanned<u32>>,
    #[serde(default)]
    wait: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    name: Spanned<String>,
    hash: Spanned<String>,
    #[serde(default)]
    models: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    limits: Option<Spanned<RawRate>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdaptive {
    min: Spanned<u64>,
    first_token_target: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    #[serde(default)]
    log_format: Option<LogFormat>,
    #[serde(default)]
    log_level: Option<String>,
    #[serde(default)]
    access_log: Option<bool>,
    #[serde(default)]
    otlp_endpoint: Option<Spanned<String>>,
    #[serde(default)]
    otlp_protocol: Option<Spanned<String>>,
    #[serde(default)]
    service_name: Option<Spanned<String>>,
    #[serde(default)]
    sample_ratio: Option<Spanned<f64>>,
    #[serde(default)]
    max_queue: Option<Spanned<u64>>,
    #[serde(default)]
    max_batch: Option<Spanned<u64>>,
    #[serde(default)]
    export_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWebSocket {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    origins: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    ping_interval: Option<Spanned<String>>,
    #[serde(default)]
    idle_timeout: Option<Spanned<String>>,
    #[serde(default)]
    max_message_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    max_in_flight: Option<Spanned<u64>>,
    #[serde(default)]
    messages_per_second: Option<Spanned<u64>>,
    #[serde(default)]
    message_burst: Option<Spanned<u64>>,
    #[serde(default)]
    send_queue: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    input: Spanned<f64>,
    output: Spanned<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    name: Spanned<String>,
    base_url: Spanned<String>,
    #[serde(default)]
    api_key: Option<Spanned<String>>,
    #[serde(default)]
    headers: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    allow_http: bool,
    #[serde(default)]
    http_version: Option<Spanned<String>>,
    #[serde(default)]
    tls_roots: Option<Spanned<String>>,
    #[serde(default)]
    tls_ca: Option<Spanned<String>>,
    #[serde(default)]
    connect_timeout: Option<Spanned<String>>,
    #[serde(default)]
    response_timeout: Option<Spanned<String>>,
    #[serde(default)]
    idle_timeout: Option<Spanned<String>>,
    #[serde(default)]
    max_event_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    pool_idle_timeout: Option<Spanned<String>>,
    #[serde(default)]
    pool_max_idle: Option<usize>,
    #[serde(default)]
    breaker: Option<RawBreaker>,
    #[serde(default)]
    health: Option<RawHealth>,
    #[serde(default)]
    max_concurrency: Option<Spanned<u64>>,
    #[serde(default)]
    max_queue: Option<Spanned<u64>>,
    #[serde(default)]
    queue_timeout: Option<Spanned<String>>,
    #[serde(default)]
    adaptive_concurrency: Option<Spanned<RawAdaptive>>,
    #[serde(default)]
    max_connections: Option<Spanned<u64>>,
    #[serde(default)]
    rate_limit: Option<Spanned<RawRate>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    #[serde(default)]
    consecutive_failures: Option<Spanned<u32>>,
    #[serde(default)]
    error_rate: Option<Spanned<f64>>,
    #[serde(default)]
    window: Option<Spanned<String>>,
    #[serde(default)]
    min_requests: Option<u32>,
    #[serde(default)]
    open_for: Option<Spanned<String>>,
    #[serde(default)]
    max_open_for: Option<Spanned<String>>,
    #[serde(default)]
    half_open_probes: Option<u32>,
    #[serde(default)]
    count_rate_limits: Option<bool>,
    #[serde(default)]
    slow_first_byte: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(default)]
    probe: Option<Spanned<String>>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    interval: Option<Spanned<String>>,
    #[serde(default)]
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    unhealthy_after: Option<Spanned<u32>>,
    #[serde(default)]
    healthy_after: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    model: Spanned<String>,
    #[serde(default)]
    strategy: Option<Spanned<String>>,
    targets: Spanned<Vec<Spanned<RawTarget>>>,
    #[serde(default)]
    request_timeout: Option<Spanned<String>>,
    #[serde(default)]
    first_token_timeout: Option<Spanned<String>>,
    #[serde(default)]
    hedge_after: Option<Spanned<String>>,
    #[serde(default)]
    retry: Option<RawRetry>,
    #[serde(default)]
    retry_budget: Option<RawBudget>,
    #[serde(default)]
    rate_limit: Option<Spanned<RawRate>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    #[serde(default)]
    rate_limit_wait_ceiling: Option<Spanned<String>>,
    #[serde(default)]
    rate_limit_attempts: Option<u32>,
    #[serde(default)]
    server_error_retries: Option<u32>,
    #[serde(default)]
    connect_retries: Option<u32>,
    #[serde(default)]
    backoff: Option<Spanned<String>>,
    #[serde(default)]
    max_backoff: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    #[serde(default)]
    ratio: Option<Spanned<f64>>,
    #[serde(default)]
    per_second: Option<f64>,
    #[serde(default)]
    window: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    provider: Spanned<String>,
    model: Spanned<String>,
    #[serde(default)]
    context_window: Option<u32>,
    #[serde(default)]
    continuation: Option<Spanned<String>>,
    #[serde(default)]
    weight: Option<Spanned<u32>>,
}

// ---- loading -----------------------------------------------------------------------------

/// Reads and validates a configuration file; `${VAR}` references read the process
/// environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        line: 0,
        column: 0,
        key: String::new(),
        message: format!("cannot read the file: {e}"),
    })?;
    parse(path, &text, &|name| std::env::var(name).ok())
}

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn error(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            key: key.to_owned(),
            message: message.into(),
        }
    }

    /// An error in an environment variable the config reads (no line to show).
    fn env_error(&self, name: &str, message: impl Into<String>) -> ConfigError {
        let mut error = self.error(0..0, name, message);
        error.line = 0;
        error
    }

    /// The certificates of a PEM file, its path relative to the config file's folder.
    fn certificates(
        &self,
        path: &Spanned<String>,
        key: &str,
    ) -> Result<Vec<weir_client::CertificateDer<'static>>, ConfigError> {
        use rustls_pki_types::pem::PemObject;
        let file = self
            .file
            .parent()
            .unwrap_or(Path::new("."))
            .join(path.get_ref());
        let certificates = weir_client::CertificateDer::pem_file_iter(&file)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| {
                self.error(
                    path.span(),
                    key,
                    format!("cannot read `{}`: {e}", file.display()),
                )
            })?;
        if certificates.is_empty() {
            return Err(self.error(
                path.span(),
                key,
                format!("`{}` holds no PEM certificate", file.display()),
            ));
        }
        Ok(certificates)
    }

    /// One of `choices` by name; the first is the default. An unknown name is refused with the
    /// list of known ones.
    fn choice<T: Copy>(
        &self,
        value: &Option<Spanned<String>>,
        key: &str,
        choices: &[(&str, T)],
    ) -> Result<T, ConfigError> {
        let Some(value) = value else {
            return Ok(choices[0].1);
        };
        match choices.iter().find(|(name, _)| *name == value.get_ref()) {
            Some((_, choice)) => Ok(*choice),
            None => {
                let known: Vec<String> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
                Err(self.error(
                    value.span(),
                    key,
                    format!("`{}` is not one of {}", value.get_ref(), known.join(", ")),
                ))
            }
        }
    }

    fn duration(
        &self,
        value: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match value {
            None => Ok(default),
            Some(v) => parse_duration(v.get_ref()).ok_or_else(|| {
                self.error(
                    v.span(),
                    key,
                    format!(
                        "`{}` is not a duration (write e.g. \"500ms\", \"30s\", \"2m\")",
                        v.get_ref()
                    ),
                )
            }),
        }
    }
}

/// Parses and validates configuration text. `env` resolves `${VAR}` references.
pub fn parse(
    file: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let cx = Ctx { file, text };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let mut error = cx.error(span, "", e.message().trim().to_owned());
        if e.span().is_none() {
            error.line = 0;
        }
        error
    })?;

    let server = raw.server.get_ref();
    let addr = |v: &Spanned<String>, key: &str| -> Result<SocketAddr, ConfigError> {
        v.get_ref().parse().map_err(|_| {
            cx.error(
                v.span(),
                key,
                format!(
                    "`{}` is not an address like \"127.0.0.1:8080\"",
                    v.get_ref()
                ),
            )
        })
    };
    let max_request_bytes = match &server.max_request_bytes {
        None => 4 << 20,
        Some(v) if *v.get_ref() == 0 => {
            return Err(cx.error(v.span(), "server.max_request_bytes", "must be above 0"))
        }
        Some(v) => usize::try_from(*v.get_ref())
            .map_err(|_| cx.error(v.span(), "server.max_request_bytes", "too large"))?,
    };
    let server = Server {
        listen: addr(&server.listen, "server.listen")?,
        admin_listen: addr(&server.admin_listen, "server.admin_listen")?,
        max_request_bytes,
        header_read_timeout: cx.duration(
            &server.header_read_timeout,
            "server.header_read_timeout",
            Duration::from_secs(10),
        )?,
        drain_timeout: cx.duration(
            &server.drain_timeout,
            "server.drain_timeout",
            Duration::from_secs(30),
        )?,
        concurrency: concurrency(
            &cx,
            "server.",
            RawLimit {
                max: server.max_concurrency.as_ref(),
                queue: server.max_queue.as_ref(),
                timeout: &server.queue_timeout,
                adaptive: None,
            },
        )?,
        client_stall_timeout: cx.duration(
            &server.client_stall_timeout,
            "server.client_stall_timeout",
            Duration::from_secs(60),
        )?,
        rate_limit: rate_limit(&cx, "server.rate_limit", server.rate_limit.as_ref(), false)?,
    };
    if server.listen == server.admin_listen && server.listen.port() != 0 {
        let span = raw.server.get_ref().admin_listen.span();
        return Err(cx.error(
            span,
            "server.admin_listen",
            "must differ from server.listen",
        ));
    }

    let telemetry = telemetry(&cx, raw.telemetry.as_ref(), env)?;
    let websocket = websocket(
        &cx,
        raw.websocket.as_ref().unwrap_or(&RawWebSocket::default()),
        max_request_bytes,
    )?;

    let mut providers = Vec::with_capacity(raw.providers.len());
    let mut names = HashSet::new();
    for (i, p) in raw.providers.iter().enumerate() {
        providers.push(provider(&cx, i, p.get_ref(), env, &mut names)?);
    }
    if providers.is_empty() {
        return Err(cx.error(
            0..0,
            "providers",
            "at least one [[providers]] entry is needed",
        ));
    }

    let mut routes = Vec::with_capacity(raw.routes.len());
    let mut models = HashSet::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let r = r.get_ref();
        let key = |k: &str| format!("routes[{i}].{k}");
        let model = r.model.get_ref();
        if model.is_empty() {
            return Err(cx.error(r.model.span(), &key("model"), "must not be empty"));
        }
        if !models.insert(model.clone()) {
            return Err(cx.error(
                r.model.span(),
                &key("model"),
                format!("model `{model}` is routed twice"),
            ));
        }
        let weighted = cx.choice(
            &r.strategy,
            &key("strategy"),
            &[("failover", false), ("weighted", true)],
        )?;
        let raw_targets = r.targets.get_ref();
        if raw_targets.is_empty() {
            return Err(cx.error(
                r.targets.span(),
                &key("targets"),
                "needs at least one target",
            ));
        }
        let mut targets = Vec::with_capacity(raw_targets.len());
        for (t, target) in raw_targets.iter().enumerate() {
            let target = target.get_ref();
            let provider = providers
                .iter()
                .position(|p| p.name == *target.provider.get_ref())
                .ok_or_else(|| {
                    cx.error(
                        target.provider.span(),
                        &key(&format!("targets[{t}].provider")),
                        format!("no provider is named `{}`", target.provider.get_ref()),
                    )
                })?;
            if target.model.get_ref().is_empty() {
                return Err(cx.error(
                    target.model.span(),
                    &key(&format!("targets[{t}].model")),
                    "must not be empty",
                ));
            }
            let continuation = cx.choice(
                &target.continuation,
                &key(&format!("targets[{t}].continuation")),
                &[
                    ("replay", Continuation::Replay),
                    ("prefill", Continuation::Prefill),
                    ("none", Continuation::None),
                ],
            )?;
            let weight = match &target.weight {
                Some(w) if *w.get_ref() == 0 => {
                    return Err(cx.error(
                        w.span(),
                        &key(&format!("targets[{t}].weight")),
                        "must be at least 1",
                    ))
                }
                Some(w) => *w.get_ref(),
                None => 1,
            };
            targets.push(Target {
                provider,
                model: target.model.get_ref().clone(),
                context_window: target.context_window,
                continuation,
                weight,
            });
        }
        routes.push(Route {
            model: model.clone(),
            targets,
            weighted,
            request_timeout: cx.duration(
                &r.request_timeout,
                &key("request_timeout"),
                Duration::from_secs(120),
            )?,
            first_token_timeout: cx.duration(
                &r.first_token_timeout,
                &key("first_token_timeout"),
                Duration::from_secs(60),
            )?,
            retry: {
                let d = weir_failover::RetryPolicy::default();
                let empty = RawRetry::default();
                let raw = r.retry.as_ref().unwrap_or(&empty);
                let k = |f: &str| key(&format!("retry.{f}"));
                weir_failover::RetryPolicy {
                    rate_limit_wait_ceiling: cx.duration(
                        &raw.rate_limit_wait_ceiling,
                        &k("rate_limit_wait_ceiling"),
                        d.rate_limit_wait_ceiling,
                    )?,
                    rate_limit_attempts: raw.rate_limit_attempts.unwrap_or(d.rate_limit_attempts),
                    server_error_retries: raw
                        .server_error_retries
                        .unwrap_or(d.server_error_retries),
                    connect_retries: raw.connect_retries.unwrap_or(d.connect_retries),
                    backoff: cx.duration(&raw.backoff, &k("backoff"), d.backoff)?,
                    max_backoff: cx.duration(&raw.max_backoff, &k("max_backoff"), d.max_backoff)?,
                }
            },
            retry_budget: {
                let empty = RawBudget::default();
                let raw = r.retry_budget.as_ref().unwrap_or(&empty);
                let ratio = match &raw.ratio {
                    Some(v) if !(0.0..=10.0).contains(v.get_ref()) => {
                        return Err(cx.error(
                            v.span(),
                            &key("retry_budget.ratio"),
                            "must be between 0 and 10",
                        ))
                    }
                    Some(v) => *v.get_ref(),
                    None => 0.2,
                };
                RetryBudgetConfig {
                    ratio,
                    per_second: raw.per_second.unwrap_or(1.0).max(0.0),
                    window: cx.duration(
                        &raw.window,
                        &key("retry_budget.window"),
                        Duration::from_secs(10),
                    )?,
                }
            },
            rate_limit: rate_limit(&cx, &key("rate_limit"), r.rate_limit.as_ref(), false)?,
            hedge_after: match &r.hedge_after {
                None => None,
                Some(_) => {
                    Some(cx.duration(&r.hedge_after, &key("hedge_after"), Duration::ZERO)?)
                }
            },
        });
    }
    if routes.is_empty() {
        return Err(cx.error(0..0, "routes", "at least one [[routes]] entry is needed"));
    }
    let keys = client_keys(&cx, &raw.keys, &models)?;
    // Accepting every client is a choice the file makes, never a default.
    let auth = raw.server.get_ref().auth.as_ref();
    match (auth.map(|a| (a.get_ref().as_str(), a.span())), keys.is_empty()) {
        (Some(("off", span)), false) => {
            return Err(cx.error(
                span,
                "server.auth",
                "is \"off\" but [[keys]] are configured: remove one or the other",
            ))
        }
        (Some(("off", _)), true) | (Some(("keys", _)) | None, false) => {}
        (Some(("keys", span)), true) => {
            return Err(cx.error(span, "server.auth", "is \"keys\" but no [[keys]] are configured"))
        }
        (None, true) => {
            return Err(cx.error(
                raw.server.span(),
                "server.auth",
                "no [[keys]] are configured: add client keys, or set auth = \"off\" to accept every client (a trusted network only)",
            ))
        }
        (Some((other, span)), _) => {
            return Err(cx.error(
                span,
                "server.auth",
                format!("`{other}` is not one of \"keys\", \"off\""),
            ))
        }
    }

    let mut prices = HashMap::new();
    for (model, price) in &raw.prices {
        let key = format!("prices.\"{}\"", model.get_ref());
        if !routes
            .iter()
            .any(|r| r.targets.iter().any(|t| t.model == *model.get_ref()))
        {
            return Err(cx.error(
                model.span(),
                &key,
                format!(
                    "no route target sends the model `{}` (prices are keyed by the model name sent upstream)",
                    model.get_ref()
                ),
            ));
        }
        let usd = |v: &Spanned<f64>, field: &str| {
            let value = *v.get_ref();
            if value.is_finite() && value >= 0.0 {
                Ok(value)
            } else {
                Err(cx.error(
                    v.span(),
                    &format!("{key}.{field}"),
                    "must be a price in USD per million tokens, 0 or more",
                ))
            }
        };
        prices.insert(
            model.get_ref().clone(),
            weir_metrics::Price {
                input: usd(&price.input, "input")?,
                output: usd(&price.output, "output")?,
            },
        );
    }

    Ok(Config {
        server,
        telemetry,
        websocket,
        providers,
        routes,
        keys,
        prices,
    })
}

/// `[websocket]`.
fn websocket(
    cx: &Ctx<'_>,
    raw: &RawWebSocket,
    max_request_bytes: usize,
) -> Result<WebSocket, ConfigError> {
    let count = |v: Option<&Spanned<u64>>, key: &str, default: u64, max: u64| match v {
        None => Ok(default),
        Some(v) if (1..=max).contains(v.get_ref()) => Ok(*v.get_ref()),
        Some(v) => Err(cx.error(
            v.span(),
            &format!("websocket.{key}"),
            format!("must be between 1 and {max}"),
        )),
    };
    let mut origins = Vec::new();
    for origin in raw.origins.iter().flatten() {
        let value = origin.get_ref().trim_end_matches('/');
        let valid = value == "*"
            || value
                .parse::<http::Uri>()
                .is_ok_and(|u| u.scheme().is_some() && u.host().is_some() && u.path() == "/");
        if !valid {
            return Err(cx.error(
                origin.span(),
                "websocket.origins",
                format!(
                    "`{}` is not an origin like \"https://chat.example.com\" (or \"*\")",
                    origin.get_ref()
                ),
            ));
        }
        origins.push(value.to_ascii_lowercase());
    }
    for (value, key) in [
        (&raw.ping_interval, "ping_interval"),
        (&raw.idle_timeout, "idle_timeout"),
    ] {
        if let Some(v) = value {
            if parse_duration(v.get_ref()).is_some_and(|d| d.is_zero()) {
                return Err(cx.error(v.span(), &format!("websocket.{key}"), "must be above 0"));
            }
        }
    }
    Ok(WebSocket {
        enabled: raw.enabled.unwrap_or(true),
        origins,
        ping_interval: cx.duration(
            &raw.ping_interval,
            "websocket.ping_interval",
            Duration::from_secs(30),
        )?,
        idle_timeout: cx.duration(
            &raw.idle_timeout,
            "websocket.idle_timeout",
            Duration::from_secs(300),
        )?,
        max_message_bytes: count(
            raw.max_message_bytes.as_ref(),
            "max_message_bytes",
            max_request_bytes as u64,
            1 << 30,
        )? as usize,
        max_in_flight: count(raw.max_in_flight.as_ref(), "max_in_flight", 8, 1024)? as usize,
        messages_per_second: count(
            raw.messages_per_second.as_ref(),
            "messages_per_second",
            10,
            1_000_000,
        )? as u32,
        message_burst: count(raw.message_burst.as_ref(), "message_burst", 20, 1_000_000)? as u32,
        send_queue: count(raw.send_queue.as_ref(), "send_queue", 64, 65_536)? as usize,
    })
}

/// `[telemetry]`, with the standard `OTEL_*` variables for what the file leaves out.
fn telemetry(
    cx: &Ctx<'_>,
    raw: Option<&RawTelemetry>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Telemetry, ConfigError> {
    let log_format = raw.and_then(|t| t.log_format).unwrap_or(LogFormat::Text);
    let log_level = raw
        .and_then(|t| t.log_level.clone())
        .unwrap_or_else(|| "info".to_owned());
    let access_log = raw.and_then(|t| t.access_log).unwrap_or(true);
    let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let endpoint = match raw.and_then(|t| t.otlp_endpoint.as_ref()) {
        Some(e) => Some((e.get_ref().clone(), Some(e.span()))),
        None => var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .map(|e| (e, None)),
    };
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v == "none");
    let otlp = match endpoint {
        Some((endpoint, span)) if !disabled => {
            let key = "telemetry.otlp_endpoint";
            let bad = |message: String| match &span {
                Some(span) => cx.error(span.clone(), key, message),
                None => cx.env_error("OTEL_EXPORTER_OTLP_ENDPOINT", message),
            };
            let uri: http::Uri = endpoint
                .parse()
                .map_err(|_| bad(format!("`{endpoint}` is not a URL")))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(bad(format!(
                    "`{endpoint}` is not an http:// or https:// URL with a host"
                )));
            }
            let protocols = [
                ("grpc", OtlpProtocol::Grpc),
                ("http/protobuf", OtlpProtocol::HttpProtobuf),
            ];
            let protocol = match raw.map(|t| &t.otlp_protocol) {
                Some(p @ Some(_)) => cx.choice(p, "telemetry.otlp_protocol", &protocols)?,
                _ => match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                    .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
                {
                    None => OtlpProtocol::Grpc,
                    Some(p) => match protocols.iter().find(|(name, _)| *name == p) {
                        Some((_, protocol)) => *protocol,
                        None => {
                            return Err(cx.env_error(
                                "OTEL_EXPORTER_OTLP_PROTOCOL",
                                format!("`{p}` is not \"grpc\" or \"http/protobuf\""),
                            ))
                        }
                    },
                },
            };
            let service_name = match raw.and_then(|t| t.service_name.as_ref()) {
                Some(name) if name.get_ref().trim().is_empty() => {
                    return Err(cx.error(name.span(), "telemetry.service_name", "is empty"))
                }
                Some(name) => name.get_ref().clone(),
                None => var("OTEL_SERVICE_NAME").unwrap_or_else(|| "weir".to_owned()),
            };
            let sample_ratio = match raw.and_then(|t| t.sample_ratio.as_ref()) {
                None => 1.0,
                Some(r) if (0.0..=1.0).contains(r.get_ref()) => *r.get_ref(),
                Some(r) => {
                    return Err(cx.error(
                        r.span(),
                        "telemetry.sample_ratio",
                        "must be between 0 and 1",
                    ))
                }
            };
            let count = |v: Option<&Spanned<u64>>, key: &str, default: usize| match v {
                None => Ok(default),
                Some(v) if *v.get_ref() == 0 || *v.get_ref() > 1 << 20 => {
                    Err(cx.error(v.span(), key, "must be between 1 and 1048576"))
                }
                Some(v) => Ok(*v.get_ref() as usize),
            };
            let max_queue = count(
                raw.and_then(|t| t.max_queue.as_ref()),
                "telemetry.max_queue",
                2048,
            )?;
            let max_batch = count(
                raw.and_then(|t| t.max_batch.as_ref()),
                "telemetry.max_batch",
                512,
            )?;
            let none = None;
            let export_timeout = cx.duration(
                raw.map_or(&none, |t| &t.export_timeout),
                "telemetry.export_timeout",
                Duration::from_secs(10),
            )?;
            Some(Otlp {
                endpoint,
                protocol,
                service_name,
                sample_ratio,
                max_queue,
                max_batch: max_batch.min(max_queue),
                export_timeout,
            })
        }
        _ => None,
    };
    Ok(Telemetry {
        log_format,
        log_level,
        access_log,
        otlp,
    })
}

fn provider(
    cx: &Ctx<'_>,
    i: usize,
    p: &RawProvider,
    env: &dyn Fn(&str) -> Option<String>,
    names: &mut HashSet<String>,
) -> Result<Provider, ConfigError> {
    let key = |k: &str| format!("providers[{i}].{k}");
    let name = p.name.get_ref();
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || !name.chars().all(valid) {
        return Err(cx.error(
            p.name.span(),
            &key("name"),
            "use letters, digits, `-`, `_` and `.` only",
        ));
    }
    if !names.insert(name.clone()) {
        return Err(cx.error(
            p.name.span(),
            &key("name"),
            format!("provider name `{name}` is used twice"),
        ));
    }
    let url_text = p.base_url.get_ref().trim_end_matches('/');
    let base_url: http::Uri = url_text.parse().map_err(|_| {
        cx.error(
            p.base_url.span(),
            &key("base_url"),
            format!("`{url_text}` is not a URL"),
        )
    })?;
    let bad = |why: &str| cx.error(p.base_url.span(), &key("base_url"), why.to_owned());
    match base_url.scheme_str() {
        Some("https") => {}
        Some("http") if p.allow_http => {}
        Some("http") => {
            return Err(bad(
                "plain http:// needs `allow_http = true` on this provider",
            ))
        }
        _ => {
            return Err(bad(
                "must start with https:// (or http:// with allow_http = true)",
            ))
        }
    }
    let Some(authority) = base_url.authority() else {
        return Err(bad("has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(bad(
            "must not carry credentials (user:password@); use api_key",
        ));
    }
    if base_url.query().is_some() {
        return Err(bad("must not have a query string"));
    }

    let api_key = match &p.api_key {
        None => None,
        Some(v) => Some(env_secret(cx, v, &key("api_key"), env, true)?),
    };
    let mut headers = Vec::with_capacity(p.headers.len());
    for (name, value) in &p.headers {
        let header: http::HeaderName = name.get_ref().parse().map_err(|_| {
            cx.error(
                name.span(),
                &key("headers"),
                format!("`{}` is not a header name", name.get_ref()),
            )
        })?;
        if matches!(
            header.as_str(),
            "host" | "content-length" | "transfer-encoding" | "connection"
        ) {
            return Err(cx.error(
                name.span(),
                &key("headers"),
                format!("`{header}` cannot be set"),
            ));
        }
        let value_key = key(&format!("headers.{}", name.get_ref()));
        let secret = env_secret(cx, value, &value_key, env, false)?;
        if http::HeaderValue::from_str(secret.expose()).is_err() {
            return Err(cx.error(value.span(), &value_key, "is not a valid header value"));
        }
        headers.push((header, secret));
    }
    let tls_roots = cx.choice(
        &p.tls_roots,
        &key("tls_roots"),
        &[
            ("webpki", weir_client::TlsRoots::Webpki),
            ("native", weir_client::TlsRoots::Native),
        ],
    )?;
    let extra_roots = match &p.tls_ca {
        None => Vec::new(),
        Some(path) => cx.certificates(path, &key("tls_ca"))?,
    };
    let http_version = cx.choice(
        &p.http_version,
        &key("http_version"),
        &[
            ("auto", weir_client::HttpVersion::Auto),
            ("http1", weir_client::HttpVersion::Http1),
            ("http2", weir_client::HttpVersion::Http2),
        ],
    )?;
    let (breaker, counts_rate_limits, slow_first_byte) = breaker_config(cx, i, p.breaker.as_ref())?;
    let (health, breaker) = health_config(cx, i, p.health.as_ref(), breaker)?;
    Ok(Provider {
        name: name.clone(),
        base_url,
        api_key,
        headers,
        allow_http: p.allow_http,
        http_version,
        tls_roots,
        extra_roots,
        connect_timeout: cx.duration(
            &p.connect_timeout,
            &key("connect_timeout"),
            Duration::from_secs(10),
        )?,
        response_timeout: cx.duration(
            &p.response_timeout,
            &key("response_timeout"),
            Duration::from_secs(120),
        )?,
        idle_timeout: cx.duration(
            &p.idle_timeout,
            &key("idle_timeout"),
            Duration::from_secs(60),
        )?,
        max_event_bytes: match &p.max_event_bytes {
            None => 1 << 20,
            Some(v) if *v.get_ref() < 1024 => {
                return Err(cx.error(v.span(), &key("max_event_bytes"), "must be at least 1024"))
            }
            Some(v) => usize::try_from(*v.get_ref()).unwrap_or(usize::MAX),
        },
        pool_idle_timeout: cx.duration(
            &p.pool_idle_timeout,
            &key("pool_idle_timeout"),
            Duration::from_secs(90),
        )?,
        pool_max_idle: p.pool_max_idle.unwrap_or(256),
        breaker,
        breaker_counts_rate_limits: counts_rate_limits,
        slow_first_byte,
        health,
        concurrency: concurrency(
            cx,
            &key(""),
            RawLimit {
                max: p.max_concurrency.as_ref(),
                queue: p.max_queue.as_ref(),
                timeout: &p.queue_timeout,
                adaptive: p.adaptive_concurrency.as_ref(),
            },
        )?,
        max_connections: match &p.max_connections {
            None => None,
            Some(v) if *v.get_ref() == 0 => {
                return Err(cx.error(v.span(), &key("max_connections"), "must be at least 1"))
            }
            Some(v) => Some(usize::try_from(*v.get_ref()).unwrap_or(usize::MAX)),
        },
        rate_limit: rate_limit(cx, &key("rate_limit"), p.rate_limit.as_ref(), true)?,
    })
}

/// A rate limit table; `wait` is allowed where a request can wait for it (a provider's).
fn rate_limit(
    cx: &Ctx<'_>,
    key: &str,
    raw: Option<&Spanned<RawRate>>,
    wait_allowed: bool,
) -> Result<Option<RateLimit>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let span = raw.span();
    let raw = raw.get_ref();
    let k = |f: &str| format!("{key}.{f}");
    let positive = |v: &Option<Spanned<u32>>, name: &str| -> Result<Option<u32>, ConfigError> {
        match v {
            Some(v) if *v.get_ref() == 0 => Err(cx.error(v.span(), &k(name), "must be at least 1")),
            Some(v) => Ok(Some(*v.get_ref())),
            None => Ok(None),
        }
    };
    let requests = positive(&raw.requests_per_minute, "requests_per_minute")?;
    let tokens = positive(&raw.tokens_per_minute, "tokens_per_minute")?;
    let request_burst = positive(&raw.request_burst, "request_burst")?;
    let token_burst = positive(&raw.token_burst, "token_burst")?;
    if requests.is_none() && tokens.is_none() {
        return Err(cx.error(span, key, "needs requests_per_minute or tokens_per_minute"));
    }
    if let (None, Some(v)) = (requests, &raw.request_burst) {
        return Err(cx.error(v.span(), &k("request_burst"), "needs requests_per_minute"));
    }
    if let (None, Some(v)) = (tokens, &raw.token_burst) {
        return Err(cx.error(v.span(), &k("token_burst"), "needs tokens_per_minute"));
    }
    if let (false, Some(v)) = (wait_allowed, &raw.wait) {
        return Err(cx.error(
            v.span(),
            &k("wait"),
            "only a provider's limit can be waited for (a client's answers 429 at once)",
        ));
    }
    Ok(Some(RateLimit {
        requests: requests.map(|r| (r, request_burst.unwrap_or(r))),
        tokens: tokens.map(|t| (t, token_burst.unwrap_or(t))),
        wait: cx.duration(&raw.wait, &k("wait"), Duration::ZERO)?,
    }))
}

/// `[[keys]]`.
fn client_keys(
    cx: &Ctx<'_>,
    raw: &[Spanned<RawKey>],
    models: &HashSet<String>,
) -> Result<Vec<ClientKey>, ConfigError> {
    let mut keys: Vec<ClientKey> = Vec::with_capacity(raw.len());
    for (i, entry) in raw.iter().enumerate() {
        let entry = entry.get_ref();
        let key = |k: &str| format!("keys[{i}].{k}");
        let name = entry.name.get_ref();
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if name.is_empty() || !name.chars().all(valid) {
            return Err(cx.error(
                entry.name.span(),
                &key("name"),
                "use letters, digits, `-`, `_` and `.` only",
            ));
        }
        if keys.iter().any(|k| k.name == *name) {
            return Err(cx.error(
                entry.name.span(),
                &key("name"),
                format!("key name `{name}` is used twice"),
            ));
        }
        let text = entry.hash.get_ref();
        let hash = text
            .strip_prefix("sha256:")
            .and_then(parse_hex32)
            .ok_or_else(|| {
                cx.error(
                    entry.hash.span(),
                    &key("hash"),
                    "must be `sha256:` and 64 hex digits (`weir hash-key` prints one)",
                )
            })?;
        if keys.iter().any(|k| k.hash == hash) {
            return Err(cx.error(
                entry.hash.span(),
                &key("hash"),
                "the same key is listed twice",
            ));
        }
        let allowed = match &entry.models {
            None => None,
            Some(list) => {
                for m in list {
                    if !models.contains(m.get_ref()) {
                        return Err(cx.error(
                            m.span(),
                            &key("models"),
                            format!("no route serves the model `{}`", m.get_ref()),
                        ));
                    }
                }
                Some(list.iter().map(|m| m.get_ref().clone()).collect())
            }
        };
        keys.push(ClientKey {
            name: name.clone(),
            hash,
            models: allowed,
            limits: rate_limit(cx, &key("limits"), entry.limits.as_ref(), false)?,
        });
    }
    Ok(keys)
}

/// SHA-256 of a client key.
pub(crate) fn key_hash(key: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, key);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The `hash` of a client key for `[[keys]]`: `sha256:` and 64 hex digits.
pub fn hash_key(key: &str) -> String {
    let hash = key_hash(key.as_bytes());
    let mut out = String::from("sha256:");
    for byte in hash {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The raw keys of one concurrency limit.
struct RawLimit<'a> {
    max: Option<&'a Spanned<u64>>,
    queue: Option<&'a Spanned<u64>>,
    timeout: &'a Option<Spanned<String>>,
    adaptive: Option<&'a Spanned<RawAdaptive>>,
}

/// A concurrency limit from its keys under `prefix` (`server.` or `providers[0].`).
fn concurrency(
    cx: &Ctx<'_>,
    prefix: &str,
    raw: RawLimit<'_>,
) -> Result<Option<Concurrency>, ConfigError> {
    let key = |k: &str| format!("{prefix}{k}");
    let Some(max) = raw.max else {
        // The other keys mean nothing without a limit: say so rather than ignore them.
        let orphan = [
            raw.queue.map(|v| (v.span(), "max_queue")),
            raw.timeout.as_ref().map(|v| (v.span(), "queue_timeout")),
            raw.adaptive.map(|v| (v.span(), "adaptive_concurrency")),
        ];
        if let Some((span, name)) = orphan.into_iter().flatten().next() {
            return Err(cx.error(span, &key(name), "needs `max_concurrency` beside it"));
        }
        return Ok(None);
    };
    let size = |v: &Spanned<u64>| usize::try_from(*v.get_ref()).unwrap_or(usize::MAX);
    if *max.get_ref() == 0 {
        return Err(cx.error(max.span(), &key("max_concurrency"), "must be at least 1"));
    }
    let max_concurrency = size(max);
    let adaptive = match raw.adaptive {
        None => None,
        Some(a) => {
            let a = a.get_ref();
            let min = size(&a.min);
            if min == 0 || min > max_concurrency {
                return Err(cx.error(
                    a.min.span(),
                    &key("adaptive_concurrency.min"),
                    format!("must be between 1 and max_concurrency ({max_concurrency})"),
                ));
            }
            let target = Some(a.first_token_target.clone());
            Some(AdaptiveConcurrency {
                min,
                first_token_target: cx.duration(
                    &target,
                    &key("adaptive_concurrency.first_token_target"),
                    Duration::ZERO,
                )?,
            })
        }
    };
    Ok(Some(Concurrency {
        max: max_concurrency,
        max_queue: raw.queue.map_or(max_concurrency, size),
        queue_timeout: cx.duration(raw.timeout, &key("queue_timeout"), Duration::from_secs(10))?,
        adaptive,
    }))
}

fn breaker_config(
    cx: &Ctx<'_>,
    i: usize,
    raw: Option<&RawBreaker>,
) -> Result<(weir_breaker::PolicyConfig, bool, Option<Duration>), ConfigError> {
    let key = |k: &str| format!("providers[{i}].breaker.{k}");
    let default = weir_breaker::PolicyConfig::default();
    let Some(raw) = raw else {
        return Ok((default, false, None));
    };
    let consecutive_failures = match &raw.consecutive_failures {
        None => default.consecutive_failures,
        Some(v) if *v.get_ref() == 0 => None,
        Some(v) => Some(*v.get_ref()),
    };
    let failure_rate = match &raw.error_rate {
        None => default.failure_rate,
        Some(v) if *v.get_ref() == 0.0 => None,
        Some(v) if !(0.0..=1.0).contains(v.get_ref()) => {
            return Err(cx.error(
                v.span(),
                &key("error_rate"),
                "must be between 0 (off) and 1",
            ))
        }
        Some(v) => Some(*v.get_ref()),
    };
    let slow_first_byte = match &raw.slow_first_byte {
        None => None,
        Some(_) => Some(cx.duration(
            &raw.slow_first_byte,
            &key("slow_first_byte"),
            Duration::ZERO,
        )?),
    };
    let config = weir_breaker::PolicyConfig {
        consecutive_failures,
        failure_rate,
        window: cx.duration(&raw.window, &key("window"), default.window)?,
        min_calls: raw.min_requests.unwrap_or(default.min_calls),
        open_for: cx.duration(&raw.open_for, &key("open_for"), default.open_for)?,
        max_open_for: cx.duration(
            &raw.max_open_for,
            &key("max_open_for"),
            default.max_open_for,
        )?,
        half_open_probes: raw.half_open_probes.unwrap_or(default.half_open_probes),
        ..default
    };
    Ok((
        config,
        raw.count_rate_limits.unwrap_or(false),
        slow_first_byte,
    ))
}

fn health_config(
    cx: &Ctx<'_>,
    i: usize,
    raw: Option<&RawHealth>,
    mut breaker: weir_breaker::PolicyConfig,
) -> Result<(Health, weir_breaker::PolicyConfig), ConfigError> {
    let key = |k: &str| format!("providers[{i}].health.{k}");
    let empty = RawHealth::default();
    let raw = raw.unwrap_or(&empty);
    let probe = match raw.probe.as_ref().map(|v| (v.get_ref().as_str(), v.span())) {
        None | Some(("models", _)) => Probe::Models,
        Some(("off", _)) => Probe::Off,
        Some(("completion", span)) => match &raw.model {
            Some(model) if !model.is_empty() => Probe::Completion(model.clone()),
            _ => return Err(cx.error(span, &key("probe"), "a \"completion\" probe needs `model`")),
        },
        Some((other, span)) => {
            return Err(cx.error(
                span,
                &key("probe"),
                format!("`{other}` is not one of \"models\", \"completion\", \"off\""),
            ))
        }
    };
    for (value, name, slot) in [
        (
            &raw.unhealthy_after,
            "unhealthy_after",
            &mut breaker.unhealthy_after,
        ),
        (
            &raw.healthy_after,
            "healthy_after",
            &mut breaker.healthy_after,
        ),
    ] {
        if let Some(v) = value {
            if *v.get_ref() == 0 {
                return Err(cx.error(v.span(), &key(name), "must be at least 1"));
            }
            *slot = *v.get_ref();
        }
    }
    let health = Health {
        probe,
        interval: cx.duration(&raw.interval, &key("interval"), Duration::from_secs(30))?,
        timeout: cx.duration(&raw.timeout, &key("timeout"), Duration::from_secs(5))?,
    };
    if health.interval.is_zero() {
        let span = raw.interval.as_ref().map_or(0..0, |v| v.span());
        return Err(cx.error(span, &key("interval"), "must be above 0"));
    }
    Ok((health, breaker))
}

/// Expands `${VAR}` references. With `whole`, the value must be exactly one reference: keys
/// never sit in the file.
fn env_secret(
    cx: &Ctx<'_>,
    value: &Spanned<String>,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
    whole: bool,
) -> Result<Secret, ConfigError> {
    let text = value.get_ref();
    let is_ref = |s: &str| {
        s.starts_with("${") && s.ends_with('}') && s[2..s.len() - 1].find(['$', '{', '}']).is_none()
    };
    if whole && !is_ref(text) {
        return Err(cx.error(
            value.span(),
            key,
            "must name an environment variable, like \"${OPENAI_API_KEY}\": weir reads no key from the config file",
        ));
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| cx.error(value.span(), key, "has an unclosed `${`"))?;
        let var = &after[..end];
        if var.is_empty() {
            return Err(cx.error(value.span(), key, "has an empty `${}`"));
        }
        let resolved = env(var).ok_or_else(|| {
            cx.error(
                value.span(),
                key,
                format!("environment variable `{var}` is not set"),
            )
        })?;
        out.push_str(&resolved);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Secret(out))
}

/// `"250ms"`, `"30s"`, `"2m"`, `"1h"`, or a plain number of seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

#[cfg(test)]
mod tests;
