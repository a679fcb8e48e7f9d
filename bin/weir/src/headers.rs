//! Header hygiene at the proxy boundary.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

/// `x-request-id`.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `x-weir-provider`: which provider served the answer.
pub(crate) static X_WEIR_PROVIDER: HeaderName = HeaderName::from_static("x-weir-provider");

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded in either direction.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Client headers never sent upstream: the client's own credentials (weir sends the
/// provider's), what weir sets itself, and what the upstream hop must not choose.
const CLIENT_ONLY: [&str; 9] = [
    "host",
    "content-length",
    "upgrade",
    "authorization",
    "cookie",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "accept-encoding",
];

/// Removes the hop-by-hop headers, and any header the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// The client's request headers as they go upstream: hop-by-hop and client-only headers
/// removed, the provider's headers set over them.
pub(crate) fn upstream_request_headers(client: &HeaderMap, provider: &HeaderMap) -> HeaderMap {
    let mut out = client.clone();
    strip_hop_by_hop(&mut out);
    for name in CLIENT_ONLY {
        out.remove(name);
    }
    // The SSE watch reads the body: ask for it uncompressed.
    out.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    for (name, value) in provider {
        out.insert(name.clone(), value.clone());
    }
    out
}

/// Takes a client's request id when it is reasonable, or makes one.
#[derive(Debug)]
pub(crate) struct RequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        Self {
            prefix: RandomState::new().hash_one(std::process::id()),
            next: AtomicU64::new(0),
        }
    }
}

impl RequestIds {
    /// The client's `x-request-id` if it is 1 to 128 visible ASCII characters, else a new id.
    pub(crate) fn take_or_make(&self, headers: &HeaderMap) -> HeaderValue {
        if let Some(id) = headers.get(&X_REQUEST_ID) {
            let bytes = id.as_bytes();
            if !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic())
            {
                return id.clone();
            }
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("weir-{:016x}{:08x}", self.prefix, n);
        HeaderValue::from_str(&id).expect("hex is a valid header value")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("close, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }

    #[test]
    fn client_credentials_never_go_upstream() {
        let mut client = HeaderMap::new();
        client.insert(
            "authorization",
            HeaderValue::from_static("Bearer client-key"),
        );
        client.insert("x-api-key", HeaderValue::from_static("client-key"));
        client.insert("host", HeaderValue::from_static("weir.example"));
        client.insert("accept-encoding", HeaderValue::from_static("gzip"));
        client.insert("x-custom", HeaderValue::from_static("kept"));
        let mut provider = HeaderMap::new();
        provider.insert(
            "authorization",
            HeaderValue::from_static("Bearer provider-key"),
        );
        let out = upstream_request_headers(&client, &provider);
        assert_eq!(out["authorization"], "Bearer provider-key");
        assert_eq!(out["accept-encoding"], "identity");
        assert_eq!(out["x-custom"], "kept");
        assert!(!out.contains_key("x-api-key") && !out.contains_key("host"));
    }

    #[test]
    fn request_ids() {
        let ids = RequestIds::default();
        let mut h = HeaderMap::new();
        let a = ids.take_or_make(&h);
        let b = ids.take_or_make(&h);
        assert_ne!(a, b);
        assert!(a.to_str().unwrap().starts_with("weir-"));
        h.insert("x-request-id", HeaderValue::from_static("client-chosen-1"));
        assert_eq!(ids.take_or_make(&h), "client-chosen-1");
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        assert_ne!(ids.take_or_make(&h), "has space");
    }
}
