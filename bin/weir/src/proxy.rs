//! The OpenAI-compatible front: routes a request to its provider and streams the answer back.

use crate::body::{AttemptEnd, ResponseBody};
use crate::config::{Config, Continuation, Health, Provider};
use crate::headers::{self, RequestIds, X_REQUEST_ID, X_WEIR_ATTEMPTS, X_WEIR_PROVIDER};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use tower::ServiceExt;
use weir_backpressure::{Backpressure, Limit};
use weir_breaker::{Breaker, CircuitBreaker, LlmClassifier, Mode, State};
use weir_client::{ClientBuilder, HttpClient};
use weir_failover::router::{Cut, Failover, Judge, Judged, Order, Resumer, Routed, Target};
use weir_failover::RetryBudget;
use weir_llm::continuation;
use weir_llm::stream::{ChatWatch, Opaque, Watch};
use weir_llm::{Endpoint, ErrorBody, ErrorKind, Failure, LlmRequest};

/// A provider's client behind its circuit breaker, its concurrency limit and its rate limit.
/// The limits are outside the breaker: their own answers (503, 429) are not the provider's
/// failures.
pub(crate) type Guarded = weir_ratelimit::RateLimit<
    Backpressure<CircuitBreaker<Decoded, LlmClassifier>>,
    weir_ratelimit::Keyed<(), ProviderKey>,
    EstimateCost,
>;

/// A provider's client, its answers decoded when a provider compresses them although weir asks
/// for `identity` (so that every stream can be watched).
pub(crate) type Decoded = weir_client::Decompress<HttpClient<Full<Bytes>>>;

/// The token estimate of an outgoing request, for the provider's rate limit.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TokenEstimate(pub(crate) u32);

/// Costs an outgoing request at its [`TokenEstimate`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct EstimateCost;

impl<B> weir_ratelimit::Cost<B> for EstimateCost {
    fn estimate(&self, request: &Request<B>) -> u32 {
        request
            .extensions()
            .get::<TokenEstimate>()
            .map_or(0, |e| e.0)
    }
}

/// One bucket per provider, when it has a rate limit; none (no limit) otherwise.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProviderKey(bool);

impl<B> weir_ratelimit::KeyExtractor<B> for ProviderKey {
    type Key = ();

    fn key(&self, _: &Request<B>) -> Option<()> {
        self.0.then_some(())
    }
}

/// One provider, ready to take requests.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) name: Arc<str>,
    /// Its configuration, to tell on a reload whether it changed.
    config: Provider,
    /// The client alone (health probes go around the breaker).
    pub(crate) client: HttpClient<Full<Bytes>>,
    /// The client behind the breaker: what requests go through.
    service: Guarded,
    pub(crate) breaker: Breaker,
    /// Requests in flight to this provider (unbounded unless `max_concurrency` is set).
    pub(crate) limit: Limit,
    /// The provider's published rate limits, if set.
    pub(crate) rate_limiter: Option<weir_ratelimit::Limiter<()>>,
    /// Whether `max_concurrency` is set (else the limit only counts).
    pub(crate) limited: bool,
    /// The longest a request waits for this provider's limit.
    queue_timeout: Duration,
    pub(crate) health: Health,
    /// When the next health probe is due.
    pub(crate) next_probe: Mutex<Option<Instant>>,
    /// Malformed events dropped from this provider's streams.
    pub(crate) malformed: Arc<std::sync::atomic::AtomicU64>,
    /// The full URI of each endpoint under the base URL.
    uris: [Uri; 3],
    /// `Authorization` and the configured extra headers, marked sensitive.
    pub(crate) headers: HeaderMap,
    /// The secret values sent to this provider (its key, its extra headers' values): scrubbed
    /// from any upstream answer weir passes on.
    secrets: Vec<Vec<u8>>,
    idle_timeout: Duration,
    /// The largest event of a stream.
    max_event_bytes: usize,
    /// `GET {base}/models`, for health probes.
    pub(crate) models_uri: Uri,
}

