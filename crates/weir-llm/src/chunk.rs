//! OpenAI chat-completion chunks, read cheaply.
//!
//! [`Chunk::parse`] reads one `data:` payload of a `chat.completion.chunk` stream (or a whole
//! non-streaming `chat.completion`) into borrowed views: the first choice's content delta, any
//! finish reason, the usage block and an in-band `{"error": ...}` object. It allocates nothing
//! unless a string holds escapes, and it never builds a DOM: fields weir does not need are
//! skipped by the scanner.
//!
//! ```
//! use weir_llm::chunk::Chunk;
//!
//! let chunk = Chunk::parse(br#"{"id":"c1","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#).unwrap();
//! assert_eq!(chunk.content.as_deref(), Some("Hi"));
//! assert_eq!(chunk.finish_reason, None);
//!
//! let err = Chunk::parse(br#"{"error":{"message":"overloaded","type":"server_error"}}"#).unwrap();
//! assert_eq!(err.error.unwrap().message.as_deref(), Some("overloaded"));
//! ```

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

/// The parts of a chunk weir looks at. Borrowed from the payload.
#[derive(Debug, Default, Deserialize)]
pub struct Chunk<'a> {
    /// The completion id (`chatcmpl-...`), the same on every chunk of a stream.
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    pub id: Option<Cow<'a, str>>,
    /// The model that produced the chunk.
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    pub model: Option<Cow<'a, str>>,
    /// What the choices carry, summed up.
    #[serde(default, borrow, rename = "choices")]
    choices: Choices<'a>,
    /// Token usage, on the last chunk when `stream_options.include_usage` was asked.
    #[serde(default)]
    pub usage: Option<Usage>,
    /// An in-band error (providers send one instead of a chunk when a stream fails).
    #[serde(default, borrow)]
    pub error: Option<ApiError<'a>>,
    /// The chunk's content (`delta.content` or `message.content`) of the first choice.
    #[serde(skip)]
    pub content: Option<Cow<'a, str>>,
    /// The first finish reason any choice carries.
    #[serde(skip)]
    pub finish_reason: Option<Cow<'a, str>>,
    /// Whether any choice carries a tool-call delta.
    #[serde(skip)]
    pub has_tool_calls: bool,
}

impl<'a> Chunk<'a> {
    /// Parses one event payload.
    pub fn parse(payload: &'a [u8]) -> Result<Self, serde_json::Error> {
        let mut chunk: Chunk<'a> = serde_json::from_slice(payload)?;
        let choices = std::mem::take(&mut chunk.choices);
        chunk.content = choices.content;
        chunk.finish_reason = choices.finish_reason;
        chunk.has_tool_calls = choices.has_tool_calls;
        Ok(chunk)
    }
}

/// OpenAI's usage block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Tokens generated.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Their sum, as the provider reports it.
    #[serde(default)]
    pub total_tokens: u64,
}

/// An `{"error": {...}}` object, as providers send it in a body or an event.
#[derive(Debug, Default, Deserialize)]
pub struct ApiError<'a> {
    /// Human-readable message.
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    pub message: Option<Cow<'a, str>>,
    /// Error type (`invalid_request_error`, `server_error`, ...).
    #[serde(default, borrow, rename = "type", deserialize_with = "opt_cow")]
    pub kind: Option<Cow<'a, str>>,
    /// Machine-readable code (`context_length_exceeded`, ...). Some providers send a number.
    #[serde(default, deserialize_with = "code")]
    pub code: Option<Cow<'a, str>>,
}

fn code<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Code<'a> {
        Text(#[serde(borrow, deserialize_with = "cow")] Cow<'a, str>),
        Number(i64),
        Other(IgnoredAny),
    }
    Ok(match Option::<Code<'de>>::deserialize(d)? {
        Some(Code::Text(t)) => Some(t),
        Some(Code::Number(n)) => Some(Cow::Owned(n.to_string())),
        Some(Code::Other(_)) | None => None,
    })
}

/// A string, borrowed from the payload unless it holds escapes. (`#[serde(borrow)]` does not
/// reach through `Option`, so `Option<Cow<str>>` would always allocate.)
fn cow<'de, D: Deserializer<'de>>(d: D) -> Result<Cow<'de, str>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Cow<'de, str>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Cow::Borrowed(v))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v.to_owned()))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v))
        }
    }
    d.deserialize_str(V)
}

