//! One provider, ready to take requests: its pooled client (compressed answers decoded)
//! behind its endpoint breaker, its concurrency limit and its published rate limits; and each
//! of its deployments (a model a route targets on it), whose own breaker sits inside the
//! provider's limits, as one tower stack per deployment. An outage or a 429 of one model keeps
//! only that model out; a failed connection counts against every model of the provider.

use crate::config::{Health, Provider, ProviderApi};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri};
use http_body_util::Full;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use weir_backpressure::{Backpressure, Limit};
use weir_breaker::{Breaker, CircuitBreaker, LlmClassifier, Mode, TransportClassifier};
use weir_client::{ClientBuilder, HttpClient};
use weir_llm::Endpoint;

/// A deployment's stack: the provider's rate limit and concurrency limit (shared by its
/// models), the model's own breaker, the provider's endpoint breaker, then the client. The
/// limits are outside the breakers: their own answers (503, 429) are not the provider's
/// failures.
pub(crate) type Guarded = weir_ratelimit::RateLimit<
    Backpressure<CircuitBreaker<Connected, LlmClassifier>>,
    weir_ratelimit::Keyed<(), ProviderKey>,
    EstimateCost,
>;

/// A provider's client behind its endpoint breaker, which counts only failed connections
/// (refused, DNS, TLS, closed or reset before any response): one breaker for all its models.
pub(crate) type Connected = CircuitBreaker<Decoded, TransportClassifier>;

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
    pub(crate) config: Provider,
    /// The client alone (health probes go around the breakers).
    pub(crate) client: HttpClient<Full<Bytes>>,
    /// The client behind the endpoint breaker, for the deployments' stacks.
    pub(crate) connected: Connected,
    /// The endpoint breaker: failed connections, from every model's calls and the probes.
    pub(crate) endpoint: Breaker,
    /// Whether a request waits for the provider's rate limit, and how long.
    pub(crate) rate_mode: weir_ratelimit::Mode,
    /// Requests in flight to this provider (unbounded unless `max_concurrency` is set).
    pub(crate) limit: Limit,
    /// The provider's published rate limits, if set.
    pub(crate) rate_limiter: Option<weir_ratelimit::Limiter<()>>,
    /// Whether `max_concurrency` is set (else the limit only counts).
    pub(crate) limited: bool,
    /// The longest a request waits for this provider's limit.
    pub(crate) queue_timeout: Duration,
    pub(crate) health: Health,
    /// When the next health probe is due.
    pub(crate) next_probe: Mutex<Option<Instant>>,
    /// Malformed events dropped from this provider's streams.
    pub(crate) malformed: Arc<std::sync::atomic::AtomicU64>,
    /// The full URI of each endpoint under the base URL.
    pub(crate) uris: [Uri; 6],
    /// `Authorization` and the configured extra headers, marked sensitive.
    pub(crate) headers: HeaderMap,
    /// The secret values sent to this provider (its key, its extra headers' values): scrubbed
    /// from any upstream answer weir passes on.
    pub(crate) secrets: Vec<Vec<u8>>,
    pub(crate) idle_timeout: Duration,
    /// The largest event of a stream.
    pub(crate) max_event_bytes: usize,
    /// `GET {base}/models`, for health probes.
    pub(crate) models_uri: Uri,
}

impl Upstream {
    /// A provider's client and its guards. `previous` (the same provider before a reload)
    /// lends the state a reload must keep: its breaker, its concurrency limit and its rate
    /// limiter, each when its own settings did not change.
    pub(crate) fn new(
        p: &Provider,
        previous: Option<&Upstream>,
        shared: Option<&weir_ratelimit::RedisStore>,
    ) -> Result<Self, weir_client::Error> {
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
        let endpoint = match same(&|old| old.breaker == p.breaker) {
            Some(old) => old.endpoint.clone(),
            None => Breaker::new(p.breaker.clone()),
        };
        let decoded = weir_client::Decompress::new(client.clone());
        let connected = CircuitBreaker::new(
            decoded,
            endpoint.clone(),
            TransportClassifier::new(failed_connection),
            Mode::Wait,
        );
        let (limit, queue_timeout) = match (
            &p.concurrency,
            same(&|old| old.concurrency == p.concurrency),
        ) {
            (Some(c), Some(old)) => (old.limit.clone(), c.queue_timeout),
            (Some(c), None) => (limit_from(c), c.queue_timeout),
            (None, _) => (unlimited(), Duration::ZERO),
        };
        // `previous` is given only when the limits' store did not change.
        let rate_limiter = match same(&|old| old.rate_limit == p.rate_limit) {
            Some(old) => old.rate_limiter.clone(),
            None => p
                .rate_limit
                .as_ref()
                .map(|c| rate_limiter(c, shared, &format!("provider:{}", p.name))),
        };
        let rate_mode = match &p.rate_limit {
            Some(r) if !r.wait.is_zero() => weir_ratelimit::Mode::Wait { max_wait: r.wait },
            _ => weir_ratelimit::Mode::Reject,
        };
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
            let (name, value) = match p.api {
                ProviderApi::OpenAi => (
                    header::AUTHORIZATION,
                    HeaderValue::from_str(&format!("Bearer {}", key.expose()))
                        .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid-key")),
                ),
                ProviderApi::Anthropic => (
                    HeaderName::from_static("x-api-key"),
                    HeaderValue::from_str(key.expose())
                        .unwrap_or_else(|_| HeaderValue::from_static("invalid-key")),
                ),
            };
            let mut value = value;
            value.set_sensitive(true);
            headers.insert(name, value);
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
            connected,
            endpoint,
            rate_mode,
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
            uris: ENDPOINTS.map(uri),
            headers,
            // Short values would match ordinary text: a secret has some length.
            secrets: secrets.into_iter().filter(|s| s.len() >= 8).collect(),
            idle_timeout: p.idle_timeout,
            max_event_bytes: p.max_event_bytes,
        })
    }

    pub(crate) fn uri(&self, endpoint: Endpoint) -> Uri {
        let at = ENDPOINTS
            .iter()
            .position(|e| *e == endpoint)
            .expect("every endpoint is listed");
        self.uris[at].clone()
    }
}