impl Upstream {
    /// A provider's client and its guards. `previous` (the same provider before a reload)
    /// lends the state a reload must keep: its breaker, its concurrency limit and its rate
    /// limiter, each when its own settings did not change.
    fn new(p: &Provider, previous: Option<&Upstream>) -> Result<Self, weir_client::Error> {
        let client = ClientBuilder::new()
            .connect_timeout(p.connect_timeout)
            .response_timeout(p.response_timeout)
            .pool_idle_timeout(p.pool_idle_timeout)
            .pool_max_idle_per_host(p.pool_max_idle)
            .pool_max_per_host(p.max_connections)
            .http_version(p.http_version)
            .allow_http(p.allow_http)
            .tls_roots(p.tls_roots)
            .add_root_certificates(p.extra_roots.iter().cloned())
            .build()?;
        let same = |f: &dyn Fn(&Provider) -> bool| previous.filter(|u| f(&u.config));
        let breaker = match same(&|old| old.breaker == p.breaker) {
            Some(old) => old.breaker.clone(),
            None => Breaker::new(p.breaker.clone()),
        };
        // The stream watch in `body` reads every event already: it settles in-band errors.
        let classifier = LlmClassifier::new()
            .count_rate_limits(p.breaker_counts_rate_limits)
            .slow_first_byte(p.slow_first_byte)
            .in_band_errors(false);
        let decoded = weir_client::Decompress::new(client.clone());
        let service = CircuitBreaker::new(decoded, breaker.clone(), classifier, Mode::Wait);
        let (limit, queue_timeout) = match (
            &p.concurrency,
            same(&|old| old.concurrency == p.concurrency),
        ) {
            (Some(c), Some(old)) => (old.limit.clone(), c.queue_timeout),
            (Some(c), None) => (limit_from(c), c.queue_timeout),
            (None, _) => (unlimited(), Duration::ZERO),
        };
        let service = Backpressure::new(service, limit.clone(), weir_backpressure::Mode::Wait);
        let rate_limiter = match same(&|old| old.rate_limit == p.rate_limit) {
            Some(old) => old.rate_limiter.clone(),
            None => p.rate_limit.as_ref().map(rate_limiter),
        };
        let mode = match &p.rate_limit {
            Some(r) if !r.wait.is_zero() => weir_ratelimit::Mode::Wait { max_wait: r.wait },
            _ => weir_ratelimit::Mode::Reject,
        };
        let service = weir_ratelimit::RateLimit::new(
            service,
            weir_ratelimit::Keyed::new(
                rate_limiter
                    .clone()
                    .unwrap_or_else(|| weir_ratelimit::Limiter::builder().build()),
                ProviderKey(rate_limiter.is_some()),
            ),
            EstimateCost,
            mode,
        )
        // The provider's budget is weir's business, not the client's.
        .with_headers(false);
        let base = p.base_url.to_string();
        let base = base.trim_end_matches('/');
        let uri = |e: Endpoint| -> Uri {
            format!("{base}{}", e.upstream_path())
                .parse()
                .expect("a valid base URL plus a fixed path is a valid URI")
        };
        let mut headers = HeaderMap::new();
        let mut secrets: Vec<Vec<u8>> = Vec::new();
        if let Some(key) = &p.api_key {
            secrets.push(key.expose().as_bytes().to_vec());
            let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
                .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid-key"));
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
        for (name, secret) in &p.headers {
            secrets.push(secret.expose().as_bytes().to_vec());
            let mut value =
                HeaderValue::from_str(secret.expose()).expect("config validated header values");
            value.set_sensitive(true);
            headers.insert(name.clone(), value);
        }
        Ok(Self {
            name: p.name.as_str().into(),
            config: p.clone(),
            client,
            service,
            breaker,
            limit,
            rate_limiter,
            limited: p.concurrency.is_some(),
            queue_timeout,
            health: p.health.clone(),
            next_probe: Mutex::new(None),
            malformed: previous.map(|u| u.malformed.clone()).unwrap_or_default(),
            models_uri: format!("{base}/models")
                .parse()
                .expect("a valid base URL plus a fixed path is a valid URI"),
            uris: [
                uri(Endpoint::ChatCompletions),
                uri(Endpoint::Completions),
                uri(Endpoint::Embeddings),
            ],
            headers,
            // Short values would match ordinary text: a secret has some length.
            secrets: secrets.into_iter().filter(|s| s.len() >= 8).collect(),
            idle_timeout: p.idle_timeout,
            max_event_bytes: p.max_event_bytes,
        })
    }

    pub(crate) fn uri(&self, endpoint: Endpoint) -> Uri {
        self.uris[match endpoint {
            Endpoint::ChatCompletions => 0,
            Endpoint::Completions => 1,
            Endpoint::Embeddings => 2,
        }]
        .clone()
    }
}

/// One target of a route.
#[derive(Debug)]
pub(crate) struct RouteTarget {
    upstream: Arc<Upstream>,
    /// The model name sent to it.
    model: Arc<str>,
    continuation: Continuation,
    /// The model's price (`[prices]`), for the cost metric.
    price: Option<weir_metrics::Price>,
}

/// The largest request head weir takes (its headers' names and values): 431 above.
pub(crate) const MAX_HEADER_BYTES: usize = 16 * 1024;

/// A concurrency limit from its config.
pub(crate) fn limit_from(c: &crate::config::Concurrency) -> Limit {
    let mut builder = Limit::builder(c.max)
        .max_queue(c.max_queue)
        .max_wait(c.queue_timeout)
        .retry_after(Duration::from_secs(1));
    if let Some(a) = &c.adaptive {
        builder = builder.adaptive(weir_backpressure::Aimd::new(
            a.min,
            c.max,
            a.first_token_target,
        ));
    }
    builder.build()
}

/// No limit: as many permits as a semaphore holds, no queue.
fn unlimited() -> Limit {
    Limit::builder(tokio::sync::Semaphore::MAX_PERMITS)
        .max_queue(0)
        .build()
}

/// A route's targets in order, and its deadline for retries.
#[derive(Debug)]
struct RouteEntry {
    /// The model name clients ask for (the route's label in metrics).
    name: Arc<str>,
    /// Limits on every client of the route together, and their settings.
    limiter: Option<weir_ratelimit::Limiter<()>>,
    rate_limit: Option<crate::config::RateLimit>,
    targets: Arc<[RouteTarget]>,
    router: Failover<Guarded, LlmJudge>,
}

/// The gateway: routes, providers and limits, shared by every connection.
#[derive(Debug)]
pub struct Gateway {
    upstreams: Vec<Arc<Upstream>>,
    routes: HashMap<String, RouteEntry>,
    models: Bytes,
    max_request_bytes: usize,
    ids: RequestIds,
    /// The server-wide limit on requests in flight (`[server] max_concurrency`).
    limit: Option<Limit>,
    /// Rate limits on every client together (`[server] rate_limit`).
    rate_limiter: Option<weir_ratelimit::Limiter<()>>,
    /// The client keys (empty: no authentication).
    keys: Vec<ClientKey>,
    /// `[server]` as this gateway was built from (what a reload compares).
    server: crate::config::Server,
}

/// A client key as the gateway checks it.
#[derive(Debug)]
pub(crate) struct ClientKey {
    pub(crate) name: Arc<str>,
    hash: [u8; 32],
    models: Option<std::collections::HashSet<String>>,
    pub(crate) limiter: Option<weir_ratelimit::Limiter<()>>,
    limits: Option<crate::config::RateLimit>,
}

/// A rate limiter from its config.
pub(crate) fn rate_limiter(c: &crate::config::RateLimit) -> weir_ratelimit::Limiter<()> {
    let rate = |(per_minute, burst): (u32, u32)| {
        let n = |v: u32| std::num::NonZeroU32::new(v).expect("config checked it is above 0");
        weir_ratelimit::Rate::per_minute(n(per_minute)).burst(n(burst))
    };
    let mut builder = weir_ratelimit::Limiter::builder();
    if let Some(r) = c.requests {
        builder = builder.requests(rate(r));
    }
    if let Some(t) = c.tokens {
        builder = builder.tokens(rate(t));
    }
    builder.build()
}

/// SHA-256 of a client key.
pub(crate) fn key_hash(key: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, key);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Equality that takes the same time wherever the inputs differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `body` with every occurrence of a secret replaced by `[redacted]` (a provider that quotes
/// the key it was sent in its error message must not hand it to the client).
fn scrub(body: Bytes, secrets: &[Vec<u8>]) -> Bytes {
    let mut body = body;
    for secret in secrets {
        if memchr::memmem::find(&body, secret).is_none() {
            continue;
        }
        let mut out = Vec::with_capacity(body.len());
        let mut rest: &[u8] = &body;
        while let Some(at) = memchr::memmem::find(rest, secret) {
            out.extend_from_slice(&rest[..at]);
            out.extend_from_slice(b"[redacted]");
            rest = &rest[at + secret.len()..];
        }
        out.extend_from_slice(rest);
        body = out.into();
    }
    body
}

/// The 401 for a missing, unknown or almost-right client key: the same for each.
pub(crate) fn unauthorized() -> Response<ResponseBody> {
    error(
        ErrorBody::new(
            ErrorKind::Authentication,
            "Incorrect API key provided. Send the key weir issued you as `Authorization: Bearer <key>`.",
        )
        .code("invalid_api_key"),
    )
}

/// Tokens a request may use: the prompt's estimate plus its answer's cap (or 1,024 for an
/// uncapped answer; an embedding has none). Settled from the usage at the end.
fn token_estimate(llm: &LlmRequest) -> u32 {
    let answer = match llm.endpoint() {
        Endpoint::Embeddings => 0,
        _ => llm.max_tokens().unwrap_or(1024),
    };
    llm.prompt_token_estimate().saturating_add(answer)
}

pub(crate) fn error(body: ErrorBody) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body.to_json()));
    *response.status_mut() = body.status();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn json(data: Bytes) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(data));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

