//! A lean HTTP/1.1 client connection: the request written in one go, the response head parsed
//! with `httparse`, and the body decoded straight out of one read buffer.
//!
//! hyper's client connection serves any use; an upstream connection of a streaming gateway
//! carries one request at a time and sits idle between two events of a stream for most of its
//! life. hyper keeps, per connection, an 8 KiB write buffer, a request channel whose first
//! block is 9 KiB, a read buffer and its dispatcher state. Here a connection is its socket and
//! a read buffer that starts at 2 KiB and grows only for large reads: the request is written
//! from a buffer that lives only as long as the write. Body frames are slices of the read
//! buffer (no copy), one per chunk of a chunked body.
//!
//! What it speaks: requests with a known length (`content-length`) or chunked; responses
//! framed by `content-length`, `transfer-encoding: chunked` (extensions and trailers read and
//! dropped) or the end of the connection; 1xx heads skipped; `connection: close` and
//! HTTP/1.0 honoured. Malformed framing is an error, never a guess.
//!
//! It is as strict as hyper's client, and proven so: a property test (`differential.rs`)
//! feeds generated responses, valid and malformed, cut at random read boundaries, to this
//! decoder and to hyper's `client::conn::http1` over an in-memory pipe, and both must accept or
//! refuse alike and yield the same status and body. The rules: digits only in
//! `content-length` (several values must agree), hex digits only in a chunk size (then spaces
//! or tabs, then `;` extensions), CRLF after every chunk line, no transfer coding in an
//! HTTP/1.0 response. Where weir is stricter on purpose:
//!
//! - a status outside 100-599 is a malformed head (hyper takes any three digits);
//! - a `101 Switching Protocols` is a malformed head: weir never asks to upgrade (hyper hands
//!   the connection over);
//! - at most 8 interim (1xx) heads before the answer (hyper: as many as come, bounded by time);
//! - at most 100 trailer lines and 16 KiB of them (hyper's limits too), each `name: value`;
//! - `content-length` together with `transfer-encoding`: chunked wins, as in hyper, and the
//!   connection is closed after the answer;
//! - a connection is pooled only when nothing was read past its answer, and at checkout one
//!   that is readable (bytes or its end) is discarded: bytes a server sends after its answer
//!   never become the next request's answer (hyper's connection task notices them on an idle
//!   connection; this one has no task).

use crate::pool::Io;
use crate::Error;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// The most headers a response head may have.
const MAX_HEADERS: usize = 128;
/// The longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4096;
/// The most interim (1xx) responses before the final one.
const MAX_INFORMATIONAL: usize = 8;
/// The most trailer lines, and their bytes together (hyper's limits).
const MAX_TRAILERS: usize = 100;
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// The smallest and the largest read.
const MIN_READ: usize = 2048;
const MAX_READ: usize = 16 * 1024;
/// Request bodies up to this size are written with the head, in one write.
const COALESCE_BODY: usize = 64 * 1024;

