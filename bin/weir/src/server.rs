//! Listeners: the public API and the admin endpoints, with graceful drain.

use crate::current::{Current, GatewayService};
use crate::gateway::{Gateway, ResponseBody};
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Server-wide state the admin endpoints report.
#[derive(Debug, Default)]
pub struct Health {
    draining: AtomicBool,
    reloads_ok: std::sync::atomic::AtomicU64,
    reloads_failed: std::sync::atomic::AtomicU64,
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
    /// A trace span per request (when traces are exported).
    pub spans: bool,
    /// An access log line per request.
    pub access_log: bool,
}

/// The HTTP/1.1 and HTTP/2 connection builders.
struct Builders {
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

fn builders(options: ServeOptions) -> Builders {
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
async fn accept_loop<S, F, B>(
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

/// What a reload needs, shared by [`Running`] and its [`Reloader`]s.
#[derive(Debug)]
struct Shared {
    current: Arc<Current>,
    health: Arc<Health>,
    /// One health-probe task per provider that probes, with the provider it probes.
    probes: std::sync::Mutex<Vec<(Arc<crate::gateway::Upstream>, JoinHandle<()>)>>,
    /// `[server]` as weir started: what a reload cannot change.
    started: crate::config::Server,
    /// `[telemetry]` as weir started (the subscriber and exporter are set up once).
    telemetry: crate::config::Telemetry,
    /// `[websocket]` as weir started.
    websocket: crate::config::WebSocket,
}

impl Shared {
    /// Probe tasks for the gateway's providers: kept for providers kept whole, stopped for
    /// the others, started for new ones (none while draining).
    fn sync_probes(&self, gateway: &Gateway) {
        let mut probes = self.probes.lock().expect("probes lock");
        probes.retain(|(upstream, task)| {
            let kept = gateway.upstreams().iter().any(|u| Arc::ptr_eq(u, upstream));
            if !kept {
                task.abort();
            }
            kept
        });
        if self.health.draining() {
            return;
        }
        for upstream in gateway.upstreams() {
            if !probes.iter().any(|(u, _)| Arc::ptr_eq(u, upstream)) {
                if let Some(task) = crate::health::spawn_probe(upstream) {
                    probes.push((upstream.clone(), task));
                }
            }
        }
    }
}

/// Reloads a running weir's configuration; usable while it drains.
#[derive(Debug, Clone)]
pub struct Reloader {
    shared: Arc<Shared>,
}

/// Why a reload was refused (the running configuration stays).
#[derive(Debug)]
pub enum ReloadError {
    /// The new configuration is invalid.
    Config(crate::config::ConfigError),
    /// A provider's client could not be built.
    Client(weir_client::Error),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(e) => write!(f, "invalid configuration: {e}"),
            Self::Client(e) => write!(f, "cannot build an upstream client: {e}"),
        }
    }
}

impl std::error::Error for ReloadError {}

impl Reloader {
    /// Swaps in the gateway for `config` (see [`Gateway::reloaded`]). Listener settings
    /// (`listen`, `admin_listen`, timeouts of the connection itself) take effect only on a
    /// restart: a change to them is logged, the rest applied.
    pub fn reload(&self, config: &crate::config::Config) -> Result<(), ReloadError> {
        let shared = &self.shared;
        let gateway = match shared.current.get().reloaded(config) {
            Ok(gateway) => Arc::new(gateway),
            Err(e) => return Err(self.failed(ReloadError::Client(e))),
        };
        let (was, now) = (&shared.started, &config.server);
        if was.listen != now.listen
            || was.admin_listen != now.admin_listen
            || was.header_read_timeout != now.header_read_timeout
            || was.client_stall_timeout != now.client_stall_timeout
            || was.drain_timeout != now.drain_timeout
        {
            tracing::warn!("listener settings changed in [server]: they take effect on a restart");
        }
        if shared.telemetry != config.telemetry {
            tracing::warn!("[telemetry] changed: it takes effect on a restart");
        }
        if shared.websocket != config.websocket {
            tracing::warn!("[websocket] changed: it takes effect on a restart");
        }
        shared.current.set(gateway.clone());
        shared.sync_probes(&gateway);
        shared.health.reloads_ok.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            providers = config.providers.len(),
            routes = config.routes.len(),
            keys = config.keys.len(),
            "configuration reloaded"
        );
        Ok(())
    }

    /// Reads and validates `path`, then reloads; a bad file keeps the running configuration.
    pub fn reload_file(&self, path: &std::path::Path) -> Result<(), ReloadError> {
        match crate::config::load(path) {
            Ok(config) => self.reload(&config),
            Err(e) => Err(self.failed(ReloadError::Config(e))),
        }
    }

    fn failed(&self, error: ReloadError) -> ReloadError {
        self.shared
            .health
            .reloads_failed
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(%error, "reload refused; the running configuration stays");
        error
    }
}

