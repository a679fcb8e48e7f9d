use crate::limit::Permit;
use crate::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use weir_util::body::Local;

pin_project! {
    /// The response body: the inner body holding the call's permit until it ends, fails or is
    /// dropped; or the 503 of a shed call.
    pub struct ResponseBody<B> {
        #[pin]
        inner: Local<B>,
        permit: Option<Permit>,
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("shed", &self.inner.get_ref().is_none())
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
            inner: Local::inner(inner),
            permit,
        }
    }

    /// A body of `data` alone, holding no permit: an answer made in front of the limit (an
    /// error a layer around the limit answers with, in this body's type).
    pub fn local(data: Bytes) -> Self {
        Self::shed(data)
    }

    pub(crate) fn shed(body: Bytes) -> Self {
        Self {
            inner: Local::answer(body),
            permit: None,
        }
    }

    /// The inner body (`None` for an answer this layer made).
    pub fn get_ref(&self) -> Option<&B> {
        self.inner.get_ref()
    }

    /// The answer this layer made itself (a 503), if this is one and it is not read yet.
    pub fn answer_data(&self) -> Option<&Bytes> {
        self.inner.answer_data()
    }

    /// The inner body, pinned, if this is one (`None` for an answer this layer made).
    pub fn inner_pin_mut(self: Pin<&mut Self>) -> Option<Pin<&mut B>> {
        self.project().inner.inner_pin_mut()
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
        let mut inner = this.inner;
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
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
