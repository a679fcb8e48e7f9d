//! Header hygiene at the proxy boundary.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

/// `x-request-id`.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `x-weir-attempts`: how many upstream attempts the answer took.
pub(crate) static X_WEIR_ATTEMPTS: HeaderName = HeaderName::from_static("x-weir-attempts");
/// `false` on an error weir answers after it retried or failed over already: the official
/// openai SDKs then do not retry on top (one retry layer, not two).
pub(crate) static X_SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");
/// `x-weir-provider`: which provider served the answer.
pub(crate) static X_WEIR_PROVIDER: HeaderName = HeaderName::from_static("x-weir-provider");

/// Hop-by-hop headers (RFC 9110 §7.6.1, plus `upgrade`), never forwarded in either direction.
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Client headers never sent upstream: the client's own credentials (weir sends the
/// provider's), what weir sets itself, and what the upstream hop must not choose.
fn is_client_only(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "content-length"
            | "authorization"
            | "cookie"
            | "x-api-key"
            | "api-key"
            | "x-goog-api-key"
            | "accept-encoding"
    )
}

/// Client headers that pick the provider account, project or billing: only the config sets
/// them (a provider's `headers`), never a client, whatever `forward_headers` says.
pub(crate) fn picks_the_account(name: &str) -> bool {
    matches!(
        name,
        "openai-organization"
            | "openai-project"
            | "x-goog-user-project"
            | "ocp-apim-subscription-key"
    )
}

/// Whether a client may never choose `name` for the upstream request: hop-by-hop, a client
/// credential, what weir sets itself, or what picks the provider account.
pub(crate) fn never_forwarded(name: &HeaderName) -> bool {
    is_hop_by_hop(name)
        || is_client_only(name)
        || picks_the_account(name.as_str())
        || name == header::CONTENT_TYPE
}

/// The client request headers that go upstream: an allowlist. Built in: what describes the
/// request (`accept`, `user-agent`, the W3C trace context, `openai-beta`, `anthropic-version`,
/// `anthropic-beta`); the config adds names (or `prefix*`) with `[server] forward_headers`.
/// Everything else stays at weir: a client cannot pick the provider's organization or project.
#[derive(Clone, Debug, Default)]
pub(crate) struct Forward {
    names: Vec<HeaderName>,
    prefixes: Vec<String>,
}

const FORWARDED: &[&str] = &[
    "accept",
    "user-agent",
    "traceparent",
    "tracestate",
    "openai-beta",
    "anthropic-version",
    "anthropic-beta",
];

impl Forward {
    /// The built-in allowlist and `extra` (names, or prefixes ending in `*`, as the config
    /// validated them).
    pub(crate) fn new(extra: &[String]) -> Self {
        let mut forward = Self::default();
        for name in FORWARDED
            .iter()
            .map(|n| n.to_string())
            .chain(extra.iter().cloned())
        {
            match name.strip_suffix('*') {
                Some(prefix) => forward.prefixes.push(prefix.to_ascii_lowercase()),
                None => match HeaderName::from_bytes(name.as_bytes()) {
                    // Refused once here, never looked at again per request.
                    Ok(name) if !never_forwarded(&name) => forward.names.push(name),
                    _ => {}
                },
            }
        }
        forward
    }

    fn allows(&self, name: &HeaderName) -> bool {
        self.names.contains(name)
            || (!self.prefixes.is_empty()
                && self
                    .prefixes
                    .iter()
                    .any(|p| name.as_str().starts_with(p.as_str()))
                && !never_forwarded(name))
    }
}

/// Whether the `Connection` header names `name` (so it is hop-by-hop too).
fn named_by_connection(connection: &[&HeaderValue], name: &HeaderName) -> bool {
    connection.iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|token| token.trim().eq_ignore_ascii_case(name.as_str()))
        })
    })
}

