//! The body of an answer, as the router gives it: a small JSON body (an error, a whole
//! answer), or a committed stream (`weir_failover::StreamBody`, which forwards whole events
//! only, ends a complete answer cleanly whatever the transport does next, tells the client in
//! band when a stream is cut, and continues a cut answer on the route's other targets). The
//! layers around the router wrap it (the server's concurrency permit, the client-side rate
//! limits' charges), each holding its part to the end of the body.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use weir_failover::stream::{Ended, OnEnd};
use weir_llm::stream::{ApiWatch, Opaque};

pub use weir_failover::stream::StreamFailed;

/// The upstream's body as the provider's rate limit, concurrency limit and breakers (the
/// model's, the endpoint's) hand it over.
pub(crate) type UpstreamBody = weir_ratelimit::ResponseBody<
    weir_backpressure::ResponseBody<
        weir_breaker::ResponseBody<
            weir_breaker::ResponseBody<
                weir_client::decompress::DecompressBody<
                    weir_client::ResponseBody<http_body_util::Full<Bytes>>,
                >,
                weir_breaker::classify::NoEos,
            >,
            weir_breaker::classify::LlmEos,
        >,
    >,
    (),
>;

/// A committed event stream, of any API.
pub(crate) type ChatStream = weir_failover::StreamBody<UpstreamBody, ApiWatch, AttemptEnd>;

/// A whole answer too large to hold back, passed on as it comes.
pub(crate) type OpaqueStream = weir_failover::StreamBody<UpstreamBody, Opaque, AttemptEnd>;

/// How an attempt's stream ended, for its provider: the breaker hears a failure only this
/// body saw (a stall, an unreadable event, the provider's own error event, a cut before the
/// answer was complete), the attempt's span is marked, and dropped events are counted.
#[derive(Debug)]
pub(crate) struct AttemptEnd {
    pub(crate) settle: Option<weir_breaker::Settle>,
    pub(crate) span: tracing::Span,
    /// The provider's count of malformed events dropped.
    pub(crate) malformed: Arc<AtomicU64>,
}

impl OnEnd<ApiWatch> for AttemptEnd {
    fn ended(&mut self, how: Ended, watch: &mut ApiWatch) {
        let dropped = watch.take_malformed();
        if dropped > 0 {
            self.malformed.fetch_add(dropped, Ordering::Relaxed);
            tracing::debug!(dropped, "malformed events dropped");
        }
        OnEnd::<Opaque>::ended(self, how, &mut Opaque::default());
    }
}

impl OnEnd<Opaque> for AttemptEnd {
    fn ended(&mut self, how: Ended, _: &mut Opaque) {
        // A complete answer is left to the breaker's own end-of-body verdict (which may
        // count a slow first byte).
        if let Ended::Failed(failure) = how {
            if let Some(settle) = &self.settle {
                settle.failure(failure.as_str());
            }
            super::call::span_failed(&self.span, failure);
        }
    }
}

/// The body of an answer: a buffered one, or a committed stream (the module's docs say how
/// each settles).
#[derive(Debug)]
pub struct ResponseBody {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Chat(Box<ChatStream>),
    Opaque(Box<OpaqueStream>),
}

impl ResponseBody {
    /// A complete body.
    pub fn full(data: Bytes) -> Self {
        Self::of(Kind::Full(Some(data).filter(|d| !d.is_empty())))
    }

    fn of(kind: Kind) -> Self {
        Self { kind }
    }

    pub(crate) fn chat(stream: ChatStream) -> Self {
        Self::of(Kind::Chat(Box::new(stream)))
    }

    pub(crate) fn opaque(stream: OpaqueStream) -> Self {
        Self::of(Kind::Opaque(Box::new(stream)))
    }

    /// The data of a complete body not read yet.
    pub(crate) fn full_data(&self) -> Option<&Bytes> {
        match &self.kind {
            Kind::Full(data) => data.as_ref(),
            _ => None,
        }
    }

    /// The committed chat stream this body is, if it is one.
    pub(crate) fn into_chat(self) -> Option<ChatStream> {
        match self.kind {
            Kind::Chat(stream) => Some(*stream),
            _ => None,
        }
    }

    pub(crate) fn chat_mut(&mut self) -> Option<&mut ChatStream> {
        match &mut self.kind {
            Kind::Chat(stream) => Some(stream),
            _ => None,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = StreamFailed;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamFailed>>> {
        match &mut self.kind {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Chat(stream) => Pin::new(stream.as_mut()).poll_frame(cx),
            Kind::Opaque(stream) => Pin::new(stream.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(data) => data.is_none(),
            Kind::Chat(stream) => stream.is_end_stream(),
            Kind::Opaque(stream) => stream.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Chat(stream) => stream.size_hint(),
            Kind::Opaque(stream) => stream.size_hint(),
        }
    }
}
