//! OpenAI-style error bodies: `{"error":{"message","type","param","code"}}`.
//!
//! Every error weir answers has this shape, whether as a whole body with a status or, once a
//! stream has started, as one SSE event before the stream ends.
//!
//! ```
//! use weir_llm::error::{ErrorBody, ErrorKind};
//!
//! let body = ErrorBody::new(ErrorKind::NotFound, "The model `x` does not exist")
//!     .code("model_not_found")
//!     .param("model");
//! assert_eq!(body.status(), http::StatusCode::NOT_FOUND);
//! assert_eq!(
//!     &body.to_json()[..],
//!     br#"{"error":{"message":"The model `x` does not exist","type":"invalid_request_error","param":"model","code":"model_not_found"}}"#
//! );
//! assert!(body.to_sse_event().starts_with(b"data: {\"error\""));
//! ```

use bytes::{BufMut, Bytes, BytesMut};
use http::StatusCode;
use serde::Serialize;
use std::borrow::Cow;

/// The class of an error, which sets its status and its `type` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// 400: the request is malformed.
    InvalidRequest,
    /// 401: no valid client key.
    Authentication,
    /// 403: the key may not do this.
    Permission,
    /// 404: no such model or endpoint.
    NotFound,
    /// 405: wrong method on a known path.
    MethodNotAllowed,
    /// 413: the body is over the limit.
    PayloadTooLarge,
    /// 429: a rate limit.
    RateLimited,
    /// 500: weir itself failed.
    Internal,
    /// 502: the upstream failed or answered badly.
    BadGateway,
    /// 503: no upstream can take the request now (overload, open breakers, draining).
    Unavailable,
    /// 504: the upstream did not answer in time.
    GatewayTimeout,
}

impl ErrorKind {
    /// The HTTP status for this kind.
    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidRequest => StatusCode::BAD_REQUEST,
            Self::Authentication => StatusCode::UNAUTHORIZED,
            Self::Permission => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `type` field, in OpenAI's vocabulary.
    pub fn type_str(self) -> &'static str {
        match self {
            Self::InvalidRequest
            | Self::NotFound
            | Self::MethodNotAllowed
            | Self::PayloadTooLarge => "invalid_request_error",
            Self::Authentication => "authentication_error",
            Self::Permission => "permission_error",
            Self::RateLimited => "rate_limit_error",
            Self::Internal => "server_error",
            Self::BadGateway | Self::Unavailable | Self::GatewayTimeout => "upstream_error",
        }
    }
}

/// An OpenAI-style error, ready to serialize.
#[derive(Clone, Debug)]
pub struct ErrorBody {
    kind: ErrorKind,
    message: Cow<'static, str>,
    code: Option<Cow<'static, str>>,
    param: Option<Cow<'static, str>>,
}

#[derive(Serialize)]
struct Wire<'a> {
    error: WireInner<'a>,
}

#[derive(Serialize)]
struct WireInner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ErrorBody {
    /// An error of `kind` with a message for the client. Never put a secret in it.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            message: message.into(),
            code: None,
            param: None,
        }
    }

    /// Sets the machine-readable `code`.
    pub fn code(mut self, code: impl Into<Cow<'static, str>>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// Sets the request field at fault.
    pub fn param(mut self, param: impl Into<Cow<'static, str>>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The machine-readable code, if set.
    pub fn code_str(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// The request field at fault, if set.
    pub fn param_str(&self) -> Option<&str> {
        self.param.as_deref()
    }

    /// The HTTP status of the kind.
    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    fn write(&self, out: &mut BytesMut) {
        let wire = Wire {
            error: WireInner {
                message: &self.message,
                kind: self.kind.type_str(),
                param: self.param.as_deref(),
                code: self.code.as_deref(),
            },
        };
        serde_json::to_writer(out.writer(), &wire).expect("writing to memory cannot fail");
    }

    /// The JSON body.
    pub fn to_json(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(96 + self.message.len());
        self.write(&mut out);
        out.freeze()
    }

    /// The error as one SSE event (`data: {...}\n\n`), for a stream that has started.
    pub fn to_sse_event(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(104 + self.message.len());
        out.extend_from_slice(b"data: ");
        self.write(&mut out);
        out.extend_from_slice(b"\n\n");
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::Chunk;

    #[test]
    fn json_escapes_and_reads_back() {
        let body = ErrorBody::new(ErrorKind::BadGateway, "upstream said \"no\"\n");
        let json = body.to_json();
        let chunk = Chunk::parse(&json).unwrap();
        let error = chunk.error.unwrap();
        assert_eq!(error.message.as_deref(), Some("upstream said \"no\"\n"));
        assert_eq!(error.kind.as_deref(), Some("upstream_error"));
        assert_eq!(error.code, None);
    }

    #[test]
    fn statuses() {
        assert_eq!(ErrorKind::PayloadTooLarge.status().as_u16(), 413);
        assert_eq!(ErrorKind::GatewayTimeout.status().as_u16(), 504);
        assert_eq!(ErrorKind::RateLimited.type_str(), "rate_limit_error");
    }

    #[test]
    fn sse_event_is_one_event() {
        let event = ErrorBody::new(ErrorKind::BadGateway, "cut").to_sse_event();
        let mut decoder = crate::sse::SseDecoder::new();
        decoder.push(event);
        let first = decoder.next_event().unwrap().unwrap();
        assert!(Chunk::parse(&first.data).unwrap().error.is_some());
        assert!(decoder.next_event().unwrap().is_none());
        assert!(!decoder.has_partial_event());
    }
}