/// The socket: plain TCP inline, TLS boxed (its state is large, and most upstreams on a
/// private network speak plain HTTP).
enum Stream {
    Plain(TcpStream),
    Tls(Box<TokioIo<Io>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

thread_local! {
    /// One idle read buffer per thread, for the next connection that needs one.
    static SPARE: std::cell::RefCell<Option<BytesMut>> = const { std::cell::RefCell::new(None) };
}

/// One HTTP/1.1 connection.
pub(crate) struct Conn {
    io: Stream,
    buf: BytesMut,
    /// How much the next read asks room for: doubles after a read that filled it.
    read_size: usize,
}

impl Conn {
    pub(crate) fn new(io: Io) -> Self {
        let io = match io {
            MaybeHttpsStream::Http(tcp) => Stream::Plain(tcp.into_inner()),
            tls => Stream::Tls(Box::new(TokioIo::new(tls))),
        };
        Self {
            io,
            buf: BytesMut::new(),
            read_size: MIN_READ,
        }
    }

    /// Whether an idle connection can take a request: the peer has neither closed it nor
    /// sent anything unasked (either makes it unusable).
    pub(crate) fn usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        matches!(self.poll_read(&mut cx), Poll::Pending)
    }

    /// Reads what the socket has into the buffer: the byte count, 0 at end of stream.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.buf.capacity() == 0 {
            self.buf = SPARE
                .with(|spare| spare.borrow_mut().take())
                .unwrap_or_default();
        }
        if self.buf.capacity() - self.buf.len() < self.read_size / 2 {
            self.buf.reserve(self.read_size);
        }
        let room = self.buf.capacity() - self.buf.len();
        let read = tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf);
        if read.is_pending() && self.buf.is_empty() {
            // Nothing buffered and nothing to read: a stream between two events. Give the
            // buffer back rather than hold it idle (as HAProxy does); the next read takes one.
            // The thread keeps one spare, so that busy connections pass buffers around
            // instead of allocating one per wait.
            let idle = std::mem::take(&mut self.buf);
            if idle.capacity() <= 2 * MIN_READ {
                SPARE.with(|spare| {
                    let mut spare = spare.borrow_mut();
                    if spare.is_none() {
                        *spare = Some(idle);
                    }
                });
            }
            self.read_size = MIN_READ;
        }
        let n = ready!(read)?;
        if n == room && self.read_size < MAX_READ {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(n))
    }

    /// Writes `request` (its URI already in origin form). The body is read to its end first
    /// when it is small and of known length, so that head and body go out in one write.
    pub(crate) async fn send<B>(&mut self, request: Request<B>) -> Result<Sent, Error>
    where
        B: Body + Unpin,
        B::Error: Into<crate::BoxError>,
    {
        let (parts, mut body) = request.into_parts();
        let length = body.size_hint().exact();
        let mut head =
            Vec::with_capacity(256 + length.unwrap_or(0).min(COALESCE_BODY as u64) as usize);
        head.extend_from_slice(parts.method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(
            parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .as_bytes(),
        );
        head.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in &parts.headers {
            // The framing is this client's to say.
            if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
                continue;
            }
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        let chunked = length.is_none();
        match length {
            Some(0) if matches!(parts.method, Method::GET | Method::HEAD) => {}
            Some(n) => {
                head.extend_from_slice(b"content-length: ");
                head.extend_from_slice(n.to_string().as_bytes());
                head.extend_from_slice(b"\r\n");
            }
            None => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
        head.extend_from_slice(b"\r\n");
        let write = Error::request_io;
        loop {
            let mut data = match poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                None => break,
                Some(Err(e)) => return Err(Error::request_body(e.into())),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue, // trailers are not sent
                },
            };
            let len = data.remaining();
            if chunked {
                if len == 0 {
                    continue;
                }
                head.extend_from_slice(format!("{len:x}\r\n").as_bytes());
            }
            if head.len() + len <= COALESCE_BODY + 512 {
                while data.has_remaining() {
                    let chunk = data.chunk();
                    head.extend_from_slice(chunk);
                    let n = chunk.len();
                    data.advance(n);
                }
            } else {
                self.io.write_all(&head).await.map_err(write)?;
                head.clear();
                while data.has_remaining() {
                    let chunk = data.chunk();
                    self.io.write_all(chunk).await.map_err(write)?;
                    let n = chunk.len();
                    data.advance(n);
                }
            }
            if chunked {
                head.extend_from_slice(b"\r\n");
            }
        }
        if chunked {
            head.extend_from_slice(b"0\r\n\r\n");
        }
        self.io.write_all(&head).await.map_err(write)?;
        self.io.flush().await.map_err(write)?;
        Ok(Sent {
            head_request: parts.method == Method::HEAD,
        })
    }

    /// Reads the response head (skipping 1xx heads).
    pub(crate) async fn read_head(&mut self, sent: Sent) -> Result<(Response<()>, Framing), Error> {
        let mut heads = Heads::default();
        loop {
            if let Some(head) = heads.next(&mut self.buf, sent)? {
                return Ok(head);
            }
            let n = poll_fn(|cx| self.poll_read(cx))
                .await
                .map_err(Error::response_io)?;
            if n == 0 {
                return Err(Error::closed(
                    "the upstream closed the connection before a response",
                ));
            }
        }
    }
}

