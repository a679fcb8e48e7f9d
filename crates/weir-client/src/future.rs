use crate::Error;
use http::Response;
use hyper::body::Incoming;
use hyper_util::client::legacy::ResponseFuture as Inner;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

pin_project! {
    /// The response future of [`HttpClient`](crate::HttpClient): resolves at response headers,
    /// or fails when the response timeout passes first.
    pub struct ResponseFuture {
        inner: Inner,
        #[pin]
        sleep: Option<Sleep>,
    }
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl ResponseFuture {
    pub(crate) fn new(inner: Inner, timeout: Option<Duration>) -> Self {
        Self {
            inner,
            sleep: timeout.map(tokio::time::sleep),
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<Incoming>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = Pin::new(this.inner).poll(cx) {
            return Poll::Ready(result.map_err(Error::from_client));
        }
        if let Some(sleep) = this.sleep.as_pin_mut() {
            if sleep.poll(cx).is_ready() {
                return Poll::Ready(Err(Error::timeout()));
            }
        }
        Poll::Pending
    }
}
