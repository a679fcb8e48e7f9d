use crate::breaker::Breaker;
use crate::classify::ClassifyEos;
use crate::policy::Outcome;
use crate::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use weir_util::body::Local;

/// Reports one call's outcome to the breaker exactly once; a guard dropped unsettled reports
/// "ignored" (which also frees a half-open probe slot).
#[derive(Debug)]
pub(crate) struct Guard {
    breaker: Breaker,
    probe: bool,
    settled: bool,
}

impl Guard {
    pub(crate) fn new(breaker: Breaker, probe: bool) -> Self {
        Self {
            breaker,
            probe,
            settled: false,
        }
    }

    pub(crate) fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    pub(crate) fn settle(mut self, outcome: Outcome) {
        self.settled = true;
        self.breaker.settle(outcome, self.probe);
    }

    /// The guard, shared by the call's body and the [`Settle`] handle in its response.
    pub(crate) fn share(mut self) -> Arc<Slot> {
        self.settled = true;
        Arc::new(Slot {
            breaker: self.breaker.clone(),
            probe: self.probe,
            settled: AtomicBool::new(false),
        })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.settle(Outcome::Ignored, self.probe);
        }
    }
}

/// A call settled at the end of its body, by the body or by whoever holds its [`Settle`]:
/// the first to settle wins; unsettled when the last holder lets go, it is "ignored".
#[derive(Debug)]
pub(crate) struct Slot {
    breaker: Breaker,
    probe: bool,
    settled: AtomicBool,
}

impl Slot {
    fn settle(&self, outcome: Outcome, reason: Option<&str>) {
        if self.settled.swap(true, Ordering::AcqRel) {
            return;
        }
        if let (Outcome::Failure, Some(reason)) = (outcome, reason) {
            self.breaker.note_failure(reason);
        }
        self.breaker.settle(outcome, self.probe);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !*self.settled.get_mut() {
            self.breaker.settle(Outcome::Ignored, self.probe);
        }
    }
}

/// How a wrapper above the breaker tells it how a call went, when it knows better than the
/// body's end: it saw an in-band error event, it cut a stream that went silent, or it ended a
/// complete answer before the upstream's own end. Found in the extensions of a response whose
/// outcome the breaker settles at the end of its body; settling twice counts once.
///
/// ```
/// # fn doc(response: http::Response<()>) {
/// if let Some(settle) = response.extensions().get::<weir_breaker::Settle>() {
///     settle.failure("stream stalled");
/// }
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Settle(Arc<Slot>);

impl Settle {
    pub(crate) fn new(slot: Arc<Slot>) -> Self {
        Self(slot)
    }

    /// The call went well.
    pub fn success(&self) {
        self.0.settle(Outcome::Success, None);
    }

    /// The provider failed the call, for `reason` (shown in the breaker's snapshot).
    pub fn failure(&self, reason: &str) {
        self.0.settle(Outcome::Failure, Some(reason));
    }

    /// The call says nothing about the provider's health.
    pub fn ignore(&self) {
        self.0.settle(Outcome::Ignored, None);
    }
}

pin_project! {
    /// The response body: the inner body, observed until its end (where the call's outcome is
    /// settled), or the 503 answered by a breaker in shed mode.
    pub struct ResponseBody<B, E: ClassifyEos> {
        #[pin]
        inner: Local<B>,
        settle: Option<(Arc<Slot>, E)>,
    }

    impl<B, E: ClassifyEos> PinnedDrop for ResponseBody<B, E> {
        fn drop(this: Pin<&mut Self>) {
            if let Some((slot, eos)) = this.project().settle.take() {
                slot.settle(eos.dropped(), None);
            }
        }
    }
}

impl<B, E: ClassifyEos> std::fmt::Debug for ResponseBody<B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("shed", &self.inner.get_ref().is_none())
            .field("settled", &self.settle.is_none())
            .finish_non_exhaustive()
    }
}

impl<B: Body, E: ClassifyEos> ResponseBody<B, E> {
    pub(crate) fn inner(inner: B, settle: Option<(Arc<Slot>, E)>) -> Self {
        let ended = inner.is_end_stream();
        let mut body = Self {
            inner: Local::inner(inner),
            settle,
        };
        if ended {
            // A body already empty when wrapped ends here.
            if let Some((slot, eos)) = body.settle.take() {
                slot.settle(eos.end(), None);
            }
        }
        body
    }

    pub(crate) fn shed(data: Bytes) -> Self {
        Self {
            inner: Local::answer(data),
            settle: None,
        }
    }
}

impl<B, E> Body for ResponseBody<B, E>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    E: ClassifyEos,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let polled = ready!(this.inner.as_mut().poll_frame(cx));
        let ended = this.inner.is_end_stream();
        let settle = this.settle;
        match polled {
            Some(Ok(frame)) => {
                if let (Some(data), Some((_, eos))) = (frame.data_ref(), settle.as_mut()) {
                    eos.data(data);
                }
                // Trailers, or the last frame of a body that knows its end, end it too.
                if !frame.is_data() || ended {
                    if let Some((slot, eos)) = settle.take() {
                        slot.settle(eos.end(), None);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => {
                let error: BoxError = error.into();
                if let Some((slot, eos)) = settle.take() {
                    slot.settle(eos.error(&*error), None);
                }
                Poll::Ready(Some(Err(error)))
            }
            None => {
                if let Some((slot, eos)) = settle.take() {
                    slot.settle(eos.end(), None);
                }
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
