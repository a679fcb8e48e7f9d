//! The front of the stack: every request gets its id (the client's when it is reasonable),
//! heads over the bound are refused, and the path and method say what is asked (a call to an
//! endpoint, the models list) or get a 404 or 405. Errors that reach this point become answers:
//! hyper closes a connection on a service error without a word to the client.

use super::errors::shorten;
use super::errors::{error, method_not_allowed, Local};
use crate::headers::{RequestIds, X_REQUEST_ID};
use futures_util::future::Either;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use weir_llm::{Endpoint, ErrorBody, ErrorKind};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The largest request head weir takes (its headers' names and values): 431 above.
pub(crate) const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The request's id (the client's, or one weir made), in its extensions.
#[derive(Clone, Debug)]
pub(crate) struct RequestId(pub(crate) HeaderValue);

/// What a request asks for, as its path and method say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Asked {
    /// `POST` to an LLM endpoint.
    Call(Endpoint),
    /// `GET /v1/models` (`None`), or `GET /v1/models/{id}`.
    Models(Option<String>),
    /// A stored response: `GET` or `DELETE /v1/responses/{id}`, `GET .../input_items`,
    /// `POST .../cancel` (the path after `/v1/responses/`, its query kept).
    Stored(Method, String),
}

/// Applies [`Front`].
#[derive(Clone, Debug)]
pub(crate) struct FrontLayer {
    ids: Arc<RequestIds>,
}

impl FrontLayer {
    pub(crate) fn new(ids: Arc<RequestIds>) -> Self {
        Self { ids }
    }
}

impl<S> tower::Layer<S> for FrontLayer {
    type Service = Front<S>;

    fn layer(&self, inner: S) -> Front<S> {
        Front {
            inner,
            ids: self.ids.clone(),
        }
    }
}

/// See the [module docs](self).
#[derive(Clone, Debug)]
pub(crate) struct Front<S> {
    inner: S,
    ids: Arc<RequestIds>,
}

/// The request's answer to its path and method, or what it asks for.
fn asked<T: Local>(request: &Request<impl Sized>) -> Result<Asked, Response<T>> {
    // hyper bounds the head by its read buffer only roughly (one large read can pass it):
    // the limit is enforced here, on what was parsed.
    let head_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if head_bytes > MAX_HEADER_BYTES {
        let mut response = error(
            ErrorBody::new(
                ErrorKind::InvalidRequest,
                format!("The request headers are larger than {MAX_HEADER_BYTES} bytes."),
            )
            .code("request_header_fields_too_large"),
        );
        *response.status_mut() = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
        return Err(response);
    }
    let path = request.uri().path();
    let model = match path.strip_prefix("/v1/models") {
        Some("") => Some(None),
        // A model id may hold `/` (`meta/llama-3`): the rest of the path, decoded.
        Some(rest) if rest.len() > 1 && rest.starts_with('/') => {
            Some(Some(percent_decoded(&rest[1..])))
        }
        _ => None,
    };
    if let Some(model) = model {
        return match *request.method() == Method::GET {
            true => Ok(Asked::Models(model)),
            false => Err(method_not_allowed("GET")),
        };
    }
    if let Some(rest) = path.strip_prefix("/v1/responses/") {
        // An id (letters, digits, `_`, `-`) and nothing but what the API has under it: the
        // path goes upstream with the provider's key, so no `..` or other path may ride on it.
        let (id, under) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_id = !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_id || !matches!(under, "" | "input_items" | "cancel") {
            return Err(unknown_url(request));
        }
        let cancel = under == "cancel";
        let allowed = match *request.method() {
            Method::GET | Method::DELETE => !cancel,
            Method::POST => cancel,
            _ => false,
        };
        if !allowed {
            return Err(method_not_allowed(if cancel {
                "POST"
            } else {
                "GET, DELETE"
            }));
        }
        let rest = match request.uri().query() {
            Some(query) => format!("{rest}?{query}"),
            None => rest.to_owned(),
        };
        return Ok(Asked::Stored(request.method().clone(), rest));
    }
    let Some(endpoint) = Endpoint::from_path(path) else {
        return Err(unknown_url(request));
    };
    if *request.method() != Method::POST {
        return Err(method_not_allowed("POST"));
    }
    Ok(Asked::Call(endpoint))
}

/// The 404 for a path weir does not serve.
fn unknown_url<T: Local>(request: &Request<impl Sized>) -> Response<T> {
    error(
        ErrorBody::new(
            ErrorKind::NotFound,
            format!(
                "Unknown request URL: {} {}.",
                request.method(),
                shorten(request.uri().path(), 128)
            ),
        )
        .code("unknown_url"),
    )
}

/// `%XX` escapes decoded (an invalid one kept as it is).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl<S, B, T> tower::Service<Request<B>> for Front<S>
where
    S: tower::Service<Request<B>, Response = Response<T>>,
    S::Error: Into<BoxError>,
    T: Local,
{
    type Response = Response<T>;
    type Error = Infallible;
    type Future = WithId<Either<S::Future, std::future::Ready<Result<Response<T>, S::Error>>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The inner services are ready at once, or drive their readiness in their futures.
        match ready!(self.inner.poll_ready(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            // Said again by `call`, as an answer.
            Err(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let id = self.ids.take_or_make(request.headers());
        // Errors go back in the shape of the API the path names.
        let api =
            Endpoint::from_path(request.uri().path()).map_or(weir_llm::Api::Chat, Endpoint::api);
        let future = match asked(&request) {
            Ok(asked) => {
                request.extensions_mut().insert(asked);
                request.extensions_mut().insert(RequestId(id.clone()));
                Either::Left(self.inner.call(request))
            }
            Err(answer) => Either::Right(std::future::ready(Ok(answer))),
        };
        WithId {
            future,
            id: Some(id),
            api,
        }
    }
}

pin_project! {
    /// The answer with the request's id; an error made an answer.
    pub(crate) struct WithId<F> {
        #[pin]
        future: F,
        id: Option<HeaderValue>,
        api: weir_llm::Api,
    }
}

impl<F, T, E> Future for WithId<F>
where
    F: Future<Output = Result<Response<T>, E>>,
    E: Into<BoxError>,
    T: Local,
{
    type Output = Result<Response<T>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = match ready!(this.future.poll(cx)) {
            Ok(response) => response,
            Err(e) => {
                let e: BoxError = e.into();
                tracing::error!(error = %e, "the gateway failed a request");
                error(ErrorBody::new(
                    ErrorKind::Internal,
                    "weir could not handle the request.",
                ))
            }
        };
        super::errors::in_shape(*this.api, &mut response);
        if let Some(id) = this.id.take() {
            response.headers_mut().insert(X_REQUEST_ID.clone(), id);
        }
        Poll::Ready(Ok(response))
    }
}
