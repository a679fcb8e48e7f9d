use crate::body::ResponseBody;
use crate::cost::{Cost, LlmCost};
use crate::headers;
use crate::key::KeyExtractor;
use crate::limiter::{Charge, Limiter, Refusal, Standings};
use crate::BoxError;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use weir_llm::{ErrorBody, ErrorKind};

/// What the service does with a call over its limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Answer at once with a 429 OpenAI-style error and `Retry-After`.
    #[default]
    Reject,
    /// Wait until the call fits, first come first served per key, up to `max_wait`; a call
    /// that would wait longer is answered with the 429 at once.
    Wait {
        /// The longest a call waits.
        max_wait: Duration,
    },
}

/// The header that marks a 429 this layer answered (its value: `requests`, `tokens` or
/// `too_large`), so that a router can tell it from an upstream's.
pub const LIMITED_HEADER: &str = "x-weir-ratelimit";

/// The 429 for `refusal`, with the rate-limit headers; `body` makes the body type.
pub fn refusal_response<B>(
    refusal: Refusal,
    standings: &Standings,
    body: impl FnOnce(Bytes) -> B,
) -> Response<B> {
    let error = match refusal {
        Refusal::Requests { .. } => ErrorBody::new(
            ErrorKind::RateLimited,
            "Rate limit reached for requests per minute; retry after the time in Retry-After.",
        )
        .code("rate_limit_exceeded"),
        Refusal::Tokens { .. } => ErrorBody::new(
            ErrorKind::RateLimited,
            "Rate limit reached for tokens per minute; retry after the time in Retry-After.",
        )
        .code("rate_limit_exceeded"),
        Refusal::TooLarge { tokens, burst } => ErrorBody::new(
            ErrorKind::RateLimited,
            format!(
                "Request too large: it may use up to {tokens} tokens, and the limit is {burst} tokens per minute. Send a shorter prompt or a lower max_tokens."
            ),
        )
        .code("request_too_large"),
    };
    let mut response = Response::new(body(error.to_json()));
    *response.status_mut() = error.status();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(wait) = refusal.retry_after() {
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from(headers::seconds(wait).max(1)),
        );
    }
    h.insert(LIMITED_HEADER, HeaderValue::from_static(refusal.as_str()));
    headers::write(h, standings);
    response
}

/// Rate limits around `S`. See the [crate docs](crate).
pub struct RateLimit<S, X: KeyExtractor<B>, B, C = LlmCost> {
    inner: S,
    limiter: Limiter<X::Key>,
    extract: X,
    cost: C,
    mode: Mode,
    headers: bool,
}

impl<S: Clone, X: KeyExtractor<B>, B, C: Clone> Clone for RateLimit<S, X, B, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            extract: self.extract.clone(),
            cost: self.cost.clone(),
            mode: self.mode,
            headers: self.headers,
        }
    }
}

impl<S: std::fmt::Debug, X: KeyExtractor<B>, B, C> std::fmt::Debug for RateLimit<S, X, B, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl<S, X: KeyExtractor<B>, B, C> RateLimit<S, X, B, C> {
    /// Wraps `inner`.
    pub fn new(inner: S, limiter: Limiter<X::Key>, extract: X, cost: C, mode: Mode) -> Self {
        Self {
            inner,
            limiter,
            extract,
            cost,
            mode,
            headers: true,
        }
    }

    /// Whether admitted answers carry the rate-limit headers (default yes). A limit the
    /// client does not own (a provider's, inside a gateway) is better left out of them.
    pub fn with_headers(mut self, yes: bool) -> Self {
        self.headers = yes;
        self
    }

