//! Listeners: the public API and the admin endpoints, with graceful drain.

use crate::body::ResponseBody;
use crate::proxy::Gateway;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Server-wide state the admin endpoints report.
#[derive(Debug, Default)]
pub struct Health {
    draining: AtomicBool,
}

impl Health {
    /// Whether the server is draining (it then answers 503 on `/readyz`).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// Settings of the public listener.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// How long a client may take to send its request headers.
    pub header_read_timeout: Duration,
    /// How long a client may leave a response unread before its connection is cut.
    pub client_stall_timeout: Duration,
}

fn builder(options: ServeOptions) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        // Also the most a client that does not read makes weir hold in its write buffer:
        // past it hyper stops pulling the body, and the upstream is not read either.
        .max_buf_size(64 * 1024)
        // SSE chunks are small and come in bursts: copying them into one buffer and writing
        // once beats hyper's vectored queue, which holds 16 buffers and so flushes a 20-chunk
        // burst in two or more writes.
        .writev(false);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(64 * 1024)
        .keep_alive_interval(Duration::from_secs(30));
    builder
}

/// Accepts connections on `listener` until `stop` turns true, then waits for the open ones to
/// finish. Returns whether they all finished (false if `drain` had to be cut by its deadline).
async fn accept_loop<S, F>(
    listener: TcpListener,
    options: ServeOptions,
    service: S,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) -> bool
where
    S: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    let builder = builder(options);
    let graceful = GracefulShutdown::new();
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
        let service = service.clone();
        let service = hyper::service::service_fn(move |request| {
            let response = service(request);
            async move { Ok::<_, Infallible>(response.await) }
        });
        // A client that stops reading is cut after the stall timeout: that drops its streams,
        // which releases their slots and cancels their upstream requests.
        let io = weir_backpressure::WriteStall::new(stream, options.client_stall_timeout);
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_ok()
}

/// A running weir: its addresses, and the means to drain it.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    admin_addr: SocketAddr,
    health: Arc<Health>,
    stop: watch::Sender<bool>,
    admin_stop: watch::Sender<bool>,
    public: JoinHandle<bool>,
    admin: JoinHandle<bool>,
    /// Background work (health probes) that ends when draining starts.
    background: Vec<JoinHandle<()>>,
}

impl Running {
    pub(crate) fn stop_on_drain(&mut self, tasks: Vec<JoinHandle<()>>) {
        self.background.extend(tasks);
    }

    /// The public API address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Stops accepting, lets in-flight requests finish up to the drain deadline, and returns
    /// whether they all finished in time. `/readyz` answers 503 from the first moment.
    pub async fn drain(self) -> bool {
        self.health.draining.store(true, Ordering::Release);
        for task in &self.background {
            task.abort();
        }
        let _ = self.stop.send(true);
        let finished = self.public.await.unwrap_or(false);
        let _ = self.admin_stop.send(true);
        let _ = self.admin.await;
        finished
    }
}

/// Binds both listeners and serves `gateway`.
pub async fn serve(
    gateway: Arc<Gateway>,
    listen: SocketAddr,
    admin_listen: SocketAddr,
    options: ServeOptions,
    drain: Duration,
) -> std::io::Result<Running> {
    let listener = TcpListener::bind(listen).await?;
    let admin_listener = TcpListener::bind(admin_listen).await?;
    let addr = listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let health = Arc::new(Health::default());
    let (stop, stopped) = watch::channel(false);

    let gateway_for_public = gateway.clone();
    let public = tokio::spawn(accept_loop(
        listener,
        options,
        move |request| {
            let gateway = gateway_for_public.clone();
            // hyper keeps the service future's box for as long as the connection lives; boxing
            // the handler inside it leaves a pointer there, and frees the handler's state as
            // soon as the response head is ready (2.7 KiB per open stream).
            Box::pin(async move { gateway.handle(request).await })
        },
        stopped,
        drain,
    ));
    let admin_health = health.clone();
    let admin_gateway = gateway.clone();
    let (admin_stop, admin_stopped) = watch::channel(false);
    let admin = tokio::spawn(accept_loop(
        admin_listener,
        options,
        move |request| std::future::ready(admin(&admin_health, &admin_gateway, &request)),
        admin_stopped,
        Duration::ZERO,
    ));
    Ok(Running {
        addr,
        admin_addr,
        health,
        stop,
        admin_stop,
        public,
        admin,
        background: Vec::new(),
    })
}

fn text(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn admin(
    health: &Health,
    gateway: &Gateway,
    request: &Request<Incoming>,
) -> Response<ResponseBody> {
    match request.uri().path() {
        "/metrics" => {
            let mut response =
                Response::new(ResponseBody::full(crate::health::breaker_metrics(gateway)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        "/admin/providers" => {
            let mut response =
                Response::new(ResponseBody::full(crate::health::providers_json(gateway)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if health.draining() => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        "/readyz" => text(StatusCode::OK, "ready\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