/// The endpoints under a provider's base URL, in the order of `Upstream::uris`.
const ENDPOINTS: [Endpoint; 6] = [
    Endpoint::ChatCompletions,
    Endpoint::Completions,
    Endpoint::Embeddings,
    Endpoint::Responses,
    Endpoint::Messages,
    Endpoint::CountTokens,
];

/// Whether a call's error is a failed connection: what counts against every model of a
/// provider.
fn failed_connection(error: &(dyn std::error::Error + 'static)) -> bool {
    error
        .downcast_ref::<weir_client::Error>()
        .is_some_and(|e| e.is_connect() || e.is_closed_before_response())
}

/// One model of one provider, as route targets call it: its own breaker (and 429 cool-down)
/// inside the provider's limits, behind the provider's endpoint breaker.
#[derive(Debug)]
pub(crate) struct Deployment {
    pub(crate) upstream: Arc<Upstream>,
    /// The model name sent upstream.
    pub(crate) model: Arc<str>,
    /// This model's breaker.
    pub(crate) breaker: Breaker,
    /// What its calls go through.
    pub(crate) service: Guarded,
    /// When its next health probe is due, while its breaker is not closed.
    pub(crate) next_probe: Mutex<Option<Instant>>,
}

impl Deployment {
    /// `model` on `upstream`; `previous` (the same deployment before a reload) lends its
    /// breaker when the provider's breaker settings did not change.
    pub(crate) fn new(
        upstream: &Arc<Upstream>,
        model: &str,
        previous: Option<&Deployment>,
    ) -> Self {
        let p = &upstream.config;
        let breaker = match previous {
            Some(old) if old.upstream.config.breaker == p.breaker => old.breaker.clone(),
            _ => Breaker::new(p.breaker.clone()),
        };
        // The stream watch reads every event already: it settles in-band errors.
        let classifier = LlmClassifier::new()
            .count_rate_limits(p.breaker_counts_rate_limits)
            .slow_first_byte(p.slow_first_byte)
            .in_band_errors(false);
        let service = CircuitBreaker::new(
            upstream.connected.clone(),
            breaker.clone(),
            classifier,
            Mode::Wait,
        );
        let service = Backpressure::new(
            service,
            upstream.limit.clone(),
            weir_backpressure::Mode::Wait,
        );
        let limiter = upstream.rate_limiter.clone();
        let service = weir_ratelimit::RateLimit::new(
            service,
            weir_ratelimit::Keyed::new(
                limiter
                    .clone()
                    .unwrap_or_else(|| weir_ratelimit::Limiter::builder().build()),
                ProviderKey(limiter.is_some()),
            ),
            EstimateCost,
            upstream.rate_mode,
        )
        // The provider's budget is weir's business, not the client's.
        .with_headers(false);
        Self {
            upstream: upstream.clone(),
            model: model.into(),
            breaker,
            service,
            next_probe: Mutex::new(None),
        }
    }
}

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
pub(crate) fn unlimited() -> Limit {
    Limit::builder(tokio::sync::Semaphore::MAX_PERMITS)
        .max_queue(0)
        .build()
}

/// A rate limiter from its config; with a shared store, its state lives there under `name`.
pub(crate) fn rate_limiter(
    c: &crate::config::RateLimit,
    shared: Option<&weir_ratelimit::RedisStore>,
    name: &str,
) -> weir_ratelimit::Limiter<()> {
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
    if let Some(store) = shared {
        builder = builder.shared(store.clone(), name);
    }
    builder.build()
}

/// The provider's name as a header value.
pub(crate) fn provider_value(upstream: &Upstream) -> HeaderValue {
    HeaderValue::from_str(&upstream.name).expect("provider names are header-safe")
}