impl Gateway {
    /// Builds the gateway (and one connection pool per provider) from a validated config.
    pub fn new(config: &Config) -> Result<Self, weir_client::Error> {
        Self::build(config, None)
    }

    /// The gateway for a reloaded `config`, keeping this one's state where it still applies:
    /// a provider whose settings did not change is kept whole (its connections, breaker,
    /// limits and probes); a changed one keeps its breaker and limits when their own settings
    /// did not change; routes, keys and the server keep their rate limiters likewise.
    /// Requests in flight finish on the gateway they started on.
    pub fn reloaded(&self, config: &Config) -> Result<Self, weir_client::Error> {
        Self::build(config, Some(self))
    }

    fn build(config: &Config, previous: Option<&Gateway>) -> Result<Self, weir_client::Error> {
        let upstreams = config
            .providers
            .iter()
            .map(|p| {
                let old = previous.and_then(|g| g.upstreams.iter().find(|u| *u.name == *p.name));
                match old {
                    Some(old) if old.config == *p => Ok(old.clone()),
                    old => Upstream::new(p, old.map(|u| &**u)).map(Arc::new),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let targets = r
                    .targets
                    .iter()
                    .map(|t| RouteTarget {
                        upstream: upstreams[t.provider].clone(),
                        model: t.model.as_str().into(),
                        continuation: t.continuation,
                        price: config.prices.get(&t.model).copied(),
                    })
                    .collect::<Vec<_>>()
                    .into();
                let targets: Arc<[RouteTarget]> = targets;
                let b = r.retry_budget;
                let router = Failover::builder(
                    r.targets
                        .iter()
                        .map(|t| {
                            Target::new(upstreams[t.provider].service.clone())
                                .context_window(t.context_window)
                                .weight(t.weight)
                        })
                        .collect(),
                    LlmJudge {
                        targets: targets.clone(),
                        first_token: r.first_token_timeout,
                    },
                )
                .policy(r.retry.clone())
                .budget(RetryBudget::new(
                    b.ratio,
                    b.per_second,
                    b.window,
                    Instant::now(),
                ))
                .deadline(r.request_timeout)
                .hedge_after(r.hedge_after)
                // A request waits for a target at its limit as long as its provider says.
                .queue_timeout(
                    r.targets
                        .iter()
                        .map(|t| upstreams[t.provider].queue_timeout)
                        .max()
                        .unwrap_or_default(),
                )
                .order(if r.weighted {
                    Order::Weighted
                } else {
                    Order::Priority
                })
                .build();
                let kept = previous
                    .and_then(|g| g.routes.get(&r.model))
                    .filter(|old| old.rate_limit == r.rate_limit)
                    .map(|old| old.limiter.clone());
                let entry = RouteEntry {
                    name: r.model.as_str().into(),
                    limiter: kept.unwrap_or_else(|| r.rate_limit.as_ref().map(rate_limiter)),
                    rate_limit: r.rate_limit.clone(),
                    targets,
                    router,
                };
                (r.model.clone(), entry)
            })
            .collect();
        let data: Vec<serde_json::Value> = config
            .routes
            .iter()
            .map(|r| serde_json::json!({"id": r.model, "object": "model", "created": 0, "owned_by": "weir"}))
            .collect();
        let models = serde_json::to_vec(&serde_json::json!({"object": "list", "data": data}))
            .expect("JSON values serialize");
        Ok(Self {
            upstreams,
            routes,
            models: models.into(),
            max_request_bytes: config.server.max_request_bytes,
            ids: RequestIds::default(),
            limit: match previous {
                Some(g) if g.server.concurrency == config.server.concurrency => g.limit.clone(),
                _ => config.server.concurrency.as_ref().map(limit_from),
            },
            rate_limiter: match previous {
                Some(g) if g.server.rate_limit == config.server.rate_limit => {
                    g.rate_limiter.clone()
                }
                _ => config.server.rate_limit.as_ref().map(rate_limiter),
            },
            keys: config
                .keys
                .iter()
                .map(|k| {
                    let kept = previous
                        .and_then(|g| g.keys.iter().find(|old| *old.name == *k.name))
                        .filter(|old| old.limits == k.limits)
                        .map(|old| old.limiter.clone());
                    ClientKey {
                        name: k.name.as_str().into(),
                        hash: k.hash,
                        models: k.models.as_ref().map(|m| m.iter().cloned().collect()),
                        limiter: kept.unwrap_or_else(|| k.limits.as_ref().map(rate_limiter)),
                        limits: k.limits.clone(),
                    }
                })
                .collect(),
            server: config.server.clone(),
        })
    }

    /// The providers, in config order.
    pub(crate) fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    /// The server-wide concurrency limit, if one is set.
    pub(crate) fn limit(&self) -> Option<&Limit> {
        self.limit.as_ref()
    }

    /// The rate limiters, for metrics: scope, name and limiter.
    pub(crate) fn rate_limiters(
        &self,
    ) -> impl Iterator<Item = (&'static str, &str, &weir_ratelimit::Limiter<()>)> {
        let server = self.rate_limiter.iter().map(|l| ("server", "all", l));
        let routes = self
            .routes
            .iter()
            .filter_map(|(model, r)| Some(("route", model.as_str(), r.limiter.as_ref()?)));
        let keys = self
            .keys
            .iter()
            .filter_map(|k| Some(("key", &*k.name, k.limiter.as_ref()?)));
        server.chain(routes).chain(keys)
    }

    /// The client key a request carries: `Ok(None)` when no keys are configured; `Err` for a
    /// missing, unknown or malformed one (all answered alike, see [`unauthorized`]).
    pub(crate) fn authenticate(&self, headers: &HeaderMap) -> Result<Option<usize>, ()> {
        if self.keys.is_empty() {
            return Ok(None);
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .map(key_hash);
        let mut found = None;
        if let Some(hash) = presented {
            // Every key compared, in constant time each: nothing to learn from timing.
            for (i, key) in self.keys.iter().enumerate() {
                if same(&key.hash, &hash) {
                    found = Some(i);
                }
            }
        }
        found.map(Some).ok_or(())
    }

    /// Answers one client request. Never fails: every error is an OpenAI-style response.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<weir_breaker::BoxError>,
    {
        let id = self.ids.take_or_make(request.headers());
        let mut response = self.route(request, &id).await;
        response.headers_mut().insert(X_REQUEST_ID.clone(), id);
        response
    }

    async fn route<B>(&self, request: Request<B>, id: &HeaderValue) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<weir_breaker::BoxError>,
    {
        // hyper bounds the head by its read buffer only roughly (one large read can pass it):
        // the limit is enforced here, on what was parsed.
        let head_bytes: usize = request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        if head_bytes > MAX_HEADER_BYTES {
            let mut response = error(
                ErrorBody::new(
                    ErrorKind::InvalidRequest,
                    format!("The request headers are larger than {MAX_HEADER_BYTES} bytes."),
                )
                .code("request_header_fields_too_large"),
            );
            *response.status_mut() = http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
            return response;
        }
        let path = request.uri().path();
        if path == "/v1/models" {
            if request.method() != Method::GET {
                return method_not_allowed("GET");
            }
            return json(self.models.clone());
        }
        let Some(endpoint) = Endpoint::from_path(path) else {
            return error(
                ErrorBody::new(
                    ErrorKind::NotFound,
                    format!("Unknown request URL: {} {path}.", request.method()),
                )
                .code("unknown_url"),
            );
        };
        if request.method() != Method::POST {
            return method_not_allowed("POST");
        }
        let Ok(client) = self.authenticate(request.headers()) else {
            return unauthorized();
        };
        let Some(limit) = &self.limit else {
            return self.proxy(endpoint, request, id, client).await;
        };
        // Admitted before the body is read: a queued request holds no body in memory.
        match limit.acquire().await {
            Ok(permit) => {
                let mut response = self.proxy(endpoint, request, id, client).await;
                response.body_mut().hold(permit);
                response
            }
            Err(shed) => {
                weir_backpressure::shed_response(shed, limit.retry_after(), ResponseBody::full)
            }
        }
    }

    async fn proxy<B>(
        &self,
        endpoint: Endpoint,
        request: Request<B>,
        id: &HeaderValue,
        client: Option<usize>,
    ) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<weir_breaker::BoxError>,
    {
        let (mut parts, body) = request.into_parts();
        let too_large = || {
            error(
                ErrorBody::new(
                    ErrorKind::PayloadTooLarge,
                    format!(
                        "Request body is larger than the limit of {} bytes.",
                        self.max_request_bytes
                    ),
                )
                .code("request_too_large"),
            )
        };
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_request_bytes as u64) {
            return too_large();
        }
        let body = match Limited::new(body, self.max_request_bytes).collect().await {
            // A copy: the collected bytes are slices of hyper's read buffer.
            Ok(collected) => Bytes::copy_from_slice(&collected.to_bytes()),
            Err(e) if e.is::<LengthLimitError>() => return too_large(),
            Err(_) => {
                return error(ErrorBody::new(
                    ErrorKind::InvalidRequest,
                    "The request body could not be read.",
                ))
            }
        };
        let llm = match LlmRequest::parse(endpoint, &body) {
            Ok(llm) => llm,
            Err(invalid) => {
                let mut body =
                    ErrorBody::new(ErrorKind::InvalidRequest, invalid.message().to_owned());
                if let Some(param) = invalid.param() {
                    body = body.param(param);
                }
                return error(body);
            }
        };
        let client = client.map(|i| &self.keys[i]);
        let allowed = client
            .and_then(|c| c.models.as_ref())
            .is_none_or(|models| models.contains(llm.model()));
        let route = self.routes.get(llm.model()).filter(|_| allowed);
        let Some(route) = route else {
            return error(
                ErrorBody::new(
                    ErrorKind::NotFound,
                    format!(
                        "The model `{}` does not exist or you do not have access to it.",
                        llm.model()
                    ),
                )
                .param("model")
                .code("model_not_found"),
            );
        };
        // Own copies of what the call keeps: the originals are slices of hyper's read buffer,
        // and while a slice lives hyper cannot reuse that buffer (it takes a second one).
        let tally = parts
            .extensions
            .remove::<weir_metrics::Tally>()
            .unwrap_or_default();
        tally.labels(weir_metrics::Labels {
            route: route.name.clone(),
            ..Default::default()
        });
        tally.operation(operation(endpoint));
        tally.input_estimate(llm.prompt_token_estimate());
        let call = Arc::new(Call {
            endpoint,
            headers: headers::forwardable_client_headers(&parts.headers),
            id: id.clone(),
            body,
            tally,
            span: tracing::Span::current(),
            failed: std::sync::atomic::AtomicUsize::new(usize::MAX),
            resumable: endpoint == Endpoint::ChatCompletions
                && llm.stream()
                && route.targets.len() > 1
                && route
                    .targets
                    .iter()
                    .any(|t| t.continuation != Continuation::None),
            llm,
        });
        drop(parts);
        // Client-side rate limits, the most specific first: its headers are the ones shown.
        let estimate = token_estimate(&call.llm);
        let limiters = [
            client.and_then(|c| c.limiter.as_ref()),
            route.limiter.as_ref(),
            self.rate_limiter.as_ref(),
        ];
        let mut billing = crate::body::Billing::default();
        let mut standings = None;
        for (slot, limiter) in limiters.into_iter().enumerate() {
            let Some(limiter) = limiter else { continue };
            match limiter.check((), estimate) {
                Ok((charge, standing)) => {
                    billing.charges[slot] = Some(charge);
                    standings.get_or_insert(standing);
                }
                Err((refusal, standing)) => {
                    for charge in billing.charges.iter_mut().filter_map(Option::take) {
                        charge.cancel();
                    }
                    return weir_ratelimit::refusal_response(
                        refusal,
                        &standing,
                        ResponseBody::full,
                    );
                }
            }
        }
        let mut response = match route.router.clone().oneshot(call.clone()).await {
            Ok(Routed {
                answer,
                target: Some(served),
                attempts,
            }) => {
                call.served(route, served, attempts);
                with_attempts(answer, attempts)
            }
            Ok(Routed {
                answer, attempts, ..
            }) => {
                call.tally.attempts(attempts);
                if let Some(provider) = answer.headers().get(&X_WEIR_PROVIDER) {
                    let provider = route
                        .targets
                        .iter()
                        .find(|t| t.upstream.name.as_bytes() == provider.as_bytes());
                    if let Some(t) = provider {
                        call.tally
                            .provider(t.upstream.name.clone(), t.model.clone());
                    }
                }
                with_attempts(answer, attempts)
            }
            Err(_) => all_out(call.llm.model(), &route.targets),
        };
        if let Some(standings) = standings {
            weir_ratelimit::write_headers(response.headers_mut(), &standings);
            response.body_mut().bill(billing);
        }
        response
    }
}

/// One client call, as every attempt and continuation needs it.
#[derive(Debug)]
pub(crate) struct Call {
    endpoint: Endpoint,
    headers: HeaderMap,
    id: HeaderValue,
    body: Bytes,
    llm: LlmRequest,
    /// What the metrics layer learns of the call.
    pub(crate) tally: weir_metrics::Tally,
    /// The request's span (disabled when traces are off): each attempt's parent.
    span: tracing::Span,
    /// The target of the last failed attempt (`usize::MAX`: none).
    failed: std::sync::atomic::AtomicUsize,
    /// A streamed chat answer that another target of the route may continue if it is cut.
    resumable: bool,
}

impl Call {
    /// Target `served` committed after `attempts`: the labels, price and failover it means.
    fn served(&self, route: &RouteEntry, served: usize, attempts: u32) {
        let target = &route.targets[served];
        self.tally.labels(weir_metrics::Labels {
            route: route.name.clone(),
            provider: target.upstream.name.clone(),
            model: target.model.clone(),
        });
        self.tally.attempts(attempts);
        if let Some(price) = target.price {
            self.tally.price(price);
        }
        let failed = self.failed.load(std::sync::atomic::Ordering::Relaxed);
        if let Some(from) = route.targets.get(failed).filter(|_| failed != served) {
            self.tally.failover(
                from.upstream.name.clone(),
                target.upstream.name.clone(),
                weir_metrics::Phase::BeforeFirstToken,
            );
        }
    }

