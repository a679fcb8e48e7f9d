//! Reloading a running weir: a new gateway swapped in, the state that must live on handed
//! over, probes kept in step.

use crate::current::Current;
use crate::gateway::Gateway;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::task::JoinHandle;

use super::Health;

/// What a reload needs, shared by [`Running`] and its [`Reloader`]s.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) current: Arc<Current>,
    pub(super) health: Arc<Health>,
    /// One health-probe task per provider and per deployment that probe, with what it probes.
    pub(super) probes: std::sync::Mutex<Vec<(Probed, JoinHandle<()>)>>,
    /// The task that reads the cool-downs other replicas published (limits shared through
    /// Redis); it follows whichever gateway is current.
    pub(super) cool_downs: JoinHandle<()>,
    /// `[server]` as weir started: what a reload cannot change.
    pub(super) started: crate::config::Server,
    /// `[telemetry]` as weir started (the subscriber and exporter are set up once).
    pub(super) telemetry: crate::config::Telemetry,
    /// `[websocket]` as weir started.
    pub(super) websocket: crate::config::WebSocket,
}

/// What a probe task probes.
#[derive(Debug)]
pub(super) enum Probed {
    /// A provider's endpoint.
    Endpoint(Arc<crate::gateway::Upstream>),
    /// A model on a provider.
    Model(Arc<crate::gateway::Deployment>),
}

impl Probed {
    /// Whether `gateway` still has it, the very same.
    fn kept(&self, gateway: &Gateway) -> bool {
        match self {
            Probed::Endpoint(u) => gateway.upstreams().iter().any(|g| Arc::ptr_eq(g, u)),
            Probed::Model(d) => gateway.deployments().iter().any(|g| Arc::ptr_eq(g, d)),
        }
    }
}

impl Shared {
    /// Probe tasks for the gateway's providers and deployments: kept for those kept whole,
    /// stopped for the others, started for new ones (none while draining).
    pub(super) fn sync_probes(&self, gateway: &Gateway) {
        let mut probes = self.probes.lock().expect("probes lock");
        probes.retain(|(probed, task)| {
            let kept = probed.kept(gateway);
            if !kept {
                task.abort();
            }
            kept
        });
        if self.health.draining() {
            return;
        }
        for upstream in gateway.upstreams() {
            let probed = |p: &Probed| matches!(p, Probed::Endpoint(u) if Arc::ptr_eq(u, upstream));
            if !probes.iter().any(|(p, _)| probed(p)) {
                if let Some(task) = crate::health::spawn_probe(upstream) {
                    probes.push((Probed::Endpoint(upstream.clone()), task));
                }
            }
        }
        for deployment in gateway.deployments() {
            let probed = |p: &Probed| matches!(p, Probed::Model(d) if Arc::ptr_eq(d, deployment));
            if !probes.iter().any(|(p, _)| probed(p)) {
                if let Some(task) = crate::health::spawn_model_probe(deployment) {
                    probes.push((Probed::Model(deployment.clone()), task));
                }
            }
        }
    }
}

/// Reloads a running weir's configuration; usable while it drains.
#[derive(Debug, Clone)]
pub struct Reloader {
    pub(super) shared: Arc<Shared>,
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
