//! One target of a route: a provider, the model name sent to it (its deployment), how it
//! continues a cut answer, and the model's price.

use super::provider::{Deployment, Upstream};
use crate::config::Continuation;
use std::sync::Arc;

/// One target of a route.
#[derive(Debug)]
pub(crate) struct RouteTarget {
    pub(crate) upstream: Arc<Upstream>,
    /// The model on that provider: its breaker and its stack.
    pub(crate) deployment: Arc<Deployment>,
    /// The model name sent to it.
    pub(crate) model: Arc<str>,
    pub(crate) continuation: Continuation,
    /// The model's price (`[prices]`), for the cost metric.
    pub(crate) price: Option<weir_metrics::Price>,
}
