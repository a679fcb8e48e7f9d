//! What the service behind the layer tells it about an exchange.

use crate::recorder::{Failover, Labels, Phase, Price};
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

/// The layer puts a `Tally` in each request's extensions; the service behind it writes what
/// only it knows: the labels once routed, attempts, failovers, the time the upstream request
/// left, usage it consumed, the model's price. Every method is cheap and may be skipped: a
/// service that writes nothing gets requests counted under empty labels.
#[derive(Clone, Debug, Default)]
pub struct Tally(Arc<Mutex<Notes>>);

#[derive(Debug, Default)]
pub(crate) struct Notes {
    pub(crate) labels: Option<Labels>,
    pub(crate) operation: Option<&'static str>,
    pub(crate) attempts: u32,
    pub(crate) sent: Option<Instant>,
    pub(crate) failovers: Vec<Failover>,
    pub(crate) usage: Option<(u32, u32)>,
    pub(crate) input_estimate: Option<u32>,
    pub(crate) price: Option<Price>,
}

impl Tally {
    fn with<T>(&self, f: impl FnOnce(&mut Notes) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn take(&self) -> Notes {
        self.with(std::mem::take)
    }

    /// The exchange's labels, once it is routed.
    pub fn labels(&self, labels: Labels) {
        self.with(|n| n.labels = Some(labels));
    }

    /// The provider now answering (after a stream was continued elsewhere).
    pub fn provider(&self, provider: Arc<str>, model: Arc<str>) {
        self.with(|n| {
            let labels = n.labels.get_or_insert_with(Labels::default);
            labels.provider = provider;
            labels.model = model;
        });
    }

    /// The GenAI operation (`chat`, `text_completion`, `embeddings`, `responses`, `messages`,
    /// `count_tokens`), for the trace span.
    pub fn operation(&self, operation: &'static str) {
        self.with(|n| n.operation = Some(operation));
    }

    /// How many upstream attempts the answer took.
    pub fn attempts(&self, attempts: u32) {
        self.with(|n| n.attempts = attempts);
    }

    /// The first upstream request is leaving now (later calls change nothing): the time
    /// before it is the gateway's own overhead.
    pub fn sent(&self) {
        let now = Instant::now();
        self.with(|n| {
            n.sent.get_or_insert(now);
        });
    }

    /// The request moved from one provider to another.
    pub fn failover(&self, from: Arc<str>, to: Arc<str>, phase: Phase) {
        self.with(|n| n.failovers.push(Failover { from, to, phase }));
    }

    /// Usage the service read and kept from the client (an event it removed from the
    /// stream): prompt and answer tokens.
    pub fn usage(&self, prompt: u32, completion: u32) {
        self.with(|n| n.usage = Some((prompt, completion)));
    }

    /// The service's estimate of the prompt's tokens, used when the answer reports none.
    pub fn input_estimate(&self, tokens: u32) {
        self.with(|n| n.input_estimate = Some(tokens));
    }

    /// The price of the model that answers.
    pub fn price(&self, price: Price) {
        self.with(|n| n.price = Some(price));
    }
}

impl Tally {
    pub(crate) fn peek_labels(&self) -> Labels {
        self.with(|n| n.labels.clone().unwrap_or_default())
    }
}
