//! Substring scans of answer bytes as they pass: token usage, finish reason, model. Nothing is
//! parsed; each scan is a `memmem` search with a searcher built once per process (building one
//! per call, as `memmem::find` does, costs more than the search).
//!
//! A field split across two frames is missed: callers treat every result as "if seen".

use memchr::memmem::Finder;
use std::sync::LazyLock;

/// A searcher for `needle`, built on first use.
macro_rules! finder {
    ($name:ident, $needle:expr) => {
        static $name: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new($needle));
    };
}

finder!(PROMPT, b"\"prompt_tokens\":");
finder!(COMPLETION, b"\"completion_tokens\":");
finder!(TOTAL, b"\"total_tokens\":");
finder!(FINISH, b"\"finish_reason\"");
finder!(MODEL, b"\"model\":");
finder!(ID, b"\"id\":");

/// The unsigned number after the first occurrence of `finder`'s needle (whitespace allowed).
pub(crate) fn number_after(frame: &[u8], finder: &Finder<'_>) -> Option<u32> {
    let at = finder.find(frame)?;
    let rest = &frame[at + finder.needle().len()..];
    let rest = rest.trim_ascii_start();
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 9 {
        return None;
    }
    rest[..digits]
        .iter()
        .try_fold(0u32, |n, d| Some(n * 10 + u32::from(d - b'0')))
}

/// The JSON string after the first occurrence of `finder`'s needle, if it is a plain string
/// (no escapes) of at most 128 bytes; `None` for `null`, numbers and anything else.
fn string_after<'a>(frame: &'a [u8], finder: &Finder<'_>) -> Option<&'a [u8]> {
    let at = finder.find(frame)?;
    let rest = frame[at + finder.needle().len()..].trim_ascii_start();
    let rest = rest.strip_prefix(b"\"")?;
    let end = memchr::memchr2(b'"', b'\\', rest)?;
    (rest[end] == b'"' && end <= 128).then(|| &rest[..end])
}

/// Token usage as an answer reports it: the usage object of a JSON answer, or of a stream's
/// last event. Keeps the latest values seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageScan {
    prompt: Option<u32>,
    completion: Option<u32>,
    total: Option<u32>,
}

impl UsageScan {
    /// Looks at one frame (or one event's data).
    pub fn observe(&mut self, frame: &[u8]) {
        // A stream's content chunk ends with its `choices` array: a usage object (which
        // providers put after the choices) is not in it. Most frames are skipped here.
        if frame.starts_with(b"data:") && frame.trim_ascii_end().ends_with(b"]}") {
            return;
        }
        if let Some(total) = number_after(frame, &TOTAL) {
            self.total = Some(total);
            self.prompt = number_after(frame, &PROMPT).or(self.prompt);
            self.completion = number_after(frame, &COMPLETION).or(self.completion);
        }
    }

    /// Usage known some other way (a stream watch's meter).
    pub fn from_parts(prompt: Option<u32>, completion: Option<u32>, total: Option<u32>) -> Self {
        Self {
            prompt,
            completion,
            total,
        }
    }

    /// The total tokens, if the answer had a usage object.
    pub fn total(&self) -> Option<u32> {
        self.total
    }

    /// The prompt's tokens, if reported.
    pub fn prompt(&self) -> Option<u32> {
        self.prompt
    }

    /// The answer's tokens, if reported.
    pub fn completion(&self) -> Option<u32> {
        self.completion
    }
}

/// The non-null `finish_reason` in an event or answer, if it has one (`stop`, `length`,
/// `tool_calls`, ...). Every occurrence of the key is looked at (a `null` one may come first,
/// in another choice), with whitespace around the colon; a value is read up to its closing
/// quote, an escape or the data's end, at most 128 bytes.
pub fn finish_reason(data: &[u8]) -> Option<&[u8]> {
    let mut rest = data;
    while let Some(at) = FINISH.find(rest) {
        rest = &rest[at + FINISH.needle().len()..];
        let Some(value) = rest.trim_ascii_start().strip_prefix(b":") else {
            continue;
        };
        let Some(value) = value.trim_ascii_start().strip_prefix(b"\"") else {
            continue;
        };
        // A string value is a finish reason, whole or not (an escape, a frame's end).
        let end = memchr::memchr2(b'"', b'\\', value).unwrap_or(value.len());
        return Some(&value[..end.min(128)]);
    }
    None
}

/// The first `id` in an answer or event, if it is a plain string (a Responses answer's, or
/// its `response.created` event's: the response's id).
pub fn first_id(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(string_after(data, &ID)?).ok()
}

/// The answer's `model` field, if it is in this event or answer.
pub fn model(data: &[u8]) -> Option<&[u8]> {
    string_after(data, &MODEL)
}

