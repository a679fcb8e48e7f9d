//! Failover decisions for LLM calls, shared by any router: what to do after an attempt
//! failed before the client saw anything ([`policy`]), and how many retries the traffic
//! can afford ([`budget`]). Both are pure and take time as an argument; the router that acts
//! on them lives with its transport (weir's binary).
//!
//! ```
//! use std::time::Duration;
//! use weir_failover::policy::{Decision, RetryPolicy};
//! use weir_llm::Failure;
//!
//! let policy = RetryPolicy::default();
//! let throttled = Failure::RateLimited { retry_after: Some(Duration::from_secs(2)) };
//! assert_eq!(policy.decide(throttled, 1, 0.5), Decision::RetrySame { after: Duration::from_secs(2) });
//! assert_eq!(policy.decide(Failure::HeadersTimeout, 1, 0.5), Decision::NextTarget);
//! ```

pub mod budget;
pub mod policy;
pub mod router;
pub mod stream;

pub use budget::RetryBudget;
pub use policy::{Decision, RetryPolicy};
pub use router::{Cut, Failover, Judge, Judged, Order, Resumer, Routed, Target};
pub use stream::StreamBody;
