//! Request metadata, read once from the JSON body.
//!
//! [`LlmRequest::parse`] reads what every layer needs to know about a request (model, whether
//! it streams, `max_tokens`, a prompt token estimate) without building a DOM and without
//! changing the body: unknown fields travel on untouched. [`LlmRequest::with_model`] swaps the
//! model name for the upstream's by splicing the bytes where the name stood.
//!
//! ```
//! use bytes::Bytes;
//! use weir_llm::request::{Endpoint, LlmRequest};
//!
//! let body = Bytes::from_static(br#"{"model":"fast","stream":true,"max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#);
//! let req = LlmRequest::parse(Endpoint::ChatCompletions, &body).unwrap();
//! assert_eq!(req.model(), "fast");
//! assert!(req.stream());
//! assert_eq!(req.max_tokens(), Some(64));
//! let upstream = req.with_model(&body, "gpt-4.1");
//! assert!(upstream.starts_with(br#"{"model":"gpt-4.1","stream":true"#));
//! ```

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

/// The OpenAI-compatible endpoints weir serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`
    ChatCompletions,
    /// `POST /v1/completions`
    Completions,
    /// `POST /v1/embeddings`
    Embeddings,
    /// `POST /v1/responses` (OpenAI's Responses API)
    Responses,
    /// `POST /v1/messages` (Anthropic's Messages API)
    Messages,
    /// `POST /v1/messages/count_tokens` (Anthropic's)
    CountTokens,
}

impl Endpoint {
    /// The endpoint for a request path (`/v1/...`), if weir serves it.
    pub fn from_path(path: &str) -> Option<Self> {
        match path {
            "/v1/chat/completions" => Some(Self::ChatCompletions),
            "/v1/completions" => Some(Self::Completions),
            "/v1/embeddings" => Some(Self::Embeddings),
            "/v1/responses" => Some(Self::Responses),
            "/v1/messages" => Some(Self::Messages),
            "/v1/messages/count_tokens" => Some(Self::CountTokens),
            _ => None,
        }
    }

    /// The path under a provider's base URL (`/chat/completions`, ...).
    pub fn upstream_path(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/chat/completions",
            Self::Completions => "/completions",
            Self::Embeddings => "/embeddings",
            Self::Responses => "/responses",
            Self::Messages => "/messages",
            Self::CountTokens => "/messages/count_tokens",
        }
    }

    /// The API the endpoint speaks.
    pub fn api(self) -> crate::Api {
        match self {
            Self::ChatCompletions | Self::Completions | Self::Embeddings => crate::Api::Chat,
            Self::Responses => crate::Api::Responses,
            Self::Messages | Self::CountTokens => crate::Api::Messages,
        }
    }

    /// The OpenTelemetry GenAI operation name.
    pub fn operation(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat",
            Self::Completions => "text_completion",
            Self::Embeddings => "embeddings",
            Self::Responses => "responses",
            Self::Messages => "messages",
            Self::CountTokens => "count_tokens",
        }
    }
}

/// What weir knows about a request after reading its body once.
#[derive(Clone, Debug)]
pub struct LlmRequest {
    endpoint: Endpoint,
    model: Box<str>,
    model_span: Range<usize>,
    stream: bool,
    include_usage: bool,
    has_stream_options: bool,
    max_tokens: Option<u32>,
    prompt_token_estimate: u32,
    /// Responses: the provider keeps state for it (stored, or continuing a stored one).
    stateful: bool,
    previous_response_id: Option<Box<str>>,
}

/// Why a body is not a request weir can route. The message is safe to show the client.
#[derive(Debug)]
pub struct InvalidRequest {
    message: String,
    param: Option<&'static str>,
}

impl InvalidRequest {
    fn new(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self {
            message: message.into(),
            param,
        }
    }

    /// What is wrong, for the client.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The request field at fault, if one is.
    pub fn param(&self) -> Option<&'static str> {
        self.param
    }
}

