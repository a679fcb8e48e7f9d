//! Metrics and trace spans for HTTP services that stream LLM answers.
//!
//! [`Metrics`] (via [`MetricsLayer`]) observes each request and its response body frame by
//! frame, and settles the exchange once, when the body ends, fails or is dropped. It measures:
//!
//! - the outcome as the client saw it ([`Outcome`]: ok, rescued, client error, rate limited,
//!   upstream error, truncated, cancelled) and the status;
//! - duration, **time to first token**, inter-token gaps (counted in the stream's own memory,
//!   merged at the end), tokens per second;
//! - tokens in and out: from the answer's usage when it reports one, else the service's prompt
//!   estimate and one token per content event; and their cost from the model's [`Price`];
//! - what only the service behind it knows, through the [`Tally`] it finds in the request's
//!   extensions: its labels (configured names), attempts, failovers, the moment the upstream
//!   request left (the gateway's own overhead).
//!
//! The body is scanned, never parsed: a few substring searches per frame.
//!
//! Everything goes to a [`Recorder`], a two-method trait; [`PrometheusRecorder`] keeps
//! Prometheus series and renders the text format. The layer can also open one server span
//! per request with OpenTelemetry's GenAI attributes ([`MetricsLayer::spans`]; with the
//! `opentelemetry` feature its parent is the client's W3C trace context) and write an access
//! log line per exchange ([`MetricsLayer::access_log`]).
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use tower::{ServiceBuilder, ServiceExt};
//! use weir_metrics::{Labels, MetricsLayer, PrometheusRecorder, Tally};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let recorder = Arc::new(PrometheusRecorder::new());
//! let service = ServiceBuilder::new()
//!     .layer(MetricsLayer::new(recorder.clone()))
//!     .service_fn(|request: Request<Full<Bytes>>| async move {
//!         // The handler names what it routed to.
//!         let tally = request.extensions().get::<Tally>().unwrap();
//!         tally.labels(Labels::new("gpt-4o", "openai", "gpt-4o-2024-08-06"));
//!         let mut response = Response::new(Full::new(Bytes::from_static(
//!             b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: [DONE]\n\n",
//!         )));
//!         response.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
//!         Ok::<_, Infallible>(response)
//!     });
//! let response = service.oneshot(Request::new(Full::new(Bytes::new()))).await.unwrap();
//! response.into_body().collect().await.unwrap();
//!
//! let mut text = String::new();
//! recorder.render(&mut text);
//! assert!(text.contains(
//!     r#"weir_requests_total{route="gpt-4o",provider="openai",model="gpt-4o-2024-08-06",status="200",outcome="ok"} 1"#
//! ));
//! # }
//! ```
//!
//! In an axum app it is one `.layer(...)`; the metrics page is an ordinary route:
//!
//! ```
//! use axum::{body::Body, routing::{get, post}, Router};
//! use http::Request;
//! use http_body_util::BodyExt;
//! use std::sync::Arc;
//! use tower::ServiceExt;
//! use weir_metrics::{MetricsLayer, PrometheusRecorder};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let recorder = Arc::new(PrometheusRecorder::new());
//! let page = recorder.clone();
//! let app = Router::new()
//!     .route("/v1/chat/completions", post(|| async {
//!         ([("content-type", "text/event-stream")],
//!          "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: [DONE]\n\n")
//!     }))
//!     .layer(MetricsLayer::new(recorder.clone()))
//!     .route("/metrics", get(move || async move {
//!         let mut text = String::new();
//!         page.render(&mut text);
//!         text
//!     }));
//!
//! let call = Request::post("/v1/chat/completions").body(Body::empty()).unwrap();
//! let answer = app.clone().oneshot(call).await.unwrap();
//! answer.into_body().collect().await.unwrap();
//! let page = app.oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
//! let page = page.into_body().collect().await.unwrap().to_bytes();
//! let page = std::str::from_utf8(&page).unwrap();
//! assert!(page.contains(r#"status="200",outcome="ok"} 1"#), "{page}");
//! # }
//! ```

mod body;
pub mod histogram;
mod layer;
mod prometheus;
mod recorder;
mod span;
mod tally;

pub use body::ResponseBody;
pub use layer::{Metrics, MetricsLayer, ResponseFuture};
pub use prometheus::{escape_label, PrometheusRecorder, Series};
pub use recorder::{Failover, Labels, Outcome, Phase, Price, Recorder, Report, Tokens};
pub use tally::Tally;

#[cfg(test)]
mod tests;
