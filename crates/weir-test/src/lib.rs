//! Test support for weir: a mock OpenAI-compatible upstream with fault injection.
//!
//! [`MockUpstream`] serves `POST .../chat/completions`, `.../completions`, `.../embeddings`
//! and `GET .../models` on a loopback port over HTTP/1.1 and h2c. Each request's behaviour
//! (chunk count, delays, faults) comes from its model name or its `x-mock` header: see
//! [`script`]. Every request is logged with its arrival time, so a test can assert the number
//! and spacing of attempts.
//!
//! The answer is deterministic: chunk `i` carries [`script::token`]`(i)` (`"tok{i} "`), so a
//! test can compare what a client received with [`script::answer`]. If the last message is an
//! assistant message whose text is a prefix of the answer, the mock streams the remainder
//! (prefill continuation).
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
pub mod tls;

pub use body::{Injected, StreamBody};
pub use script::{answer, token, Fault, Script};
pub use server::{LoggedRequest, MockConfig, MockUpstream};
