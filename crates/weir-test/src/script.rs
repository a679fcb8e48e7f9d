//! What one mock request should do, read from the `x-mock` header or the model name.
//!
//! Directives are `key=value` pairs separated by `,` or `;`. They come from the model name after
//! an `@` (`mock@chunks=5,fault=reset_after:2`, so a weir route can pick a behaviour) and from
//! the `x-mock` header (which wins).
//!
//! | directive | meaning | default |
//! |---|---|---|
//! | `chunks=N` | content chunks in the answer (capped by the request's `max_tokens`, or `max_output_tokens` on Responses) | 20 |
//! | `delay_ms=D` | pause between chunks | 0 |
//! | `first_ms=F` | pause before the first chunk (slow first token) | 0 |
//! | `headers_ms=H` | pause before the response headers | 0 |
//! | `word=W` | the answer's tokens are `W0 W1 ...` | `tok` |
//! | `ping_ms=P` | while stalled, a keep-alive every P ms: an SSE comment (`: ping`) on Chat, Completions and Responses, an `event: ping` on Messages | none |
//! | `retry_after=S` | `Retry-After` on a 429 | none |
//! | `key=K` | a name that separates `500_once` counters | the directive string |
//! | `tool=NAME` | Responses and Messages only: the answer is one call of the tool `NAME` with the arguments `{"city":"Paris"}`, streamed in `chunks` pieces or fewer (at least one); Chat and Completions ignore it | none |
//! | `fault=...` | one of the faults below | none |
//!
//! The mock speaks three APIs, and every fault applies to each, in that API's shape:
//! Chat Completions (`.../chat/completions`) and legacy Completions (`.../completions`), the
//! OpenAI Responses API (`.../responses`), and the Anthropic Messages API (`.../messages`).
//! Chat, Completions and Responses errors are OpenAI-shaped
//! (`{"error":{"message","type","param","code"}}`); Messages errors are Anthropic-shaped
//! (`{"type":"error","error":{"type","message"}}`).
//!
//! Faults answered before any byte of the body:
//!
//! | fault | status | OpenAI `code` | Anthropic `error.type` |
//! |---|---|---|---|
//! | `429` (with `Retry-After` when `retry_after` is set) | 429 | `rate_limit_exceeded` | `rate_limit_error` |
//! | `500` | 500 | `internal` | `api_error` |
//! | `500_once` (the first request for its key, then healthy) | 500 | `internal` | `api_error` |
//! | `503` | 503 | `overloaded` | `overloaded_error` |
//! | `529` | 529 | `overloaded` | `overloaded_error` (`Overloaded`) |
//! | `context_length` | 400 | `context_length_exceeded` | `invalid_request_error` |
//! | `content_policy` | 400 | `content_policy_violation` | `invalid_request_error` |
//! | `echo_key` (the message repeats the key the request carried, as some providers do: the bearer key; on Messages the `x-api-key`, or else the bearer key) | 401 | `invalid_api_key` | `authentication_error` |
//! | `reset` | TCP reset before headers | | |
//! | `silent` | no answer at all | | |
//!
//! Stream faults, where K counts content chunks (text deltas, or tool-argument deltas), so the
//! opening events of Responses (`response.created` ... `response.content_part.added`) and of
//! Messages (`message_start`, `content_block_start`, `ping`) always precede chunk 0:
//!
//! | fault | Chat / Completions | Responses | Messages |
//! |---|---|---|---|
//! | `reset_after:K` | the connection is aborted after K chunks: the chunked body never ends | same | same |
//! | `stall_after:K` | nothing after K chunks, the connection held open (`ping_ms`: `: ping` comments) | same, `: ping` comments | same, `event: ping` events |
//! | `malformed_at:K` | a broken JSON event before chunk K (the stream goes on) | a broken `response.output_text.delta` (it takes no `sequence_number`) | a broken `content_block_delta` |
//! | `error_event_at:K` | an in-band `{"error":...}` event after K chunks, then the end | an `event: error` (`server_error`, with the next `sequence_number`), then the end | an `event: error` (`overloaded_error`), then the end |
//! | `no_done` | the stream ends after its finish reason, without `[DONE]` | everything but `response.completed` | everything but `message_stop` |
//! | `end_after:K` | a clean end after K chunks, with no finish reason | a clean end after K deltas, no closing events | same |
//!
//! Without streaming, `reset_after` resets before the headers and `stall_after` never answers;
//! the other stream faults do not apply.