/// A running weir: its addresses, and the means to reload and drain it.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    admin_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    admin_stop: watch::Sender<bool>,
    public: JoinHandle<bool>,
    admin: JoinHandle<bool>,
}

impl Running {
    /// The public API address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// A handle that reloads this weir's configuration (also while it drains).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            shared: self.shared.clone(),
        }
    }

    /// Stops accepting, lets in-flight requests finish up to the drain deadline, and returns
    /// whether they all finished in time. `/readyz` answers 503 from the first moment.
    pub async fn drain(self) -> bool {
        self.shared.health.draining.store(true, Ordering::Release);
        for (_, task) in self.shared.probes.lock().expect("probes lock").drain(..) {
            task.abort();
        }
        let _ = self.stop.send(true);
        let finished = self.public.await.unwrap_or(false);
        let _ = self.admin_stop.send(true);
        let _ = self.admin.await;
        finished
    }
}

/// Binds both listeners and serves `gateway` (and the gateways reloads swap in).
pub(crate) async fn serve(
    gateway: Arc<Gateway>,
    server: &crate::config::Server,
    telemetry: &crate::config::Telemetry,
    websocket: &crate::config::WebSocket,
    options: ServeOptions,
) -> std::io::Result<Running> {
    let listener = TcpListener::bind(server.listen).await?;
    let admin_listener = TcpListener::bind(server.admin_listen).await?;
    let addr = listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let health = Arc::new(Health::default());
    let current = Arc::new(Current::new(gateway));
    let (stop, stopped) = watch::channel(false);

    let public_drain = crate::drain::Drain::new();
    let recorder = Arc::new(weir_metrics::PrometheusRecorder::new());
    let metrics = tower::Layer::layer(
        &weir_metrics::MetricsLayer::new(recorder.clone())
            .spans(options.spans)
            .access_log(options.access_log)
            .request_id_header(crate::headers::X_REQUEST_ID.clone()),
        GatewayService(current.clone()),
    );
    let ws = Arc::new(crate::ws::Context {
        config: websocket.clone(),
        stack: metrics.clone(),
        current: current.clone(),
        minter: public_drain.minter(),
        stats: Default::default(),
    });
    let admin_ws = ws.clone();
    let public = tokio::spawn(accept_loop(
        listener,
        options,
        move |request: Request<Incoming>| {
            // WebSocket upgrades are answered here; their completions go through `metrics`.
            let route = if request.uri().path() == crate::ws::PATH {
                Err(Box::new(crate::ws::upgrade(&ws, request)))
            } else {
                Ok(tower::Service::call(&mut metrics.clone(), request))
            };
            async move {
                match route {
                    Ok(answer) => match answer.await {
                        Ok(response) => response.map(http_body_util::Either::Left),
                        Err(never) => match never {},
                    },
                    Err(upgrade) => upgrade.map(http_body_util::Either::Right),
                }
            }
        },
        stopped,
        (public_drain, server.drain_timeout),
    ));
    let admin_health = health.clone();
    let admin_current = current.clone();
    let admin_recorder = recorder.clone();
    let (admin_stop, admin_stopped) = watch::channel(false);
    let admin = tokio::spawn(accept_loop(
        admin_listener,
        options,
        move |request| {
            std::future::ready(admin(
                &admin_health,
                &admin_current.get(),
                &admin_recorder,
                &admin_ws.stats,
                &request,
            ))
        },
        admin_stopped,
        (crate::drain::Drain::new(), Duration::ZERO),
    ));
    let shared = Arc::new(Shared {
        current: current.clone(),
        health,
        probes: std::sync::Mutex::new(Vec::new()),
        started: server.clone(),
        telemetry: telemetry.clone(),
        websocket: websocket.clone(),
    });
    shared.sync_probes(&current.get());
    Ok(Running {
        addr,
        admin_addr,
        shared,
        stop,
        admin_stop,
        public,
        admin,
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
    recorder: &weir_metrics::PrometheusRecorder,
    ws: &crate::ws::Stats,
    request: &Request<Incoming>,
) -> Response<ResponseBody> {
    match request.uri().path() {
        "/metrics" => {
            let mut text = String::with_capacity(16 * 1024);
            recorder.render(&mut text);
            text.push_str(
                std::str::from_utf8(&crate::health::breaker_metrics(gateway)).unwrap_or_default(),
            );
            crate::telemetry::render_stats(&mut text);
            ws.render(&mut text);
            text.push_str(&format!(
                "# HELP weir_config_reloads_total Configuration reloads, applied or refused.\n# TYPE weir_config_reloads_total counter\nweir_config_reloads_total{{result=\"ok\"}} {}\nweir_config_reloads_total{{result=\"failed\"}} {}\n",
                health.reloads_ok.load(Ordering::Relaxed),
                health.reloads_failed.load(Ordering::Relaxed),
            ));
            let mut response = Response::new(ResponseBody::full(text.into()));
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