fn opt_cow<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Wrap<'a>(#[serde(borrow, deserialize_with = "cow")] Cow<'a, str>);
    Ok(Option::<Wrap<'de>>::deserialize(d)?.map(|w| w.0))
}

/// The sum of a `choices` array, gathered without collecting it.
#[derive(Debug, Default)]
struct Choices<'a> {
    content: Option<Cow<'a, str>>,
    finish_reason: Option<Cow<'a, str>>,
    has_tool_calls: bool,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default, borrow)]
    delta: Option<Message<'a>>,
    #[serde(default, borrow)]
    message: Option<Message<'a>>,
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    finish_reason: Option<Cow<'a, str>>,
    /// Legacy `/v1/completions` chunks carry `text`.
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    text: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    content: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<IgnoredAny>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Choices<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Choices<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of choices")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Choices::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Choices::default();
                let mut first = true;
                while let Some(choice) = seq.next_element::<Choice<'de>>()? {
                    let message = choice.delta.or(choice.message);
                    if let Some(message) = message {
                        out.has_tool_calls |= message.tool_calls.is_some();
                        if first {
                            out.content = message.content;
                        }
                    } else if first {
                        out.content = choice.text;
                    }
                    if out.finish_reason.is_none() {
                        out.finish_reason = choice.finish_reason;
                    }
                    first = false;
                }
                Ok(out)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Err(de::Error::custom("choices must be an array"))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_content_and_finish_reason() {
        let chunk = Chunk::parse(
            br#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"a\"b"},"logprobs":null,"finish_reason":"stop"}]}"#,
        )
        .unwrap();
        assert_eq!(chunk.id.as_deref(), Some("chatcmpl-1"));
        assert_eq!(chunk.model.as_deref(), Some("m"));
        assert_eq!(chunk.content.as_deref(), Some("a\"b"));
        assert_eq!(chunk.finish_reason.as_deref(), Some("stop"));
        assert!(chunk.usage.is_none() && chunk.error.is_none() && !chunk.has_tool_calls);
    }

    #[test]
    fn plain_content_is_borrowed() {
        let payload = br#"{"choices":[{"delta":{"content":"plain"}}]}"#;
        let chunk = Chunk::parse(payload).unwrap();
        assert!(matches!(chunk.content, Some(Cow::Borrowed("plain"))));
    }

    #[test]
    fn usage_chunk_has_empty_choices() {
        let chunk = Chunk::parse(
            br#"{"id":"c","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}"#,
        )
        .unwrap();
        assert_eq!(
            chunk.usage,
            Some(Usage {
                prompt_tokens: 9,
                completion_tokens: 12,
                total_tokens: 21
            })
        );
        assert!(chunk.content.is_none());
    }

    #[test]
    fn tool_calls_are_noticed() {
        let chunk = Chunk::parse(
            br#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]}}]}"#,
        )
        .unwrap();
        assert!(chunk.has_tool_calls);
        assert!(chunk.content.is_none());
    }

    #[test]
    fn in_band_error_with_numeric_code() {
        let chunk =
            Chunk::parse(br#"{"error":{"message":"boom","type":"server_error","code":500}}"#)
                .unwrap();
        let error = chunk.error.unwrap();
        assert_eq!(error.message.as_deref(), Some("boom"));
        assert_eq!(error.kind.as_deref(), Some("server_error"));
        assert_eq!(error.code.as_deref(), Some("500"));
    }

    #[test]
    fn non_streaming_message_and_legacy_text() {
        let full = Chunk::parse(
            br#"{"choices":[{"message":{"role":"assistant","content":"whole"},"finish_reason":"length"}]}"#,
        )
        .unwrap();
        assert_eq!(full.content.as_deref(), Some("whole"));
        assert_eq!(full.finish_reason.as_deref(), Some("length"));
        let legacy = Chunk::parse(br#"{"choices":[{"text":"t","index":0}]}"#).unwrap();
        assert_eq!(legacy.content.as_deref(), Some("t"));
    }

    #[test]
    fn malformed_payload_is_an_error() {
        assert!(Chunk::parse(br#"{"choices":[{"delta":"#).is_err());
        assert!(Chunk::parse(br#"{"choices":{"a":1}}"#).is_err());
    }
}
