//! Backpressure for HTTP services that stream: a concurrency limit whose permit is held until
//! the response body ends, a bounded FIFO wait queue in front of it, load shedding, an
//! optional adaptive limit, and slow-client isolation.
//!
//! - [`Limit`] is the shared state: permits, the queue (`max_queue` places, `max_wait` at
//!   most), counters and a wait-time histogram ([`Limit::snapshot`]). An [`Aimd`] rule makes
//!   the number of permits follow time to first byte (off by default).
//! - [`Backpressure`] (via [`BackpressureLayer`]) takes a permit for each call and hands it to
//!   the response body, which releases it when the body ends, fails or is dropped: tower's
//!   `ConcurrencyLimit` releases at the response headers, too early for a 60-second stream.
//!   In [`Mode::Wait`] the permit is taken in `poll_ready` (a router sees a full target as not
//!   ready); a call refused by a full queue or a wait past `max_wait` gets a 503 OpenAI-style
//!   error with `Retry-After`. In [`Mode::Shed`] there is no queue: a 503 at once.
//! - [`WriteStall`] wraps a connection's I/O so that a client that stops reading is cut
//!   after a timeout, which frees its permit and cancels its upstream request.
//!
//! A caller's own deadline applies by dropping the wait: put a timeout around the layer, or
//! let a router's deadline drop it; `max_wait` is the longest any call waits.
//!
//! In an axum `Router` (a streaming handler behind a limit of one, with no queue):
//!
//! ```
//! use axum::{body::Body, routing::any_service, Router};
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Channel};
//! use std::convert::Infallible;
//! use std::sync::{Arc, Mutex};
//! use tower::{ServiceBuilder, ServiceExt};
//! use weir_backpressure::{BackpressureLayer, Limit, Mode};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let limit = Limit::builder(1).max_queue(0).build();
//! // Each call streams a body that its sender ends.
//! let senders = Arc::new(Mutex::new(Vec::new()));
//! let streams = senders.clone();
//! let handler = tower::service_fn(move |_req: Request<Body>| {
//!     let (tx, body) = Channel::<Bytes>::new(1);
//!     streams.lock().unwrap().push(tx);
//!     async move { Ok::<_, Infallible>(Response::new(body)) }
//! });
//! let service = ServiceBuilder::new()
//!     .layer(BackpressureLayer::new(limit.clone()).mode(Mode::Shed))
//!     .service(handler)
//!     .map_response(|r| r.map(Body::new))
//!     .map_err(|e: weir_backpressure::BoxError| -> Infallible { panic!("{e}") });
//! let app = Router::new().route_service("/v1/chat/completions", any_service(service));
//! let request = || Request::post("/v1/chat/completions").body(Body::empty()).unwrap();
//!
//! let first = app.clone().oneshot(request()).await.unwrap();
//! assert_eq!(first.status(), 200);
//! // The first stream's headers are out, but its body still holds the only permit.
//! let second = app.clone().oneshot(request()).await.unwrap();
//! assert_eq!(second.status(), 503);
//! assert!(second.headers().contains_key("retry-after"));
//!
//! // The stream ends: its permit is back.
//! let mut tx = senders.lock().unwrap().remove(0);
//! tx.send_data(Bytes::from("data: [DONE]\n\n")).await.unwrap();
//! drop(tx);
//! first.into_body().collect().await.unwrap();
//! assert_eq!(app.oneshot(request()).await.unwrap().status(), 200);
//! assert_eq!(limit.snapshot().shed_queue_full, 1);
//! # }
//! ```

mod adaptive;
mod body;
mod future;
mod layer;
mod limit;
mod service;
pub mod stall;

pub use adaptive::Aimd;
pub use body::ResponseBody;
pub use future::{shed_response, ResponseFuture, SHED_HEADER};
pub use layer::BackpressureLayer;
pub use limit::{Limit, LimitBuilder, Permit, Shed, Snapshot, WAIT_BUCKETS};
pub use service::{Backpressure, Mode};
pub use stall::WriteStall;

/// The error type of the service and its body: the inner error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[cfg(test)]
mod tests;
