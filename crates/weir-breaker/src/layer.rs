use crate::breaker::Breaker;
use crate::classify::LlmClassifier;
use crate::service::{CircuitBreaker, Mode};

/// Applies a [`CircuitBreaker`]. Every service the layer builds shares its [`Breaker`]: one
/// layer per provider.
#[derive(Clone, Debug)]
pub struct BreakerLayer<C = LlmClassifier> {
    breaker: Breaker,
    classifier: C,
    mode: Mode,
}

impl BreakerLayer {
    /// A layer in wait mode with the default classifier.
    pub fn new(breaker: Breaker) -> Self {
        Self {
            breaker,
            classifier: LlmClassifier::default(),
            mode: Mode::Wait,
        }
    }
}

impl<C> BreakerLayer<C> {
    /// Sets what services do while the breaker is open.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Uses another classifier.
    pub fn classifier<D>(self, classifier: D) -> BreakerLayer<D> {
        BreakerLayer {
            breaker: self.breaker,
            classifier,
            mode: self.mode,
        }
    }

    /// The breaker.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }
}

impl<S, C: Clone> tower_layer::Layer<S> for BreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(
            inner,
            self.breaker.clone(),
            self.classifier.clone(),
            self.mode,
        )
    }
}
