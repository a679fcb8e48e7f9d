//! The JSON of the OpenAI Responses API and of the Anthropic Messages API, shared by the
//! streamed answers ([`crate::StreamBody`]) and the whole ones.

use crate::body::json_str;
use std::fmt::Write as _;

/// The fields of a Responses API request that its `response` object repeats.
#[derive(serde::Deserialize, Default, Debug)]
pub(crate) struct ResponsesReq {
    #[serde(default)]
    pub(crate) instructions: Option<serde_json::Value>,
    #[serde(default)]
    pub(crate) max_output_tokens: Option<u32>,
    #[serde(default)]
    pub(crate) previous_response_id: Option<serde_json::Value>,
    #[serde(default)]
    pub(crate) store: Option<bool>,
    #[serde(default)]
    pub(crate) tools: Option<serde_json::Value>,
    #[serde(default)]
    pub(crate) tool_choice: Option<serde_json::Value>,
    #[serde(default)]
    pub(crate) parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub(crate) temperature: Option<serde_json::Value>,
    #[serde(default)]
    pub(crate) top_p: Option<serde_json::Value>,
    #[serde(default)]
    pub(crate) metadata: Option<serde_json::Value>,
}

/// A Responses API `response` object, less what changes over a stream (status, output,
/// usage).
#[derive(Debug)]
pub(crate) struct ResponseObject {
    id: String,
    /// From `"background"` to `"model"`, with a trailing comma.
    middle: String,
    /// From `"parallel_tool_calls"` to `"truncation"`, with a trailing comma.
    tail: String,
}

fn value_or(value: Option<&serde_json::Value>, default: &str) -> String {
    match value {
        Some(v) if !v.is_null() => v.to_string(),
        _ => default.to_owned(),
    }
}

impl ResponseObject {
    /// The object of response `id` for `model`, repeating the request's settings.
    pub(crate) fn new(id: String, model: &str, req: &ResponsesReq) -> Self {
        let mut middle = String::with_capacity(256);
        let _ = write!(
            middle,
            r#""background":false,"error":null,"incomplete_details":null,"instructions":{},"max_output_tokens":{},"max_tool_calls":null,"model":{},"#,
            value_or(req.instructions.as_ref(), "null"),
            req.max_output_tokens
                .map_or_else(|| "null".to_owned(), |n| n.to_string()),
            json_str(model),
        );
        let mut tail = String::with_capacity(384);
        let _ = write!(
            tail,
            r#""parallel_tool_calls":{},"previous_response_id":{},"reasoning":{{"effort":null,"summary":null}},"service_tier":"default","store":{},"temperature":{},"text":{{"format":{{"type":"text"}},"verbosity":"medium"}},"tool_choice":{},"tools":{},"top_logprobs":0,"top_p":{},"truncation":"disabled","#,
            req.parallel_tool_calls.unwrap_or(true),
            value_or(req.previous_response_id.as_ref(), "null"),
            req.store.unwrap_or(true),
            value_or(req.temperature.as_ref(), "1.0"),
            value_or(req.tool_choice.as_ref(), r#""auto""#),
            value_or(req.tools.as_ref(), "[]"),
            value_or(req.top_p.as_ref(), "1.0"),
        );
        let _ = write!(
            tail,
            r#""user":null,"metadata":{},"#,
            value_or(req.metadata.as_ref(), "{}")
        );
        Self { id, middle, tail }
    }

    /// The object with `status`, `output` (a JSON array) and, once known, the usage of
    /// `input` and `output` tokens.
    pub(crate) fn render(&self, status: &str, output: &str, usage: Option<(u64, u64)>) -> String {
        let usage = match usage {
            Some((input, output)) => responses_usage(input, output),
            None => "null".to_owned(),
        };
        format!(
            r#"{{"id":"{}","object":"response","created_at":1700000000,"status":"{status}",{}"output":{output},{}"usage":{usage}}}"#,
            self.id, self.middle, self.tail
        )
    }
}

/// The Responses API's usage object.
pub(crate) fn responses_usage(input: u64, output: u64) -> String {
    format!(
        r#"{{"input_tokens":{input},"input_tokens_details":{{"cached_tokens":0}},"output_tokens":{output},"output_tokens_details":{{"reasoning_tokens":0}},"total_tokens":{}}}"#,
        input + output
    )
}

/// An `output_text` content part.
pub(crate) fn output_text(text: &str) -> String {
    format!(
        r#"{{"type":"output_text","annotations":[],"text":{}}}"#,
        json_str(text)
    )
}

/// A `message` output item (`msg_mock_{tag}`): no content while `text` is `None`.
pub(crate) fn message_item(tag: &str, status: &str, text: Option<&str>) -> String {
    let content = text.map(output_text).unwrap_or_default();
    format!(
        r#"{{"id":"msg_mock_{tag}","type":"message","status":"{status}","content":[{content}],"role":"assistant"}}"#
    )
}

/// A `function_call` output item (`fc_mock_{tag}`, call `call_mock_{tag}`).
pub(crate) fn function_call_item(tag: &str, status: &str, name: &str, arguments: &str) -> String {
    format!(
        r#"{{"id":"fc_mock_{tag}","type":"function_call","status":"{status}","arguments":{},"call_id":"call_mock_{tag}","name":{}}}"#,
        json_str(arguments),
        json_str(name)
    )
}

/// The content block a Messages answer opens: text, or a `tool_use` of `tool` with empty
/// input.
pub(crate) fn content_block_start(tag: &str, tool: Option<&str>) -> String {
    match tool {
        None => r#"{"type":"text","text":""}"#.to_owned(),
        Some(name) => tool_use(tag, name, "{}"),
    }
}

/// A `tool_use` content block (`toolu_mock_{tag}`) with `input` (a JSON object).
pub(crate) fn tool_use(tag: &str, name: &str, input: &str) -> String {
    format!(
        r#"{{"type":"tool_use","id":"toolu_mock_{tag}","name":{},"input":{input}}}"#,
        json_str(name)
    )
}

/// A whole Messages API answer.
pub(crate) fn message(
    tag: &str,
    model: &str,
    content: &str,
    stop_reason: &str,
    input: u64,
    output: u64,
) -> String {
    format!(
        r#"{{"id":"msg_mock_{tag}","type":"message","role":"assistant","model":{},"content":[{content}],"stop_reason":"{stop_reason}","stop_sequence":null,"usage":{{"input_tokens":{input},"output_tokens":{output}}}}}"#,
        json_str(model)
    )
}

/// An Anthropic-shaped error body.
pub(crate) fn anthropic_error(kind: &str, message: &str) -> String {
    format!(
        r#"{{"type":"error","error":{{"type":"{kind}","message":{}}}}}"#,
        json_str(message)
    )
}
