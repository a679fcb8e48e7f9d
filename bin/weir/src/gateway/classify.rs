//! Request classification: a call's body read once (bounded: 413 above the limit, before
//! reading it when `Content-Length` says so), copied out of hyper's buffer, and read as an
//! [`LlmRequest`]; its model matched to a route the client's key may use (else 404). What the
//! layers inside need travels in the request's extensions ([`Classified`]), and the request
//! itself goes on without its body.

use super::auth::Identity;
use super::call::{operation, Call};
use super::errors::{error, model_not_found, Local};
use super::front::{Asked, RequestId};
use super::route::{Classified, Route};
use super::stored::{Owners, StoredRequest};
use crate::config::Continuation;
use crate::headers;
use bytes::Bytes;
use http::{header, Request, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::ServiceExt;
use weir_llm::{Endpoint, ErrorBody, ErrorKind, LlmRequest};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The routes by the model name clients ask for.
pub(crate) type Routes = HashMap<String, Arc<Route>>;

/// Applies [`Classify`].
#[derive(Clone, Debug)]
pub(crate) struct ClassifyLayer {
    routes: Arc<Routes>,
    max_request_bytes: usize,
    forward: Arc<headers::Forward>,
    owners: Arc<Owners>,
}

impl ClassifyLayer {
    pub(crate) fn new(
        routes: Arc<Routes>,
        max_request_bytes: usize,
        forward: Arc<headers::Forward>,
        owners: Arc<Owners>,
    ) -> Self {
        Self {
            routes,
            max_request_bytes,
            forward,
            owners,
        }
    }
}

impl<S> tower::Layer<S> for ClassifyLayer {
    type Service = Classify<S>;

    fn layer(&self, inner: S) -> Classify<S> {
        Classify {
            inner,
            routes: self.routes.clone(),
            max_request_bytes: self.max_request_bytes,
            forward: self.forward.clone(),
            owners: self.owners.clone(),
        }
    }
}

/// See the [module docs](self).
#[derive(Clone, Debug)]
pub(crate) struct Classify<S> {
    inner: S,
    routes: Arc<Routes>,
    max_request_bytes: usize,
    /// Which client headers go upstream.
    forward: Arc<headers::Forward>,
    owners: Arc<Owners>,
}

type Classifying<T, E> = Pin<Box<dyn Future<Output = Result<Response<T>, E>> + Send>>;

impl<S, B, T> tower::Service<Request<B>> for Classify<S>
where
    S: tower::Service<Request<()>, Response = Response<T>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    T: Local + Send + 'static,
{
    type Response = Response<T>;
    type Error = S::Error;
    type Future = Classifying<T, S::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        // Made ready in the call, once the request is read.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        let routes = self.routes.clone();
        let max = self.max_request_bytes;
        let forward = self.forward.clone();
        let owners = self.owners.clone();
        // hyper keeps the service future for as long as the connection lives; boxing it
        // leaves a pointer there, and frees the request's state as soon as the head is ready.
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let classified = match parts.extensions.get::<Asked>() {
                Some(Asked::Call(endpoint)) => {
                    match classify(*endpoint, &mut parts, body, &routes, max, &forward, &owners)
                        .await
                    {
                        Ok(call) => call,
                        Err(answer) => return Ok(answer),
                    }
                }
                Some(Asked::Models(model)) => Classified::Models(model.clone()),
                Some(Asked::Stored(method, rest)) => Classified::Stored(StoredRequest {
                    method: method.clone(),
                    rest: rest.clone(),
                    headers: headers::forwardable_client_headers(&parts.headers, &forward),
                    key: parts
                        .extensions
                        .get::<Identity>()
                        .map(|Identity(key)| key.name.clone()),
                }),
                None => Classified::Models(None),
            };
            let mut inner_request = Request::from_parts(parts, ());
            inner_request.extensions_mut().insert(classified);
            inner.oneshot(inner_request).await
        })
    }
}