/// Reads response heads off a buffer: interim (1xx) heads skipped and counted, the final
/// one returned with its framing.
#[derive(Debug, Default)]
pub(crate) struct Heads {
    informational: usize,
}

impl Heads {
    /// The final head, once `buf` holds it (`None`: more bytes are needed).
    pub(crate) fn next(
        &mut self,
        buf: &mut BytesMut,
        sent: Sent,
    ) -> Result<Option<(Response<()>, Framing)>, Error> {
        loop {
            let Some((response, length)) = parse_head(buf)? else {
                if buf.len() >= MAX_HEAD {
                    return Err(Error::protocol("the response head is too large"));
                }
                return Ok(None);
            };
            buf.advance(length);
            let status = response.status();
            if status == StatusCode::SWITCHING_PROTOCOLS {
                // weir never asks to upgrade a connection it sends requests on.
                return Err(Error::protocol(
                    "the upstream switched protocols (101) on a request that did not ask to",
                ));
            }
            if status.is_informational() {
                self.informational += 1;
                if self.informational > MAX_INFORMATIONAL {
                    return Err(Error::protocol("the upstream sent too many 1xx responses"));
                }
                continue;
            }
            let framing = framing(&response, sent.head_request)?;
            return Ok(Some((response, framing)));
        }
    }
}

/// What was sent, as reading the answer needs it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sent {
    pub(crate) head_request: bool,
}

/// Parses a complete head at the start of `buf`: the response and the head's length.
fn parse_head(buf: &[u8]) -> Result<Option<(Response<()>, usize)>, Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let length = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Error::protocol_source(e.into())),
    };
    let status = parsed
        .code
        .filter(|c| (100..=599).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| Error::protocol("the response status is not between 100 and 599"))?;
    let mut map = HeaderMap::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| Error::protocol("a response header name is invalid"))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| Error::protocol("a response header value is invalid"))?;
        map.append(name, value);
    }
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *response.headers_mut() = map;
    Ok(Some((response, length)))
}

/// How a response body is delimited, and whether the connection outlives it.
#[derive(Debug)]
pub(crate) struct Framing {
    kind: Kind,
    reusable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `content-length`: bytes still to come.
    Length(u64),
    /// Chunked, in the given state.
    Chunked(Chunk),
    /// Until the connection closes.
    Close,
    /// Ended.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// Bytes of the current chunk still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines, up to an empty line.
    Trailers,
}

fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn framing(response: &Response<()>, head_request: bool) -> Result<Framing, Error> {
    let headers = response.headers();
    let status = response.status();
    let mut reusable =
        response.version() == Version::HTTP_11 && !has_token(headers, header::CONNECTION, "close");
    let kind = if head_request
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status.is_informational()
    {
        Kind::Done
    } else if let Some(te) = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
    {
        if response.version() == Version::HTTP_10 {
            // HTTP/1.0 has no transfer codings (RFC 9112 6.1): a server that sends one
            // frames its body in a way nobody can trust.
            return Err(Error::protocol(
                "an HTTP/1.0 response carries transfer-encoding",
            ));
        }
        if headers.contains_key(header::CONTENT_LENGTH) {
            // Both: the transfer coding wins (RFC 9112 6.3), and a server that sends both
            // is not trusted with another request on this connection.
            reusable = false;
        }
        let last = te
            .to_str()
            .ok()
            .and_then(|v| v.rsplit(',').next())
            .map(str::trim);
        if last.is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            Kind::Chunked(Chunk::Size)
        } else {
            reusable = false;
            Kind::Close
        }
    } else if let Some(length) = content_length(headers)? {
        if length == 0 {
            Kind::Done
        } else {
            Kind::Length(length)
        }
    } else {
        reusable = false;
        Kind::Close
    };
    Ok(Framing { kind, reusable })
}

