//! Slow-client isolation at the connection: a write that makes no progress for a set time
//! fails the connection.
//!
//! A server (hyper included) pulls a response body only as fast as the client reads it: when
//! the socket's send buffer is full, the server stops polling the body, so the upstream is not
//! read either and its own flow control pushes back. Memory stays bounded (the server's write
//! buffer, say hyper's `max_buf_size`, plus the kernel's socket buffers), but the stream, its
//! permit and its upstream connection are held for as long as the client leaves them.
//!
//! [`WriteStall`] wraps the connection's I/O: when a write has been pending for `timeout`
//! without a single byte going out, the write fails with `TimedOut`. The server then drops the
//! connection and everything it holds: the response body (which releases its permit) and the
//! upstream request (which is cancelled). A client that reads slowly but steadily is never cut:
//! every byte written starts the clock again.
//!
//! ```
//! # async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
//! use std::time::Duration;
//! use weir_backpressure::WriteStall;
//!
//! let (stream, _) = listener.accept().await?;
//! let io = WriteStall::new(stream, Duration::from_secs(30));
//! // hand `hyper_util::rt::TokioIo::new(io)` to hyper's `serve_connection`.
//! # let _ = io; Ok(()) }
//! ```

use pin_project_lite::pin_project;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

pin_project! {
    /// I/O whose writes fail with `TimedOut` after `timeout` without progress. See the
    /// [module docs](self).
    #[derive(Debug)]
    pub struct WriteStall<T> {
        #[pin]
        io: T,
        timeout: Duration,
        // Allocated at the first stalled write only, then reused.
        timer: Option<Pin<Box<Sleep>>>,
        stalled: bool,
    }
}

impl<T> WriteStall<T> {
    /// Wraps `io`.
    pub fn new(io: T, timeout: Duration) -> Self {
        Self {
            io,
            timeout,
            timer: None,
            stalled: false,
        }
    }

    /// The wrapped I/O.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// The wrapped I/O, unwrapped.
    pub fn into_inner(self) -> T {
        self.io
    }
}

fn stalled_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the client stopped reading: no write progress within the stall timeout",
    )
}

impl<T> WriteStall<T> {
    /// Called after a write returned `Pending`: starts the clock if it is not running, and
    /// fails once it has run out.
    fn pending(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let this = self.project();
        if !*this.stalled {
            *this.stalled = true;
            let deadline = Instant::now() + *this.timeout;
            match this.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => *this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let timer = this.timer.as_mut().expect("armed above");
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(stalled_error())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progressed(
        self: Pin<&mut Self>,
        result: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            *self.project().stalled = false;
        }
        result
    }
}

use std::future::Future;

impl<T: AsyncRead> AsyncRead for WriteStall<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl<T: AsyncWrite> AsyncWrite for WriteStall<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.as_mut().project().io.poll_write(cx, buf) {
            Poll::Pending => self.pending(cx),
            ready => self.progressed(ready),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.as_mut().project().io.poll_write_vectored(cx, bufs) {
            Poll::Pending => self.pending(cx),
            ready => self.progressed(ready),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A flush that completes is no proof the client read anything (a TCP stream's flush
        // always completes): only written bytes stop the clock.
        match self.as_mut().project().io.poll_flush(cx) {
            Poll::Pending => self.pending(cx).map_ok(|_| ()),
            ready => ready,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}
