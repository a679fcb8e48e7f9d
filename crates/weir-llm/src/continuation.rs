//! Continuing an answer that broke mid-stream.
//!
//! [`Transcript`] records, cheaply, what a client has received of a chat-completion stream:
//! the completion `id`, the content text (kept as the escaped JSON string bytes, unescaped only
//! when needed), and whether tool calls or several choices make a continuation unsafe. It
//! reads each event with substring scans, not a JSON parse.
//!
//! Two ways to continue on another target:
//! - **prefill** ([`prefill_request`]): send the original request with the partial answer as a
//!   final assistant message; the target writes the rest;
//! - **replay** ([`Replay`]): send the original request again and drop the new answer's text
//!   up to what the client already has, if it matches exactly; if it diverges, stop.
//!
//! Either way the continuation's events are re-labelled with the original `id`
//! ([`relabel`]), so the client sees one stream.

use bytes::{Bytes, BytesMut};
use memchr::memmem;
use std::sync::LazyLock;

static CONTENT: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"content\":"));
static TOOL_CALLS: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"tool_calls\""));
static ID: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"\"id\":"));

/// The JSON string starting at `s[0] == b'"'`: its bytes between the quotes (still escaped),
/// and the index after the closing quote.
pub(crate) fn json_string(s: &[u8]) -> Option<(&[u8], usize)> {
    if s.first() != Some(&b'"') {
        return None;
    }
    let mut i = 1;
    // An escape at the very end leaves nothing after it: no closing quote (found by fuzzing).
    while let Some(at) = memchr::memchr2(b'"', b'\\', s.get(i..)?) {
        let at = i + at;
        if s[at] == b'\\' {
            i = at + 2;
            continue;
        }
        return Some((&s[1..at], at + 1));
    }
    None
}

pub(crate) fn skip_ws(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    &s[start..]
}

/// The string value of the first `"key":` found by `finder` in `json`, still escaped.
pub(crate) fn string_field<'a>(json: &'a [u8], finder: &memmem::Finder<'_>) -> Option<&'a [u8]> {
    let at = finder.find(json)?;
    let value = skip_ws(&json[at + finder.needle().len()..]);
    json_string(value).map(|(s, _)| s)
}

