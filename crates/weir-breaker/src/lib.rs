//! A circuit breaker for HTTP services, in three parts (as linkerd2-proxy splits it):
//!
//! - a **classifier** ([`classify`]) that says how each call went: at its response headers,
//!   at the end of its body, on an error, or when its reader goes away;
//! - a **policy** ([`policy`]): a pure state machine (closed, open, half-open) fed by those
//!   outcomes and by health probes, with failure-count and failure-rate rules;
//! - a **gate** ([`CircuitBreaker`]) that turns the state into readiness. In [`Mode::Wait`]
//!   an open breaker makes `poll_ready` pending (a router skips the target); in
//!   [`Mode::Shed`] the service stays ready and answers at once with a 503 OpenAI-style error
//!   and `Retry-After`. While half-open only a set number of probe calls pass.
//!
//! Calls already running when the breaker opens finish normally. A [`Breaker`] is a cheap
//! handle on one shared state: give one to the layer of each provider, and report to it from
//! elsewhere too (health probes, [`Breaker::probe_result`]).
//!
//! In an axum `Router` (axum treats services as always ready, so use shed mode):
//!
//! ```
//! use axum::{body::Body, routing::any_service, Router};
//! use http::{Request, Response};
//! use std::convert::Infallible;
//! use tower::{ServiceBuilder, ServiceExt};
//! use weir_breaker::{policy::PolicyConfig, Breaker, BreakerLayer, Mode};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let breaker = Breaker::new(PolicyConfig::default());
//! let upstream = tower::service_fn(|_req: Request<Body>| async {
//!     let mut response = Response::new(http_body_util::Full::new(bytes::Bytes::from("down")));
//!     *response.status_mut() = http::StatusCode::BAD_GATEWAY;
//!     Ok::<_, Infallible>(response)
//! });
//! let service = ServiceBuilder::new()
//!     .layer(BreakerLayer::new(breaker.clone()).mode(Mode::Shed))
//!     .service(upstream)
//!     .map_response(|r| r.map(Body::new))
//!     .map_err(|e: weir_breaker::BoxError| -> Infallible { panic!("{e}") });
//! let app = Router::new().route_service("/v1/chat/completions", any_service(service));
//!
//! for _ in 0..3 {
//!     let request = Request::post("/v1/chat/completions").body(Body::empty()).unwrap();
//!     assert_eq!(app.clone().oneshot(request).await.unwrap().status(), 502);
//! }
//! // Three failures in a row: the breaker is open, and the upstream is not called.
//! let request = Request::post("/v1/chat/completions").body(Body::empty()).unwrap();
//! let response = app.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), 503);
//! assert!(response.headers().contains_key("retry-after"));
//! assert_eq!(breaker.state().as_str(), "open");
//! # }
//! ```

mod body;
mod breaker;
pub mod classify;
mod future;
mod layer;
pub mod policy;
mod service;

pub use body::{ResponseBody, Settle};
pub use breaker::{Breaker, Snapshot};
pub use classify::{LlmClassifier, TransportClassifier};
pub use future::ResponseFuture;
pub use layer::BreakerLayer;
pub use policy::{Outcome, PolicyConfig, State};
pub use service::{CircuitBreaker, Mode};

/// The error type of the service and its body: the inner error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[cfg(test)]
mod tests;
