//! The gateway that serves new requests, swapped by a reload, and the tower service that
//! hands each request to it.

use crate::gateway::Gateway;
use bytes::Bytes;
use http::{Request, Response};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The gateway new requests are served by; a reload swaps it. A request holds the gateway it
/// started on (and its stream, the providers) to its end.
#[derive(Debug)]
pub(crate) struct Current(std::sync::RwLock<Arc<Gateway>>);

impl Current {
    pub(crate) fn get(&self) -> Arc<Gateway> {
        self.0.read().expect("gateway lock").clone()
    }

    pub(crate) fn set(&self, gateway: Arc<Gateway>) {
        *self.0.write().expect("gateway lock") = gateway;
    }
}

impl Current {
    /// Starts with `gateway`.
    pub(crate) fn new(gateway: Arc<Gateway>) -> Self {
        Self(std::sync::RwLock::new(gateway))
    }
}

/// The gateway as a tower service: each request goes to the gateway current when it arrives.
#[derive(Clone, Debug)]
pub(crate) struct GatewayService(pub(crate) Arc<Current>);

impl<B> tower::Service<Request<B>> for GatewayService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<crate::gateway::Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Response<crate::gateway::Body>, Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let gateway = self.0.get();
        // hyper keeps the service future for as long as the connection lives; boxing the
        // handler leaves a pointer there, and frees the handler's state as soon as the
        // response head is ready (2.7 KiB per open stream).
        Box::pin(async move { tower::ServiceExt::oneshot(gateway.stack(), request).await })
    }
}
