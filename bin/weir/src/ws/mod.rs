//! `GET /v1/ws`: chat completions streamed over one WebSocket per client.
//!
//! Each `completion` message becomes an ordinary `POST /v1/chat/completions` request (the
//! connection's headers, its key, a streamed body) that goes through the same service as an
//! HTTP request: the metrics layer, authentication, rate limits, failover and rescue, breakers.
//! Its SSE answer comes back as `chunk` messages and one `done` (or `error`). There is no
//! second code path for any of that: only the framing differs.
//!
//! Client → weir (JSON text): `{"type":"completion","id":..,"model":..,"messages":[..],...}`
//! (other chat parameters pass through), `{"type":"ping"}`, `{"type":"cancel","id":..}`,
//! `{"type":"reset"}`. weir → client: `{"type":"chunk","id":..,"delta":<OpenAI chunk>}`,
//! `{"type":"done","id":..,"usage":{..},"finish_reason":".."}`, `{"type":"pong"}`,
//! `{"type":"error","id":..,"code":"..","message":".."}`.
//!
//! A connection: authenticated at the upgrade (`Authorization`, or the subprotocol
//! `bearer.<key>` next to `weir` for browsers), its `Origin` checked against an allowlist,
//! pinged every `ping_interval`, closed when idle, rate-limited per message (1008), size-limited
//! (1009). What it sends waits in a bounded queue: a client that does not read holds up its
//! completions, which stop reading their upstreams, and the connection's write-stall guard
//! cuts it after `client_stall_timeout`. A drain lets completions finish, then closes with
//! 1001.

mod complete;
mod connection;
mod outbox;
mod stats;

pub(crate) use stats::Stats;

use crate::config::WebSocket as Config;
use crate::drain::Minter;
use crate::gateway::ResponseBody;
use bytes::Bytes;
use connection::session;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::sync::Arc;
use weir_llm::{ErrorBody, ErrorKind};

/// Where the WebSocket endpoint is.
pub(crate) const PATH: &str = "/v1/ws";

/// The service each completion goes through: the same as an HTTP request's.
pub(crate) type Stack =
    weir_metrics::Metrics<crate::current::GatewayService, weir_metrics::PrometheusRecorder>;

/// What every WebSocket connection shares.
#[derive(Debug)]
pub(crate) struct Context {
    pub(crate) config: Config,
    pub(crate) stack: Stack,
    pub(crate) current: Arc<crate::current::Current>,
    pub(crate) minter: Minter,
    pub(crate) stats: Stats,
}

/// The subprotocol weir speaks; browsers pass their key as `bearer.<key>` beside it.
const PROTOCOL: &str = "weir";
const BEARER_PROTOCOL: &str = "bearer.";

/// Headers of the upgrade request that do not carry over to the completions.
fn connection_only(name: &HeaderName) -> bool {
    crate::headers::is_hop_by_hop(name)
        || name.as_str().starts_with("sec-websocket-")
        || [header::CONTENT_LENGTH, header::ORIGIN, header::HOST].contains(name)
}

/// An OpenAI-style refusal with its own status.
fn refuse(
    status: StatusCode,
    kind: ErrorKind,
    message: &str,
    code: &'static str,
) -> Response<ResponseBody> {
    let mut response = crate::gateway::error(ErrorBody::new(kind, message.to_owned()).code(code));
    *response.status_mut() = status;
    response
}

/// Answers an upgrade request at `/v1/ws`: 101 and a session, or an OpenAI-style refusal.
pub(crate) fn upgrade(
    ctx: &Arc<Context>,
    mut request: Request<Incoming>,
) -> Response<ResponseBody> {
    if !ctx.config.enabled {
        return refuse(
            StatusCode::NOT_FOUND,
            ErrorKind::NotFound,
            "WebSockets are not enabled on this server.",
            "unknown_url",
        );
    }
    let headers = request.headers();
    let has = |name: HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    if request.method() != Method::GET || !has(header::UPGRADE, "websocket") {
        let mut response = refuse(
            StatusCode::UPGRADE_REQUIRED,
            ErrorKind::InvalidRequest,
            "This endpoint takes a WebSocket: GET with `Upgrade: websocket`.",
            "upgrade_required",
        );
        response
            .headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return response;
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let version_13 = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let (Some(key), true, true) = (key, version_13, has(header::CONNECTION, "upgrade")) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            ErrorKind::InvalidRequest,
            "A WebSocket upgrade needs `Connection: Upgrade`, `Sec-WebSocket-Version: 13` and a `Sec-WebSocket-Key`.",
            "invalid_upgrade",
        );
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default().to_ascii_lowercase();
        let allowed = ctx
            .config
            .origins
            .iter()
            .any(|o| o == "*" || *o == origin.trim_end_matches('/'));
        if !allowed {
            return refuse(
                StatusCode::FORBIDDEN,
                ErrorKind::Permission,
                "This origin may not open a WebSocket here.",
                "origin_not_allowed",
            );
        }
    }
    // Subprotocols: `weir`, and for browsers (which cannot set headers) `bearer.<key>`.
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .collect();
    let bearer = offered
        .iter()
        .find_map(|p| p.strip_prefix(BEARER_PROTOCOL))
        .map(str::to_owned);
    if !offered.is_empty() && !offered.iter().any(|p| p == PROTOCOL) {
        return refuse(
            StatusCode::BAD_REQUEST,
            ErrorKind::InvalidRequest,
            "Offer the subprotocol `weir` (and `bearer.<key>` to authenticate from a browser).",
            "invalid_upgrade",
        );
    }
    // Owned copies: the session keeps them for its life.
    let mut carried = crate::headers::owned_copy(headers, connection_only);
    if let (Some(key), false) = (&bearer, carried.contains_key(header::AUTHORIZATION)) {
        if let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {key}")) {
            value.set_sensitive(true);
            carried.insert(header::AUTHORIZATION, value);
        }
    }
    if !ctx.current.get().authenticates(&carried) {
        return crate::gateway::unauthorized();
    }
    let Some(token) = ctx
        .minter
        .token()
        .filter(|t| t.phase() == crate::drain::Phase::Serving)
    else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Unavailable,
            "The server is shutting down.",
            "shutting_down",
        );
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    let session_ctx = ctx.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => session(session_ctx, upgraded, carried, token).await,
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    });
    let mut response = Response::new(ResponseBody::full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(
            &tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
        )
        .expect("base64 is a valid header value"),
    );
    if !offered.is_empty() {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(PROTOCOL),
        );
    }
    response
}

#[cfg(test)]
mod tests;
