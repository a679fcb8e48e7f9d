//! A response body that is either the layer's own answer or the inner service's.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::task::{Context, Poll};

pin_project! {
    /// The inner service's body, or a small answer a layer made itself (a 429, a 503: one
    /// frame, then the end). `is_end_stream` and `size_hint` are forwarded, or exact.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body::Body;
    /// use weir_util::body::Local;
    ///
    /// let refused: Local<http_body_util::Empty<Bytes>> = Local::answer(Bytes::from_static(b"{}"));
    /// assert_eq!(refused.size_hint().exact(), Some(2));
    /// ```
    #[derive(Debug)]
    pub struct Local<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner { #[pin] inner: B },
        Answer { data: Option<Bytes> },
    }
}

impl<B> Local<B> {
    /// The inner service's body.
    pub fn inner(inner: B) -> Self {
        Self {
            kind: Kind::Inner { inner },
        }
    }

    /// The layer's own answer.
    pub fn answer(data: Bytes) -> Self {
        Self {
            kind: Kind::Answer {
                data: Some(data).filter(|d| !d.is_empty()),
            },
        }
    }

    /// The inner body, if this is one.
    pub fn get_ref(&self) -> Option<&B> {
        match &self.kind {
            Kind::Inner { inner } => Some(inner),
            Kind::Answer { .. } => None,
        }
    }

    /// The layer's own answer, if this is one and it is not read yet.
    pub fn answer_data(&self) -> Option<&Bytes> {
        match &self.kind {
            Kind::Inner { .. } => None,
            Kind::Answer { data } => data.as_ref(),
        }
    }

    /// The inner body, pinned, if this is one.
    pub fn inner_pin_mut(self: Pin<&mut Self>) -> Option<Pin<&mut B>> {
        match self.project().kind.project() {
            KindProj::Inner { inner } => Some(inner),
            KindProj::Answer { .. } => None,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for Local<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { inner } => inner.poll_frame(cx),
            KindProj::Answer { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { inner } => inner.is_end_stream(),
            Kind::Answer { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { inner } => inner.size_hint(),
            Kind::Answer { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn an_answer_is_one_frame_then_the_end() {
        let mut body: Local<http_body_util::Empty<Bytes>> =
            Local::answer(Bytes::from_static(b"no"));
        assert!(!body.is_end_stream());
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "no");
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
    }
}
