use crate::cost::UsageScan;
use crate::limiter::Charge;
use crate::limiter::Key;
use crate::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use std::pin::Pin;
use std::task::{ready, Context, Poll};

pin_project! {
    /// The response body: the inner body, watched for its usage so that the token charge is
    /// settled when it ends; or the 429 this layer answered.
    pub struct ResponseBody<B, K: Key> {
        #[pin]
        inner: Option<B>,
        local: Option<Bytes>,
        charge: Option<Charge<K>>,
        usage: UsageScan,
    }

    impl<B, K: Key> PinnedDrop for ResponseBody<B, K> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            settle(this.charge, this.usage);
        }
    }
}

/// Settles with the usage seen, if any (otherwise the estimate stands).
fn settle<K: Key>(charge: &mut Option<Charge<K>>, usage: &UsageScan) {
    if let (Some(used), Some(charge)) = (usage.total(), charge.take()) {
        charge.settle(used);
    }
}

impl<B, K: Key> std::fmt::Debug for ResponseBody<B, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("refused", &self.local.is_some())
            .field("usage", &self.usage.total())
            .finish_non_exhaustive()
    }
}

impl<B, K: Key> ResponseBody<B, K> {
    pub(crate) fn new(inner: B, charge: Option<Charge<K>>) -> Self {
        Self {
            inner: Some(inner),
            local: None,
            charge,
            usage: UsageScan::default(),
        }
    }

    /// The inner body, pinned (`None` for a 429 this layer answered).
    pub fn inner_pin_mut(self: Pin<&mut Self>) -> Option<Pin<&mut B>> {
        self.project().inner.as_pin_mut()
    }

    /// The body of a 429 this layer answered.
    pub fn local(body: Bytes) -> Self {
        Self {
            inner: None,
            local: Some(body),
            charge: None,
            usage: UsageScan::default(),
        }
    }
}

impl<B, K> Body for ResponseBody<B, K>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    K: Key,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(this.local.take().map(|b| Ok(Frame::data(b))));
        };
        let frame = ready!(inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    if this.charge.is_some() {
                        this.usage.observe(data);
                    }
                }
            }
            Some(Err(_)) | None => settle(this.charge, this.usage),
        }
        Poll::Ready(frame.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Some(inner) => inner.is_end_stream(),
            None => self.local.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.inner, &self.local) {
            (Some(inner), _) => inner.size_hint(),
            (None, Some(b)) => SizeHint::with_exact(b.len() as u64),
            (None, None) => SizeHint::with_exact(0),
        }
    }
}
