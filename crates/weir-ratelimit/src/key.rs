//! Which bucket a request counts against.

use bytes::Bytes;
use http::{HeaderName, Request};
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};

/// Finds the key a request is limited under; `None` lets it pass unlimited.
pub trait KeyExtractor<B>: Clone + Send + Sync + 'static {
    /// The key.
    type Key: crate::Key;

    /// The key of `request`.
    fn key(&self, request: &Request<B>) -> Option<Self::Key>;
}

/// One bucket for every request.
#[derive(Clone, Copy, Debug, Default)]
pub struct Global;

impl<B> KeyExtractor<B> for Global {
    type Key = ();

    fn key(&self, _: &Request<B>) -> Option<()> {
        Some(())
    }
}

/// A bucket per value of a header (copied: the key outlives the request). Requests without
/// the header pass unlimited.
#[derive(Clone, Debug)]
pub struct Header(pub HeaderName);

impl<B> KeyExtractor<B> for Header {
    type Key = Bytes;

    fn key(&self, request: &Request<B>) -> Option<Bytes> {
        let value = request.headers().get(&self.0)?;
        Some(Bytes::copy_from_slice(value.as_bytes()))
    }
}

/// A bucket per value of a request extension that an earlier layer set: the client's
/// identity after authentication, typically.
#[derive(Debug)]
pub struct Extension<T>(std::marker::PhantomData<fn() -> T>);

impl<T> Extension<T> {
    /// Keys on the extension of type `T`.
    pub fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<T> Default for Extension<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for Extension<T> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<B, T> KeyExtractor<B> for Extension<T>
where
    T: Clone + Hash + Eq + Send + Sync + 'static,
{
    type Key = T;

    fn key(&self, request: &Request<B>) -> Option<T> {
        request.extensions().get::<T>().cloned()
    }
}

/// A bucket per client IP: the peer address (a `SocketAddr` request extension, as a server
/// sets it), or, when the peer is one of `trusted` proxies, the nearest untrusted address in
/// `X-Forwarded-For`.
#[derive(Clone, Debug, Default)]
pub struct PeerIp {
    trusted: Vec<IpAddr>,
}

impl PeerIp {
    /// Trusts `X-Forwarded-For` only from these peers.
    pub fn trusting(trusted: impl IntoIterator<Item = IpAddr>) -> Self {
        Self {
            trusted: trusted.into_iter().collect(),
        }
    }
}

impl<B> KeyExtractor<B> for PeerIp {
    type Key = IpAddr;

    fn key(&self, request: &Request<B>) -> Option<IpAddr> {
        let peer = request.extensions().get::<SocketAddr>()?.ip();
        if !self.trusted.contains(&peer) {
            return Some(peer);
        }
        // Right to left: each hop appended the address it saw; the first one not ours is the
        // client as far as we can trust the chain.
        let forwarded = request
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in forwarded.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(ip) if self.trusted.contains(&ip) => continue,
                Ok(ip) => return Some(ip),
                Err(_) => return Some(peer),
            }
        }
        Some(peer)
    }
}

/// A bucket per requested model, read from the `weir_llm::LlmRequest` extension that a
/// request-reading layer set. Requests without it pass unlimited.
#[derive(Clone, Copy, Debug, Default)]
pub struct Model;

impl<B> KeyExtractor<B> for Model {
    type Key = String;

    fn key(&self, request: &Request<B>) -> Option<String> {
        let llm = request.extensions().get::<weir_llm::LlmRequest>()?;
        Some(llm.model().to_owned())
    }
}

/// Any function of the request.
#[derive(Clone)]
pub struct KeyFn<F>(pub F);

impl<F> std::fmt::Debug for KeyFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyFn")
    }
}

impl<B, F, K> KeyExtractor<B> for KeyFn<F>
where
    F: Fn(&Request<B>) -> Option<K> + Clone + Send + Sync + 'static,
    K: Clone + Hash + Eq + Send + Sync + 'static,
{
    type Key = K;

    fn key(&self, request: &Request<B>) -> Option<K> {
        (self.0)(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(peer: &str, forwarded: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        request
            .extensions_mut()
            .insert(peer.parse::<SocketAddr>().unwrap());
        if let Some(f) = forwarded {
            request
                .headers_mut()
                .insert("x-forwarded-for", f.parse().unwrap());
        }
        request
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let key = PeerIp::trusting([ip("10.0.0.1"), ip("10.0.0.2")]);
        // A direct client cannot choose its key by sending the header.
        let direct = request("203.0.113.9:5000", Some("198.51.100.7"));
        assert_eq!(key.key(&direct), Some(ip("203.0.113.9")));
        // Behind two trusted hops, the client is the first untrusted address from the right.
        let proxied = request("10.0.0.1:443", Some("1.2.3.4, 198.51.100.7, 10.0.0.2"));
        assert_eq!(key.key(&proxied), Some(ip("198.51.100.7")));
        let garbage = request("10.0.0.1:443", Some("not-an-ip"));
        assert_eq!(key.key(&garbage), Some(ip("10.0.0.1")));
    }
}
