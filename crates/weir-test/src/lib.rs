//! Test support for weir: a mock OpenAI-compatible upstream with fault injection.
//!
//! [`MockUpstream`] serves, on a loopback port over HTTP/1.1 and h2c, three APIs:
//!
//! - **Chat Completions** and legacy **Completions**: `POST .../chat/completions`,
//!   `.../completions`, with `.../embeddings` and `GET .../models`;
//! - the OpenAI **Responses API**: `POST .../responses` (streamed as `event:`/`data:` pairs,
//!   `response.created` ... `response.completed`, with a `sequence_number` counting from 0 and no
//!   `[DONE]`), `GET .../responses/{id}` and `DELETE .../responses/{id}`;
//! - the Anthropic **Messages API**: `POST .../messages` (streamed `message_start` ...
//!   `message_stop`, with Anthropic's `ping`) and `POST .../messages/count_tokens`. These
//!   paths want an `anthropic-version` header, read the API key from `x-api-key` (or a bearer
//!   token, as the `anthropic` SDK 2.x sends it), and answer errors Anthropic-shaped.
//!
//! Each request's behaviour (chunk count, delays, a tool call, faults) comes from its model name
//! or its `x-mock` header: see [`script`], whose tables say which fault does what in each API.
//! Every request is logged with its arrival time, so a test can assert the number and spacing of
//! attempts.
//!
//! The answer is deterministic: chunk `i` carries [`script::token`]`(i)` (`"tok{i} "`), so a
//! test can compare what a client received with [`script::answer`]. `max_tokens` (Responses:
//! `max_output_tokens`) caps the chunks, and usage counts the prompt as a quarter of the request
//! body's bytes and the answer as its chunks. If the last message is an assistant message whose
//! text is a prefix of the answer (on Messages, its content may be an array of text blocks), the
//! mock streams the remainder (prefill continuation). With `tool=NAME`, a Responses or Messages
//! answer is one call of `NAME` with the arguments [`script::TOOL_ARGUMENTS`].
//!
//! [`raw::RawUpstream`] is the hostile one: it writes the exact bytes it is given, HTTP framing
//! included, and cuts them at any byte offset (close, reset, or silence).
//!
//! ```no_run
//! # async fn doc() {
//! let mock = weir_test::MockUpstream::start().await;
//! println!("point a provider at {}", mock.base_url());
//! assert_eq!(mock.requests().len(), 0);
//! # }
//! ```

mod body;
pub mod raw;
pub mod redis;
pub mod script;
mod server;
mod shapes;
#[cfg(test)]
mod tests;
pub mod tls;

pub use body::{Injected, StreamBody};
pub use script::{answer, token, Fault, Script};
pub use server::{LoggedRequest, MockConfig, MockUpstream};
