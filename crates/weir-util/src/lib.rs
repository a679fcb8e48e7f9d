//! Primitives that weir's layer crates share, so that none of them writes them again:
//!
//! - [`Window`]: two counts over a sliding window of ten buckets (a breaker's successes and
//!   failures, a retry budget's requests and retries), on tokio's clock;
//! - [`body::Local`]: a response body that is either the layer's own small answer (a 429, a
//!   503) or the inner service's body.
//!
//! ```
//! use std::time::Duration;
//! use tokio::time::Instant;
//! use weir_util::Window;
//!
//! let start = Instant::now();
//! let mut window = Window::new(Duration::from_secs(10), start);
//! window.record(start, 3, 1);
//! assert_eq!(window.totals(start), (3, 1));
//! assert_eq!(window.totals(start + Duration::from_secs(11)), (0, 0), "aged out");
//! ```

pub mod body;
mod window;

pub use window::Window;
