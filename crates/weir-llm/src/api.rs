//! Which API an exchange speaks: OpenAI's Chat Completions (and its legacy siblings), OpenAI's
//! Responses, or Anthropic's Messages.
//!
//! [`Api`] is the one answer every reader of an exchange asks: the stream watch (what marks a
//! content event, a complete answer, usage, an error), the error bodies (OpenAI's
//! `{"error":{...}}` or Anthropic's `{"type":"error","error":{...}}`), and the operation name
//! in metrics and spans. Layers stay protocol-agnostic: they hold an `Api` and ask it.
//!
//! | | Chat Completions | Responses | Messages |
//! |---|---|---|---|
//! | events | `data:` only | `event:` + `data:`, `sequence_number` | `event:` + `data:` |
//! | held before the commit point | nothing | `response.created`, `.in_progress`, `.queued`, `.output_item.added`, `.content_part.added` | `message_start`, `content_block_start`, `ping` |
//! | complete | `[DONE]`, or a finish reason (and usage when asked) | `response.completed`, `response.incomplete` | `message_stop`, or `message_delta` with a `stop_reason` |
//! | the provider's own failure | `{"error":...}` | `error`, `response.failed` | `error` |
//! | usage | `prompt_tokens`, `completion_tokens`, `total_tokens` | `input_tokens`, `output_tokens`, `total_tokens` in the final event | `input_tokens` in `message_start`, `output_tokens` in `message_delta` |
//!
//! ```
//! use weir_llm::api::{Api, EventKind};
//! use weir_llm::{ErrorBody, ErrorKind};
//!
//! assert_eq!(Api::Messages.kind(b"content_block_delta"), EventKind::Content);
//! assert_eq!(Api::Responses.kind(b"response.completed"), EventKind::End);
//! let body = Api::Messages.error_json(&ErrorBody::new(ErrorKind::RateLimited, "slow down"));
//! assert_eq!(&body[..], br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#);
//! ```

use crate::error::ErrorBody;
use bytes::{BufMut, Bytes, BytesMut};
use http::StatusCode;

/// The API an exchange speaks. See the [module docs](self).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Api {
    /// OpenAI's Chat Completions (and the legacy completions and embeddings endpoints).
    #[default]
    Chat,
    /// OpenAI's Responses API.
    Responses,
    /// Anthropic's Messages API.
    Messages,
}

/// What one event of a typed-event stream (Responses, Messages) is, for the watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Opens the answer or a part of it, before any output: held until the commit point.
    Opener,
    /// Output the client reads (a delta, a part done, a stop reason).
    Content,
    /// A keep-alive.
    Ping,
    /// The answer's end: complete as far as the provider is concerned.
    End,
    /// The provider's own failure, told in band (ends the answer; nothing to rescue).
    Failed,
}

