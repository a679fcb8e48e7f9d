//! The gateway: weir's whole request path as one tower stack, built from a configuration.
//!
//! [`Gateway::stack`] is the one place where the path is composed; read it to know the order:
//!
//! 1. [`front`]: the request id (the client's when reasonable), the head bound (431), the path
//!    and method (404, 405); an error from anything inside becomes an answer;
//! 2. [`auth`]: the client key (401), the client's identity from then on;
//! 3. `weir_backpressure`: the server-wide concurrency limit, held by the answer's body to its
//!    end (a queue, then a 503); before the body is read, so a queued request holds no body;
//! 4. [`classify`]: the body read once (413), the request read as an LLM call (400), its model
//!    matched to a route the key may use (404);
//! 5. `weir_ratelimit`, three times: the server's limits, the route's, the key's (429), each
//!    charge settled from the answer's usage; the innermost (most specific) writes the
//!    answer's rate-limit headers;
//! 6. [`route`]: the route's `weir_failover` router over its targets, each a provider's own
//!    stack ([`provider`]: rate limit, concurrency limit, breaker, decompression, client), with
//!    [`judge`] reading each answer to its commit point, and a stream continued elsewhere if it
//!    is cut.
//!
//! The metrics layer sits outside, in the server, since the metrics outlive a reload.

mod answer;
mod auth;
mod call;
mod classify;
mod errors;
mod front;
mod head;
mod judge;
mod limits;
mod provider;
mod route;
mod stored;
mod target;

pub use answer::{ResponseBody, StreamFailed};
pub(crate) use errors::{error, unauthorized};
pub(crate) use provider::{Deployment, Upstream};

use crate::config::Config;
use crate::headers::RequestIds;
use auth::{AuthLayer, ClientKey};
use bytes::Bytes;
use classify::{ClassifyLayer, Routes};
use front::FrontLayer;
use http::{Request, Response};
pub(crate) use judge::cool_down_name;
use judge::LlmJudge;
use limits::{CallCost, KeyScope, RouteScope, ServerScope};
use provider::{limit_from, rate_limiter, unlimited};
use route::{Lane, Route, Router};
use std::convert::Infallible;
use std::sync::Arc;
use target::RouteTarget;
use tokio::time::Instant;
use tower::ServiceBuilder;
use weir_backpressure::{BackpressureLayer, Limit};
use weir_failover::router::{Failover, Order, Target};
use weir_failover::RetryBudget;
use weir_ratelimit::RateLimitLayer;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every answer of the stack: the router's, inside the client-side limits'
/// charges, inside the server's concurrency permit.
pub type Body = weir_backpressure::ResponseBody<
    weir_ratelimit::ResponseBody<
        weir_ratelimit::ResponseBody<weir_ratelimit::ResponseBody<ResponseBody, ()>, ()>,
        (),
    >,
>;

/// The gateway: routes, providers and limits, shared by every connection.
#[derive(Debug)]
pub struct Gateway {
    upstreams: Vec<Arc<Upstream>>,
    /// Each model a route targets on each provider, once.
    deployments: Vec<Arc<Deployment>>,
    routes: Arc<Routes>,
    router: Router,
    max_request_bytes: usize,
    /// Which client request headers go upstream.
    forward: Arc<crate::headers::Forward>,
    /// Request ids: carried over reloads, so that none is given twice.
    ids: Arc<RequestIds>,
    /// Which provider stored each response weir passed on (the Responses API).
    owners: Arc<stored::Owners>,
    /// The server-wide limit on requests in flight (`[server] max_concurrency`).
    limit: Option<Limit>,
    /// The limit the stack applies: the configured one, or none that counts.
    applied: Limit,
    /// Rate limits on every client together (`[server] rate_limit`).
    rate_limiter: Option<weir_ratelimit::Limiter<()>>,
    /// The client keys (empty: no authentication).
    keys: Arc<[Arc<ClientKey>]>,
    /// `[server]` as this gateway was built from (what a reload compares).
    server: crate::config::Server,
    /// Where the rate limits keep their state (`[ratelimit]`), as configured.
    limit_store: crate::config::LimitStore,
    /// The Redis store, with `store = "redis"` (kept, connection and all, by a reload that
    /// leaves `[ratelimit]` as it was).
    shared: Option<weir_ratelimit::RedisStore>,
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