impl fmt::Display for InvalidRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for InvalidRequest {}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default, borrow)]
    messages: Option<&'a RawValue>,
    #[serde(default, borrow)]
    prompt: Option<&'a RawValue>,
    #[serde(default, borrow)]
    input: Option<&'a RawValue>,
    #[serde(default)]
    max_output_tokens: Option<u32>,
    #[serde(default, borrow)]
    instructions: Option<&'a RawValue>,
    #[serde(default, borrow)]
    system: Option<&'a RawValue>,
    #[serde(default)]
    store: Option<bool>,
    #[serde(default)]
    background: Option<bool>,
    #[serde(default)]
    previous_response_id: Option<String>,
    #[serde(default, borrow)]
    conversation: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Bytes of prompt JSON per token in [`LlmRequest::prompt_token_estimate`].
pub const BYTES_PER_TOKEN: usize = 4;

impl LlmRequest {
    /// Reads the metadata of a request body sent to `endpoint`.
    ///
    /// Refuses a body that is not a JSON object, that has no string `model`, or whose `stream`
    /// or token fields have the wrong type. Duplicate keys are refused: two readers must never
    /// see two different models.
    pub fn parse(endpoint: Endpoint, body: &[u8]) -> Result<Self, InvalidRequest> {
        // serde reads a struct from an array too; a request is an object.
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(InvalidRequest::new(
                "Your request body must be a JSON object",
                None,
            ));
        }
        let raw: Raw<'_> = serde_json::from_slice(body).map_err(|e| {
            let what = if e.is_syntax() || e.is_eof() {
                "We could not parse the JSON body of your request"
            } else {
                "Your request body has an invalid field"
            };
            InvalidRequest::new(format!("{what}: {e}"), None)
        })?;
        let model_raw = raw.model.ok_or_else(|| {
            InvalidRequest::new("you must provide a model parameter", Some("model"))
        })?;
        let model: Cow<'_, str> = serde_json::from_str(model_raw.get())
            .map_err(|_| InvalidRequest::new("model must be a string", Some("model")))?;
        if model.is_empty() {
            return Err(InvalidRequest::new(
                "model must not be empty",
                Some("model"),
            ));
        }
        let start = model_raw.get().as_ptr() as usize - body.as_ptr() as usize;
        let model_span = start..start + model_raw.get().len();
        let len = |v: Option<&RawValue>| v.map_or(0, |p| p.get().len());
        let prompt_bytes = match endpoint {
            Endpoint::ChatCompletions => len(raw.messages),
            Endpoint::Completions => len(raw.prompt),
            Endpoint::Embeddings => len(raw.input),
            Endpoint::Responses => len(raw.input) + len(raw.instructions),
            Endpoint::Messages | Endpoint::CountTokens => len(raw.messages) + len(raw.system),
        };
        let estimate = prompt_bytes.div_ceil(BYTES_PER_TOKEN);
        Ok(Self {
            endpoint,
            model: model.into(),
            model_span,
            stream: raw.stream.unwrap_or(false),
            include_usage: raw.stream_options.as_ref().is_some_and(|o| o.include_usage),
            has_stream_options: raw.stream_options.is_some(),
            max_tokens: raw
                .max_completion_tokens
                .or(raw.max_output_tokens)
                .or(raw.max_tokens),
            prompt_token_estimate: u32::try_from(estimate).unwrap_or(u32::MAX),
            // The Responses API stores a response unless told not to.
            stateful: endpoint == Endpoint::Responses
                && (raw.store != Some(false)
                    || raw.previous_response_id.is_some()
                    || raw.conversation.is_some_and(|c| c.get() != "null")
                    || raw.background == Some(true)),
            previous_response_id: raw.previous_response_id.map(Into::into),
        })
    }

    /// The endpoint the request was sent to.
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint
    }

    /// The model the client asked for.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Whether the client asked for a stream.
    pub fn stream(&self) -> bool {
        self.stream
    }

    /// Whether the client asked for a usage chunk (`stream_options.include_usage`).
    pub fn include_usage(&self) -> bool {
        self.include_usage
    }

    /// `max_completion_tokens`, or else `max_output_tokens` (Responses), or else `max_tokens`.
    pub fn max_tokens(&self) -> Option<u32> {
        self.max_tokens
    }

    /// Responses: whether the provider keeps state for this request (`store` not `false`, a
    /// `previous_response_id`, a `conversation`, `background`): a replay elsewhere would not
    /// be the same answer, so a cut one is not continued.
    pub fn stateful(&self) -> bool {
        self.stateful
    }

    /// Responses: the stored response this request continues, if any.
    pub fn previous_response_id(&self) -> Option<&str> {
        self.previous_response_id.as_deref()
    }

    /// A rough count of prompt tokens: the prompt's JSON length over [`BYTES_PER_TOKEN`].
    /// Good enough to charge a token budget up front; settle with the real usage later.
    pub fn prompt_token_estimate(&self) -> u32 {
        self.prompt_token_estimate
    }

    /// Whether a streamed request left usage out, and had no `stream_options` at all (so weir
    /// can add `"stream_options":{"include_usage":true}` without a duplicate key).
    pub fn can_ask_for_usage(&self) -> bool {
        self.stream && !self.has_stream_options
    }

    /// The body as it goes upstream: `model` set to `model` and, with `ask_usage` (see
    /// [`LlmRequest::can_ask_for_usage`]), `"stream_options":{"include_usage":true}` added as
    /// the last field; everything else byte for byte the same.
    pub fn upstream_body(&self, body: &Bytes, model: &str, ask_usage: bool) -> Bytes {
        let renamed = self.with_model(body, model);
        if !ask_usage || !self.can_ask_for_usage() {
            return renamed;
        }
        let end = renamed.trim_ascii_end().len();
        if end == 0 || renamed[end - 1] != b'}' {
            return renamed;
        }
        const FIELD: &[u8] = br#","stream_options":{"include_usage":true}"#;
        let mut out = BytesMut::with_capacity(renamed.len() + FIELD.len());
        out.extend_from_slice(&renamed[..end - 1]);
        out.extend_from_slice(FIELD);
        out.extend_from_slice(&renamed[end - 1..]);
        out.freeze()
    }

    /// The body with `model` set to `model`, everything else byte for byte the same. Returns
    /// the same buffer, uncopied, when the name does not change.
    pub fn with_model(&self, body: &Bytes, model: &str) -> Bytes {
        if *self.model == *model {
            return body.clone();
        }
        let quoted = serde_json::to_string(model).expect("a string always serializes");
        let mut out = BytesMut::with_capacity(body.len() - self.model_span.len() + quoted.len());
        out.extend_from_slice(&body[..self.model_span.start]);
        out.extend_from_slice(quoted.as_bytes());
        out.extend_from_slice(&body[self.model_span.end..]);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<LlmRequest, InvalidRequest> {
        LlmRequest::parse(Endpoint::ChatCompletions, body.as_bytes())
    }

    #[test]
    fn responses_and_messages_requests() {
        let responses =
            |body: &str| LlmRequest::parse(Endpoint::Responses, body.as_bytes()).unwrap();
        let r = responses(
            r#"{"model":"m","input":"12345678","instructions":"abcd","max_output_tokens":9,"stream":true}"#,
        );
        assert_eq!(
            (r.max_tokens(), r.prompt_token_estimate(), r.stream()),
            (Some(9), 4, true)
        );
        assert!(r.stateful(), "stored unless told not to");
        assert!(!responses(r#"{"model":"m","input":"x","store":false}"#).stateful());
        let chained =
            responses(r#"{"model":"m","input":"x","store":false,"previous_response_id":"resp_1"}"#);
        assert!(chained.stateful());
        assert_eq!(chained.previous_response_id(), Some("resp_1"));
        assert!(responses(r#"{"model":"m","store":false,"background":true}"#).stateful());
        assert!(!responses(r#"{"model":"m","store":false,"conversation":null}"#).stateful());
        assert!(!parse(r#"{"model":"m","messages":[]}"#).unwrap().stateful());
        let m = LlmRequest::parse(
            Endpoint::Messages,
            br#"{"model":"claude","max_tokens":64,"system":"1234","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        assert_eq!(
            (m.max_tokens(), m.endpoint().api()),
            (Some(64), crate::Api::Messages)
        );
        assert!(m.prompt_token_estimate() > 6);
        assert_eq!(
            Endpoint::from_path("/v1/messages/count_tokens"),
            Some(Endpoint::CountTokens)
        );
        assert_eq!(
            Endpoint::CountTokens.upstream_path(),
            "/messages/count_tokens"
        );
    }

    #[test]
    fn reads_metadata() {
        let req = parse(
            r#"{"messages":[{"role":"user","content":"12345678"}],"model":"m","stream":true,
                "stream_options":{"include_usage":true},"max_tokens":10,"max_completion_tokens":20,
                "temperature":0.2}"#,
        )
        .unwrap();
        assert_eq!(req.model(), "m");
        assert!(req.stream() && req.include_usage());
        assert_eq!(req.max_tokens(), Some(20));
        let messages_len = r#"[{"role":"user","content":"12345678"}]"#.len();
        assert_eq!(
            req.prompt_token_estimate() as usize,
            messages_len.div_ceil(4)
        );
    }

    #[test]
    fn defaults_when_absent() {
        let req = parse(r#"{"model":"m"}"#).unwrap();
        assert!(!req.stream() && !req.include_usage());
        assert_eq!(req.max_tokens(), None);
        assert_eq!(req.prompt_token_estimate(), 0);
    }

    #[test]
    fn rewrite_keeps_every_other_byte() {
        let text = r#"{ "temperature": 1, "model" : "a\u0062c", "x": {"model":"inner"} }"#;
        let body = Bytes::from(text);
        let req = LlmRequest::parse(Endpoint::ChatCompletions, &body).unwrap();
        assert_eq!(req.model(), "abc");
        let out = req.with_model(&body, "up\"stream");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{ "temperature": 1, "model" : "up\"stream", "x": {"model":"inner"} }"#
        );
        let same = req.with_model(&body, "abc");
        assert_eq!(
            same.as_ptr(),
            body.as_ptr(),
            "no copy when the name is unchanged"
        );
    }

    #[test]
    fn usage_is_asked_for_without_touching_anything_else() {
        let body = Bytes::from_static(br#"{"model":"a","stream":true,"messages":[]} "#);
        let req = LlmRequest::parse(Endpoint::ChatCompletions, &body).unwrap();
        assert!(req.can_ask_for_usage());
        let out = req.upstream_body(&body, "b", true);
        assert_eq!(
            &out[..],
            br#"{"model":"b","stream":true,"messages":[],"stream_options":{"include_usage":true}} "#
        );
        let parsed = LlmRequest::parse(Endpoint::ChatCompletions, &out).unwrap();
        assert!(parsed.include_usage());
        // A client that set stream_options itself is left alone, as is a non-streaming one.
        for body in [
            &br#"{"model":"a","stream":true,"stream_options":{"include_usage":false}}"#[..],
            br#"{"model":"a"}"#,
        ] {
            let body = Bytes::copy_from_slice(body);
            let req = LlmRequest::parse(Endpoint::ChatCompletions, &body).unwrap();
            assert!(!req.can_ask_for_usage());
            assert_eq!(req.upstream_body(&body, "a", true), body);
        }
    }

    #[test]
    fn refusals_name_the_problem() {
        assert!(parse("{not json")
            .unwrap_err()
            .message()
            .contains("parse the JSON"));
        assert_eq!(
            parse(r#"{"stream":true}"#).unwrap_err().param(),
            Some("model")
        );
        assert_eq!(parse(r#"{"model":3}"#).unwrap_err().param(), Some("model"));
        assert_eq!(parse(r#"{"model":""}"#).unwrap_err().param(), Some("model"));
        assert!(parse(r#"{"model":"m","stream":"yes"}"#).is_err());
        assert!(
            parse(r#"{"model":"a","model":"b"}"#).is_err(),
            "duplicate keys refused"
        );
        assert!(parse(r#"["model"]"#).is_err());
    }

    #[test]
    fn endpoints_estimate_their_own_prompt_field() {
        let body = br#"{"model":"e","input":"abcdefgh","messages":"ignored-here"}"#;
        let req = LlmRequest::parse(Endpoint::Embeddings, body).unwrap();
        assert_eq!(req.prompt_token_estimate(), 3); // `"abcdefgh"` is 10 bytes
        assert_eq!(
            Endpoint::from_path("/v1/embeddings"),
            Some(Endpoint::Embeddings)
        );
        assert_eq!(Endpoint::from_path("/v1/other"), None);
    }
}
