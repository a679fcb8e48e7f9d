use crate::cost::UsageScan;
use crate::limiter::Charge;
use crate::limiter::Key;
use crate::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use weir_llm::stream::Meter;
use weir_util::body::Local;

/// Where the answer's usage is read from.
#[derive(Debug)]
enum Usage {
    /// The stream's watch reports it (a `weir_llm::stream::Meter` in the response's
    /// extensions): nothing is scanned here.
    Meter(Meter),
    /// Scanned here, frame by frame.
    Scan(UsageScan),
}

impl Usage {
    fn total(&self) -> Option<u32> {
        match self {
            Self::Meter(meter) => meter
                .usage()
                .map(|u| u32::try_from(u.total).unwrap_or(u32::MAX)),
            Self::Scan(scan) => scan.total(),
        }
    }
}

pin_project! {
    /// The response body: the inner body, whose usage settles the token charge when it ends;
    /// or the 429 this layer answered.
    pub struct ResponseBody<B, K: Key> {
        #[pin]
        inner: Local<B>,
        charge: Option<Charge<K>>,
        usage: Usage,
    }

    impl<B, K: Key> PinnedDrop for ResponseBody<B, K> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            settle(this.charge, this.usage);
        }
    }
}

/// Settles with the usage the answer reported, if any (otherwise the estimate stands).
fn settle<K: Key>(charge: &mut Option<Charge<K>>, usage: &Usage) {
    if let (Some(used), Some(charge)) = (usage.total(), charge.take()) {
        charge.settle(used);
    }
}

impl<B, K: Key> std::fmt::Debug for ResponseBody<B, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("refused", &self.inner.get_ref().is_none())
            .field("usage", &self.usage.total())
            .finish_non_exhaustive()
    }
}

impl<B, K: Key> ResponseBody<B, K> {
    pub(crate) fn new(inner: B, charge: Option<Charge<K>>, meter: Option<Meter>) -> Self {
        Self {
            inner: Local::inner(inner),
            charge,
            usage: match meter {
                Some(meter) => Usage::Meter(meter),
                None => Usage::Scan(UsageScan::default()),
            },
        }
    }

    /// The body of a 429 this layer answered.
    pub fn local(body: Bytes) -> Self {
        Self {
            inner: Local::answer(body),
            charge: None,
            usage: Usage::Scan(UsageScan::default()),
        }
    }

    /// The inner body (`None` for a 429 this layer answered).
    pub fn get_ref(&self) -> Option<&B> {
        self.inner.get_ref()
    }

    /// The 429 this layer answered, if this is one and it is not read yet.
    pub fn answer_data(&self) -> Option<&Bytes> {
        self.inner.answer_data()
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
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(data), Usage::Scan(scan), Some(_)) =
                    (f.data_ref(), &mut *this.usage, &this.charge)
                {
                    scan.observe(data);
                }
            }
            Some(Err(_)) | None => settle(this.charge, this.usage),
        }
        Poll::Ready(frame.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
