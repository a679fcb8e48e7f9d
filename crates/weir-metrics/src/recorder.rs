//! What the layer measures, and the trait a metrics backend implements to receive it.

use crate::histogram::Gaps;
use http::StatusCode;
use std::sync::Arc;
use std::time::Duration;

/// The labels of an exchange: configured names only (a route, a provider, the model sent
/// upstream), so that no client-controlled string becomes a label. Empty when the request was
/// refused before it was routed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Labels {
    /// The route (the model name clients ask for).
    pub route: Arc<str>,
    /// The provider that answered (the last one, when a stream was continued elsewhere).
    pub provider: Arc<str>,
    /// The model name sent to that provider.
    pub model: Arc<str>,
}

/// One empty name, shared (an empty `Arc<str>` of its own would be an allocation each).
static EMPTY: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));

impl Default for Labels {
    /// Three empty names, without allocating.
    fn default() -> Self {
        Self {
            route: EMPTY.clone(),
            provider: EMPTY.clone(),
            model: EMPTY.clone(),
        }
    }
}

impl Labels {
    /// Labels from three names.
    pub fn new(route: &str, provider: &str, model: &str) -> Self {
        Self {
            route: route.into(),
            provider: provider.into(),
            model: model.into(),
        }
    }
}

/// How an exchange ended, as its client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A complete answer.
    Ok,
    /// A complete answer, continued on another provider after a stream was cut.
    Rescued,
    /// A 4xx other than 429: the client's request was refused (bad input, auth, not found).
    ClientError,
    /// A 429: a rate limit said no, the client's own or every provider's.
    RateLimited,
    /// A 5xx: no provider could answer (or the gateway shed the request).
    UpstreamError,
    /// The answer started and was cut: the client was told it is incomplete.
    Truncated,
    /// The client went away before the answer ended.
    Cancelled,
}

impl Outcome {
    /// Every outcome, in a stable order.
    pub const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::Rescued,
        Outcome::ClientError,
        Outcome::RateLimited,
        Outcome::UpstreamError,
        Outcome::Truncated,
        Outcome::Cancelled,
    ];

    /// Its label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Rescued => "rescued",
            Outcome::ClientError => "client_error",
            Outcome::RateLimited => "rate_limited",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Truncated => "truncated",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// When a request moved to another provider: before its client saw anything (a failover), or
/// after its first token (a mid-stream rescue).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Before the first token.
    BeforeFirstToken,
    /// After the first token: the stream was continued elsewhere.
    AfterFirstToken,
}

impl Phase {
    /// Its label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::BeforeFirstToken => "before_first_token",
            Phase::AfterFirstToken => "after_first_token",
        }
    }
}

/// One move from a provider to another.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Failover {
    /// The provider given up.
    pub from: Arc<str>,
    /// The provider tried next.
    pub to: Arc<str>,
    /// Before or after the first token.
    pub phase: Phase,
}

/// A model's price, in USD per million tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Price {
    /// Per million prompt tokens.
    pub input: f64,
    /// Per million answer tokens.
    pub output: f64,
}

impl Price {
    /// What `input` and `output` tokens cost.
    pub fn cost(&self, input: u32, output: u32) -> f64 {
        (f64::from(input) * self.input + f64::from(output) * self.output) / 1_000_000.0
    }
}

/// The tokens of an exchange.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Prompt tokens: as the answer's usage reported them, else the gateway's estimate.
    pub input: u32,
    /// Answer tokens: as reported, else one per content event (how OpenAI-style streams send
    /// them).
    pub output: u32,
    /// Whether the answer reported its usage (else both are estimates).
    pub reported: bool,
}

/// Everything measured about one exchange, handed to [`Recorder::close`] once, when its body
/// ended, failed or was dropped.
#[derive(Debug)]
pub struct Report<'a> {
    /// Its labels as they ended (a rescue changes the provider).
    pub labels: &'a Labels,
    /// The response status.
    pub status: StatusCode,
    /// How it ended.
    pub outcome: Outcome,
    /// From the request's arrival to the body's end.
    pub duration: Duration,
    /// From the request's arrival to the first body bytes with content (a streamed answer's
    /// first event; a whole answer's first bytes).
    pub first_token: Option<Duration>,
    /// The gaps between the chunks of a stream.
    pub gaps: &'a Gaps,
    /// Prompt and answer tokens.
    pub tokens: Tokens,
    /// What the tokens cost, when the model has a price.
    pub cost_usd: Option<f64>,
    /// Upstream attempts (0: nothing went upstream).
    pub attempts: u32,
    /// Moves between providers.
    pub failovers: &'a [Failover],
    /// The gateway's own time before the first upstream request left.
    pub overhead: Option<Duration>,
    /// The answer's finish reason (`stop`, `length`, ...), when seen.
    pub finish_reason: Option<&'a str>,
}

impl Report<'_> {
    /// From the first token to the end of the answer (`None` without a first token).
    pub fn stream_duration(&self) -> Option<Duration> {
        self.duration.checked_sub(self.first_token?)
    }

    /// Answer tokens per second after the first token (`None` for an answer too short to
    /// tell).
    pub fn tokens_per_second(&self) -> Option<f64> {
        let streaming = self.stream_duration()?.as_secs_f64();
        (self.tokens.output > 1 && streaming > 0.0)
            .then(|| f64::from(self.tokens.output) / streaming)
    }
}

/// A metrics backend. The layer calls [`open`](Recorder::open) when a response's head is ready
/// and [`close`](Recorder::close) exactly once when its body ends, fails or is dropped; what
/// `open` returns (a cached series, a timer) is handed back to `close`.
pub trait Recorder: Send + Sync + 'static {
    /// Per-exchange state kept between `open` and `close`.
    type Stream: Send + 'static;

    /// A response head is out: a stream opens.
    fn open(&self, labels: &Labels) -> Self::Stream;

    /// The exchange is over.
    fn close(&self, stream: Self::Stream, report: &Report<'_>);
}

impl<R: Recorder> Recorder for Arc<R> {
    type Stream = R::Stream;

    fn open(&self, labels: &Labels) -> Self::Stream {
        (**self).open(labels)
    }

    fn close(&self, stream: Self::Stream, report: &Report<'_>) {
        (**self).close(stream, report);
    }
}
