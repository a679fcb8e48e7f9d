use crate::limit::Permit;
use crate::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

pin_project! {
    /// The response body: the inner body holding the call's permit until it ends, fails or is
    /// dropped; or the 503 of a shed call.
    pub struct ResponseBody<B> {
        #[pin]
        inner: Option<B>,
        shed: Option<Bytes>,
        permit: Option<Permit>,
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("shed", &self.shed.is_some())
            .field("holds_permit", &self.permit.is_some())
            .finish_non_exhaustive()
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(inner: B, permit: Permit) -> Self
    where
        B: Body,
    {
        // An empty body ends here: nothing will poll it to its end.
        let permit = (!inner.is_end_stream()).then_some(permit);
        Self {
            inner: Some(inner),
            shed: None,
            permit,
        }
    }

    pub(crate) fn shed(body: Bytes) -> Self {
        Self {
            inner: None,
            shed: Some(body),
            permit: None,
        }
    }

    /// The inner body, pinned (`None` for a shed answer).
    pub fn inner_pin_mut(self: Pin<&mut Self>) -> Option<Pin<&mut B>> {
        self.project().inner.as_pin_mut()
    }

    /// Whether this body still holds its permit (false once it ended, failed, or for a shed
    /// answer).
    pub fn holds_permit(&self) -> bool {
        self.permit.is_some()
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let Some(mut inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(this.shed.take().map(|b| Ok(Frame::data(b))));
        };
        let frame = ready!(inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(permit) = this.permit {
                    if f.is_data() {
                        permit.first_byte();
                    }
                }
                // A server may not poll again after the last frame.
                if inner.is_end_stream() {
                    *this.permit = None;
                }
            }
            Some(Err(_)) => {
                if let Some(mut permit) = this.permit.take() {
                    permit.overloaded();
                }
            }
            None => *this.permit = None,
        }
        Poll::Ready(frame.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Some(inner) => inner.is_end_stream(),
            None => self.shed.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.inner, &self.shed) {
            (Some(inner), _) => inner.size_hint(),
            (None, Some(b)) => SizeHint::with_exact(b.len() as u64),
            (None, None) => SizeHint::with_exact(0),
        }
    }
}
