use crate::body::{Guard, ResponseBody};
use crate::breaker::Breaker;
use crate::classify::{Classify, LlmClassifier};
use crate::future::ResponseFuture;
use crate::policy::Admit;
use crate::BoxError;
use bytes::Bytes;
use http::{Request, Response};
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// What the service does while its breaker is open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// `poll_ready` is not ready until the breaker admits calls again: a router skips the
    /// target, a caller waits.
    #[default]
    Wait,
    /// Always ready; a call that the breaker refuses is answered at once with a 503
    /// OpenAI-style error and `Retry-After` (for stacks that ignore readiness, such as axum).
    Shed,
}

type Wake = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// A circuit breaker around `S`. See the [crate docs](crate).
pub struct CircuitBreaker<S, C = LlmClassifier> {
    inner: S,
    breaker: Breaker,
    classifier: C,
    mode: Mode,
    /// A call admitted by `poll_ready`, not yet made (dropped unused, it frees its probe slot).
    admitted: Option<Guard>,
    /// While refused: resolves when the breaker may admit again.
    wake: Option<Wake>,
}

impl<S: std::fmt::Debug, C> std::fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("breaker", &self.breaker)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl<S, C> CircuitBreaker<S, C> {
    /// Wraps `inner`.
    pub fn new(inner: S, breaker: Breaker, classifier: C, mode: Mode) -> Self {
        Self {
            inner,
            breaker,
            classifier,
            mode,
            admitted: None,
            wake: None,
        }
    }

    /// The breaker.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C: Clone> Clone for CircuitBreaker<S, C> {
    /// A clone shares the breaker but not a call admitted by this service's `poll_ready`.
    fn clone(&self) -> Self {
        Self::new(
            self.inner.clone(),
            self.breaker.clone(),
            self.classifier.clone(),
            self.mode,
        )
    }
}

/// Resolves after `retry_after`, or at the next state change when that is unknown.
fn wake_when(breaker: &Breaker, retry_after: Option<Duration>) -> Wake {
    let mut changes = breaker.changes();
    changes.mark_unchanged();
    let deadline = retry_after.map(|wait| Instant::now() + wait);
    Box::pin(async move {
        match deadline {
            Some(deadline) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = changes.changed() => {}
                }
            }
            None => {
                let _ = changes.changed().await;
            }
        }
    })
}

impl<S, C, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for CircuitBreaker<S, C>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    C: Classify,
    ResBody: http_body::Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody, C::Eos>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        loop {
            if self.admitted.is_some() || self.mode == Mode::Shed {
                return self.inner.poll_ready(cx).map_err(Into::into);
            }
            if let Some(wake) = &mut self.wake {
                ready!(wake.as_mut().poll(cx));
                self.wake = None;
            }
            match self.breaker.admit() {
                Admit::No { retry_after } => {
                    self.wake = Some(wake_when(&self.breaker, retry_after));
                }
                admit => {
                    let probe = admit == Admit::Probe;
                    self.admitted = Some(Guard::new(self.breaker.clone(), probe));
                }
            }
        }
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let guard = match (self.admitted.take(), self.mode) {
            (Some(guard), _) => guard,
            (None, Mode::Shed) => match self.breaker.admit() {
                Admit::No { retry_after } => return ResponseFuture::shed(retry_after),
                admit => Guard::new(self.breaker.clone(), admit == Admit::Probe),
            },
            (None, Mode::Wait) => panic!("CircuitBreaker::call before poll_ready was Ready"),
        };
        ResponseFuture::new(self.inner.call(request), guard, self.classifier.clone())
    }
}