use std::time::Duration;

/// A fault the mock injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 429, with `Retry-After` when `retry_after` is set.
    TooManyRequests,
    /// 500 every time.
    ServerError,
    /// 500 the first time for this key, then healthy.
    ServerErrorOnce,
    /// 503 every time.
    Unavailable,
    /// 529 `overloaded_error` every time (Anthropic's overload status).
    Overloaded,
    /// TCP reset before any response byte.
    Reset,
    /// Never answer.
    Silent,
    /// TCP reset after K chunks.
    ResetAfter(u32),
    /// Stop sending after K chunks, keeping the connection open.
    StallAfter(u32),
    /// A malformed event in place of chunk K (the stream goes on).
    MalformedAt(u32),
    /// An in-band error event after K chunks, then the stream ends (no `[DONE]`).
    ErrorEventAt(u32),
    /// The finish-reason chunk is the last thing sent: no `[DONE]`.
    NoDone,
    /// The body ends cleanly after K chunks: no finish reason, no `[DONE]` (a truncation).
    EndAfter(u32),
    /// 400 `context_length_exceeded`.
    ContextLength,
    /// 400 `content_policy_violation`.
    ContentPolicy,
    /// 401 `invalid_api_key`, its message quoting the request's bearer key.
    EchoKey,
}

/// The behaviour of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script {
    /// Content chunks in a full answer.
    pub chunks: u32,
    /// Pause between chunks.
    pub delay: Duration,
    /// Pause before the first chunk.
    pub first: Duration,
    /// Pause before headers.
    pub headers: Duration,
    /// While stalled, a keep-alive comment this often.
    pub ping: Option<Duration>,
    /// The stem of the answer's tokens.
    pub word: Option<String>,
    /// `Retry-After` seconds on a 429.
    pub retry_after: Option<u32>,
    /// The counter key for `500_once`.
    pub key: Option<String>,
    /// Responses and Messages: answer with one call of this tool instead of text.
    pub tool: Option<String>,
    /// The fault, if any.
    pub fault: Option<Fault>,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            chunks: 20,
            delay: Duration::ZERO,
            first: Duration::ZERO,
            headers: Duration::ZERO,
            ping: None,
            word: None,
            retry_after: None,
            key: None,
            tool: None,
            fault: None,
        }
    }
}

impl Script {
    /// Applies the directives of `spec` over `self`. Unknown or bad directives are errors, so a
    /// typo in a test fails loudly instead of testing nothing.
    pub fn apply(&mut self, spec: &str) -> Result<(), String> {
        for part in spec
            .split([',', ';'])
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("mock directive `{part}` is not key=value"))?;
            let number = |v: &str| {
                v.parse::<u32>()
                    .map_err(|_| format!("mock directive `{key}` needs a number, got `{v}`"))
            };
            let ms = |v: &str| number(v).map(|n| Duration::from_millis(n.into()));
            match key {
                "chunks" => self.chunks = number(value)?,
                "delay_ms" => self.delay = ms(value)?,
                "first_ms" => self.first = ms(value)?,
                "headers_ms" => self.headers = ms(value)?,
                "ping_ms" => self.ping = Some(ms(value)?),
                "word" => self.word = Some(value.to_owned()),
                "retry_after" => self.retry_after = Some(number(value)?),
                "key" => self.key = Some(value.to_owned()),
                "tool" if value.is_empty() => {
                    return Err("mock directive `tool` needs a name".into())
                }
                "tool" => self.tool = Some(value.to_owned()),
                "fault" => self.fault = Some(parse_fault(value, number)?),
                _ => return Err(format!("unknown mock directive `{key}`")),
            }
        }
        Ok(())
    }

    /// The script for a request: the mock's defaults, then the model's directives (after
    /// `@`), then the header's, each over the one before.
    pub fn for_request(
        defaults: Option<&str>,
        model: &str,
        header: Option<&str>,
    ) -> Result<Self, String> {
        let mut script = Self::default();
        let specs = [
            defaults,
            model.split_once('@').map(|(_, spec)| spec),
            header,
        ];
        for spec in specs.into_iter().flatten() {
            script.apply(spec)?;
        }
        Ok(script)
    }
}