    /// A span for one attempt on `target`, a child of the request's (none when traces are
    /// off), its context passed upstream in `headers` as W3C `traceparent`.
    fn attempt_span(&self, target: &RouteTarget, headers: &mut HeaderMap) -> tracing::Span {
        if self.span.is_disabled() {
            return tracing::Span::none();
        }
        let span = tracing::info_span!(
            target: "weir::attempt",
            parent: &self.span,
            "attempt",
            otel.name = tracing::field::display(format_args!("{} {}", operation(self.endpoint), target.model)),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            gen_ai.operation.name = operation(self.endpoint),
            gen_ai.provider.name = &*target.upstream.name,
            gen_ai.request.model = &*target.model,
            server.address = target.upstream.models_uri.host().unwrap_or_default(),
        );
        crate::telemetry::inject(&span, headers);
        span
    }
}

/// The GenAI operation name of an endpoint.
fn operation(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::ChatCompletions => "chat",
        Endpoint::Completions => "text_completion",
        Endpoint::Embeddings => "embeddings",
    }
}

/// What one attempt carries from its request to its judgement.
#[derive(Debug)]
pub(crate) struct Attempt {
    call: Arc<Call>,
    span: tracing::Span,
    /// A continuation of an answer cut on the target at this index, made this way.
    resuming: Option<(weir_llm::stream::Continuation, usize)>,
}