/// Reads and checks a call: its route and its [`Call`], or the error answer.
async fn classify<B, T: Local>(
    endpoint: Endpoint,
    parts: &mut http::request::Parts,
    body: B,
    routes: &Routes,
    max: usize,
    forward: &headers::Forward,
    owners: &Arc<Owners>,
) -> Result<Classified, Response<T>>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let too_large = || {
        error(
            ErrorBody::new(
                ErrorKind::PayloadTooLarge,
                format!("Request body is larger than the limit of {max} bytes."),
            )
            .code("request_too_large"),
        )
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return Err(too_large());
    }
    let body = match Limited::new(body, max).collect().await {
        // A copy: the collected bytes are slices of hyper's read buffer.
        Ok(collected) => Bytes::copy_from_slice(&collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => return Err(too_large()),
        Err(_) => {
            return Err(error(ErrorBody::new(
                ErrorKind::InvalidRequest,
                "The request body could not be read.",
            )))
        }
    };
    let llm = match LlmRequest::parse(endpoint, &body) {
        Ok(llm) => llm,
        Err(invalid) => {
            let mut body = ErrorBody::new(ErrorKind::InvalidRequest, invalid.message().to_owned());
            if let Some(param) = invalid.param() {
                body = body.param(param);
            }
            return Err(error(body));
        }
    };
    let allowed = parts
        .extensions
        .get::<Identity>()
        .is_none_or(|Identity(key)| key.allows(llm.model()));
    let Some(route) = routes.get(llm.model()).filter(|_| allowed) else {
        return Err(model_not_found(llm.model()));
    };
    let key = parts
        .extensions
        .get::<Identity>()
        .map(|Identity(key)| key.name.clone());
    // A response that continues a stored one goes where that one is kept.
    let pinned = llm
        .previous_response_id()
        .and_then(|id| owners.get(id))
        .filter(|owner| owner.key == key)
        .map(|owner| owner.provider);
    let Some(lane) = route.lane_for(endpoint, pinned.as_deref()) else {
        return Err(no_lane(llm.model(), endpoint));
    };
    let tally = parts
        .extensions
        .remove::<weir_metrics::Tally>()
        .unwrap_or_default();
    tally.labels(weir_metrics::Labels {
        route: route.name.clone(),
        ..Default::default()
    });
    tally.operation(operation(endpoint));
    tally.input_estimate(llm.prompt_token_estimate());
    let id = parts
        .extensions
        .get::<RequestId>()
        .map(|id| id.0.clone())
        .unwrap_or_else(|| http::HeaderValue::from_static("-"));
    // Own copies of what the call keeps: the originals are slices of hyper's read buffer,
    // and while a slice lives hyper cannot reuse that buffer (it takes a second one).
    let call = Arc::new(Call {
        endpoint,
        headers: headers::forwardable_client_headers(&parts.headers, forward),
        id,
        body,
        tally,
        span: tracing::Span::current(),
        failed: std::sync::atomic::AtomicUsize::new(usize::MAX),
        resumable: matches!(
            endpoint,
            Endpoint::ChatCompletions | Endpoint::Responses | Endpoint::Messages
        ) && llm.stream()
            // A stored response cannot be made again elsewhere as the same one.
            && !llm.stateful()
            && lane.targets.len() > 1
            && lane
                .targets
                .iter()
                .any(|t| t.continuation != Continuation::None),
        // A stored response is remembered, for `GET /v1/responses/{id}`.
        owners: (endpoint == Endpoint::Responses && llm.stateful())
            .then(|| (owners.clone(), key.clone())),
        pinned,
        llm,
        meter: Default::default(),
    });
    // The client's own headers go no further than the call's copy.
    parts.headers = http::HeaderMap::new();
    Ok(Classified::Call(call, route.clone()))
}

/// The 404 for a model whose route has no provider speaking the endpoint's API.
fn no_lane<T: Local>(model: &str, endpoint: Endpoint) -> Response<T> {
    let api = match endpoint.api() {
        weir_llm::Api::Messages => "Anthropic's Messages API",
        weir_llm::Api::Responses => "OpenAI's Responses API",
        weir_llm::Api::Chat => "OpenAI's API",
    };
    error(
        ErrorBody::new(
            ErrorKind::NotFound,
            format!(
                "The model `{}` has no provider that speaks {api}.",
                super::errors::shorten(model, 128)
            ),
        )
        .param("model")
        .code("model_not_found"),
    )
}
