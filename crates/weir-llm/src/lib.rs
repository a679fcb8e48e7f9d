//! LLM protocol vocabulary shared by every weir layer.
//!
//! - [`api`]: which API an exchange speaks (Chat Completions, Responses, Messages), and what
//!   each marks as content, an end, usage and an error;
//! - [`sse`]: an incremental Server-Sent Events decoder over `Bytes` frames;
//! - [`chunk`]: cheap reads of OpenAI chat-completion chunks (content, finish reason, usage,
//!   in-band errors);
//! - [`request`]: request metadata read once from the JSON body, and the model rewrite;
//! - [`scan`]: substring scans of answers as they pass (usage, finish reason, model);
//! - [`error`]: OpenAI-style error bodies, as JSON or as an SSE event;
//! - [`failure`]: the one failure classification that breaker, failover and metrics share;
//! - [`stream`]: watching a streamed answer (whole events, complete or cut, continued elsewhere).
//!
//! This crate knows the wire formats; it holds no I/O, no runtime and no tower types, so any
//! layer (or any other proxy) can use it.

pub mod api;
pub mod chunk;
pub mod continuation;
pub mod error;
pub mod failure;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod request;
pub mod scan;
pub mod sse;
pub mod stream;

pub use api::Api;
pub use chunk::{Chunk, Usage};
pub use error::{ErrorBody, ErrorKind};
pub use failure::{Failure, Rejection};
pub use request::{Endpoint, LlmRequest};
pub use sse::{SseDecoder, SseEvent};
