use crate::limit::Limit;
use crate::service::{Backpressure, Mode};

/// Applies [`Backpressure`] to a service: every service it wraps shares `limit`.
#[derive(Clone, Debug)]
pub struct BackpressureLayer {
    limit: Limit,
    mode: Mode,
}

impl BackpressureLayer {
    /// A layer over `limit`, in [`Mode::Wait`].
    pub fn new(limit: Limit) -> Self {
        Self {
            limit,
            mode: Mode::Wait,
        }
    }

    /// What the service does when every permit is taken.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }
}

impl<S> tower_layer::Layer<S> for BackpressureLayer {
    type Service = Backpressure<S>;

    fn layer(&self, inner: S) -> Backpressure<S> {
        Backpressure::new(inner, self.limit.clone(), self.mode)
    }
}
