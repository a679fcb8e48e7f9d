//! Failover for LLM calls: a router over a route's targets ([`router`]) that retries and fails
//! over each call until one target's answer reaches its commit point, and a stream body
//! ([`stream`]) that forwards a committed stream's whole events and, if the stream is cut,
//! continues it on the other targets as more attempts of the same router. The decisions are
//! pure ([`policy`], [`budget`]); what an answer means is a [`Judge`]'s business, and the
//! protocol half of a stream is `weir_llm::stream` (for chat completions, `ChatWatch`).
//!
//! In an axum app: two upstreams, the first of which cuts its stream in the middle of an
//! event. The client gets one whole answer, continued on the second by replay:
//!
//! ```
//! use axum::{body::Body, routing::post, Router};
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{combinators::BoxBody, BodyExt, Either, Full};
//! use std::{future::Future, pin::Pin, sync::Arc, time::Duration};
//! use tower::{service_fn, util::BoxCloneSyncService, ServiceExt};
//! use weir_failover::router::{Cut, Failover, Judge, Judged, Resumer, Target};
//! use weir_failover::stream::{Attempt, StreamBody};
//! use weir_llm::stream::{ChatWatch, Watch};
//! use weir_llm::Failure;
//!
//! type BoxError = Box<dyn std::error::Error + Send + Sync>;
//! type Upstream = BoxBody<Bytes, BoxError>;
//! type Reply = Either<Full<Bytes>, StreamBody<Upstream, ChatWatch>>;
//!
//! /// The protocol half: requests, the commit point (the first event), continuations.
//! #[derive(Clone)]
//! struct Chat;
//!
//! impl Judge<Arc<Bytes>> for Chat {
//!     type Request = Request<Full<Bytes>>;
//!     type Response = Response<Upstream>;
//!     type Answer = Response<Reply>;
//!     type Future = Pin<Box<dyn Future<Output = Judged<Response<Reply>>> + Send>>;
//!     type Attempt = ();
//!
//!     fn request(&self, _target: usize, call: &Arc<Bytes>) -> (Request<Full<Bytes>>, ()) {
//!         (Request::new(Full::new((**call).clone())), ())
//!     }
//!
//!     // Continue a cut answer by asking again (replay): the watch drops what the client has.
//!     fn resume(&self, target: usize, call: &Arc<Bytes>, _cut: &Cut) -> Option<(Request<Full<Bytes>>, ())> {
//!         Some(self.request(target, call))
//!     }
//!
//!     fn committed(&self, _: usize, _: &Arc<Bytes>, answer: &mut Response<Reply>,
//!                  resumer: impl FnOnce() -> Resumer<Response<Reply>>) {
//!         if let Either::Right(stream) = answer.body_mut() {
//!             stream.resume_with(resumer().map(|a: Response<Reply>| match a.into_body() {
//!                 Either::Right(stream) => Some(stream),
//!                 Either::Left(_) => None,
//!             }));
//!         }
//!     }
//!
//!     fn judge(&self, target: usize, _: (), result: Result<Response<Upstream>, BoxError>) -> Self::Future {
//!         Box::pin(async move {
//!             let failed = |f| Judged::Failed(Response::new(Either::Left(Full::default())), Some(f));
//!             let Ok(response) = result else { return failed(Failure::Connect) };
//!             let (parts, mut body) = response.into_parts();
//!             let mut watch = ChatWatch::new(1 << 20).with_transcript();
//!             let mut prefix = None;
//!             while watch.progress() == 0 {
//!                 let Some(Ok(frame)) = body.frame().await else { return failed(Failure::StreamBroken) };
//!                 let Ok(data) = frame.into_data() else { continue };
//!                 prefix = watch.push(data).unwrap_or(None);
//!             }
//!             let attempt = Attempt::new(format!("upstream {target}").into(), Duration::from_secs(30));
//!             let stream = StreamBody::new(body, prefix, watch, attempt);
//!             Judged::Commit(Response::from_parts(parts, Either::Right(stream)))
//!         })
//!     }
//! }
//!
//! fn chunk(text: &str) -> String {
//!     format!("data: {{\"id\":\"c1\",\"choices\":[{{\"delta\":{{\"content\":\"{text}\"}},\"finish_reason\":null}}]}}\n\n")
//! }
//!
//! type Service = BoxCloneSyncService<Request<Full<Bytes>>, Response<Upstream>, BoxError>;
//!
//! /// An upstream that sends `wire`, then breaks if `cut`.
//! fn upstream(wire: String, cut: bool) -> Service {
//!     BoxCloneSyncService::new(service_fn(move |_req: Request<Full<Bytes>>| {
//!         let mut frames: Vec<Result<http_body::Frame<Bytes>, BoxError>> =
//!             vec![Ok(http_body::Frame::data(Bytes::from(wire.clone())))];
//!         if cut {
//!             frames.push(Err("connection reset".into()));
//!         }
//!         let body: Upstream = http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed();
//!         std::future::ready(Ok::<_, BoxError>(Response::new(body)))
//!     }))
//! }
//!
//! async fn chat(mut router: Failover<Service, Chat>, body: Bytes) -> Response<Body> {
//!     // The router is always ready; its future is boxed and `Send`.
//!     let routed = tower::Service::call(&mut router, Arc::new(body)).await.expect("a target is ready");
//!     routed.answer.map(Body::new)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let whole = format!("{}{}data: {{\"id\":\"c2\",\"choices\":[{{\"delta\":{{}},\"finish_reason\":\"stop\"}}]}}\n\ndata: [DONE]\n\n",
//!                     chunk("Hel"), chunk("lo"));
//! // The first upstream breaks 20 bytes into its second event.
//! let first = chunk("Hel").len() + 20;
//! let router = Failover::new(
//!     vec![Target::new(upstream(whole[..first].to_owned(), true)), Target::new(upstream(whole.clone(), false))],
//!     Chat,
//! );
//! let app = Router::new().route("/v1/chat/completions", post(move |body: Bytes| chat(router.clone(), body)));
//!
//! let response = app.oneshot(Request::post("/v1/chat/completions").body(Body::from("{}")).unwrap()).await.unwrap();
//! let text = String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
//! // One answer under the first id, each token once, a clean end: never half an event.
//! assert_eq!(text.matches("\"content\":\"Hel\"").count(), 1);
//! assert_eq!(text.matches("\"content\":\"lo\"").count(), 1);
//! assert!(!text.contains("\"c2\"") && text.ends_with("data: [DONE]\n\n"));
//! # }
//! ```
//!
//! The retry policy alone:
//!
//! ```
//! use std::time::Duration;
//! use weir_failover::policy::{Decision, RetryPolicy};
//! use weir_llm::Failure;
//!
//! let policy = RetryPolicy::default();
//! let throttled = Failure::RateLimited { retry_after: Some(Duration::from_secs(2)) };
//! assert_eq!(policy.decide(throttled, 1, 0.5), Decision::RetrySame { after: Duration::from_secs(2) });
//! assert_eq!(policy.decide(Failure::HeadersTimeout, 1, 0.5), Decision::NextTarget);
//! ```

pub mod budget;
pub mod policy;
pub mod router;
pub mod stream;

pub use budget::RetryBudget;
pub use policy::{Decision, RetryPolicy};
pub use router::{Cut, Failover, Judge, Judged, Order, Resumer, Routed, Target};
pub use stream::StreamBody;
