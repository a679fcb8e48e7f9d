use crate::future::ResponseFuture;
use crate::limit::{Limit, Permit, Shed};
use crate::BoxError;
use http::{Request, Response};
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

/// What the service does when every permit is taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// The permit is taken in `poll_ready`: a caller waits in the limit's FIFO queue (a router
    /// sees the target as not ready). When the queue is full or the wait passes `max_wait`,
    /// the service turns ready and the call is answered with a 503.
    #[default]
    Wait,
    /// Always ready; a call that finds no free permit is answered at once with a 503
    /// OpenAI-style error and `Retry-After` (no queue).
    Shed,
}

type Waiting = Pin<Box<dyn Future<Output = Result<Permit, Shed>> + Send + Sync>>;

enum State {
    Empty,
    Waiting(Waiting),
    Admitted(Permit),
    Refused(Shed),
}

/// A concurrency limit around `S` whose permit is held by the response body to its end. See
/// the [crate docs](crate).
pub struct Backpressure<S> {
    inner: S,
    limit: Limit,
    mode: Mode,
    state: State,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Backpressure<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backpressure")
            .field("inner", &self.inner)
            .field("limit", &self.limit)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl<S> Backpressure<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, limit: Limit, mode: Mode) -> Self {
        Self {
            inner,
            limit,
            mode,
            state: State::Empty,
        }
    }

    /// The limit.
    pub fn limit(&self) -> &Limit {
        &self.limit
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

impl<S: Clone> Clone for Backpressure<S> {
    /// A clone shares the limit, not a permit (or a place in the queue) this one holds.
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), self.limit.clone(), self.mode)
    }
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for Backpressure<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: http_body::Body,
{
    type Response = Response<crate::ResponseBody<ResBody>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        loop {
            match &mut self.state {
                State::Refused(_) => return Poll::Ready(Ok(())),
                State::Admitted(_) => return self.inner.poll_ready(cx).map_err(Into::into),
                State::Waiting(waiting) => {
                    self.state = match ready!(waiting.as_mut().poll(cx)) {
                        Ok(permit) => State::Admitted(permit),
                        Err(shed) => State::Refused(shed),
                    };
                }
                State::Empty if self.mode == Mode::Shed => {
                    return self.inner.poll_ready(cx).map_err(Into::into)
                }
                State::Empty => {
                    self.state = match self.limit.try_acquire() {
                        Some(permit) => State::Admitted(permit),
                        None => match self.limit.enter_queue() {
                            Ok(slot) => State::Waiting(Box::pin(self.limit.clone().wait(slot))),
                            Err(shed) => State::Refused(shed),
                        },
                    };
                }
            }
        }
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let retry_after = self.limit.retry_after();
        match std::mem::replace(&mut self.state, State::Empty) {
            State::Admitted(permit) => ResponseFuture::new(self.inner.call(request), permit),
            State::Refused(shed) => ResponseFuture::shed(shed, retry_after),
            State::Empty if self.mode == Mode::Shed => match self.limit.try_acquire() {
                Some(permit) => ResponseFuture::new(self.inner.call(request), permit),
                None => {
                    // No queue in shed mode: count it as a full one.
                    ResponseFuture::shed(self.limit.refuse(), retry_after)
                }
            },
            State::Empty | State::Waiting(_) => {
                panic!("Backpressure::call before poll_ready was Ready")
            }
        }
    }
}