/// `content-length`, refusing values that disagree or do not parse.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Error> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.to_str().unwrap_or("x").split(',') {
            // Digits only: Rust's integer parse would take a sign.
            let n = digits(part.trim().as_bytes(), 10)
                .ok_or_else(|| Error::protocol("the response content-length is invalid"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::protocol(
                    "the response has conflicting content-lengths",
                ));
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// The body decoder of one response, reading from its connection.
pub(crate) struct Decoder {
    kind: Kind,
    reusable: bool,
    trailers: usize,
    trailer_bytes: usize,
}

impl Decoder {
    pub(crate) fn new(framing: Framing) -> Self {
        Self {
            kind: framing.kind,
            reusable: framing.reusable,
            trailers: 0,
            trailer_bytes: 0,
        }
    }

    pub(crate) fn is_end(&self) -> bool {
        self.kind == Kind::Done
    }

    /// Whether the body runs to the end of the connection.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn is_close_delimited(&self) -> bool {
        self.kind == Kind::Close
    }

    /// Whether the connection may serve another request once the body has ended: it must
    /// be clean, with nothing read beyond the response (bytes a server sends after its answer
    /// would be read as the next one's).
    pub(crate) fn reusable(&self, conn: &Conn) -> bool {
        self.reusable && self.kind == Kind::Done && conn.buf.is_empty()
    }

    /// Bytes known to be still to come, for a `content-length` body.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self.kind {
            Kind::Length(n) => Some(n),
            Kind::Done => Some(0),
            _ => None,
        }
    }

    /// The next frame: decoded from what `conn` holds, reading more when it holds too
    /// little. `None` at the end of the body.
    pub(crate) fn poll_frame(
        &mut self,
        conn: &mut Conn,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Error>>> {
        loop {
            match self.decode(&mut conn.buf) {
                Ok(Some(data)) => return Poll::Ready(Some(Ok(data))),
                Ok(None) if self.kind == Kind::Done => return Poll::Ready(None),
                Ok(None) => {}
                Err(e) => {
                    self.reusable = false;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            let n = match ready!(conn.poll_read(cx)) {
                Ok(n) => n,
                Err(e) => {
                    self.reusable = false;
                    return Poll::Ready(Some(Err(Error::response_io(e))));
                }
            };
            if n == 0 {
                self.reusable = false;
                if self.kind == Kind::Close {
                    self.kind = Kind::Done;
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Err(Error::closed(
                    "the upstream closed the connection before the end of the body",
                ))));
            }
        }
    }

    /// Decodes what `buf` holds: a data frame, or `None` when more is needed (or the body
    /// ended).
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, Error> {
        loop {
            match self.kind {
                Kind::Done => return Ok(None),
                Kind::Length(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let left = left - take as u64;
                    self.kind = if left == 0 {
                        Kind::Done
                    } else {
                        Kind::Length(left)
                    };
                    return Ok(Some(buf.split_to(take).freeze()));
                }
                Kind::Close => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    return Ok(Some(buf.split().freeze()));
                }
                Kind::Chunked(Chunk::Size) => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(None);
                    };
                    let size = chunk_size(&line)?;
                    self.kind = Kind::Chunked(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                }
                Kind::Chunked(Chunk::Data(left)) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    return self.gather(buf, left).map(Some);
                }
                Kind::Chunked(Chunk::DataEnd) => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(None);
                    };
                    if !line.is_empty() {
                        return Err(Error::protocol("a chunk does not end with CRLF"));
                    }
                    self.kind = Kind::Chunked(Chunk::Size);
                }
                Kind::Chunked(Chunk::Trailers) => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(None);
                    };
                    if line.is_empty() {
                        self.kind = Kind::Done;
                        return Ok(None);
                    }
                    self.trailers += 1;
                    self.trailer_bytes += line.len() + 2;
                    if self.trailers > MAX_TRAILERS || self.trailer_bytes > MAX_TRAILER_BYTES {
                        return Err(Error::protocol("the response has too many trailers"));
                    }
                    if !is_field_line(&line) {
                        return Err(Error::protocol("a response trailer is malformed"));
                    }
                }
            }
        }
    }
}

