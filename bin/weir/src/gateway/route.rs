//! The routes, and the innermost service: a call goes to its route's failover router, whose
//! answer (committed, or the last error) goes back with how many attempts it took.

use super::answer::ResponseBody;
use super::auth::Identity;
use super::call::Call;
use super::errors::{error, json, model_not_found, shorten, whole_seconds};
use super::judge::LlmJudge;
use super::provider::Guarded;
use super::target::RouteTarget;
use crate::headers::{X_SHOULD_RETRY, X_WEIR_ATTEMPTS};
use http::header::{self, HeaderValue};
use http::{Request, Response};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::ServiceExt;
use weir_breaker::State;
use weir_failover::router::{Failover, Routed};
use weir_llm::{ErrorBody, ErrorKind};

/// A route: what clients ask for, its targets in order, its failover router, and the limits
/// on every client of it together.
#[derive(Debug)]
pub(crate) struct Route {
    /// The model name clients ask for (the route's label in metrics).
    pub(crate) name: Arc<str>,
    pub(crate) limiter: Option<weir_ratelimit::Limiter<()>>,
    pub(crate) rate_limit: Option<crate::config::RateLimit>,
    /// The targets on providers that speak OpenAI's API (chat, completions, embeddings,
    /// responses), and their router.
    pub(crate) openai: Option<Lane>,
    /// The targets on providers that speak Anthropic's (messages), and their router.
    pub(crate) anthropic: Option<Lane>,
}

/// The targets of a route that speak one API, in order, and their failover router.
#[derive(Debug)]
pub(crate) struct Lane {
    pub(crate) targets: Arc<[RouteTarget]>,
    pub(crate) router: Failover<Guarded, LlmJudge>,
    /// Responses, on a lane over several providers: the lane of each provider's targets
    /// alone, for a request that continues a response stored there.
    pub(crate) pinned: Vec<(Arc<str>, Lane)>,
}

impl Route {
    /// The lane that serves `endpoint`, if any of the route's providers speaks its API.
    pub(crate) fn lane(&self, endpoint: weir_llm::Endpoint) -> Option<&Lane> {
        if crate::config::ProviderApi::Anthropic.serves(endpoint) {
            self.anthropic.as_ref()
        } else {
            self.openai.as_ref()
        }
    }

    /// The lane for `endpoint`, narrowed to `provider`'s targets when the call is pinned
    /// there (and the route has that provider).
    pub(crate) fn lane_for(
        &self,
        endpoint: weir_llm::Endpoint,
        provider: Option<&str>,
    ) -> Option<&Lane> {
        let lane = self.lane(endpoint)?;
        let pinned = provider.and_then(|p| lane.pinned.iter().find(|(name, _)| **name == *p));
        Some(pinned.map_or(lane, |(_, lane)| lane))
    }
}

/// What the classifier made of a request, for the router.
#[derive(Clone, Debug)]
pub(crate) enum Classified {
    /// `GET /v1/models` (`None`) or `GET /v1/models/{id}`.
    Models(Option<String>),
    /// A call, on its route.
    Call(Arc<Call>, Arc<Route>),
    /// A stored response, at the provider that made it.
    Stored(super::stored::StoredRequest),
}

/// The innermost service. See the [module docs](self).
#[derive(Clone, Debug)]
pub(crate) struct Router {
    /// The routes' models, in config order: what `GET /v1/models` lists (those the key may use).
    pub(crate) models: Arc<[Arc<str>]>,
    /// The providers, for stored responses.
    pub(crate) upstreams: Arc<[Arc<super::provider::Upstream>]>,
    pub(crate) owners: Arc<super::stored::Owners>,
}

type Answering = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

impl tower::Service<Request<()>> for Router {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Answering;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> Answering {
        let classified = request.extensions().get::<Classified>().cloned();
        let key = request.extensions().get::<Identity>().map(|i| i.0.clone());
        let models = self.models.clone();
        let (upstreams, owners) = (self.upstreams.clone(), self.owners.clone());
        Box::pin(async move {
            let allowed = |model: &str| key.as_ref().is_none_or(|k| k.allows(model));
            Ok(match classified {
                Some(Classified::Call(call, route)) => answer(call, route).await,
                Some(Classified::Stored(stored)) => {
                    super::stored::answer(stored, &owners, &upstreams).await
                }
                Some(Classified::Models(Some(id))) => {
                    match models.iter().find(|m| ***m == *id).filter(|m| allowed(m)) {
                        Some(model) => json(model_object(model).to_string().into()),
                        None => model_not_found(&id),
                    }
                }
                Some(Classified::Models(None)) | None => {
                    let data: Vec<serde_json::Value> = models
                        .iter()
                        .filter(|m| allowed(m))
                        .map(|m| model_object(m))
                        .collect();
                    let list = serde_json::json!({"object": "list", "data": data});
                    json(list.to_string().into())
                }
            })
        })
    }
}

/// A model as OpenAI's `GET /v1/models` shows one.
fn model_object(model: &str) -> serde_json::Value {
    serde_json::json!({"id": model, "object": "model", "created": 0, "owned_by": "weir"})
}

