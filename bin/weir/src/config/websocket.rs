//! `[websocket]`: completions streamed over one WebSocket per client at `GET /v1/ws`.

use super::read::{shorten, Table};
use std::time::Duration;

/// `[websocket]`: completions streamed over one WebSocket per client at `GET /v1/ws`.
#[derive(Debug, Clone, PartialEq)]
pub struct WebSocket {
    /// Whether `/v1/ws` is served.
    pub enabled: bool,
    /// Browser origins allowed to connect (`Origin`); `*` for any. A request without `Origin`
    /// (not a browser) is always allowed; one from an origin not listed gets 403.
    pub origins: Vec<String>,
    /// How often weir pings; a connection that has not answered the last ping by the next is
    /// closed.
    pub ping_interval: Duration,
    /// A connection with nothing in flight that sends no message for this long is closed.
    pub idle_timeout: Duration,
    /// The largest message (and frame) a client may send; close 1009 above.
    pub max_message_bytes: usize,
    /// Completions in flight at once on one connection.
    pub max_in_flight: usize,
    /// Messages a connection may send per second, and its burst; close 1008 beyond.
    pub messages_per_second: u32,
    /// See `messages_per_second`.
    pub message_burst: u32,
    /// Messages waiting to be written to one client; a completion whose client does not read
    /// waits (and stops reading its upstream) when it is full.
    pub send_queue: usize,
}

/// The keys `[websocket]` takes.
pub(super) const KEYS: &[&str] = &[
    "enabled",
    "origins",
    "ping_interval",
    "idle_timeout",
    "max_message_bytes",
    "max_in_flight",
    "messages_per_second",
    "message_burst",
    "send_queue",
];

/// Reads `[websocket]` (all defaults when the table is absent); a message may be as large as
/// a request body unless it says otherwise.
pub(super) fn read(t: Option<&Table<'_>>, max_request_bytes: usize) -> WebSocket {
    let Some(t) = t else {
        return WebSocket {
            enabled: true,
            origins: Vec::new(),
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            max_message_bytes: max_request_bytes,
            max_in_flight: 8,
            messages_per_second: 10,
            message_burst: 20,
            send_queue: 64,
        };
    };
    let mut origins = Vec::new();
    for origin in t.strings("origins").unwrap_or_default() {
        let value = origin.value.trim_end_matches('/');
        let valid = value == "*"
            || value
                .parse::<http::Uri>()
                .is_ok_and(|u| u.scheme().is_some() && u.host().is_some() && u.path() == "/");
        if valid {
            origins.push(value.to_ascii_lowercase());
        } else {
            t.problem(
                origin.span,
                "origins",
                format!(
                    "`{}` is not an origin like \"https://chat.example.com\" (or \"*\")",
                    shorten(origin.value)
                ),
            );
        }
    }
    WebSocket {
        enabled: t.boolean("enabled").unwrap_or(true),
        origins,
        ping_interval: t.positive_duration_or("ping_interval", Duration::from_secs(30)),
        idle_timeout: t.positive_duration_or("idle_timeout", Duration::from_secs(300)),
        max_message_bytes: t.count("max_message_bytes", max_request_bytes as u64, 1, 1 << 30)
            as usize,
        max_in_flight: t.count("max_in_flight", 8, 1, 1024) as usize,
        messages_per_second: t.count("messages_per_second", 10, 1, 1_000_000) as u32,
        message_burst: t.count("message_burst", 20, 1, 1_000_000) as u32,
        send_queue: t.count("send_queue", 64, 1, 65_536) as usize,
    }
}
