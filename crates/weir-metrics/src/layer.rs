//! The tower layer and its service.

use crate::body::{Open, ResponseBody};
use crate::recorder::{Outcome, Recorder};
use crate::tally::Tally;
use http::header::HeaderName;
use http::{Request, Response};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Span;

/// What the layer does besides recording.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub(crate) spans: bool,
    pub(crate) access_log: bool,
    pub(crate) request_id: HeaderName,
}

/// Wraps a service in [`Metrics`].
#[derive(Debug)]
pub struct MetricsLayer<R> {
    recorder: Arc<R>,
    options: Arc<Options>,
}

impl<R> Clone for MetricsLayer<R> {
    fn clone(&self) -> Self {
        Self {
            recorder: self.recorder.clone(),
            options: self.options.clone(),
        }
    }
}

impl<R: Recorder> MetricsLayer<R> {
    /// Records every exchange into `recorder`; no spans, no access log.
    pub fn new(recorder: Arc<R>) -> Self {
        Self {
            recorder,
            options: Arc::new(Options {
                spans: false,
                access_log: false,
                request_id: HeaderName::from_static("x-request-id"),
            }),
        }
    }

    /// One server span per request (target `weir::request`) with OpenTelemetry's GenAI
    /// attributes, settled when the body ends. Off by default: a span costs a little on every
    /// request, worth it when a subscriber exports them.
    pub fn spans(mut self, on: bool) -> Self {
        Arc::make_mut(&mut self.options).spans = on;
        self
    }

    /// One `INFO` event per exchange (target `weir::access`) when its body ends: request id,
    /// trace id, labels, status, outcome, attempts, time to first token, tokens.
    pub fn access_log(mut self, on: bool) -> Self {
        Arc::make_mut(&mut self.options).access_log = on;
        self
    }

    /// The response header that carries the request id (`x-request-id` by default).
    pub fn request_id_header(mut self, name: HeaderName) -> Self {
        Arc::make_mut(&mut self.options).request_id = name;
        self
    }
}

impl<S, R> Layer<S> for MetricsLayer<R> {
    type Service = Metrics<S, R>;

    fn layer(&self, inner: S) -> Metrics<S, R> {
        Metrics {
            inner,
            recorder: self.recorder.clone(),
            options: self.options.clone(),
        }
    }
}

/// Observes each request and its streamed answer, and records them when the answer ends. See
/// the [crate docs](crate).
#[derive(Debug)]
pub struct Metrics<S, R> {
    inner: S,
    recorder: Arc<R>,
    options: Arc<Options>,
}

impl<S: Clone, R> Clone for Metrics<S, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            recorder: self.recorder.clone(),
            options: self.options.clone(),
        }
    }
}

impl<S, R: Recorder> Metrics<S, R> {
    /// `inner`, recorded into `recorder` (see [`MetricsLayer`] for the options).
    pub fn new(inner: S, recorder: Arc<R>) -> Self {
        MetricsLayer::new(recorder).layer(inner)
    }
}

impl<S, R, B, RB> Service<Request<B>> for Metrics<S, R>
where
    S: Service<Request<B>, Response = Response<RB>>,
    R: Recorder,
    RB: http_body::Body,
{
    type Response = Response<ResponseBody<RB, R>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let start = Instant::now();
        let tally = Tally::default();
        request.extensions_mut().insert(tally.clone());
        let span = if self.options.spans {
            crate::span::request_span(&request)
        } else {
            Span::none()
        };
        let traceparent = crate::span::traceparent_id(request.headers());
        let inner = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        ResponseFuture {
            inner,
            open: Some(Box::new(Open::new(
                self.recorder.clone(),
                self.options.clone(),
                tally,
                span,
                start,
                traceparent,
            ))),
        }
    }
}

pin_project! {
    /// The response future of [`Metrics`]. The exchange's state is one allocation, made when
    /// the request arrives and handed to the body with the head (dropped before that: the
    /// exchange counts as cancelled).
    pub struct ResponseFuture<F, R: Recorder> {
        #[pin]
        inner: F,
        open: Option<Box<Open<R>>>,
    }
}

impl<F, R: Recorder> std::fmt::Debug for ResponseFuture<F, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, R, RB, E> Future for ResponseFuture<F, R>
where
    F: Future<Output = Result<Response<RB>, E>>,
    R: Recorder,
    RB: http_body::Body,
{
    type Output = Result<Response<ResponseBody<RB, R>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let open = this.open.as_ref().expect("polled after completion");
            let _entered = open.span.enter();
            ready!(this.inner.poll(cx))
        };
        let mut open = this.open.take().expect("polled after completion");
        Poll::Ready(match result {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                open.head(parts.status, Some(&parts.headers));
                open.meter = parts.extensions.get::<weir_llm::stream::Meter>().cloned();
                Ok(Response::from_parts(parts, ResponseBody::new(body, open)))
            }
            Err(e) => {
                // No answer at all: counted as a gateway failure.
                open.head(http::StatusCode::INTERNAL_SERVER_ERROR, None);
                open.end(Outcome::UpstreamError);
                Err(e)
            }
        })
    }
}
