//! The answers the gateway makes itself: OpenAI-style errors, at whatever layer refuses.

use super::answer::ResponseBody;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::Response;
use std::time::Duration;
use weir_llm::{ErrorBody, ErrorKind};

/// A body a layer can answer with by itself, at its place in the stack (each layer's body
/// type wraps the one inside it).
pub(crate) trait Local: Sized {
    /// A body of `data` alone.
    fn local(data: Bytes) -> Self;

    /// The whole body, when it is one held in memory (an error, a small answer), not read yet.
    fn whole(&self) -> Option<&Bytes>;
}

impl Local for ResponseBody {
    fn local(data: Bytes) -> Self {
        Self::full(data)
    }

    fn whole(&self) -> Option<&Bytes> {
        self.full_data()
    }
}

impl<B: Local> Local for weir_ratelimit::ResponseBody<B, ()> {
    fn local(data: Bytes) -> Self {
        Self::local(data)
    }

    fn whole(&self) -> Option<&Bytes> {
        self.answer_data().or_else(|| self.get_ref()?.whole())
    }
}

impl<B: Local> Local for weir_backpressure::ResponseBody<B> {
    fn local(data: Bytes) -> Self {
        Self::local(data)
    }

    fn whole(&self) -> Option<&Bytes> {
        self.answer_data().or_else(|| self.get_ref()?.whole())
    }
}

/// An error answer made for a client of `api`: in its shape (Anthropic's for the Messages
/// API), whichever layer made it in OpenAI's; an upstream's own error in that shape already
/// passes as it is.
pub(crate) fn in_shape<T: Local>(api: weir_llm::Api, response: &mut Response<T>) {
    if api != weir_llm::Api::Messages || response.status().is_success() {
        return;
    }
    let status = response.status();
    let reshaped = response
        .body()
        .whole()
        .and_then(|body| api.reshape_error(status, body));
    if let Some(body) = reshaped {
        *response.body_mut() = T::local(body);
        response.headers_mut().remove(header::CONTENT_LENGTH);
    }
}

/// An OpenAI-style error answer with its status.
pub(crate) fn error<T: Local>(body: ErrorBody) -> Response<T> {
    let mut response = Response::new(T::local(body.to_json()));
    *response.status_mut() = body.status();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A JSON answer.
pub(crate) fn json<T: Local>(data: Bytes) -> Response<T> {
    let mut response = Response::new(T::local(data));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The 401 for a missing, unknown or almost-right client key: the same for each.
pub(crate) fn unauthorized<T: Local>() -> Response<T> {
    error(
        ErrorBody::new(
            ErrorKind::Authentication,
            "Incorrect API key provided. Send the key weir issued you as `Authorization: Bearer <key>` (or `x-api-key: <key>`).",
        )
        .code("invalid_api_key"),
    )
}

/// A 405 that says which method the endpoint takes.
pub(crate) fn method_not_allowed<T: Local>(allow: &'static str) -> Response<T> {
    let mut response = error(ErrorBody::new(
        ErrorKind::MethodNotAllowed,
        format!("This endpoint only accepts {allow}."),
    ));
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// The 404 for a model no route serves (or that the key may not use).
pub(crate) fn model_not_found<T: Local>(model: &str) -> Response<T> {
    error(
        ErrorBody::new(
            ErrorKind::NotFound,
            format!(
                "The model `{}` does not exist or you do not have access to it.",
                shorten(model, 128)
            ),
        )
        .param("model")
        .code("model_not_found"),
    )
}

/// Whole seconds, rounded up, at least 1: never ask a client to come back too early.
pub(crate) fn whole_seconds(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// At most `max` characters of `text`, with `…` when it was cut.
pub(crate) fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((at, _)) => format!("{}…", &text[..at]),
    }
}