impl Decoder {
    /// The data of the current chunk and of every chunk after it that `buf` already holds,
    /// as one frame: the chunk framing between them is squeezed out in place (the data moves
    /// down over it), so that what arrived in one read goes on as one piece.
    fn gather(&mut self, buf: &mut BytesMut, left: u64) -> Result<Bytes, Error> {
        let mut out = 0;
        let mut at = 0;
        let mut left = left;
        loop {
            // The data of the current chunk that has arrived.
            let take = usize::try_from(left)
                .unwrap_or(usize::MAX)
                .min(buf.len() - at);
            if at != out {
                buf.copy_within(at..at + take, out);
            }
            out += take;
            at += take;
            left -= take as u64;
            if left > 0 {
                self.kind = Kind::Chunked(Chunk::Data(left));
                break;
            }
            self.kind = Kind::Chunked(Chunk::DataEnd);
            // The CRLF after it, and the next chunk's size line, if both are here.
            let Some(end) = line_at(&buf[at..])? else {
                break;
            };
            if end.content != 0 {
                return Err(Error::protocol("a chunk does not end with CRLF"));
            }
            let Some(size) = line_at(&buf[at + end.len..])? else {
                break;
            };
            let size_line = &buf[at + end.len..at + end.len + size.content];
            let size_value = chunk_size(size_line)?;
            at += end.len + size.len;
            if size_value == 0 {
                self.kind = Kind::Chunked(Chunk::Trailers);
                break;
            }
            left = size_value;
            self.kind = Kind::Chunked(Chunk::Size);
            if at == buf.len() {
                self.kind = Kind::Chunked(Chunk::Data(left));
                break;
            }
        }
        let frame = buf.split_to(out).freeze();
        buf.advance(at - out);
        Ok(frame)
    }
}

/// A line at the start of some bytes: the length of its content and its whole length (with
/// its `\n` or `\r\n`); `None` when it is not complete.
struct LineAt {
    content: usize,
    len: usize,
}

fn line_at(bytes: &[u8]) -> Result<Option<LineAt>, Error> {
    match memchr::memchr(b'\n', bytes) {
        // Chunked framing ends its lines with CRLF, never a bare LF (as hyper insists).
        Some(end) if end == 0 || bytes[end - 1] != b'\r' => {
            Err(Error::protocol("a chunk line does not end with CRLF"))
        }
        Some(end) => Ok(Some(LineAt {
            content: end - 1,
            len: end + 1,
        })),
        None if bytes.len() > MAX_LINE => Err(Error::protocol("a chunk line is too long")),
        None => Ok(None),
    }
}

/// The number `bytes` spells in `radix` (digits only: no sign, no space), if it fits a `u64`.
fn digits(bytes: &[u8], radix: u32) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &b| {
        let d = char::from(b).to_digit(radix)?;
        n.checked_mul(u64::from(radix))?.checked_add(u64::from(d))
    })
}

/// A chunk-size line's size: hex digits, then optional spaces or tabs, then optional
/// extensions after `;` (ignored), as RFC 9112 7.1 and hyper read it.
fn chunk_size(line: &[u8]) -> Result<u64, Error> {
    let invalid = || Error::protocol("a chunk size is invalid");
    let end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let size = digits(&line[..end], 16).ok_or_else(invalid)?;
    let rest = &line[end..];
    let rest = &rest[rest
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count()..];
    if !rest.is_empty() && rest[0] != b';' {
        return Err(invalid());
    }
    if rest.contains(&b'\r') {
        return Err(invalid());
    }
    Ok(size)
}

/// A trailer line: `name: value`, the name a token.
fn is_field_line(line: &[u8]) -> bool {
    let Some(colon) = memchr::memchr(b':', line) else {
        return false;
    };
    let name = &line[..colon];
    !name.is_empty()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && !line.contains(&b'\r')
}

