use crate::body::ResponseBody;
use crate::limit::{Permit, Shed};
use crate::BoxError;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use weir_llm::{ErrorBody, ErrorKind};

pin_project! {
    /// The response future of [`Backpressure`](crate::Backpressure).
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = Proj]
    enum Kind<F> {
        Shed { shed: Shed, retry_after: Duration },
        Inner {
            #[pin]
            future: F,
            permit: Option<Permit>,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(future: F, permit: Permit) -> Self {
        Self {
            kind: Kind::Inner {
                future,
                permit: Some(permit),
            },
        }
    }

    pub(crate) fn shed(shed: Shed, retry_after: Duration) -> Self {
        Self {
            kind: Kind::Shed { shed, retry_after },
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseFuture")
    }
}

/// The header that tells a client why it was shed (`queue_full` or `timed_out`).
pub const SHED_HEADER: &str = "x-weir-shed";

/// The answer to a shed call: a 503 OpenAI-style error with `Retry-After` (whole seconds,
/// rounded up, at least 1) and the reason in `x-weir-shed`; `body` makes the body type from
/// the JSON bytes. The [`Shed`] reason is also in the response's extensions, for the layers
/// around (a router tells the gateway's own 503 from an upstream's by it).
pub fn shed_response<B>(
    shed: Shed,
    retry_after: Duration,
    body: impl FnOnce(Bytes) -> B,
) -> Response<B> {
    let message = match shed {
        Shed::QueueFull => "The server is at capacity and its wait queue is full; retry later.",
        Shed::TimedOut => "The server is at capacity and no slot freed in time; retry later.",
    };
    let error = ErrorBody::new(ErrorKind::Unavailable, message).code("overloaded");
    let mut response = Response::new(body(error.to_json()));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    headers.insert(SHED_HEADER, HeaderValue::from_static(shed.as_str()));
    response.extensions_mut().insert(shed);
    response
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: http_body::Body,
{
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            Proj::Shed { shed, retry_after } => {
                Poll::Ready(Ok(shed_response(*shed, *retry_after, ResponseBody::shed)))
            }
            Proj::Inner { future, permit } => {
                let result = ready!(future.poll(cx));
                let mut permit = permit.take().expect("polled after completion");
                match result {
                    Ok(response) => {
                        let status = response.status();
                        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                            permit.overloaded();
                        }
                        Poll::Ready(Ok(response.map(|body| ResponseBody::new(body, permit))))
                    }
                    Err(error) => {
                        permit.overloaded();
                        Poll::Ready(Err(error.into()))
                    }
                }
            }
        }
    }
}
