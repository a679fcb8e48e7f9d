//! weir: a streaming gateway for LLM APIs.
//!
//! This crate is the binary's library: the TOML [`config`], the OpenAI-compatible
//! [`Gateway`] (the request path as one tower stack), the [`server`] with its admin listener and graceful drain, and
//! [`telemetry`] setup. `main.rs` only parses arguments, handles signals and calls [`start`].
//!
//! ```no_run
//! # async fn doc() -> Result<(), Box<dyn std::error::Error>> {
//! let config = weir::config::load("weir.toml".as_ref())?;
//! let running = weir::start(&config).await?;
//! println!("serving on {}", running.addr());
//! let all_finished = running.drain().await;
//! # Ok(()) }
//! ```

pub mod config;
mod current;
mod drain;
mod gateway;
mod headers;
mod health;
pub mod server;
pub mod telemetry;
mod ws;

pub use gateway::{Body, Gateway, ResponseBody, StreamFailed};
pub use server::{ReloadError, Reloader, Running};

use std::sync::Arc;

/// Why weir could not start.
#[derive(Debug)]
pub enum StartError {
    /// A provider's client could not be built (native TLS roots unreadable).
    Client(weir_client::Error),
    /// A listener could not be bound.
    Bind(std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Client(e) => write!(f, "cannot build an upstream client: {e}"),
            Self::Bind(e) => write!(f, "cannot bind a listener: {e}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Client(e) => Some(e),
            Self::Bind(e) => Some(e),
        }
    }
}

/// Builds the gateway from `config`, binds its listeners and starts serving.
pub async fn start(config: &config::Config) -> Result<Running, StartError> {
    let gateway = Arc::new(Gateway::new(config).map_err(StartError::Client)?);
    let options = server::ServeOptions {
        header_read_timeout: config.server.header_read_timeout,
        client_stall_timeout: config.server.client_stall_timeout,
        spans: config.telemetry.otlp.is_some(),
        access_log: config.telemetry.access_log,
    };
    server::serve(
        gateway,
        &config.server,
        &config.telemetry,
        &config.websocket,
        options,
    )
    .await
    .map_err(StartError::Bind)
}