/// Marks an attempt's span as failed.
pub(crate) fn span_failed(span: &tracing::Span, failure: Failure) {
    span.record("otel.status_code", "ERROR");
    span.record("error.type", failure.as_str());
}

/// The LLM half of the failover router: each target's request (and continuation request),
/// and each answer read to its commit point and classified.
#[derive(Clone, Debug)]
pub(crate) struct LlmJudge {
    targets: Arc<[RouteTarget]>,
    first_token: Duration,
}

type Judging = Pin<Box<dyn std::future::Future<Output = Judged<Response<ResponseBody>>> + Send>>;

impl Judge<Arc<Call>> for LlmJudge {
    type Request = Request<Full<Bytes>>;
    type Response = Response<crate::body::Upstream>;
    type Answer = Response<ResponseBody>;
    type Future = Judging;
    type Attempt = Attempt;

    fn request(&self, target: usize, call: &Arc<Call>) -> (Request<Full<Bytes>>, Attempt) {
        let target = &self.targets[target];
        let mut request = outgoing_request(
            target,
            call.endpoint,
            &call.headers,
            &call.id,
            &call.llm,
            &call.body,
        );
        call.tally.sent();
        let span = call.attempt_span(target, request.headers_mut());
        let attempt = Attempt {
            call: call.clone(),
            span,
            resuming: None,
        };
        (request, attempt)
    }

