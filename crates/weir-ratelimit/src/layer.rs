use crate::cost::LlmCost;
use crate::limiter::{Key, Limiter};
use crate::scope::Keyed;
use crate::service::{Mode, RateLimit};

/// Applies [`RateLimit`]. Clones share the limiters (and so the quotas).
#[derive(Clone, Debug)]
pub struct RateLimitLayer<P, C = LlmCost> {
    scope: P,
    cost: C,
    mode: Mode,
    headers: bool,
}

impl<K: Key, X> RateLimitLayer<Keyed<K, X>, LlmCost> {
    /// Limits by `extract`'s key in `limiter`, costing requests with [`LlmCost`], in
    /// [`Mode::Reject`].
    pub fn new(limiter: Limiter<K>, extract: X) -> Self
    where
        X: Clone,
    {
        Self::scoped(Keyed::new(limiter, extract))
    }
}

impl<P> RateLimitLayer<P, LlmCost> {
    /// Limits each request in the limiter its [`Scope`](crate::Scope) picks.
    pub fn scoped(scope: P) -> Self {
        Self {
            scope,
            cost: LlmCost::default(),
            mode: Mode::Reject,
            headers: true,
        }
    }
}

impl<P, C> RateLimitLayer<P, C> {
    /// How requests are costed in tokens.
    pub fn cost<C2>(self, cost: C2) -> RateLimitLayer<P, C2> {
        RateLimitLayer {
            scope: self.scope,
            cost,
            mode: self.mode,
            headers: self.headers,
        }
    }

    /// Reject or wait.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Whether admitted answers carry the rate-limit headers (default yes).
    pub fn with_headers(mut self, yes: bool) -> Self {
        self.headers = yes;
        self
    }
}

impl<S, P: Clone, C: Clone> tower_layer::Layer<S> for RateLimitLayer<P, C> {
    type Service = RateLimit<S, P, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self.scope.clone(), self.cost.clone(), self.mode)
            .with_headers(self.headers)
    }
}
