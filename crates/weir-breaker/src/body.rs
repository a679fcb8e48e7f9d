use crate::breaker::Breaker;
use crate::classify::ClassifyEos;
use crate::policy::Outcome;
use crate::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

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
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.settle(Outcome::Ignored, self.probe);
        }
    }
}

pin_project! {
    /// The response body: the inner body, observed until its end (where the call's outcome is
    /// settled), or the 503 answered by a breaker in shed mode.
    pub struct ResponseBody<B, E: ClassifyEos> {
        #[pin]
        inner: Option<B>,
        shed: Option<Bytes>,
        settle: Option<(Guard, E)>,
    }

    impl<B, E: ClassifyEos> PinnedDrop for ResponseBody<B, E> {
        fn drop(this: Pin<&mut Self>) {
            if let Some((guard, eos)) = this.project().settle.take() {
                guard.settle(eos.dropped());
            }
        }
    }
}

impl<B, E: ClassifyEos> std::fmt::Debug for ResponseBody<B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("shed", &self.shed.is_some())
            .field("settled", &self.settle.is_none())
            .finish_non_exhaustive()
    }
}

impl<B: Body, E: ClassifyEos> ResponseBody<B, E> {
    pub(crate) fn inner(inner: B, settle: Option<(Guard, E)>) -> Self {
        let ended = inner.is_end_stream();
        let mut body = Self {
            inner: Some(inner),
            shed: None,
            settle,
        };
        if ended {
            // A body already empty when wrapped ends here.
            if let Some((guard, eos)) = body.settle.take() {
                guard.settle(eos.end());
            }
        }
        body
    }

    /// Settles the call now, with `outcome`, instead of at the end of the body: for a wrapper
    /// above that knows better (it saw an in-band error event, or cut a stalled stream). Does
    /// nothing if the call is settled already, so nothing is counted twice.
    pub fn settle(self: Pin<&mut Self>, outcome: Outcome, reason: Option<&str>) {
        if let Some((guard, _)) = self.project().settle.take() {
            if let (Outcome::Failure, Some(reason)) = (outcome, reason) {
                guard.breaker().note_failure(reason);
            }
            guard.settle(outcome);
        }
    }

    pub(crate) fn shed(data: Bytes) -> Self {
        Self {
            inner: None,
            shed: Some(data),
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
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(this.shed.take().map(|d| Ok(Frame::data(d))));
        };
        let polled = ready!(inner.poll_frame(cx));
        let ended = this
            .inner
            .as_ref()
            .as_pin_ref()
            .is_some_and(|inner| inner.is_end_stream());
        let settle = this.settle;
        match polled {
            Some(Ok(frame)) => {
                if let (Some(data), Some((_, eos))) = (frame.data_ref(), settle.as_mut()) {
                    eos.data(data);
                }
                // Trailers, or the last frame of a body that knows its end, end it too.
                if !frame.is_data() || ended {
                    if let Some((guard, eos)) = settle.take() {
                        guard.settle(eos.end());
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => {
                let error: BoxError = error.into();
                if let Some((guard, eos)) = settle.take() {
                    guard.settle(eos.error(&*error));
                }
                Poll::Ready(Some(Err(error)))
            }
            None => {
                if let Some((guard, eos)) = settle.take() {
                    guard.settle(eos.end());
                }
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Some(inner) => inner.is_end_stream(),
            None => self.shed.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(inner) => inner.size_hint(),
            None => SizeHint::with_exact(self.shed.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}