async fn answer(call: Arc<Call>, route: Arc<Route>) -> Response<ResponseBody> {
    let Some(lane) = route.lane_for(call.endpoint, call.pinned.as_deref()) else {
        // The classifier sends no call to a route without a lane for it.
        return model_not_found(call.llm.model());
    };
    match lane.router.clone().oneshot(call.clone()).await {
        Ok(Routed {
            answer,
            target: Some(served),
            attempts,
        }) => {
            self::served(&call, &route.name, lane, served, attempts);
            with_attempts(answer, attempts)
        }
        Ok(Routed {
            answer, attempts, ..
        }) => {
            call.tally.attempts(attempts);
            // The answer is the last failed attempt's: its target, as the judge recorded it.
            let failed = call.failed.load(std::sync::atomic::Ordering::Relaxed);
            if let Some(t) = lane.targets.get(failed) {
                call.tally
                    .provider(t.upstream.name.clone(), t.model.clone());
            }
            with_attempts(answer, attempts)
        }
        Err(_) => all_out(call.llm.model(), &lane.targets),
    }
}

/// `x-weir-attempts`, when the answer took more than one attempt; and on an error after
/// several, `x-should-retry: false`, so that a client's own retries do not multiply weir's.
fn with_attempts(mut response: Response<ResponseBody>, attempts: u32) -> Response<ResponseBody> {
    if attempts > 1 {
        let failed = !response.status().is_success();
        let headers = response.headers_mut();
        headers.insert(X_WEIR_ATTEMPTS.clone(), HeaderValue::from(attempts));
        if failed {
            headers.insert(X_SHOULD_RETRY.clone(), HeaderValue::from_static("false"));
        }
    }
    response
}

/// Every target is out: a 503 that says which and why, with the soonest `Retry-After`; or,
/// when every one is out only because its provider rate-limited it, a 429 (which clients
/// back off on as a rate limit) with the soonest `Retry-After`.
fn all_out(model: &str, targets: &[RouteTarget]) -> Response<ResponseBody> {
    let mut soonest: Option<Duration> = None;
    let mut rate_limited = true;
    let reasons: Vec<String> = targets
        .iter()
        .map(|target| {
            let upstream = &target.upstream;
            let endpoint = upstream.endpoint.snapshot();
            let snapshot = if endpoint.state == State::Closed {
                target.deployment.breaker.snapshot()
            } else {
                endpoint
            };
            let mut wait = snapshot.retry_after;
            let why = match snapshot.state {
                State::Open { .. } => "circuit open".to_owned(),
                State::HalfOpen => "circuit half-open, waiting for a probe".to_owned(),
                State::Closed if snapshot.retry_after.is_some() => {
                    "rate limited by the provider, cooling down".to_owned()
                }
                State::Closed => {
                    let load = upstream.limit.snapshot();
                    wait = Some(upstream.limit.retry_after());
                    format!(
                        "at capacity ({} of {} requests in flight, {} waiting)",
                        load.in_flight, load.limit, load.queued
                    )
                }
            };
            rate_limited &= snapshot.state == State::Closed && snapshot.retry_after.is_some();
            if let Some(wait) = wait {
                soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
            }
            let name = format!("`{}` (`{}`)", upstream.name, shorten(&target.model, 64));
            match snapshot.retry_after {
                Some(wait) => format!("{name}: {why}, retry in {}s", whole_seconds(wait)),
                None => format!("{name}: {why}"),
            }
        })
        .collect();
    let model = shorten(model, 64);
    let body = if rate_limited {
        ErrorBody::new(
            ErrorKind::RateLimited,
            format!(
                "Every provider of the model `{model}` is rate limiting it now: {}.",
                reasons.join("; ")
            ),
        )
        .code("rate_limit_exceeded")
    } else {
        ErrorBody::new(
            ErrorKind::Unavailable,
            format!(
                "No provider can serve the model `{model}` now: {}.",
                reasons.join("; ")
            ),
        )
        .code("no_healthy_target")
    };
    let mut response = error(body);
    let retry = soonest.map_or(1, whole_seconds);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry));
    response
}

/// Target `served` of `call` committed after `attempts`: the labels, price and failover it means.
fn served(call: &Call, route: &Arc<str>, lane: &Lane, served: usize, attempts: u32) {
    let target = &lane.targets[served];
    call.tally.labels(weir_metrics::Labels {
        route: route.clone(),
        provider: target.upstream.name.clone(),
        model: target.model.clone(),
    });
    call.tally.attempts(attempts);
    if let Some(price) = target.price {
        call.tally.price(price);
    }
    let failed = call.failed.load(std::sync::atomic::Ordering::Relaxed);
    if let Some(from) = lane.targets.get(failed).filter(|_| failed != served) {
        call.tally.failover(
            from.upstream.name.clone(),
            target.upstream.name.clone(),
            weir_metrics::Phase::BeforeFirstToken,
        );
    }
}
