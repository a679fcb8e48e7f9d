//! The WebSocket endpoint's counters, and why connections ended.

use crate::config::WebSocket as Config;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(super) open: AtomicI64,
    pub(super) received: AtomicU64,
    pub(super) sent: AtomicU64,
    pub(super) closes: [AtomicU64; Close::ALL.len()],
}

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Close {
    /// The client closed it (or went away).
    Client,
    Idle,
    RateLimited,
    TooBig,
    NoPong,
    /// It stopped reading, or its connection failed.
    Stalled,
    Shutdown,
}

impl Close {
    pub(super) const ALL: [Close; 7] = [
        Close::Client,
        Close::Idle,
        Close::RateLimited,
        Close::TooBig,
        Close::NoPong,
        Close::Stalled,
        Close::Shutdown,
    ];

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Close::Client => "client",
            Close::Idle => "idle",
            Close::RateLimited => "rate_limited",
            Close::TooBig => "too_big",
            Close::NoPong => "no_pong",
            Close::Stalled => "stalled",
            Close::Shutdown => "shutdown",
        }
    }

    /// The close frame weir sends, if it sends one.
    pub(super) fn frame(self, config: &Config) -> Option<CloseFrame> {
        let (code, reason) = match self {
            Close::Client | Close::Stalled => return None,
            Close::Idle => (CloseCode::Normal, "idle timeout".to_owned()),
            Close::RateLimited => (
                CloseCode::Policy,
                format!(
                    "message rate limit exceeded ({} per second, burst {})",
                    config.messages_per_second, config.message_burst
                ),
            ),
            Close::TooBig => (
                CloseCode::Size,
                format!("message larger than {} bytes", config.max_message_bytes),
            ),
            Close::NoPong => (CloseCode::Away, "no pong to the last ping".to_owned()),
            Close::Shutdown => (CloseCode::Away, "server shutting down".to_owned()),
        };
        Some(CloseFrame {
            code,
            reason: reason.into(),
        })
    }
}

impl Stats {
    /// The `weir_websocket_*` families.
    pub(crate) fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP weir_websocket_connections WebSocket connections open at /v1/ws.\n# TYPE weir_websocket_connections gauge\nweir_websocket_connections {}",
            self.open.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP weir_websocket_messages_total WebSocket messages received from and sent to clients.\n# TYPE weir_websocket_messages_total counter\nweir_websocket_messages_total{{direction=\"received\"}} {}\nweir_websocket_messages_total{{direction=\"sent\"}} {}",
            self.received.load(Ordering::Relaxed),
            self.sent.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP weir_websocket_closes_total WebSocket connections ended, by reason.\n# TYPE weir_websocket_closes_total counter"
        );
        for (close, n) in Close::ALL.iter().zip(&self.closes) {
            let _ = writeln!(
                out,
                "weir_websocket_closes_total{{reason=\"{}\"}} {}",
                close.as_str(),
                n.load(Ordering::Relaxed)
            );
        }
    }
}
