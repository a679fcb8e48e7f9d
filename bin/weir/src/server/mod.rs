//! Listeners: the public API and the admin endpoints, with graceful drain.

use crate::current::{Current, GatewayService};
use crate::gateway::{Gateway, ResponseBody};
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
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

mod accept;
mod reload;

use accept::accept_loop;
use reload::Shared;
pub use reload::{ReloadError, Reloader};

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
        self.shared.cool_downs.abort();
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
        cool_downs: tokio::spawn(crate::health::shared_cool_downs(
            Arc::downgrade(&current),
            crate::health::COOL_DOWN_READS,
        )),
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
