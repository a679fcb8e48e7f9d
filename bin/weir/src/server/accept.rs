//! Accepting connections: the protocol told by peeking, hyper's connection builders, the
//! kernel's send buffer bounded, and a drain at the end.

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{BoxError, ServeOptions};

/// The HTTP/1.1 and HTTP/2 connection builders.
pub(super) struct Builders {
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    /// For a client whose first bytes cannot tell the protocol yet (see [`sniff`]).
    auto: auto::Builder<TokioExecutor>,
}

/// weir's HTTP/1.1 settings, for hyper's own builder and for the auto builder's (two types
/// with the same methods).
macro_rules! http1_settings {
    ($builder:expr, $options:expr) => {
        $builder
            .timer(TokioTimer::new())
            .header_read_timeout($options.header_read_timeout)
            // The largest request head, and the most a client that does not read makes weir
            // hold in its write buffer: past it hyper stops pulling the body, and the
            // upstream is not read either.
            .max_buf_size(MAX_BUF)
            // SSE chunks are small and come in bursts: copying them into one buffer and
            // writing once beats hyper's vectored queue, which holds 16 buffers and so flushes
            // a 20-chunk burst in two or more writes.
            .writev(false)
    };
}

/// weir's HTTP/2 settings, likewise.
macro_rules! http2_settings {
    ($builder:expr) => {
        $builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .max_header_list_size(64 * 1024)
            // Rapid reset (CVE-2023-44487): a client that resets streams faster than they
            // are accepted, or makes weir reset too many, gets GOAWAY ENHANCE_YOUR_CALM.
            .max_pending_accept_reset_streams(20)
            .max_local_error_reset_streams(1024)
            .keep_alive_interval(Duration::from_secs(30))
    };
}

pub(super) fn builders(options: ServeOptions) -> Builders {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1_settings!(http1, options);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2_settings!(http2);
    let mut auto = auto::Builder::new(TokioExecutor::new());
    http1_settings!(auto.http1(), options);
    http2_settings!(auto.http2());
    Builders { http1, http2, auto }
}

/// hyper's HTTP/1.1 buffer limit (see [`builders`]).
const MAX_BUF: usize = 16 * 1024;

/// The most bytes a client socket may hold unsent in the kernel before it stops taking more.
const UNSENT_LIMIT: u32 = 16 * 1024;

/// Bounds what a client that reads slowly makes the kernel hold: without it, Linux grows the
/// send buffer to megabytes (2.8 MB queued per slow client, measured), weir pulls that much
/// from the upstream, and the stream's transcript grows with it. With `TCP_NOTSENT_LOWAT` the
/// socket reads as full once 16 KiB wait unsent, so hyper stops pulling the body, and weir
/// stops reading the upstream. Bytes in flight are not limited (the window still grows).
fn limit_unsent(stream: &tokio::net::TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let _ = socket2::SockRef::from(stream).set_tcp_notsent_lowat(UNSENT_LIMIT);
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (stream, UNSENT_LIMIT);
}

