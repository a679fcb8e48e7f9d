use crate::body::ResponseBody;
use crate::cost::{Cost, LlmCost};
use crate::future::ResponseFuture;
use crate::limiter::{Charge, Limiter, Refusal, Standings};
use crate::refusal::refusal_response;
use crate::scope::Scope;
use crate::BoxError;
use bytes::Bytes;
use http::{Request, Response};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

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

/// Rate limits around `S`. See the [crate docs](crate).
#[derive(Clone, Debug)]
pub struct RateLimit<S, P, C = LlmCost> {
    inner: S,
    scope: P,
    cost: C,
    mode: Mode,
    headers: bool,
}

impl<S, P, C> RateLimit<S, P, C> {
    /// Wraps `inner`: each request counts against the limiter `scope` picks for it.
    pub fn new(inner: S, scope: P, cost: C, mode: Mode) -> Self {
        Self {
            inner,
            scope,
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

    /// The scope (its limiters).
    pub fn scope(&self) -> &P {
        &self.scope
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Waits, first come first served for `key`, until a call fits or `max_wait` would pass.
/// `refused` is the first decision's refusal.
pub(crate) async fn admit_waiting<K: crate::Key>(
    limiter: &Limiter<K>,
    key: K,
    tokens: u32,
    max_wait: Duration,
    refused: (Refusal, Standings),
) -> Result<(Charge<K>, Standings), (Refusal, Standings)> {
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
        match limiter.check_shared(key.clone(), tokens).await {
            Ok(admitted) => return Ok(admitted),
            Err(refused) if fits(&refused.0) => {
                let wait = refused.0.retry_after().unwrap_or_default();
                tokio::time::sleep(wait).await;
            }
            Err(refused) => return Err(refused),
        }
    }
}

impl<S, P, C, B, RB> tower_service::Service<Request<B>> for RateLimit<S, P, C>
where
    S: tower_service::Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    P: Scope<B>,
    C: Cost<B>,
    B: Send + 'static,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<ResponseBody<RB, P::Key>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, RB, P::Key>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The service made ready is the one that takes the call.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let wait = match self.mode {
            Mode::Wait { max_wait } => Some(max_wait),
            Mode::Reject => None,
        };
        // A watch further in that meters the answer's usage (its meter in the request's
        // extensions) spares this layer a scan of its own.
        let meter = || {
            request
                .extensions()
                .get::<weir_llm::stream::Meter>()
                .cloned()
        };
        // Decided before the request moves on (the limiter may be borrowed from it).
        let mut remote = None;
        let decision = self.scope.select(&request).and_then(|(limiter, key)| {
            let tokens = self.cost.estimate(&request);
            if limiter.is_shared() {
                // Decided by Redis, in the future (the rare path's box).
                remote = Some((limiter.clone(), key, tokens));
                return None;
            }
            Some(match limiter.check(key.clone(), tokens) {
                Ok(admitted) => Ok((admitted, meter())),
                Err((refusal, standings)) => {
                    // Only a wait that fits takes the limiter along.
                    let waiting = wait
                        .filter(|max| refusal.retry_after().is_some_and(|w| w <= *max))
                        .map(|max| (limiter.clone(), key, tokens, max, (refusal, standings)));
                    Err((refusal, standings, waiting))
                }
            })
        });
        if let Some((limiter, key, tokens)) = remote {
            drop(ready);
            let inner = self.inner.clone();
            let headers = self.headers;
            let meter = meter();
            return ResponseFuture::waiting(Box::pin(async move {
                let decided = match limiter.check_shared(key.clone(), tokens).await {
                    Err(refused) => match wait
                        .filter(|max| refused.0.retry_after().is_some_and(|w| w <= *max))
                    {
                        Some(max) => admit_waiting(&limiter, key, tokens, max, refused).await,
                        None => Err(refused),
                    },
                    admitted => admitted,
                };
                call_admitted(inner, request, decided, headers, meter).await
            }));
        }
        match decision {
            None => ResponseFuture::calling(ready.call(request), None, None, None),
            Some(Ok(((charge, standings), meter))) => {
                let standings = self.headers.then_some(standings);
                ResponseFuture::calling(ready.call(request), Some(charge), standings, meter)
            }
            Some(Err((refusal, standings, None))) => {
                ResponseFuture::refused(refusal_response(refusal, &standings, ResponseBody::local))
            }
            Some(Err((_, _, Some((limiter, key, tokens, max_wait, refused))))) => {
                // Waiting for a turn holds nothing of the inner service's: the reservation
                // made in `poll_ready` (a concurrency slot, say) is given back, and taken
                // again once the call fits.
                drop(ready);
                let inner = self.inner.clone();
                let headers = self.headers;
                let meter = meter();
                ResponseFuture::waiting(Box::pin(async move {
                    let decided = admit_waiting(&limiter, key, tokens, max_wait, refused).await;
                    call_admitted(inner, request, decided, headers, meter).await
                }))
            }
        }
    }
}

/// The rare path's end: the call, once admitted (the inner service made ready again), or
/// the refusal's answer.
async fn call_admitted<S, B, RB, K>(
    mut inner: S,
    request: Request<B>,
    decided: Result<(Charge<K>, Standings), (Refusal, Standings)>,
    headers: bool,
    meter: Option<weir_llm::stream::Meter>,
) -> Result<Response<ResponseBody<RB, K>>, BoxError>
where
    S: tower_service::Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    K: crate::Key,
{
    let (charge, standings) = match decided {
        Ok(admitted) => admitted,
        Err((refusal, standings)) => {
            return Ok(refusal_response(refusal, &standings, ResponseBody::local));
        }
    };
    std::future::poll_fn(|cx| inner.poll_ready(cx))
        .await
        .map_err(Into::into)?;
    let response = inner.call(request).await.map_err(Into::into)?;
    Ok(crate::future::admitted(
        response,
        Some(charge),
        headers.then_some(standings),
        meter,
    ))
}