    /// A replay (the same request) or a prefill (the partial answer as a final assistant
    /// message), as the target's `continuation` says.
    fn resume(
        &self,
        target: usize,
        call: &Arc<Call>,
        cut: &Cut,
    ) -> Option<(Request<Full<Bytes>>, Attempt)> {
        let t = &self.targets[target];
        let original = || call.llm.upstream_body(&call.body, &t.model, true);
        let (body, how) = match t.continuation {
            Continuation::None => return None,
            Continuation::Prefill => (
                continuation::prefill_request(&original(), &cut.answer.delivered)?,
                weir_llm::stream::Continuation::Prefill,
            ),
            Continuation::Replay => (original(), weir_llm::stream::Continuation::Replay),
        };
        let mut request = outgoing_request(
            t,
            call.endpoint,
            &call.headers,
            &call.id,
            &call.llm,
            &call.body,
        );
        *request.body_mut() = Full::new(body);
        let span = call.attempt_span(t, request.headers_mut());
        tracing::info!(
            from = %self.targets[cut.from].upstream.name,
            to = %t.upstream.name,
            failure = %cut.failure,
            "stream cut after its first token; continuing elsewhere"
        );
        let attempt = Attempt {
            call: call.clone(),
            span,
            resuming: Some((how, cut.from)),
        };
        Some((request, attempt))
    }

    fn committed(
        &self,
        _target: usize,
        call: &Arc<Call>,
        answer: &mut Response<ResponseBody>,
        resumer: impl FnOnce() -> Resumer<Response<ResponseBody>>,
    ) {
        if !call.resumable {
            return;
        }
        if let Some(stream) = answer.body_mut().chat_mut() {
            let resumer =
                resumer().map(|answer: Response<ResponseBody>| answer.into_body().into_chat());
            stream.resume_with(resumer);
        }
    }

    fn judge(
        &self,
        target: usize,
        attempt: Attempt,
        result: Result<Response<crate::body::Upstream>, weir_breaker::BoxError>,
    ) -> Judging {
        let this = self.targets[target].clone_parts();
        let first_token = self.first_token;
        let cut_from = attempt
            .resuming
            .map(|(_, from)| self.targets[from].upstream.name.clone());
        Box::pin(async move {
            let (upstream, model) = this;
            if let Ok(response) = &result {
                attempt
                    .span
                    .record("http.response.status_code", response.status().as_u16());
            }
            let judged = match result {
                Ok(response) if response.status().is_success() => {
                    match read_head(response, &upstream, first_token, &attempt).await {
                        Head::Committed(response) => Judged::Commit(response),
                        Head::Failed(answer, failure) => Judged::Failed(answer, Some(failure)),
                    }
                }
                Ok(response)
                    if response
                        .extensions()
                        .get::<weir_backpressure::Shed>()
                        .is_some()
                        || response
                            .extensions()
                            .get::<weir_ratelimit::Limited>()
                            .is_some() =>
                {
                    // weir's own limit for this provider is full: nothing went upstream.
                    let (parts, body) = response.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let mut answer = Response::from_parts(parts, ResponseBody::full(body));
                    answer
                        .headers_mut()
                        .insert(X_WEIR_PROVIDER.clone(), provider_value(&upstream));
                    Judged::Failed(answer, Some(Failure::AtCapacity))
                }
                Ok(response) => {
                    let (answer, failure) = buffered_answer(response, &upstream).await;
                    Judged::Failed(answer, failure)
                }
                Err(e) => {
                    let (answer, failure) = client_failure(&e, &upstream);
                    Judged::Failed(answer, Some(failure))
                }
            };
            match &judged {
                Judged::Failed(_, failure) => {
                    if attempt.resuming.is_none() {
                        attempt
                            .call
                            .failed
                            .store(target, std::sync::atomic::Ordering::Relaxed);
                    }
                    if let Some(failure) = failure {
                        span_failed(&attempt.span, *failure);
                    }
                }
                Judged::Commit(_) => {
                    if let Some(from) = cut_from {
                        let tally = &attempt.call.tally;
                        tally.failover(
                            from,
                            upstream.name.clone(),
                            weir_metrics::Phase::AfterFirstToken,
                        );
                        tally.provider(upstream.name.clone(), model);
                    }
                }
            }
            judged
        })
    }
}

impl RouteTarget {
    fn clone_parts(&self) -> (Arc<Upstream>, Arc<str>) {
        (self.upstream.clone(), self.model.clone())
    }
}

/// The request as it goes to `target`: its model, its provider's headers, the request id.
fn outgoing_request(
    target: &RouteTarget,
    endpoint: Endpoint,
    client_headers: &HeaderMap,
    id: &HeaderValue,
    llm: &LlmRequest,
    body: &Bytes,
) -> Request<Full<Bytes>> {
    let upstream = &target.upstream;
    let mut headers = headers::upstream_request_headers(client_headers, &upstream.headers);
    headers.insert(X_REQUEST_ID.clone(), id.clone());
    // Streamed chat: weir asks for usage (its own accounting needs it) and, if the client did
    // not, drops the usage event on the way back.
    let ask_usage = endpoint == Endpoint::ChatCompletions;
    let mut outgoing = Request::new(Full::new(llm.upstream_body(body, &target.model, ask_usage)));
    *outgoing.method_mut() = Method::POST;
    *outgoing.uri_mut() = upstream.uri(endpoint);
    *outgoing.headers_mut() = headers;
    if upstream.rate_limiter.is_some() {
        outgoing
            .extensions_mut()
            .insert(TokenEstimate(token_estimate(llm)));
    }
    outgoing
}

/// `x-weir-attempts`, when the answer took more than one attempt.
fn with_attempts(mut response: Response<ResponseBody>, attempts: u32) -> Response<ResponseBody> {
    if attempts > 1 {
        response
            .headers_mut()
            .insert(X_WEIR_ATTEMPTS.clone(), HeaderValue::from(attempts));
    }
    response
}

/// A 2xx answer read up to its commit point.
enum Head {
    /// The client gets it: the first event (or the whole non-streaming answer) is here.
    Committed(Response<ResponseBody>),
    /// It failed before the client saw anything: the answer to give if nothing better comes.
    Failed(Response<ResponseBody>, Failure),
}

/// The largest non-streaming answer held back until complete (beyond it, it streams).
const WHOLE_ANSWER_LIMIT: usize = 8 << 20;

