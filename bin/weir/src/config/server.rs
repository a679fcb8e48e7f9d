//! `[server]`: the listeners and the limits of the client-facing side.

use super::limits::{self, Concurrency, RateLimit};
use super::read::{shorten, At, Table};
use std::net::SocketAddr;
use std::time::Duration;

/// `[server]`: listeners and limits of the client-facing side.
#[derive(Debug, Clone)]
pub struct Server {
    /// The public address (OpenAI-compatible API).
    pub listen: SocketAddr,
    /// The admin address (`/healthz`, `/readyz`). Keep it off the public network.
    pub admin_listen: SocketAddr,
    /// The largest request body accepted (413 above).
    pub max_request_bytes: usize,
    /// How long a client may take to send its request headers (slowloris bound).
    pub header_read_timeout: Duration,
    /// On SIGTERM, how long in-flight streams may run before weir exits anyway.
    pub drain_timeout: Duration,
    /// The limit on requests in flight across every route (`max_concurrency`, ...).
    pub concurrency: Option<Concurrency>,
    /// A client that reads nothing for this long is cut, which cancels its upstream request.
    pub client_stall_timeout: Duration,
    /// Limits on every client together.
    pub rate_limit: Option<RateLimit>,
    /// Client request headers passed upstream besides the built-in allowlist (lowercase
    /// names, or prefixes ending in `*`).
    pub forward_headers: Vec<String>,
}

/// The keys `[server]` takes.
pub(super) const KEYS: &[&str] = &[
    "listen",
    "admin_listen",
    "auth",
    "max_request_bytes",
    "header_read_timeout",
    "drain_timeout",
    "max_concurrency",
    "max_queue",
    "queue_timeout",
    "client_stall_timeout",
    "rate_limit",
    "forward_headers",
];

/// What stands for a missing `[server]` while the rest of the file is read for problems.
pub(super) fn unset() -> Server {
    let unset = SocketAddr::from(([127, 0, 0, 1], 0));
    Server {
        listen: unset,
        admin_listen: unset,
        max_request_bytes: 4 << 20,
        header_read_timeout: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(30),
        concurrency: None,
        client_stall_timeout: Duration::from_secs(60),
        rate_limit: None,
        forward_headers: Vec::new(),
    }
}

/// Reads `[server]`; `auth` is returned as written, checked against `[[keys]]` by the caller.
pub(super) fn read<'a>(t: &Table<'a>) -> (Server, Option<At<&'a str>>) {
    let address = |name: &str| {
        let text = t.required(name)?;
        match text.value.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                t.problem(
                    text.span,
                    name,
                    format!(
                        "`{}` is not an address like \"127.0.0.1:8080\"",
                        shorten(text.value)
                    ),
                );
                None
            }
        }
    };
    let unset = SocketAddr::from(([127, 0, 0, 1], 0));
    let listen = address("listen").unwrap_or(unset);
    let admin_listen = address("admin_listen").unwrap_or(unset);
    if listen == admin_listen && listen.port() != 0 {
        if let Some(v) = t.get("admin_listen") {
            t.problem(v.span(), "admin_listen", "must differ from server.listen");
        }
    }
    let max_request_bytes = match t.whole("max_request_bytes") {
        None => 4 << 20,
        Some(v) if v.value == 0 => {
            t.problem(v.span, "max_request_bytes", "must be above 0");
            1
        }
        Some(v) => usize::try_from(v.value).unwrap_or(usize::MAX),
    };
    let server = Server {
        listen,
        admin_listen,
        max_request_bytes,
        header_read_timeout: t.duration_or("header_read_timeout", Duration::from_secs(10)),
        drain_timeout: t.duration_or("drain_timeout", Duration::from_secs(30)),
        concurrency: limits::concurrency(t, false),
        client_stall_timeout: t.duration_or("client_stall_timeout", Duration::from_secs(60)),
        rate_limit: limits::rate_limit(t, "rate_limit", false),
        forward_headers: forward_headers(t),
    };
    (server, t.string("auth"))
}

/// `forward_headers`: header names (or `prefix*`) a client may send upstream, never one that
/// is a credential, hop-by-hop, set by weir, or picks the provider account.
fn forward_headers(t: &Table<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for entry in t.strings("forward_headers").unwrap_or_default() {
        let text = entry.value.to_ascii_lowercase();
        let name = text.strip_suffix('*').unwrap_or(&text);
        let valid = if name.is_empty() {
            None
        } else {
            http::HeaderName::from_bytes(name.as_bytes()).ok()
        };
        match valid {
            None => t.problem(
                entry.span,
                "forward_headers",
                format!("`{}` is not a header name (or a prefix ending in `*`)", shorten(entry.value)),
            ),
            Some(header) if crate::headers::never_forwarded(&header) => t.problem(
                entry.span,
                "forward_headers",
                format!(
                    "`{header}` never comes from a client: it is a credential, hop-by-hop, set by weir, or picks the provider's account (set it in the provider's `headers`)"
                ),
            ),
            Some(_) => out.push(text),
        }
    }
    out
}