/// The HTTP/2 connection preface (prior knowledge, h2c).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Which protocol a new connection speaks, from its first bytes, read with `MSG_PEEK` so that
/// nothing is consumed. hyper-util's auto builder reads them instead and hands them back
/// through a rewind buffer, which makes hyper's first read a short one and doubles its read
/// buffer to 16 KiB: 6 KiB more per open stream. `None`: the bytes so far are a prefix of the
/// HTTP/2 preface (a client that split it).
async fn sniff(stream: &tokio::net::TcpStream, wait: Duration) -> Option<Protocol> {
    let mut head = [0u8; H2_PREFACE.len()];
    let peeked = tokio::time::timeout(wait, stream.peek(&mut head)).await;
    let n = match peeked {
        Ok(Ok(n)) if n > 0 => n,
        // Silent for the whole header timeout: the connection is closed.
        Err(_) => return Some(Protocol::Silent),
        // Closed or failed: hyper sees it on its first read.
        Ok(_) => return Some(Protocol::Http1),
    };
    if head[..n] != H2_PREFACE[..n] {
        Some(Protocol::Http1)
    } else if n == H2_PREFACE.len() {
        Some(Protocol::Http2)
    } else {
        None
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
    /// Nothing came within the header timeout.
    Silent,
}

/// Accepts connections on `listener` until `stop` turns true, then waits for the open ones to
/// finish. Returns whether they all finished (false if `drain` had to be cut by its deadline).
pub(super) async fn accept_loop<S, F, B>(
    listener: TcpListener,
    options: ServeOptions,
    service: S,
    mut stop: watch::Receiver<bool>,
    drain: (crate::drain::Drain, Duration),
) -> bool
where
    S: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let builders = Arc::new(builders(options));
    let (drain, deadline) = drain;
    loop {
        let stream = tokio::select! {
            biased;
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        limit_unsent(&stream);
        let service = service.clone();
        let service = hyper::service::service_fn(move |request| {
            let response = service(request);
            async move { Ok::<_, Infallible>(response.await) }
        });
        let (builders, mut token) = (builders.clone(), drain.token());
        let stall = options.client_stall_timeout;
        let first_bytes = options.header_read_timeout;
        tokio::spawn(async move {
            let protocol = sniff(&stream, first_bytes).await;
            // A client that stops reading is cut after the stall timeout: that drops its
            // streams, which releases their slots and cancels their upstream requests.
            let io = TokioIo::new(weir_backpressure::WriteStall::new(stream, stall));
            // Serves `conn` until it ends; a drain asks it to finish what it has.
            macro_rules! gracefully {
                ($conn:expr) => {{
                    let mut conn = $conn;
                    tokio::select! {
                        ended = conn.as_mut() => ended,
                        _ = token.draining() => {
                            conn.as_mut().graceful_shutdown();
                            // Past the drain deadline the connection is dropped, streams and
                            // all.
                            tokio::select! {
                                ended = conn.as_mut() => ended,
                                _ = token.deadline() => Ok(()),
                            }
                        }
                    }
                }};
            }
            let ended: Result<(), BoxError> = match protocol {
                Some(Protocol::Silent) => return,
                Some(Protocol::Http1) => {
                    let conn = builders.http1.serve_connection(io, service).with_upgrades();
                    gracefully!(std::pin::pin!(conn)).map_err(Into::into)
                }
                // The task's state is as large as its largest arm: the rarer connections are
                // boxed so that an HTTP/1.1 stream does not pay for their size.
                Some(Protocol::Http2) => {
                    let conn = builders.http2.serve_connection(io, service);
                    gracefully!(Box::pin(conn)).map_err(Into::into)
                }
                None => {
                    let conn = builders
                        .auto
                        .serve_connection_with_upgrades(io, service)
                        .into_owned();
                    gracefully!(Box::pin(conn))
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drain.run(deadline, Duration::from_secs(1)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A connected pair: the client's end, and the server's accepted end.
    async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn the_first_bytes_tell_the_protocol_without_being_consumed() {
        let wait = Duration::from_secs(5);
        let (mut client, server) = pair().await;
        client
            .write_all(b"POST /v1/chat/completions HTTP/1.1\r\n")
            .await
            .unwrap();
        assert_eq!(sniff(&server, wait).await, Some(Protocol::Http1));
        let mut still_there = [0u8; 4];
        assert_eq!(server.peek(&mut still_there).await.unwrap(), 4);
        assert_eq!(&still_there, b"POST");

        let (mut client, server) = pair().await;
        client.write_all(H2_PREFACE).await.unwrap();
        while server.peek(&mut [0u8; 24]).await.unwrap() < 24 {}
        assert_eq!(sniff(&server, wait).await, Some(Protocol::Http2));

        // A split preface cannot be told yet: the auto builder reads on.
        let (mut client, server) = pair().await;
        client.write_all(&H2_PREFACE[..8]).await.unwrap();
        assert_eq!(sniff(&server, wait).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_sends_nothing_is_let_go_after_the_header_timeout() {
        let (_client, server) = pair().await;
        let started = tokio::time::Instant::now();
        assert_eq!(
            sniff(&server, Duration::from_secs(5)).await,
            Some(Protocol::Silent)
        );
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
