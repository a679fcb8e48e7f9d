//! Rate limits for HTTP services in front of LLM APIs, on `governor`'s GCRA: keyed requests per
//! minute and tokens per minute, with bursts.
//!
//! - A [`Limiter`] holds both quotas over a keyed store (governor's `DashMap` store behind
//!   the [`Store`] trait, so that a store shared by many replicas can replace it). Keys whose
//!   state is back to full are pruned (`retain_recent`), and past `max_keys` new keys share
//!   one overflow bucket: a flood of fresh keys cannot grow memory without bound.
//! - Tokens are charged up front from the request's estimate ([`LlmCost`]: the prompt's
//!   estimate plus `max_tokens`), and the [`Charge`] is settled from the real usage when the
//!   answer ends: from the `weir_llm::stream::Meter` a stream's watch put in the response's
//!   extensions when there is one, else by reading `"total_tokens"` as the answer passes.
//! - [`RateLimit`] (via [`RateLimitLayer`]) picks the key with a [`KeyExtractor`] (global,
//!   header, request extension, peer IP behind trusted proxies, model, or a function), or the
//!   limiter itself with a [`Scope`] (a limiter of its own per client or per route), and in
//!   [`Mode::Reject`] answers a call over its limit at once with a 429 OpenAI-style error and
//!   `Retry-After` (marked [`Limited`] in its extensions, so that a limit around it gives its
//!   own charge back); in [`Mode::Wait`] the call waits its turn (first come first served per
//!   key) up to a deadline, holding nothing of the inner service's meanwhile (a concurrency
//!   slot reserved by its readiness is given back, and taken again once the call fits). Every answer carries OpenAI's `x-ratelimit-*` headers and the IETF
//!   `RateLimit-Policy` / `RateLimit` fields, streams included (decided at admission).
//! - Time comes from tokio's clock ([`TokioClock`]), so limits follow paused time in tests.
//! - With the `redis` feature, a limiter built with `LimiterBuilder::shared` keeps its state
//!   in Redis (`RedisStore`), shared by every replica: one atomic server-side script per
//!   decision, a budget past which this replica's share (the limit ÷ replicas) decides (or,
//!   failing closed, a 503), token charges settled there too, and 429 cool-downs published
//!   for the others (`RedisStore::publish_cool_down`, `RedisStore::cool_downs`). The
//!   service asks Redis in its response future; the local path is unchanged.
//!
//! The service answers with a response, never an error, for a call over its limit: axum
//! routes ignore readiness, so this is what works there:
//!
//! ```
//! use axum::{body::Body, routing::any_service, Router};
//! use http::{Request, Response};
//! use std::convert::Infallible;
//! use std::num::NonZeroU32;
//! use tower::{ServiceBuilder, ServiceExt};
//! use weir_ratelimit::{Header, Limiter, RateLimitLayer, Rate};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // Two requests per minute per `x-api-user`, both at once if need be.
//! let limiter = Limiter::builder()
//!     .requests(Rate::per_minute(NonZeroU32::new(2).unwrap()))
//!     .build();
//! let handler = tower::service_fn(|_req: Request<Body>| async {
//!     Ok::<_, Infallible>(Response::new(http_body_util::Full::new(bytes::Bytes::from("{}"))))
//! });
//! let service = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new(limiter, Header("x-api-user".parse().unwrap())))
//!     .service(handler)
//!     .map_response(|r| r.map(Body::new))
//!     .map_err(|e: weir_ratelimit::BoxError| -> Infallible { panic!("{e}") });
//! let app = Router::new().route_service("/v1/chat/completions", any_service(service));
//! let request = |user: &str| {
//!     Request::post("/v1/chat/completions").header("x-api-user", user).body(Body::empty()).unwrap()
//! };
//!
//! let first = app.clone().oneshot(request("ada")).await.unwrap();
//! assert_eq!(first.status(), 200);
//! assert_eq!(first.headers()["x-ratelimit-remaining-requests"], "1");
//! assert_eq!(app.clone().oneshot(request("ada")).await.unwrap().status(), 200);
//! let third = app.clone().oneshot(request("ada")).await.unwrap();
//! assert_eq!(third.status(), 429);
//! assert_eq!(third.headers()["retry-after"], "30");
//! // Another key has its own bucket.
//! assert_eq!(app.oneshot(request("grace")).await.unwrap().status(), 200);
//! # }
//! ```

mod body;
mod clock;
mod cost;
mod future;
mod headers;
mod key;
mod layer;
mod limiter;
mod refusal;
mod scope;
mod service;
#[cfg(feature = "redis")]
mod shared;

pub use body::ResponseBody;
pub use clock::TokioClock;
pub use cost::{Cost, Fixed, LlmCost, UsageScan};
pub use future::ResponseFuture;
pub use headers::write as write_headers;
pub use key::{Extension, Global, Header, KeyExtractor, KeyFn, Model, PeerIp};
pub use layer::RateLimitLayer;
pub use limiter::{
    Charge, Counts, Key, Limiter, LimiterBuilder, Rate, Refusal, Slot, Standing, Standings, Store,
};
pub use refusal::{refusal_response, Limited};
pub use scope::{Keyed, Scope};
pub use service::{Mode, RateLimit};
#[cfg(feature = "redis")]
pub use shared::{OnFailure, RedisSettings, RedisStore};

/// The error type of the service and its body: the inner error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[cfg(test)]
mod tests;
