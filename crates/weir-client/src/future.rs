use crate::{Error, ResponseBody};
use http::Response;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

type Inner<B> = Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, Error>> + Send>>;

pin_project! {
    /// The response future of [`HttpClient`](crate::HttpClient): resolves at response headers,
    /// or fails when the response timeout passes first.
    pub struct ResponseFuture<B>
    where
        B: http_body::Body,
        B: 'static,
    {
        inner: Inner<B>,
        #[pin]
        sleep: Option<Sleep>,
    }
}

impl<B: http_body::Body + 'static> std::fmt::Debug for ResponseFuture<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<B: http_body::Body + 'static> ResponseFuture<B> {
    pub(crate) fn new(inner: Inner<B>, timeout: Option<Duration>) -> Self {
        Self {
            inner,
            sleep: timeout.map(tokio::time::sleep),
        }
    }
}

impl<B: http_body::Body + 'static> Future for ResponseFuture<B> {
    type Output = Result<Response<ResponseBody<B>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.inner.as_mut().poll(cx) {
            return Poll::Ready(result);
        }
        if let Some(sleep) = this.sleep.as_pin_mut() {
            if sleep.poll(cx).is_ready() {
                return Poll::Ready(Err(Error::timeout()));
            }
        }
        Poll::Pending
    }
}