/// The upstream response headers a client gets: what describes the body and when to retry,
/// nothing that describes the provider's account (its organization, its own rate limits,
/// cookies, CDN headers) or the hop. A fresh map, grown only as far as needed: hyper keeps the
/// map of the last response (cleared, its capacity kept) for the life of the connection.
pub(crate) fn client_response_headers(upstream: &HeaderMap) -> HeaderMap {
    // Room for what is kept and what weir adds (its ids, the rate-limit headers) without
    // growing the map on the way out.
    let mut out = HeaderMap::with_capacity(24);
    for (name, value) in upstream {
        let keep = matches!(
            name.as_str(),
            "content-type"
                | "content-encoding"
                | "content-language"
                | "cache-control"
                | "retry-after"
                | "retry-after-ms"
                | "openai-processing-ms"
                | "openai-version"
        );
        if keep {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The client's headers that may go upstream (those `forward` allows), as owned copies: a
/// call keeps them for its retries and its rescue, and slices of hyper's read buffer would
/// pin that buffer.
pub(crate) fn forwardable_client_headers(client: &HeaderMap, forward: &Forward) -> HeaderMap {
    let connection: Vec<&HeaderValue> = client.get_all(header::CONNECTION).iter().collect();
    owned_copy(client, |name| {
        !forward.allows(name) || (!connection.is_empty() && named_by_connection(&connection, name))
    })
}

/// The headers `skip` leaves, as owned copies: a parsed request's values are slices of
/// hyper's read buffer, and holding one holds the whole buffer.
pub(crate) fn owned_copy(headers: &HeaderMap, skip: impl Fn(&HeaderName) -> bool) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        if skip(name) {
            continue;
        }
        let mut copy = HeaderValue::from_bytes(value.as_bytes()).expect("it was valid");
        copy.set_sensitive(value.is_sensitive());
        out.append(name.clone(), copy);
    }
    out
}

/// The request headers as they go upstream: the client's forwardable headers (already
/// filtered by [`forwardable_client_headers`]), the provider's set over them.
pub(crate) fn upstream_request_headers(client: &HeaderMap, provider: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(client.keys_len() + provider.len() + 2);
    for (name, value) in client {
        if !provider.contains_key(name) {
            out.append(name.clone(), value.clone());
        }
    }
    // The SSE watch reads the body: ask for it uncompressed.
    out.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    // weir read the body as JSON and sends JSON, whatever the client labelled it (curl's
    // `-d` says `application/x-www-form-urlencoded`).
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for (name, value) in provider {
        out.append(name.clone(), value.clone());
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
                // A copy: the original is a slice of hyper's read buffer, and holding it for
                // the whole request would pin that buffer.
                return HeaderValue::from_bytes(bytes).expect("it was valid");
            }
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // `weir-` and 24 hex digits: the process's random prefix, then a counter.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut id = *b"weir-000000000000000000000000";
        let digits = (u128::from(self.prefix) << 32) | u128::from(n as u32);
        for (i, slot) in id[5..].iter_mut().rev().enumerate() {
            *slot = HEX[((digits >> (4 * i)) & 0xf) as usize];
        }
        HeaderValue::from_bytes(&id).expect("hex is a valid header value")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_only_the_upstream_headers_about_the_body() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("openai-organization", HeaderValue::from_static("org-acme"));
        h.insert(
            "x-ratelimit-remaining-tokens",
            HeaderValue::from_static("12"),
        );
        h.insert("set-cookie", HeaderValue::from_static("__cf_bm=1"));
        h.insert(
            "date",
            HeaderValue::from_static("Sun, 22 Nov 2026 00:00:00 GMT"),
        );
        h.insert(
            "content-type",
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert("retry-after", HeaderValue::from_static("3"));
        let kept = client_response_headers(&h);
        let names: Vec<&str> = kept.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-type", "retry-after"]);
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
        client.append("x-custom", HeaderValue::from_static("kept-too"));
        client.insert("connection", HeaderValue::from_static("x-hop"));
        client.insert("x-hop", HeaderValue::from_static("1"));
        client.insert(
            "openai-organization",
            HeaderValue::from_static("org-client"),
        );
        client.insert("openai-project", HeaderValue::from_static("proj-client"));
        client.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        client.insert("user-agent", HeaderValue::from_static("OpenAI/Python 1.0"));
        client.insert("x-unlisted", HeaderValue::from_static("stays"));
        let mut provider = HeaderMap::new();
        provider.insert(
            "authorization",
            HeaderValue::from_static("Bearer provider-key"),
        );
        // The config asks for `x-custom` and `x-hop` (the latter is named by `connection`), and
        // tries the account headers, which are never forwarded.
        let forward = Forward::new(&[
            "x-custom".into(),
            "x-ho*".into(),
            "openai-organization".into(),
            "openai-*".into(),
        ]);
        let out =
            upstream_request_headers(&forwardable_client_headers(&client, &forward), &provider);
        assert_eq!(out["authorization"], "Bearer provider-key");
        assert_eq!(out["accept-encoding"], "identity");
        assert_eq!(out["content-type"], "application/json");
        assert_eq!(out["user-agent"], "OpenAI/Python 1.0");
        assert_eq!(
            out.get_all("x-custom").iter().count(),
            2,
            "repeated headers kept"
        );
        assert_eq!(out.get_all("authorization").iter().count(), 1);
        for gone in [
            "x-api-key",
            "host",
            "connection",
            "x-hop",
            "openai-organization",
            "openai-project",
            "x-unlisted",
        ] {
            assert!(!out.contains_key(gone), "{gone}");
        }
    }

    #[test]
    fn request_ids() {
        let ids = RequestIds::default();
        let mut h = HeaderMap::new();
        let a = ids.take_or_make(&h);
        let b = ids.take_or_make(&h);
        assert_ne!(a, b);
        assert!(a.to_str().unwrap().starts_with("weir-"));
        assert_eq!(a.len(), 29);
        let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
        assert_eq!(a[..21], b[..21], "one process prefix");
        let next = u32::from_str_radix(&b[21..], 16).unwrap();
        assert_eq!(next, u32::from_str_radix(&a[21..], 16).unwrap() + 1);
        h.insert("x-request-id", HeaderValue::from_static("client-chosen-1"));
        assert_eq!(ids.take_or_make(&h), "client-chosen-1");
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        assert_ne!(ids.take_or_make(&h), "has space");
    }
}