/// Whether a response is an event stream weir can read (identity-encoded `text/event-stream`).
fn is_event_stream(headers: &HeaderMap) -> bool {
    !headers.contains_key(header::CONTENT_ENCODING)
        && headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// Reads a 2xx answer to its commit point. A stream commits at its first content event
/// (within `first_token`); one that breaks, stays silent or opens with an in-band error
/// before that has shown the client nothing, so it can be retried elsewhere, and so can a
/// streamed request answered with something that is not an event stream. A non-streaming
/// answer commits when it is complete.
async fn read_head(
    response: Response<crate::body::Upstream>,
    upstream: &Upstream,
    first_token: Duration,
    attempt: &Attempt,
) -> Head {
    let (mut parts, mut body) = response.into_parts();
    let settle = parts.extensions.remove::<weir_breaker::Settle>();
    let sse = is_event_stream(&parts.headers);
    let streamed = attempt.call.llm.stream();
    let shown = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| shorten(v, 64))
        .unwrap_or_else(|| "none".into());
    let encoding = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| shorten(v, 32));
    parts.headers = headers::client_response_headers(&parts.headers);
    parts
        .headers
        .insert(X_WEIR_PROVIDER.clone(), provider_value(upstream));
    let end = AttemptEnd {
        settle: settle.clone(),
        span: attempt.span.clone(),
        malformed: upstream.malformed.clone(),
    };
    let stream_attempt =
        || weir_failover::stream::Attempt::new(upstream.name.clone(), upstream.idle_timeout);
    // What was wrong with a malformed body's framing, when that is what failed it.
    let mut detail = None;
    let failure = if sse {
        parts.headers.remove(header::CONTENT_LENGTH);
        let call = &attempt.call;
        let mut watch = ChatWatch::new(upstream.max_event_bytes)
            .client_wants_usage(call.llm.include_usage())
            .strip_usage(
                call.endpoint == Endpoint::ChatCompletions && call.llm.can_ask_for_usage(),
            );
        if call.resumable {
            watch = watch.with_transcript();
        }
        match first_event(&mut body, &mut watch, first_token).await {
            Ok(prefix) => {
                if watch.told() {
                    // Its error event came with its first tokens: the breaker hears it now,
                    // before the clean end that follows.
                    if let Some(settle) = &settle {
                        settle.failure("in-band error event");
                    }
                }
                parts.extensions.insert(watch.meter().clone());
                let mut stream_attempt = stream_attempt().on_end(end);
                if let Some((how, _)) = attempt.resuming {
                    stream_attempt = stream_attempt.continuing(how);
                }
                let stream = weir_failover::StreamBody::new(body, prefix, watch, stream_attempt);
                return Head::Committed(Response::from_parts(parts, ResponseBody::chat(stream)));
            }
            Err(failure) => failure,
        }
    } else if streamed {
        // Asked for a stream, answered with something else: nothing the client could read
        // as one, nothing weir could watch.
        tracing::warn!(provider = %upstream.name, content_type = %shown, ?encoding, "a streamed request was not answered with an event stream");
        Failure::MalformedAnswer
    } else {
        let mut prefix = Vec::new();
        let mut total = 0;
        loop {
            match tokio::time::timeout(upstream.idle_timeout, body.frame()).await {
                Err(_) => break Failure::StreamStalled,
                Ok(Some(Err(e))) => {
                    detail = malformed(&*e);
                    break if detail.is_some() {
                        Failure::MalformedAnswer
                    } else {
                        Failure::StreamBroken
                    };
                }
                Ok(None) => {
                    parts.headers.remove(header::CONTENT_LENGTH);
                    let whole = concat(prefix);
                    return Head::Committed(Response::from_parts(parts, ResponseBody::full(whole)));
                }
                Ok(Some(Ok(frame))) => {
                    let Ok(bytes) = frame.into_data() else {
                        continue;
                    };
                    total += bytes.len();
                    prefix.push(bytes);
                    if total > WHOLE_ANSWER_LIMIT {
                        let stream = weir_failover::StreamBody::new(
                            body,
                            Some(concat(prefix)),
                            Opaque::default(),
                            stream_attempt().on_end(end),
                        );
                        return Head::Committed(Response::from_parts(
                            parts,
                            ResponseBody::opaque(stream),
                        ));
                    }
                }
            }
        }
    };
    // Only weir sees these; a broken stream the breaker has counted already.
    if let Some(settle) = &settle {
        settle.failure(failure.as_str());
    }
    let (kind, what) = match failure {
        Failure::MalformedAnswer if detail.is_some() => (
            ErrorKind::BadGateway,
            format!(
                "sent a malformed response: {}",
                detail.unwrap_or_default()
            ),
        ),
        Failure::FirstTokenTimeout => (
            ErrorKind::GatewayTimeout,
            format!("sent no first token within {first_token:?}"),
        ),
        Failure::MalformedAnswer if !sse => (
            ErrorKind::BadGateway,
            match encoding {
                Some(encoding) => format!(
                    "answered a streamed request with a `{encoding}`-encoded `{shown}` body instead of an event stream"
                ),
                None => format!(
                    "answered a streamed request with `content-type: {shown}` instead of an event stream (`text/event-stream`)"
                ),
            },
        ),
        Failure::MalformedAnswer => (
            ErrorKind::BadGateway,
            format!(
                "sent an event larger than {} bytes before its first token",
                upstream.max_event_bytes
            ),
        ),
        _ => (
            ErrorKind::BadGateway,
            "failed before its first token".to_owned(),
        ),
    };
    let answer = error(
        ErrorBody::new(
            kind,
            format!("The upstream provider `{}` {what}.", upstream.name),
        )
        .code(failure.as_str()),
    );
    Head::Failed(answer, failure)
}

/// What was malformed, when `error` (or an error it wraps) is a malformed upstream response.
fn malformed(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut at = Some(error);
    while let Some(e) = at {
        if let Some(client) = e.downcast_ref::<weir_client::Error>() {
            return client.is_malformed().then(|| client.to_string());
        }
        at = e.source();
    }
    None
}

/// At most `max` characters of `text`, with `…` when it was cut.
pub(crate) fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((at, _)) => format!("{}…", &text[..at]),
    }
}