    /// The limiter.
    pub fn limiter(&self) -> &Limiter<X::Key> {
        &self.limiter
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Waits, first come first served for `key`, until a call fits or `max_wait` would pass.
pub(crate) async fn admit_waiting<K: crate::Key>(
    limiter: &Limiter<K>,
    key: K,
    tokens: u32,
    max_wait: Duration,
) -> Result<(Charge<K>, Standings), (Refusal, Standings)> {
    let refused = match limiter.check(key.clone(), tokens) {
        Ok(admitted) => return Ok(admitted),
        Err(refused) => refused,
    };
    let deadline = Instant::now() + max_wait;
    let fits = |refusal: &Refusal| {
        refusal
            .retry_after()
            .is_some_and(|wait| Instant::now() + wait <= deadline)
    };
    if !fits(&refused.0) {
        return Err(refused);
    }
    limiter.count_wait();
    let line = limiter.line(&key);
    let Ok(_turn) = tokio::time::timeout_at(deadline, line.lock()).await else {
        return Err(refused);
    };
    loop {
        match limiter.check(key.clone(), tokens) {
            Ok(admitted) => return Ok(admitted),
            Err(refused) if fits(&refused.0) => {
                let wait = refused.0.retry_after().unwrap_or_default();
                tokio::time::sleep(wait).await;
            }
            Err(refused) => return Err(refused),
        }
    }
}

impl<S, X, B, C, RB> tower_service::Service<Request<B>> for RateLimit<S, X, B, C>
where
    S: tower_service::Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    X: KeyExtractor<B>,
    C: Cost<B>,
    B: Send + 'static,
    RB: http_body::Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<RB, X::Key>>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The service made ready is the one that takes the call, maybe after a wait.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(key) = self.extract.key(&request) else {
            let future = inner.call(request);
            return Box::pin(async move {
                let response = future.await.map_err(Into::into)?;
                Ok(response.map(|body| ResponseBody::new(body, None)))
            });
        };
        let tokens = self.cost.estimate(&request);
        let limiter = self.limiter.clone();
        let mode = self.mode;
        let write_headers = self.headers;
        Box::pin(async move {
            let admitted = match mode {
                Mode::Reject => limiter.check(key, tokens),
                Mode::Wait { max_wait } => admit_waiting(&limiter, key, tokens, max_wait).await,
            };
            let (charge, standings) = match admitted {
                Ok(admitted) => admitted,
                Err((refusal, standings)) => {
                    return Ok(refusal_response(refusal, &standings, ResponseBody::local));
                }
            };
            let mut response = inner.call(request).await.map_err(Into::into)?;
            if write_headers {
                headers::write(response.headers_mut(), &standings);
            }
            Ok(response.map(|body| ResponseBody::new(body, Some(charge))))
        })
    }
}

/// Applies [`RateLimit`].
pub struct RateLimitLayer<X: KeyExtractor<B>, B, C = LlmCost> {
    limiter: Limiter<X::Key>,
    extract: X,
    cost: C,
    mode: Mode,
}

impl<X: KeyExtractor<B>, B, C: Clone> Clone for RateLimitLayer<X, B, C> {
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
            extract: self.extract.clone(),
            cost: self.cost.clone(),
            mode: self.mode,
        }
    }
}

impl<X: KeyExtractor<B>, B, C> std::fmt::Debug for RateLimitLayer<X, B, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("limiter", &self.limiter)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl<X: KeyExtractor<B>, B> RateLimitLayer<X, B, LlmCost> {
    /// Limits by `extract`'s key, costing requests with [`LlmCost`], in [`Mode::Reject`].
    pub fn new(limiter: Limiter<X::Key>, extract: X) -> Self {
        Self {
            limiter,
            extract,
            cost: LlmCost::default(),
            mode: Mode::Reject,
        }
    }
}

impl<X: KeyExtractor<B>, B, C> RateLimitLayer<X, B, C> {
    /// How requests are costed in tokens.
    pub fn cost<C2>(self, cost: C2) -> RateLimitLayer<X, B, C2> {
        RateLimitLayer {
            limiter: self.limiter,
            extract: self.extract,
            cost,
            mode: self.mode,
        }
    }

    /// Reject or wait.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }
}

impl<S, X: KeyExtractor<B>, B, C: Clone> tower_layer::Layer<S> for RateLimitLayer<X, B, C> {
    type Service = RateLimit<S, X, B, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(
            inner,
            self.limiter.clone(),
            self.extract.clone(),
            self.cost.clone(),
            self.mode,
        )
    }
}