fn parse_fault(value: &str, number: impl Fn(&str) -> Result<u32, String>) -> Result<Fault, String> {
    let (name, arg) = match value.split_once(':') {
        Some((name, arg)) => (name, Some(number(arg)?)),
        None => (value, None),
    };
    let needs = |arg: Option<u32>| arg.ok_or_else(|| format!("fault `{name}` needs `:K`"));
    Ok(match name {
        "429" => Fault::TooManyRequests,
        "500" => Fault::ServerError,
        "500_once" => Fault::ServerErrorOnce,
        "503" => Fault::Unavailable,
        "529" => Fault::Overloaded,
        "reset" => Fault::Reset,
        "silent" => Fault::Silent,
        "reset_after" => Fault::ResetAfter(needs(arg)?),
        "stall_after" => Fault::StallAfter(needs(arg)?),
        "malformed_at" => Fault::MalformedAt(needs(arg)?),
        "error_event_at" => Fault::ErrorEventAt(needs(arg)?),
        "no_done" => Fault::NoDone,
        "end_after" => Fault::EndAfter(needs(arg)?),
        "context_length" => Fault::ContextLength,
        "content_policy" => Fault::ContentPolicy,
        "echo_key" => Fault::EchoKey,
        _ => return Err(format!("unknown mock fault `{value}`")),
    })
}

/// The arguments of the mock's tool call (directive `tool=NAME`).
pub const TOOL_ARGUMENTS: &str = r#"{"city":"Paris"}"#;

/// The text of content chunk `i`: the mock's answer is these, in order.
pub fn token(i: u32) -> String {
    word_token("tok", i)
}

/// Chunk `i` of an answer whose tokens have the stem `word`.
pub fn word_token(word: &str, i: u32) -> String {
    format!("{word}{i} ")
}

/// The whole answer of `chunks` chunks.
pub fn answer(chunks: u32) -> String {
    (0..chunks).map(token).collect()
}

impl Script {
    /// Chunk `i` of this script's answer.
    pub fn token(&self, i: u32) -> String {
        word_token(self.word.as_deref().unwrap_or("tok"), i)
    }

    /// This script's whole answer.
    pub fn answer(&self) -> String {
        (0..self.chunks).map(|i| self.token(i)).collect()
    }

    /// How many pieces a tool call's arguments are streamed in: `chunks`, at most one a byte
    /// of [`TOOL_ARGUMENTS`], and at least one.
    pub fn tool_pieces(&self) -> u32 {
        let len = TOOL_ARGUMENTS.len() as u32;
        self.chunks.clamp(1, len)
    }

    /// Piece `i` of the tool call's arguments, out of [`Self::tool_pieces`].
    pub fn tool_piece(&self, i: u32) -> &'static str {
        let (len, pieces) = (TOOL_ARGUMENTS.len(), self.tool_pieces() as usize);
        let i = i as usize;
        &TOOL_ARGUMENTS[i * len / pieces..(i + 1) * len / pieces]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_then_header() {
        let s = Script::for_request(None, "mock@chunks=5,fault=reset_after:2", Some("chunks=7"))
            .unwrap();
        assert_eq!(s.chunks, 7);
        assert_eq!(s.fault, Some(Fault::ResetAfter(2)));
        assert_eq!(
            Script::for_request(None, "plain", None).unwrap(),
            Script::default()
        );
    }

    #[test]
    fn typos_fail() {
        assert!(Script::for_request(None, "m@chunk=5", None).is_err());
        assert!(Script::for_request(None, "m@fault=reset_after", None).is_err());
        assert!(Script::for_request(None, "m@delay_ms=x", None).is_err());
        assert!(Script::for_request(None, "m@tool=", None).is_err());
    }

    #[test]
    fn tool_and_529() {
        let s = Script::for_request(None, "m@tool=get_weather,fault=529", None).unwrap();
        assert_eq!(s.tool.as_deref(), Some("get_weather"));
        assert_eq!(s.fault, Some(Fault::Overloaded));
    }

    #[test]
    fn tool_pieces_cover_the_arguments() {
        for chunks in [0, 1, 3, 7, 16, 20] {
            let s = Script {
                chunks,
                ..Script::default()
            };
            let pieces = s.tool_pieces();
            assert!(pieces >= 1 && pieces <= chunks.max(1), "{chunks}: {pieces}");
            let joined: String = (0..pieces).map(|i| s.tool_piece(i)).collect();
            assert_eq!(joined, TOOL_ARGUMENTS);
            assert!((0..pieces).all(|i| !s.tool_piece(i).is_empty()));
        }
    }
}