/// Reads a stream through its watch up to its first content event (within `first_token`):
/// the whole events read, or why there were none (broken, silent, an event too large, or an
/// opening in-band error).
async fn first_event(
    body: &mut crate::body::Upstream,
    watch: &mut ChatWatch,
    first_token: Duration,
) -> Result<Option<Bytes>, Failure> {
    let deadline = Instant::now() + first_token;
    let mut prefix = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(Failure::FirstTokenTimeout),
            Ok(None | Some(Err(_))) => {
                watch.ended();
                if watch.is_complete() {
                    // A whole (empty) answer, ended by `[DONE]` alone.
                    prefix.extend(watch.finish());
                    return Ok(Some(concat(prefix)));
                }
                return Err(Failure::StreamBroken);
            }
            Ok(Some(Ok(frame))) => {
                let Ok(bytes) = frame.into_data() else {
                    continue;
                };
                let out = watch.push(bytes).map_err(|_| Failure::MalformedAnswer)?;
                prefix.extend(out);
                if watch.meter().content_events() > 0 || watch.is_done() {
                    return Ok(Some(concat(prefix)));
                }
                if watch.told() {
                    // The provider's first word was an error: still nothing shown.
                    return Err(Failure::StreamBroken);
                }
            }
        }
    }
}

fn concat(parts: Vec<Bytes>) -> Bytes {
    match parts.len() {
        0 => Bytes::new(),
        1 => parts.into_iter().next().expect("one part"),
        _ => {
            let mut whole = bytes::BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
            for part in parts {
                whole.extend_from_slice(&part);
            }
            whole.freeze()
        }
    }
}

fn provider_value(upstream: &Upstream) -> HeaderValue {
    HeaderValue::from_str(&upstream.name).expect("provider names are header-safe")
}

/// The largest error body weir reads to classify (and pass on) a refusal.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// A non-2xx answer, read whole (bounded) so that its error code can be classified, and kept
/// so that the client gets it as it was if no other attempt helps.
async fn buffered_answer(
    response: Response<crate::body::Upstream>,
    upstream: &Upstream,
) -> (Response<ResponseBody>, Option<Failure>) {
    let (mut parts, body) = response.into_parts();
    let bytes = match Limited::new(body, ERROR_BODY_LIMIT).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let failure = Failure::from_response(parts.status, &parts.headers, &bytes);
    let bytes = scrub(bytes, &upstream.secrets);
    parts.headers = headers::client_response_headers(&parts.headers);
    parts
        .headers
        .insert(X_WEIR_PROVIDER.clone(), provider_value(upstream));
    (
        Response::from_parts(parts, ResponseBody::full(bytes)),
        failure,
    )
}

/// No response at all: the failure class, and the answer the client gets if it stays so.
fn client_failure(
    failed: &weir_breaker::BoxError,
    upstream: &Upstream,
) -> (Response<ResponseBody>, Failure) {
    tracing::warn!(provider = %upstream.name, error = %failed, "upstream request failed");
    let client = failed.downcast_ref::<weir_client::Error>();
    let (kind, code, what, failure) = if client.is_some_and(|e| e.is_timeout()) {
        (
            ErrorKind::GatewayTimeout,
            "upstream_timeout",
            "did not answer in time",
            Failure::HeadersTimeout,
        )
    } else if client.is_some_and(|e| e.is_connect()) {
        (
            ErrorKind::BadGateway,
            "upstream_connect_error",
            "could not be reached",
            Failure::Connect,
        )
    } else if let Some(e) = client.filter(|e| e.is_malformed()) {
        // A broken server, not a broken network: say what was wrong.
        let body = ErrorBody::new(
            ErrorKind::BadGateway,
            format!(
                "The upstream provider `{}` sent a malformed response: {e}.",
                upstream.name
            ),
        )
        .code("malformed_answer");
        return (error(body), Failure::MalformedAnswer);
    } else {
        // Reset or closed before the headers: as good as a failed connection.
        (
            ErrorKind::BadGateway,
            "upstream_error",
            "closed the connection",
            Failure::Connect,
        )
    };
    let body = ErrorBody::new(
        kind,
        format!("The upstream provider `{}` {what}.", upstream.name),
    )
    .code(code);
    (error(body), failure)
}

/// Every target is out: a 503 that says which and why, with the soonest `Retry-After`.
fn all_out(model: &str, targets: &[RouteTarget]) -> Response<ResponseBody> {
    let mut soonest: Option<Duration> = None;
    let reasons: Vec<String> = targets
        .iter()
        .map(|target| {
            let upstream = &target.upstream;
            let snapshot = upstream.breaker.snapshot();
            if let Some(wait) = snapshot.retry_after {
                soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
            }
            let load = upstream.limit.snapshot();
            let why = match snapshot.state {
                State::Open { .. } => "circuit open".to_owned(),
                State::HalfOpen => "circuit half-open, waiting for a probe".to_owned(),
                State::Closed if snapshot.retry_after.is_some() => {
                    "cooling down after a rate limit".to_owned()
                }
                State::Closed => {
                    soonest = Some(soonest.map_or(upstream.limit.retry_after(), |s| {
                        s.min(upstream.limit.retry_after())
                    }));
                    format!(
                        "at capacity ({} of {} requests in flight, {} waiting)",
                        load.in_flight, load.limit, load.queued
                    )
                }
            };
            match snapshot.retry_after {
                Some(wait) => format!(
                    "`{}`: {why}, retry in {}s",
                    upstream.name,
                    whole_seconds(wait)
                ),
                None => format!("`{}`: {why}", upstream.name),
            }
        })
        .collect();
    let mut response = error(
        ErrorBody::new(
            ErrorKind::Unavailable,
            format!(
                "No provider can serve the model `{model}` now: {}.",
                reasons.join("; ")
            ),
        )
        .code("no_healthy_target"),
    );
    let retry = soonest.map_or(1, whole_seconds);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry));
    response
}

/// Whole seconds, rounded up, at least 1: never ask a client to come back too early.
fn whole_seconds(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

fn method_not_allowed(allow: &'static str) -> Response<ResponseBody> {
    let mut response = error(ErrorBody::new(
        ErrorKind::MethodNotAllowed,
        format!("This endpoint only accepts {allow}."),
    ));
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}