/// Takes one line (without its `\r\n`) off the front of `buf`.
fn take_line(buf: &mut BytesMut) -> Result<Option<Bytes>, Error> {
    let Some(at) = line_at(buf)? else {
        return Ok(None);
    };
    let mut line = buf.split_to(at.len).freeze();
    line.truncate(at.content);
    Ok(Some(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(framing: Framing, wire: &[u8], cut: usize) -> Result<(Vec<u8>, bool), Error> {
        let mut decoder = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in wire.chunks(cut.max(1)) {
            buf.extend_from_slice(piece);
            while let Some(data) = decoder.decode(&mut buf)? {
                out.extend_from_slice(&data);
            }
        }
        Ok((out, decoder.is_end()))
    }

    fn chunked() -> Framing {
        Framing {
            kind: Kind::Chunked(Chunk::Size),
            reusable: true,
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_cut() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n";
        for cut in 1..wire.len() {
            let (out, ended) = decode_all(chunked(), wire, cut).unwrap();
            assert_eq!(out, b"hello, world", "cut {cut}");
            assert!(ended, "cut {cut}");
        }
    }

    #[test]
    fn the_chunks_of_one_read_are_one_frame() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n1\r\n!\r\n0\r\n\r\n";
        let mut decoder = Decoder::new(chunked());
        let mut buf = BytesMut::from(&wire[..]);
        let frame = decoder.decode(&mut buf).unwrap().unwrap();
        assert_eq!(&frame[..], b"hello, world!");
        assert_eq!(decoder.decode(&mut buf).unwrap(), None);
        assert!(decoder.is_end() && buf.is_empty());
        // Cut inside the second chunk: its part comes with the first, the rest later.
        let mut decoder = Decoder::new(chunked());
        let mut buf = BytesMut::from(&wire[..22]);
        assert_eq!(&decoder.decode(&mut buf).unwrap().unwrap()[..], b"hello, w");
        buf.extend_from_slice(&wire[22..]);
        assert_eq!(&decoder.decode(&mut buf).unwrap().unwrap()[..], b"orld!");
    }

    #[test]
    fn bad_chunk_framing_is_an_error() {
        for wire in [&b"zz\r\nhello\r\n"[..], b"5\r\nhelloXX0\r\n\r\n", b"\r\n"] {
            assert!(decode_all(chunked(), wire, 64).is_err(), "{wire:?}");
        }
        let long = vec![b'1'; MAX_LINE + 1];
        assert!(decode_all(chunked(), &long, 64).is_err());
    }

    #[test]
    fn a_length_body_ends_at_its_length() {
        let framing = Framing {
            kind: Kind::Length(5),
            reusable: true,
        };
        let (out, ended) = decode_all(framing, b"hello", 2).unwrap();
        assert_eq!((out.as_slice(), ended), (&b"hello"[..], true));
    }

    fn head(text: &str) -> Response<()> {
        parse_head(text.as_bytes()).unwrap().unwrap().0
    }

    #[test]
    fn framing_follows_the_head() {
        let f = |text: &str, head_request| framing(&head(text), head_request).unwrap();
        let chunked = f(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            false,
        );
        assert_eq!(
            (chunked.kind, chunked.reusable),
            (Kind::Chunked(Chunk::Size), true)
        );
        let length = f("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n", false);
        assert_eq!(length.kind, Kind::Length(12));
        let close = f("HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!((close.kind, close.reusable), (Kind::Close, false));
        let asked_close = f(
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
            false,
        );
        assert!(!asked_close.reusable);
        let old = f("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", false);
        assert!(!old.reusable);
        assert_eq!(f("HTTP/1.1 204 No Content\r\n\r\n", false).kind, Kind::Done);
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true).kind,
            Kind::Done
        );
        let conflicting = head("HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n");
        assert!(framing(&conflicting, false).is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-le")
            .unwrap()
            .is_none());
        assert!(parse_head(b"HTTP/1.1 2x0 OK\r\n\r\n").is_err());
    }
}
