use crate::body::{Guard, ResponseBody, Settle};
use crate::classify::{Classified, Classify};
use crate::BoxError;
use bytes::Bytes;
use http::{header, HeaderValue, Response};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use weir_llm::{ErrorBody, ErrorKind};

pin_project! {
    /// The response future of [`CircuitBreaker`](crate::CircuitBreaker).
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F, C>,
    }
}

pin_project! {
    #[project = Proj]
    enum Kind<F, C> {
        // Refused by an open breaker in shed mode.
        Shed { retry_after: Option<Duration> },
        // Passed to the inner service.
        Inner {
            #[pin]
            future: F,
            guard: Option<Guard>,
            classifier: C,
            started: Instant,
        },
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn new(future: F, guard: Guard, classifier: C) -> Self {
        Self {
            kind: Kind::Inner {
                future,
                guard: Some(guard),
                classifier,
                started: Instant::now(),
            },
        }
    }

    pub(crate) fn shed(retry_after: Option<Duration>) -> Self {
        Self {
            kind: Kind::Shed { retry_after },
        }
    }
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseFuture")
    }
}

/// The 503 a breaker in shed mode answers: an OpenAI-style error with `Retry-After`.
fn shed_response<B, E: crate::classify::ClassifyEos>(
    retry_after: Option<Duration>,
) -> Response<ResponseBody<B, E>>
where
    B: http_body::Body,
{
    let body = ErrorBody::new(
        ErrorKind::Unavailable,
        "The upstream provider is failing and is taken out of service for now.",
    )
    .code("circuit_open");
    let mut response = Response::new(ResponseBody::shed(body.to_json()));
    *response.status_mut() = body.status();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // Whole seconds, rounded up: never ask a client to come back before it may.
    let seconds = retry_after.map_or(1, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
    headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}

impl<F, C, B, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    C: Classify,
    B: http_body::Body<Data = Bytes>,
{
    type Output = Result<Response<ResponseBody<B, C::Eos>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            Proj::Shed { retry_after } => Poll::Ready(Ok(shed_response(*retry_after))),
            Proj::Inner {
                future,
                guard,
                classifier,
                started,
            } => {
                let result = ready!(future.poll(cx));
                let guard = guard.take().expect("polled after completion");
                match result {
                    Ok(response) => {
                        let (mut parts, body) = response.into_parts();
                        let body = match classifier.classify_response(
                            *started,
                            parts.status,
                            &parts.headers,
                        ) {
                            Classified::Now(verdict) => {
                                if let Some(wait) = verdict.cool_down {
                                    guard.breaker().cool_down(wait);
                                }
                                guard.settle(verdict.outcome);
                                ResponseBody::inner(body, None)
                            }
                            Classified::AtEnd(eos) => {
                                let slot = guard.share();
                                parts.extensions.insert(Settle::new(slot.clone()));
                                ResponseBody::inner(body, Some((slot, eos)))
                            }
                        };
                        Poll::Ready(Ok(Response::from_parts(parts, body)))
                    }
                    Err(error) => {
                        let error: BoxError = error.into();
                        guard.settle(classifier.classify_error(&*error));
                        Poll::Ready(Err(error))
                    }
                }
            }
        }
    }
}
