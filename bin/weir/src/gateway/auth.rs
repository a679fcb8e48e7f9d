//! Client keys: a request's `Authorization: Bearer <key>` (or `x-api-key: <key>`, as
//! Anthropic's clients send it) against the stored SHA-256 hashes,
//! compared in constant time with every one. A missing, unknown or almost-right key gets one
//! and the same 401; a known one becomes the request's [`Identity`]. With no keys configured
//! (`auth = "off"`) every request passes, with no identity.

use super::errors::{unauthorized, Local};
use futures_util::future::Either;
use http::{header, HeaderMap, Request, Response};
use std::collections::HashSet;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::util::Oneshot;

/// A client key as the gateway checks it.
#[derive(Debug)]
pub(crate) struct ClientKey {
    pub(crate) name: Arc<str>,
    pub(crate) hash: [u8; 32],
    /// The routes it may use (`None`: all).
    pub(crate) models: Option<HashSet<String>>,
    /// Its own rate limits.
    pub(crate) limiter: Option<weir_ratelimit::Limiter<()>>,
    pub(crate) limits: Option<crate::config::RateLimit>,
}

impl ClientKey {
    /// Whether the key may use the route for `model`.
    pub(crate) fn allows(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|m| m.contains(model))
    }
}

/// The client a request comes from (in its extensions, after [`Auth`]).
#[derive(Clone, Debug)]
pub(crate) struct Identity(pub(crate) Arc<ClientKey>);

/// Equality that takes the same time wherever the inputs differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The key a request carries, `Err` for a missing, unknown or malformed one.
fn authenticate(keys: &[Arc<ClientKey>], headers: &HeaderMap) -> Result<Arc<ClientKey>, ()> {
    // `Authorization: Bearer` (OpenAI's clients), or `x-api-key` (Anthropic's).
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .or_else(|| headers.get("x-api-key").map(|v| v.as_bytes()))
        .map(crate::config::key_hash);
    let mut found = None;
    if let Some(hash) = presented {
        // Every key compared, in constant time each: nothing to learn from timing.
        for key in keys {
            if same(&key.hash, &hash) {
                found = Some(key.clone());
            }
        }
    }
    found.ok_or(())
}

/// Applies [`Auth`].
#[derive(Clone, Debug)]
pub(crate) struct AuthLayer {
    keys: Arc<[Arc<ClientKey>]>,
}

impl AuthLayer {
    pub(crate) fn new(keys: Arc<[Arc<ClientKey>]>) -> Self {
        Self { keys }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            keys: self.keys.clone(),
        }
    }
}

/// See the [module docs](self). The inner service is made ready only once the key is known
/// good (in the call's future), so that a request with a wrong key waits for no limit.
#[derive(Clone, Debug)]
pub(crate) struct Auth<S> {
    inner: S,
    keys: Arc<[Arc<ClientKey>]>,
}

impl<S, B, T> tower::Service<Request<B>> for Auth<S>
where
    S: tower::Service<Request<B>, Response = Response<T>> + Clone,
    T: Local,
{
    type Response = Response<T>;
    type Error = S::Error;
    type Future = Either<Oneshot<S, Request<B>>, std::future::Ready<Result<Response<T>, S::Error>>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        if !self.keys.is_empty() {
            match authenticate(&self.keys, request.headers()) {
                Ok(key) => {
                    request.extensions_mut().insert(Identity(key));
                }
                Err(()) => return Either::Right(std::future::ready(Ok(unauthorized()))),
            }
        }
        Either::Left(Oneshot::new(self.inner.clone(), request))
    }
}

/// Whether `headers` carry a valid client key (no keys configured: any do).
pub(crate) fn authenticates(keys: &[Arc<ClientKey>], headers: &HeaderMap) -> bool {
    keys.is_empty() || authenticate(keys, headers).is_ok()
}
