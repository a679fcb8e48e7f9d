//! Which limiter a request counts against.

use crate::key::KeyExtractor;
use crate::limiter::{Key, Limiter};
use http::Request;

/// Picks the limiter, and the key in it, that a request counts against: one limiter keyed by
/// an extractor ([`Keyed`], what [`RateLimitLayer::new`](crate::RateLimitLayer::new) builds),
/// or a limiter of its own per client, per route... (a gateway's scopes, each with its own
/// quotas). `None` lets the request pass unlimited.
pub trait Scope<B>: Clone + Send + Sync + 'static {
    /// The key type of the limiters.
    type Key: Key;

    /// The limiter and the key that `request` counts against (borrowed from the scope, or
    /// from the request: a client identity in its extensions may carry its own limiter).
    fn select<'a>(&'a self, request: &'a Request<B>)
        -> Option<(&'a Limiter<Self::Key>, Self::Key)>;
}

/// One limiter, keyed by an extractor.
#[derive(Debug)]
pub struct Keyed<K: Key, X> {
    limiter: Limiter<K>,
    extract: X,
}

impl<K: Key, X: Clone> Clone for Keyed<K, X> {
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
            extract: self.extract.clone(),
        }
    }
}

impl<K: Key, X> Keyed<K, X> {
    /// `limiter`, keyed by `extract`.
    pub fn new(limiter: Limiter<K>, extract: X) -> Self {
        Self { limiter, extract }
    }

    /// The limiter.
    pub fn limiter(&self) -> &Limiter<K> {
        &self.limiter
    }
}

impl<B, K, X> Scope<B> for Keyed<K, X>
where
    K: Key,
    X: KeyExtractor<B, Key = K>,
{
    type Key = K;

    fn select<'a>(&'a self, request: &'a Request<B>) -> Option<(&'a Limiter<K>, K)> {
        Some((&self.limiter, self.extract.key(request)?))
    }
}
