//! Answers decoded when a server compresses them anyway.
//!
//! A gateway that watches streams asks its upstreams for `accept-encoding: identity`; some
//! servers (and CDNs in front of them) compress regardless. [`Decompress`] wraps a service and
//! decodes `gzip`, `deflate` and `br` response bodies as they arrive, frame by frame, with
//! flate2's and brotli's push decoders: each compressed frame in, whatever it decodes to out at
//! once. A compressed stream that is cut is an error at the cut, after everything it decoded
//! to before (a pull decoder fed by an `AsyncRead` can lose the output of the read that hit the
//! error), and one that ends before its compressed end (a gzip trailer, a brotli last block) is
//! an error, not a clean end. `content-encoding` and `content-length` are removed from a decoded
//! response; an encoding it does not know is passed on as it is.
//!
//! ```no_run
//! # async fn doc() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{Service, ServiceExt};
//! use weir_client::{ClientBuilder, Decompress};
//!
//! let client = ClientBuilder::new().build::<Full<Bytes>>()?;
//! let mut client = Decompress::new(client);
//! let request = http::Request::get("https://example.com/").body(Full::new(Bytes::new()))?;
//! let response = client.ready().await?.call(request).await?;
//! assert!(response.headers().get("content-encoding").is_none());
//! # Ok(()) }
//! ```

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Decodes compressed response bodies. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct Decompress<S> {
    inner: S,
}

impl<S> Decompress<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, R, B> Service<Request<R>> for Decompress<S>
where
    S: Service<Request<R>, Response = Response<B>>,
{
    type Response = Response<DecompressBody<B>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<R>) -> Self::Future {
        ResponseFuture {
            inner: self.inner.call(request),
        }
    }
}

pin_project! {
    /// The response future of [`Decompress`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<DecompressBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = ready!(self.project().inner.poll(cx))?;
        let (mut parts, body) = response.into_parts();
        let decoder = parts
            .headers
            .get(CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .and_then(Decoder::for_encoding);
        if decoder.is_some() {
            parts.headers.remove(CONTENT_ENCODING);
            parts.headers.remove(CONTENT_LENGTH);
        }
        Poll::Ready(Ok(Response::from_parts(
            parts,
            DecompressBody {
                inner: body,
                decoder: decoder.map(Box::new),
                ended: false,
            },
        )))
    }
}

enum Decoder {
    Gzip(flate2::write::GzDecoder<Vec<u8>>),
    Deflate(flate2::write::ZlibDecoder<Vec<u8>>),
    Brotli(Box<brotli_decompressor::DecompressorWriter<Vec<u8>>>),
}

impl Decoder {
    fn for_encoding(encoding: &str) -> Option<Self> {
        let encoding = encoding.trim();
        let is = |name: &str| encoding.eq_ignore_ascii_case(name);
        if is("gzip") || is("x-gzip") {
            Some(Self::Gzip(flate2::write::GzDecoder::new(Vec::new())))
        } else if is("deflate") {
            Some(Self::Deflate(flate2::write::ZlibDecoder::new(Vec::new())))
        } else if is("br") {
            Some(Self::Brotli(Box::new(
                brotli_decompressor::DecompressorWriter::new(Vec::new(), 4096),
            )))
        } else {
            None
        }
    }

    /// Decodes `data`: what it decodes to.
    fn push(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        fn step<W: Write>(w: &mut W, data: &[u8]) -> std::io::Result<()> {
            w.write_all(data)?;
            w.flush()
        }
        match self {
            Self::Gzip(d) => {
                step(d, data)?;
                Ok(std::mem::take(d.get_mut()))
            }
            Self::Deflate(d) => {
                step(d, data)?;
                Ok(std::mem::take(d.get_mut()))
            }
            Self::Brotli(d) => {
                step(d.as_mut(), data)?;
                Ok(std::mem::take(d.get_mut()))
            }
        }
    }

    /// The compressed data has ended: what is left, or an error if it was not complete.
    fn finish(&mut self) -> std::io::Result<Vec<u8>> {
        let incomplete = || std::io::Error::other("the compressed body ended before its end");
        match self {
            Self::Gzip(d) => {
                d.try_finish()?;
                if d.header().is_none() {
                    return Err(incomplete());
                }
                Ok(std::mem::take(d.get_mut()))
            }
            Self::Deflate(d) => {
                d.try_finish()?;
                Ok(std::mem::take(d.get_mut()))
            }
            Self::Brotli(d) => {
                d.close().map_err(|_| incomplete())?;
                Ok(std::mem::take(d.get_mut()))
            }
        }
    }
}