/// Unescapes JSON string bytes (without their quotes).
pub fn unescape(escaped: &[u8]) -> Option<String> {
    let mut quoted = Vec::with_capacity(escaped.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(escaped);
    quoted.push(b'"');
    serde_json::from_slice(&quoted).ok()
}

/// What a client has received of one chat-completion stream. See the [module docs](self).
#[derive(Debug, Default, Clone)]
pub struct Transcript {
    id: Option<Box<str>>,
    content: Vec<u8>,
    tool_calls: bool,
    events: u64,
    /// Where `"content":` was in the last event: a stream's chunks share their prefix (id,
    /// object, created, model), so it is usually there again, and found without a search.
    content_at: Option<usize>,
}

impl Transcript {
    /// Records one event's data (a `chat.completion.chunk` JSON object).
    pub fn record(&mut self, data: &[u8]) {
        self.events += 1;
        if self.id.is_none() {
            if let Some(id) = string_field(data, &ID) {
                self.id = std::str::from_utf8(id).ok().map(Into::into);
            }
        }
        const KEY: &[u8] = b"\"content\":";
        let at = match self.content_at {
            Some(at) if data.get(at..at + KEY.len()) == Some(KEY) => Some(at),
            _ => CONTENT.find(data),
        };
        self.content_at = at;
        let content =
            at.and_then(|at| json_string(skip_ws(&data[at + KEY.len()..])).map(|(s, _)| s));
        match content {
            Some(content) => self.content.extend_from_slice(content),
            None => {
                if !self.tool_calls && TOOL_CALLS.find(data).is_some() {
                    self.tool_calls = true;
                }
            }
        }
    }

    /// The completion id the client saw first.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The text delivered so far.
    pub fn text(&self) -> Option<String> {
        unescape(&self.content)
    }

    /// Whether the answer contains tool calls (never continued by prefill).
    pub fn has_tool_calls(&self) -> bool {
        self.tool_calls
    }

    /// Content events recorded.
    pub fn events(&self) -> u64 {
        self.events
    }
}

/// The original request body with the partial answer appended as a final assistant message,
/// for a target that continues a prefilled answer.
pub fn prefill_request(body: &[u8], partial: &str) -> Option<Bytes> {
    let mut request: serde_json::Value = serde_json::from_slice(body).ok()?;
    let messages = request.get_mut("messages")?.as_array_mut()?;
    messages.push(serde_json::json!({"role": "assistant", "content": partial}));
    serde_json::to_vec(&request).ok().map(Bytes::from)
}

/// What of `delivered` a prefill sends as the final assistant message, and what the
/// continuation is expected to say again first (and is dropped from it): Anthropic's Messages
/// API refuses a final assistant message that ends in whitespace, so that goes unsent.
pub fn prefill_text(api: crate::Api, delivered: &str) -> (&str, &str) {
    match api {
        crate::Api::Messages => {
            let sent = delivered.trim_end();
            (sent, &delivered[sent.len()..])
        }
        _ => (delivered, ""),
    }
}

/// Replaces the `id` of a continuation event with the original stream's, so that the client
/// sees one completion. Events without an `id` pass unchanged.
pub fn relabel(data: &[u8], id: &str) -> Bytes {
    let Some(at) = ID.find(data) else {
        return Bytes::copy_from_slice(data);
    };
    let value_at = at + ID.needle().len();
    let rest = &data[value_at..];
    let value = skip_ws(rest);
    let offset = value_at + (rest.len() - value.len());
    let Some((_, end)) = json_string(value) else {
        return Bytes::copy_from_slice(data);
    };
    let quoted = serde_json::to_string(id).expect("strings serialize");
    let mut out = BytesMut::with_capacity(data.len() + quoted.len());
    out.extend_from_slice(&data[..offset]);
    out.extend_from_slice(quoted.as_bytes());
    out.extend_from_slice(&data[offset + end..]);
    out.freeze()
}

/// What a replayed answer's event becomes.
#[derive(Debug, PartialEq, Eq)]
pub enum Replayed {
    /// Entirely within what the client has: dropped.
    Drop,
    /// Forward as is (past the prefix).
    Keep,
    /// Forward with its content replaced by this remainder (the event straddles the prefix).
    Trim(String),
    /// The new answer says something else than the client already has: stop.
    Diverged,
}

/// Suppresses the part of a replayed answer that the client already received.
#[derive(Debug)]
pub struct Replay {
    /// What the client has, not yet matched by the replay.
    remaining: String,
}

impl Replay {
    /// A replay of an answer of which the client has `delivered`.
    pub fn new(delivered: String) -> Self {
        Self {
            remaining: delivered,
        }
    }

    /// Whether the replay has caught up with what the client has.
    pub fn caught_up(&self) -> bool {
        self.remaining.is_empty()
    }

    /// Judges one replayed event by its content text.
    pub fn next(&mut self, content: Option<&str>) -> Replayed {
        if self.remaining.is_empty() {
            return Replayed::Keep;
        }
        let Some(content) = content else {
            // No text (a role or usage event): drop it while catching up.
            return Replayed::Drop;
        };
        if let Some(rest) = self.remaining.strip_prefix(content) {
            self.remaining = rest.to_owned();
            return Replayed::Drop;
        }
        if let Some(extra) = content.strip_prefix(self.remaining.as_str()) {
            let extra = extra.to_owned();
            self.remaining.clear();
            return Replayed::Trim(extra);
        }
        Replayed::Diverged
    }
}

/// Moves `delivered` tokens of a prefill continuation's usage event from prompt to completion:
/// the continuation counted the prefilled answer as prompt, the client received it as
/// completion. `None` if the event has no usage object.
pub fn add_delivered_usage(data: &[u8], delivered: u64) -> Option<Bytes> {
    let mut chunk: serde_json::Value = serde_json::from_slice(data).ok()?;
    let usage = chunk.get_mut("usage")?.as_object_mut()?;
    let get = |usage: &serde_json::Map<String, serde_json::Value>, k: &str| {
        usage
            .get(k)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    let prompt = get(usage, "prompt_tokens");
    let completion = get(usage, "completion_tokens");
    usage.insert(
        "prompt_tokens".into(),
        prompt.saturating_sub(delivered).into(),
    );
    usage.insert("completion_tokens".into(), (completion + delivered).into());
    serde_json::to_vec(&chunk).ok().map(Bytes::from)
}

/// Replaces the content of a chunk event (a full parse: once per continuation, not per chunk).
pub fn with_content(data: &[u8], content: &str) -> Option<Bytes> {
    let mut chunk: serde_json::Value = serde_json::from_slice(data).ok()?;
    let delta = chunk
        .get_mut("choices")?
        .get_mut(0)?
        .get_mut("delta")?
        .as_object_mut()?;
    delta.insert("content".into(), content.into());
    serde_json::to_vec(&chunk).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chunk(id: &str, content: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "id": id, "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]
        }))
        .unwrap()
    }

    #[test]
    fn transcript_reads_id_text_and_tool_calls() {
        let mut t = Transcript::default();
        t.record(br#"{"id":"c1","choices":[{"delta":{"role":"assistant","content":""}}]}"#);
        t.record(&chunk("c1", "He said \"hi\"\n"));
        t.record(r#"{"id":"c1","choices":[{"delta":{"content": "é"}}]}"#.as_bytes());
        assert_eq!(t.id(), Some("c1"));
        assert_eq!(t.text().unwrap(), "He said \"hi\"\né");
        assert!(!t.has_tool_calls());
        t.record(
            br#"{"id":"c1","choices":[{"delta":{"content":null,"tool_calls":[{"index":0}]}}]}"#,
        );
        assert!(t.has_tool_calls());
    }

    #[test]
    fn a_string_cut_after_an_escape_has_no_end() {
        assert_eq!(json_string(br#""a\"#), None);
        assert_eq!(json_string(br#""a\"b"#), None);
        assert_eq!(
            json_string(br#""a\"b""#).map(|(s, _)| s),
            Some(&br#"a\"b"#[..])
        );
    }

    #[test]
    fn relabel_swaps_the_id_only() {
        let out = relabel(br#"{"id": "new-1","object":"x","choices":[]}"#, "orig");
        assert_eq!(&out[..], br#"{"id": "orig","object":"x","choices":[]}"#);
        assert_eq!(&relabel(b"{}", "orig")[..], b"{}");
    }

    #[test]
    fn prefill_appends_the_partial_answer() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"q"}],"stream":true}"#;
        let out: serde_json::Value =
            serde_json::from_slice(&prefill_request(body, "tok0 to").unwrap()).unwrap();
        assert_eq!(
            out["messages"][1],
            serde_json::json!({"role":"assistant","content":"tok0 to"})
        );
        assert_eq!(out["stream"], true);
    }

    #[test]
    fn replay_drops_trims_and_detects_divergence() {
        let mut r = Replay::new("ab cd".into());
        assert_eq!(r.next(None), Replayed::Drop);
        assert_eq!(r.next(Some("ab ")), Replayed::Drop);
        assert_eq!(r.next(Some("cd ef")), Replayed::Trim(" ef".into()));
        assert!(r.caught_up());
        assert_eq!(r.next(Some("gh")), Replayed::Keep);
        let mut d = Replay::new("ab".into());
        assert_eq!(d.next(Some("ax")), Replayed::Diverged);
    }

    #[test]
    fn prefill_usage_counts_the_delivered_tokens_as_completion() {
        let usage = br#"{"id":"c","choices":[],"usage":{"prompt_tokens":30,"completion_tokens":5,"total_tokens":35}}"#;
        let out: serde_json::Value =
            serde_json::from_slice(&add_delivered_usage(usage, 3).unwrap()).unwrap();
        assert_eq!(out["usage"]["completion_tokens"], 8);
        assert_eq!(out["usage"]["prompt_tokens"], 27);
        assert_eq!(out["usage"]["total_tokens"], 35);
        assert!(add_delivered_usage(br#"{"choices":[]}"#, 3).is_none());
    }

    #[test]
    fn with_content_rewrites_the_delta() {
        let out = with_content(&chunk("c", "cd ef"), " ef").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["choices"][0]["delta"]["content"], " ef");
        assert_eq!(v["id"], "c");
    }

    /// Tokens of an answer, as a model would stream them.
    fn tokens() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec("[a-zé\"\\\\ \\n]{1,6}", 1..30)
    }

    proptest! {
        #[test]
        fn replay_after_any_cut_yields_exactly_the_original(tokens in tokens(), cut in any::<usize>()) {
            let cut = cut % (tokens.len() + 1);
            // The client received the first `cut` events, recorded by the transcript.
            let mut t = Transcript::default();
            for token in &tokens[..cut] {
                t.record(&chunk("orig", token));
            }
            let delivered = t.text().unwrap();
            // The replay streams the whole answer again; what passes completes the text.
            let mut replay = Replay::new(delivered.clone());
            let mut received = delivered;
            for token in &tokens {
                match replay.next(Some(token)) {
                    Replayed::Drop => {}
                    Replayed::Keep => received.push_str(token),
                    Replayed::Trim(rest) => received.push_str(&rest),
                    Replayed::Diverged => prop_assert!(false, "a faithful replay never diverges"),
                }
            }
            prop_assert_eq!(received, tokens.concat());
        }

        #[test]
        fn prefill_after_any_cut_yields_exactly_the_original(tokens in tokens(), cut in any::<usize>()) {
            let answer = tokens.concat();
            let cut = cut % (tokens.len() + 1);
            let mut t = Transcript::default();
            for token in &tokens[..cut] {
                t.record(&chunk("orig", token));
            }
            let partial = t.text().unwrap();
            // The request carries the partial answer; a prefilling model writes the rest.
            let body = prefill_request(br#"{"model":"m","messages":[]}"#, &partial).unwrap();
            let sent: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let prefix = sent["messages"][0]["content"].as_str().unwrap().to_owned();
            prop_assert!(answer.starts_with(&prefix));
            let rest = &answer[prefix.len()..];
            prop_assert_eq!(format!("{prefix}{rest}"), answer);
            prop_assert_eq!(prefix, tokens[..cut].concat());
        }

        #[test]
        fn relabelled_events_keep_everything_but_the_id(id in "[a-z0-9-]{1,20}", content in "[a-z \"]{0,20}") {
            let event = chunk("chatcmpl-new", &content);
            let out: serde_json::Value = serde_json::from_slice(&relabel(&event, &id)).unwrap();
            let mut expected: serde_json::Value = serde_json::from_slice(&event).unwrap();
            expected["id"] = id.into();
            prop_assert_eq!(out, expected);
        }
    }
}
