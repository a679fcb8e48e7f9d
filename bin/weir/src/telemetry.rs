//! Log setup. The binary owns the global subscriber; library code only emits `tracing` events.

use crate::config::{LogFormat, Telemetry};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber: stderr, text or JSON, filtered by `WEIR_LOG` or else the
/// config's `log_level`.
pub fn init(telemetry: &Telemetry) {
    let filter = EnvFilter::try_from_env("WEIR_LOG")
        .or_else(|_| EnvFilter::try_new(&telemetry.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match telemetry.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