impl Api {
    /// The OpenTelemetry GenAI operation name, a bounded label.
    pub fn operation(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Responses => "responses",
            Self::Messages => "messages",
        }
    }

    /// What the event named `name` (its `event:` field, or its data's `type`) is. Chat
    /// Completions events have no names: everything is content there.
    pub fn kind(self, name: &[u8]) -> EventKind {
        match self {
            Self::Chat => EventKind::Content,
            Self::Responses => match name {
                b"response.created"
                | b"response.in_progress"
                | b"response.queued"
                | b"response.output_item.added"
                | b"response.content_part.added" => EventKind::Opener,
                b"response.completed" | b"response.incomplete" => EventKind::End,
                b"response.failed" | b"error" => EventKind::Failed,
                _ => EventKind::Content,
            },
            Self::Messages => match name {
                b"message_start" | b"content_block_start" => EventKind::Opener,
                b"ping" => EventKind::Ping,
                b"message_stop" => EventKind::End,
                b"error" => EventKind::Failed,
                _ => EventKind::Content,
            },
        }
    }

    /// An error answer's body in this API's shape.
    pub fn error_json(self, body: &ErrorBody) -> Bytes {
        match self {
            Self::Chat | Self::Responses => body.to_json(),
            Self::Messages => anthropic_error(anthropic_type(body.status()), body.message()),
        }
    }

    /// An error told inside a stream that has started, in this API's shape: a
    /// `data: {"error":...}` event (Chat), an `error` event with the next `sequence_number`
    /// (Responses), an `error` event (Messages).
    pub fn error_event(self, body: &ErrorBody, sequence_number: u64) -> Bytes {
        match self {
            Self::Chat => body.to_sse_event(),
            Self::Responses => {
                #[derive(serde::Serialize)]
                struct Wire<'a> {
                    #[serde(rename = "type")]
                    kind: &'static str,
                    code: Option<&'a str>,
                    message: &'a str,
                    param: Option<&'a str>,
                    sequence_number: u64,
                }
                let wire = Wire {
                    kind: "error",
                    code: body.code_str().or(Some(body.kind().type_str())),
                    message: body.message(),
                    param: body.param_str(),
                    sequence_number,
                };
                let mut out = BytesMut::with_capacity(128 + body.message().len());
                out.extend_from_slice(b"event: error\ndata: ");
                serde_json::to_writer((&mut out).writer(), &wire).expect("writing to memory");
                out.extend_from_slice(b"\n\n");
                out.freeze()
            }
            Self::Messages => {
                let json = self.error_json(body);
                let mut out = BytesMut::with_capacity(json.len() + 24);
                out.extend_from_slice(b"event: error\ndata: ");
                out.extend_from_slice(&json);
                out.extend_from_slice(b"\n\n");
                out.freeze()
            }
        }
    }

    /// An error body made in OpenAI's shape (by any layer) in this API's shape instead; `None`
    /// when it already is (or is not an error body weir can read). For the rare path: errors.
    pub fn reshape_error(self, status: StatusCode, body: &[u8]) -> Option<Bytes> {
        if self != Self::Messages {
            return None;
        }
        let value: serde_json::Value = serde_json::from_slice(body).ok()?;
        if value.get("type").and_then(|t| t.as_str()) == Some("error") {
            return None;
        }
        let message = value.get("error")?.get("message")?.as_str()?;
        Some(anthropic_error(anthropic_type(status), message))
    }
}

/// Anthropic's error `type` for a status.
fn anthropic_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 422 | 431 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

fn anthropic_error(kind: &str, message: &str) -> Bytes {
    #[derive(serde::Serialize)]
    struct Wire<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        error: Inner<'a>,
    }
    #[derive(serde::Serialize)]
    struct Inner<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        message: &'a str,
    }
    let wire = Wire {
        kind: "error",
        error: Inner { kind, message },
    };
    Bytes::from(serde_json::to_vec(&wire).expect("writing to memory"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn error_shapes() {
        let body = ErrorBody::new(ErrorKind::BadGateway, "cut \"here\"").code("stream_broken");
        let event = Api::Responses.error_event(&body, 7);
        assert_eq!(
            &event[..],
            &b"event: error\ndata: {\"type\":\"error\",\"code\":\"stream_broken\",\"message\":\"cut \\\"here\\\"\",\"param\":null,\"sequence_number\":7}\n\n"[..]
        );
        let event = Api::Messages.error_event(&body, 0);
        assert_eq!(
            &event[..],
            &b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"cut \\\"here\\\"\"}}\n\n"[..]
        );
        assert_eq!(Api::Chat.error_event(&body, 0), body.to_sse_event());
    }

    #[test]
    fn openai_errors_are_reshaped_for_anthropic_clients_only() {
        let openai = ErrorBody::new(ErrorKind::NotFound, "no such model").to_json();
        let reshaped = Api::Messages
            .reshape_error(StatusCode::NOT_FOUND, &openai)
            .unwrap();
        assert_eq!(
            &reshaped[..],
            br#"{"type":"error","error":{"type":"not_found_error","message":"no such model"}}"#
        );
        assert_eq!(
            Api::Messages.reshape_error(StatusCode::NOT_FOUND, &reshaped),
            None,
            "already Anthropic's"
        );
        assert_eq!(
            Api::Responses.reshape_error(StatusCode::NOT_FOUND, &openai),
            None
        );
        assert_eq!(
            Api::Messages.reshape_error(StatusCode::BAD_GATEWAY, b"<html>"),
            None
        );
    }
}