    /// The request path. See the [module docs](self).
    pub(crate) fn stack<B>(
        &self,
    ) -> impl tower::Service<
        Request<B>,
        Response = Response<Body>,
        Error = Infallible,
        Future = impl std::future::Future<Output = Result<Response<Body>, Infallible>> + Send,
    > + Send
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        ServiceBuilder::new()
            .layer(FrontLayer::new(self.ids.clone()))
            .layer(AuthLayer::new(self.keys.clone()))
            .layer(BackpressureLayer::new(self.applied.clone()))
            .layer(ClassifyLayer::new(
                self.routes.clone(),
                self.max_request_bytes,
                self.forward.clone(),
                self.owners.clone(),
            ))
            // The most specific limit innermost: its headers are the ones the client sees.
            .layer(RateLimitLayer::scoped(ServerScope(self.rate_limiter.clone())).cost(CallCost))
            .layer(RateLimitLayer::scoped(RouteScope).cost(CallCost))
            .layer(RateLimitLayer::scoped(KeyScope).cost(CallCost))
            .service(self.router.clone())
    }

    fn build(config: &Config, previous: Option<&Gateway>) -> Result<Self, weir_client::Error> {
        // A limiter is kept over a reload only when its store is the same one.
        let (shared, previous_limits) = match previous {
            Some(g) if g.limit_store == config.ratelimit => (g.shared.clone(), previous),
            _ => (shared_store(&config.ratelimit), None),
        };
        // Each scope's limits go to Redis only when `[ratelimit] scopes` lists it.
        let store_for = |scope: &str| match &config.ratelimit {
            crate::config::LimitStore::Redis(r) if r.shares(scope) => shared.as_ref(),
            _ => None,
        };
        let store = shared.as_ref();
        let upstreams = config
            .providers
            .iter()
            .map(|p| {
                let old = previous.and_then(|g| g.upstreams.iter().find(|u| *u.name == *p.name));
                match old {
                    Some(old) if old.config == *p && previous_limits.is_some() => Ok(old.clone()),
                    old => Upstream::new(
                        p,
                        old.map(|u| &**u).filter(|_| previous_limits.is_some()),
                        store,
                    )
                    .map(Arc::new),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut deployments: Vec<Arc<Deployment>> = Vec::new();
        for t in config.routes.iter().flat_map(|r| &r.targets) {
            let upstream = &upstreams[t.provider];
            let known = deployments
                .iter()
                .any(|d| Arc::ptr_eq(&d.upstream, upstream) && *d.model == *t.model);
            if known {
                continue;
            }
            let kept = previous.and_then(|g| {
                g.deployments
                    .iter()
                    .find(|d| *d.upstream.name == *upstream.name && *d.model == *t.model)
            });
            let deployment = match kept {
                Some(old) if Arc::ptr_eq(&old.upstream, upstream) => old.clone(),
                old => Arc::new(Deployment::new(upstream, &t.model, old.map(|d| &**d))),
            };
            deployments.push(deployment);
        }
        let routes: Routes = config
            .routes
            .iter()
            .map(|r| {
                let kept = previous_limits
                    .and_then(|g| g.routes.get(&r.model))
                    .filter(|old| old.rate_limit == r.rate_limit)
                    .map(|old| old.limiter.clone());
                let route = route(
                    config,
                    r,
                    &upstreams,
                    &deployments,
                    kept,
                    store,
                    store_for("route"),
                );
                (r.model.clone(), Arc::new(route))
            })
            .collect();
        let models = config
            .routes
            .iter()
            .map(|r| r.model.as_str().into())
            .collect();
        // Which provider stored which response outlives a reload.
        let owners = previous.map(|g| g.owners.clone()).unwrap_or_default();
        let limit = match previous {
            Some(g) if g.server.concurrency == config.server.concurrency => g.limit.clone(),
            _ => config.server.concurrency.as_ref().map(limit_from),
        };
        Ok(Self {
            router: Router {
                models,
                upstreams: upstreams.clone().into(),
                owners: owners.clone(),
            },
            owners,
            upstreams,
            deployments,
            routes: Arc::new(routes),
            max_request_bytes: config.server.max_request_bytes,
            forward: Arc::new(crate::headers::Forward::new(&config.server.forward_headers)),
            ids: previous.map(|g| g.ids.clone()).unwrap_or_default(),
            applied: limit.clone().unwrap_or_else(unlimited),
            limit,
            rate_limiter: match previous_limits {
                Some(g) if g.server.rate_limit == config.server.rate_limit => {
                    g.rate_limiter.clone()
                }
                _ => config
                    .server
                    .rate_limit
                    .as_ref()
                    .map(|c| rate_limiter(c, store_for("server"), "server")),
            },
            keys: config
                .keys
                .iter()
                .map(|k| {
                    let kept = previous_limits
                        .and_then(|g| g.keys.iter().find(|old| *old.name == *k.name))
                        .filter(|old| old.limits == k.limits)
                        .map(|old| old.limiter.clone());
                    let name = format!("key:{}", k.name);
                    Arc::new(ClientKey {
                        name: k.name.as_str().into(),
                        hash: k.hash,
                        models: k.models.as_ref().map(|m| m.iter().cloned().collect()),
                        limiter: kept.unwrap_or_else(|| {
                            k.limits
                                .as_ref()
                                .map(|c| rate_limiter(c, store_for("key"), &name))
                        }),
                        limits: k.limits.clone(),
                    })
                })
                .collect(),
            server: config.server.clone(),
            limit_store: config.ratelimit.clone(),
            shared,
        })
    }

    /// The shared store of the rate limits, with `[ratelimit] store = "redis"`.
    pub(crate) fn shared_store(&self) -> Option<&weir_ratelimit::RedisStore> {
        self.shared.as_ref()
    }

    /// The providers, in config order.
    pub(crate) fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    /// The deployments (each model a route targets on a provider), in config order.
    pub(crate) fn deployments(&self) -> &[Arc<Deployment>] {
        &self.deployments
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

    /// Whether a request's headers carry a valid client key (no keys configured: any).
    pub(crate) fn authenticates(&self, headers: &http::HeaderMap) -> bool {
        auth::authenticates(&self.keys, headers)
    }
}

/// The Redis store `[ratelimit]` asks for; its connection is made in the background at once.
fn shared_store(c: &crate::config::LimitStore) -> Option<weir_ratelimit::RedisStore> {
    let crate::config::LimitStore::Redis(r) = c else {
        return None;
    };
    let settings = weir_ratelimit::RedisSettings {
        url: r.url.expose().to_owned(),
        namespace: r.namespace.clone(),
        budget: r.budget,
        on_failure: if r.fail_closed {
            weir_ratelimit::OnFailure::Closed
        } else {
            weir_ratelimit::OnFailure::Open
        },
        replicas: r.replicas,
    };
    match weir_ratelimit::RedisStore::new(settings) {
        Ok(store) => {
            if tokio::runtime::Handle::try_current().is_ok() {
                store.connect_soon();
            }
            Some(store)
        }
        Err(e) => {
            // The URL was checked when the config was read; never printed (a password).
            tracing::error!(error.kind = ?e.kind(), "the [ratelimit] redis URL cannot be used: rate limits stay local");
            None
        }
    }
}

/// A route from its config: its targets, and its failover router over their providers.
fn route(
    config: &Config,
    r: &crate::config::Route,
    upstreams: &[Arc<Upstream>],
    deployments: &[Arc<Deployment>],
    kept: Option<Option<weir_ratelimit::Limiter<()>>>,
    store: Option<&weir_ratelimit::RedisStore>,
    limits_store: Option<&weir_ratelimit::RedisStore>,
) -> Route {
    let deployment = |t: &crate::config::Target| {
        deployments
            .iter()
            .find(|d| Arc::ptr_eq(&d.upstream, &upstreams[t.provider]) && *d.model == *t.model)
            .expect("every target's deployment is built")
            .clone()
    };
    // One lane per API the route's providers speak: a call goes to its API's.
    // The targets `chosen` (a subset of the route's, in order) and their router.
    let lane_of = |chosen: &[&crate::config::Target]| -> Lane {
        let targets: Arc<[RouteTarget]> = chosen
            .iter()
            .map(|t| RouteTarget {
                upstream: upstreams[t.provider].clone(),
                deployment: deployment(t),
                model: t.model.as_str().into(),
                continuation: t.continuation,
                price: config.prices.get(&t.model).copied(),
            })
            .collect::<Vec<_>>()
            .into();
        let b = r.retry_budget;
        let router = Failover::builder(
            chosen
                .iter()
                .map(|t| {
                    Target::new(deployment(t).service.clone())
                        .context_window(t.context_window)
                        .model(t.model.as_str())
                        .weight(t.weight)
                })
                .collect(),
            LlmJudge {
                targets: targets.clone(),
                first_token: r.first_token_timeout,
                shared: store.cloned(),
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
            chosen
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
        Lane {
            targets,
            router,
            pinned: Vec::new(),
        }
    };
    let lane = |api: crate::config::ProviderApi| -> Option<Lane> {
        let chosen: Vec<&crate::config::Target> = r
            .targets
            .iter()
            .filter(|t| upstreams[t.provider].config.api == api)
            .collect();
        if chosen.is_empty() {
            return None;
        }
        let mut lane = lane_of(&chosen);
        // A request continuing a stored response goes to the provider that keeps it: one
        // lane per provider, when there are several.
        let mut providers: Vec<usize> = chosen.iter().map(|t| t.provider).collect();
        providers.sort_unstable();
        providers.dedup();
        if api == crate::config::ProviderApi::OpenAi && providers.len() > 1 {
            lane.pinned = providers
                .iter()
                .map(|&p| {
                    let only: Vec<&crate::config::Target> =
                        chosen.iter().copied().filter(|t| t.provider == p).collect();
                    (upstreams[p].name.clone(), lane_of(&only))
                })
                .collect();
        }
        Some(lane)
    };
    Route {
        name: r.model.as_str().into(),
        limiter: kept.unwrap_or_else(|| {
            r.rate_limit
                .as_ref()
                .map(|c| rate_limiter(c, limits_store, &format!("route:{}", r.model)))
        }),
        rate_limit: r.rate_limit.clone(),
        openai: lane(crate::config::ProviderApi::OpenAi),
        anthropic: lane(crate::config::ProviderApi::Anthropic),
    }
}