pin_project! {
    /// The body of [`Decompress`]: decoded frame by frame, or passed on as it is.
    pub struct DecompressBody<B> {
        #[pin]
        inner: B,
        decoder: Option<Box<Decoder>>,
        ended: bool,
    }
}

impl<B> std::fmt::Debug for DecompressBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecompressBody")
            .field("decoding", &self.decoder.is_some())
            .finish_non_exhaustive()
    }
}

/// A compressed body that could not be decoded.
#[derive(Debug)]
pub struct DecodeError(std::io::Error);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the compressed response body cannot be decoded: {}",
            self.0
        )
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl<B> Body for DecompressBody<B>
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
        let mut this = self.project();
        let Some(decoder) = this.decoder.as_mut() else {
            return this.inner.poll_frame(cx).map_err(Into::into);
        };
        if *this.ended {
            return Poll::Ready(None);
        }
        loop {
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => match decoder.push(&data) {
                        Ok(out) if out.is_empty() => continue,
                        Ok(out) => return Poll::Ready(Some(Ok(Frame::data(out.into())))),
                        Err(e) => {
                            *this.ended = true;
                            return Poll::Ready(Some(Err(DecodeError(e).into())));
                        }
                    },
                    Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                },
                Some(Err(e)) => {
                    *this.ended = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                None => {
                    *this.ended = true;
                    return Poll::Ready(match decoder.finish() {
                        Ok(out) if out.is_empty() => None,
                        Ok(out) => Some(Ok(Frame::data(out.into()))),
                        Err(e) => Some(Err(DecodeError(e).into())),
                    });
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.decoder {
            None => self.inner.is_end_stream(),
            Some(_) => self.ended,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.decoder {
            None => self.inner.size_hint(),
            Some(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn gzip(parts: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut out = Vec::new();
        for p in parts {
            e.write_all(p).unwrap();
            e.flush().unwrap();
            out.push(std::mem::take(e.get_mut()));
        }
        out.push(e.finish().unwrap());
        out
    }

    fn body(
        frames: Vec<Vec<u8>>,
        error: bool,
    ) -> DecompressBody<impl Body<Data = Bytes, Error = BoxError>> {
        let mut items: Vec<Result<Frame<Bytes>, BoxError>> = frames
            .into_iter()
            .map(|f| Ok(Frame::data(Bytes::from(f))))
            .collect();
        if error {
            items.push(Err("reset".into()));
        }
        DecompressBody {
            inner: http_body_util::StreamBody::new(futures_util::stream::iter(items)),
            decoder: Decoder::for_encoding("gzip").map(Box::new),
            ended: false,
        }
    }

    #[tokio::test]
    async fn each_frame_is_decoded_as_it_comes() {
        let frames = gzip(&[b"data: a\n\n", b"data: b\n\n"]);
        let mut b = std::pin::pin!(body(frames, false));
        let first = b.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"data: a\n\n");
        let second = b.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&second[..], b"data: b\n\n");
        assert!(b.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_cut_is_an_error_after_what_was_decoded() {
        let mut frames = gzip(&[b"data: a\n\n", b"data: b\n\n"]);
        frames.truncate(1);
        // Cut by an error right after the first frame: its output still comes first.
        let mut b = std::pin::pin!(body(frames.clone(), true));
        assert_eq!(
            &b.frame().await.unwrap().unwrap().into_data().unwrap()[..],
            b"data: a\n\n"
        );
        assert!(b.frame().await.unwrap().is_err());
        // Ended cleanly but before the gzip trailer: an error too.
        let mut b = std::pin::pin!(body(frames, false));
        b.frame().await.unwrap().unwrap();
        assert!(
            b.frame().await.unwrap().is_err(),
            "a truncated gzip stream is not a clean end"
        );
    }

    #[tokio::test]
    async fn garbage_is_an_error() {
        let mut b = std::pin::pin!(body(vec![b"not gzip at all".to_vec()], false));
        assert!(b.frame().await.unwrap().is_err());
    }
}