/// `object` (one JSON object's text) without its top-level `key` field, byte for byte
/// otherwise; `None` when it has no such field (or is not an object). Strings and nesting
/// are followed, so a `"usage"` inside content is never touched.
pub fn without_field(object: &[u8], key: &[u8]) -> Option<Vec<u8>> {
    let start = object.iter().position(|b| !b.is_ascii_whitespace())?;
    if object[start] != b'{' {
        return None;
    }
    // Where each top-level member starts (after `{` or `,`) and ends (before `,` or `}`).
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut member_start = start + 1;
    let mut members: Vec<(usize, usize)> = Vec::new();
    for (i, &b) in object.iter().enumerate().skip(start) {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    members.push((member_start, i));
                    break;
                }
            }
            b',' if depth == 1 => {
                members.push((member_start, i));
                member_start = i + 1;
            }
            _ => {}
        }
    }
    let quoted = [b"\"".as_slice(), key, b"\"".as_slice()].concat();
    let at = members.iter().position(|&(from, to)| {
        let member = object[from..to].trim_ascii_start();
        member.starts_with(&quoted) && member[quoted.len()..].trim_ascii_start().starts_with(b":")
    })?;
    let (from, to) = members[at];
    // Remove the member with one of its commas: the one before it, or (first member) after.
    let (cut_from, cut_to) = if at > 0 {
        (from - 1, to)
    } else if members.len() > 1 {
        (from, members[1].0)
    } else {
        (from, to)
    };
    let mut out = Vec::with_capacity(object.len() - (cut_to - cut_from));
    out.extend_from_slice(&object[..cut_from]);
    out.extend_from_slice(&object[cut_to..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_from_the_last_event() {
        let mut usage = UsageScan::default();
        usage.observe(br#"data: {"choices":[{"delta":{"content":"hi"}}]}"#);
        assert_eq!(usage.total(), None);
        usage.observe(
            br#"data: {"choices":[],"usage":{"prompt_tokens": 12,"completion_tokens":30,"total_tokens":42}}"#,
        );
        assert_eq!(
            (usage.prompt(), usage.completion(), usage.total()),
            (Some(12), Some(30), Some(42))
        );
        // A content chunk is skipped without a search.
        usage.observe(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"\\\"total_tokens\\\":9\"}}]}\n\n",
        );
        assert_eq!(usage.total(), Some(42));
        // A number too large for the type is not trusted.
        usage.observe(br#"{"total_tokens":99999999999}"#);
        assert_eq!(usage.total(), Some(42));
    }

    #[test]
    fn finish_reason_and_model() {
        let last =
            br#"{"model":"gpt-4o-mini-2024","choices":[{"delta":{},"finish_reason":"stop"}]}"#;
        assert_eq!(finish_reason(last), Some(&b"stop"[..]));
        assert_eq!(model(last), Some(&b"gpt-4o-mini-2024"[..]));
        assert_eq!(
            finish_reason(br#"{"choices":[{"finish_reason":null}]}"#),
            None
        );
        assert_eq!(model(br#"{"model":"a\"b"}"#), None);
        // Spaces around the colon; a null choice before the finished one.
        assert_eq!(
            finish_reason(
                br#"{"choices": [{"finish_reason" : null}, {"finish_reason" : "length"}]}"#
            ),
            Some(&b"length"[..])
        );
        // The key quoted inside content is not the key.
        assert_eq!(
            finish_reason(br#"{"choices":[{"delta":{"content":"\"finish_reason\": \"x\""}}]}"#),
            None
        );
    }

    #[test]
    fn a_top_level_field_is_removed_and_nothing_else() {
        let cut =
            |o: &str| without_field(o.as_bytes(), b"usage").map(|v| String::from_utf8(v).unwrap());
        assert_eq!(
            cut(r#"{"id":"c","choices":[{"delta":{"content":"\"usage\":{}"}}],"usage":{"total_tokens":3}}"#).as_deref(),
            Some(r#"{"id":"c","choices":[{"delta":{"content":"\"usage\":{}"}}]}"#)
        );
        assert_eq!(
            cut(r#"{"usage": {"a":[1,{"b":2}]}, "choices":[]}"#).as_deref(),
            Some(r#"{ "choices":[]}"#)
        );
        assert_eq!(
            cut(r#"{"choices":[],"usage":null}"#).as_deref(),
            Some(r#"{"choices":[]}"#)
        );
        assert_eq!(cut(r#"{"usage":1}"#).as_deref(), Some("{}"));
        assert_eq!(cut(r#"{"choices":[{"usage":1}]}"#), None, "only at the top");
        assert_eq!(cut("[1]"), None);
    }
}
