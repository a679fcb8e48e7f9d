//! The client-side rate limits, as `weir_ratelimit` scopes: each key's own limits, each
//! route's (every client of it together), and the server's (every client together). The
//! most specific is outermost, so that its headers are the ones a client sees; a refusal by
//! any gives back what the others charged.

use super::auth::Identity;
use super::judge::token_estimate;
use super::route::Classified;
use http::Request;
use weir_ratelimit::{Limiter, Scope};

/// A call's cost: its prompt's estimate plus its answer's cap.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CallCost;

impl<B> weir_ratelimit::Cost<B> for CallCost {
    fn estimate(&self, request: &Request<B>) -> u32 {
        match request.extensions().get::<Classified>() {
            Some(Classified::Call(call, _)) => token_estimate(&call.llm),
            _ => 0,
        }
    }
}

/// Only calls are limited (not `GET /v1/models`).
fn is_call<B>(request: &Request<B>) -> bool {
    matches!(
        request.extensions().get::<Classified>(),
        Some(Classified::Call(..))
    )
}

/// The limits of the client's key.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct KeyScope;

impl<B> Scope<B> for KeyScope {
    type Key = ();

    fn select<'a>(&'a self, request: &'a Request<B>) -> Option<(&'a Limiter<()>, ())> {
        if !is_call(request) {
            return None;
        }
        let Identity(key) = request.extensions().get::<Identity>()?;
        Some((key.limiter.as_ref()?, ()))
    }
}

/// The limits of the call's route, on every client of it together.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RouteScope;

impl<B> Scope<B> for RouteScope {
    type Key = ();

    fn select<'a>(&'a self, request: &'a Request<B>) -> Option<(&'a Limiter<()>, ())> {
        match request.extensions().get::<Classified>()? {
            Classified::Call(_, route) => Some((route.limiter.as_ref()?, ())),
            Classified::Models(_) | Classified::Stored(_) => None,
        }
    }
}

/// The server's limits, on every client together.
#[derive(Clone, Debug, Default)]
pub(crate) struct ServerScope(pub(crate) Option<Limiter<()>>);

impl<B> Scope<B> for ServerScope {
    type Key = ();

    fn select<'a>(&'a self, request: &'a Request<B>) -> Option<(&'a Limiter<()>, ())> {
        is_call(request).then_some(())?;
        Some((self.0.as_ref()?, ()))
    }
}
