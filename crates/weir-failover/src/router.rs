//! The failover router: a [`Service`] over a route's targets that retries and fails over a
//! call until one target's answer is committed.
//!
//! Targets are tried in order (priority), or in an order drawn by weight for each call
//! ([`Order::Weighted`]), skipping those that are not ready (an open breaker reads as not
//! ready). What an answer means is the [`Judge`]'s business, so the router knows no protocol:
//! the judge builds each target's request from the call, and reads each result up to its
//! commit point (for an LLM stream: the first event), saying whether the client gets it or it
//! failed with a [`Failure`] class. The router then acts on [`RetryPolicy`]: the same target
//! after a pause, the next target, or the last answer, within a [`RetryBudget`] and the call's
//! deadline; with `hedge_after`, a slow first attempt is raced against the next target.
//!
//! ```
//! use std::convert::Infallible;
//! use std::future::{ready, Ready};
//! use std::time::Duration;
//! use tower::{service_fn, Service, ServiceExt};
//! use weir_failover::router::{Failover, Judge, Judged, Target};
//! use weir_llm::Failure;
//!
//! /// Answers are numbers; anything but 200 failed with a 5xx.
//! #[derive(Clone)]
//! struct Status;
//! impl Judge<&'static str> for Status {
//!     type Request = &'static str;
//!     type Response = u16;
//!     type Answer = u16;
//!     type Future = Ready<Judged<u16>>;
//!     type Attempt = ();
//!     fn request(&self, _target: usize, call: &&'static str) -> (&'static str, ()) { (call, ()) }
//!     fn judge(&self, _target: usize, _: (), result: Result<u16, tower::BoxError>) -> Self::Future {
//!         ready(match result {
//!             Ok(200) => Judged::Commit(200),
//!             Ok(status) => Judged::Failed(status, Some(Failure::Upstream5xx {
//!                 status: http::StatusCode::from_u16(status).unwrap(),
//!             })),
//!             Err(_) => Judged::Failed(502, Some(Failure::Connect)),
//!         })
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let down = service_fn(|_: &'static str| async { Ok::<u16, tower::BoxError>(503) });
//! let up = service_fn(|_: &'static str| async { Ok::<u16, tower::BoxError>(200) });
//! let mut router = Failover::new(
//!     vec![Target::new(tower::util::BoxCloneSyncService::new(down)),
//!          Target::new(tower::util::BoxCloneSyncService::new(up))],
//!     Status,
//! );
//! let routed = router.ready().await.unwrap().call("hello").await.unwrap();
//! assert_eq!((routed.answer, routed.target, routed.attempts), (200, Some(1), 3));
//! # }
//! ```

use crate::budget::RetryBudget;
use crate::policy::{Decision, RetryPolicy};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower_service::Service;
use weir_llm::{Failure, Rejection};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a judge says of one attempt.
#[derive(Debug)]
pub enum Judged<A> {
    /// The client gets this answer (it has reached its commit point).
    Commit(A),
    /// It failed before the commit point: the answer to give if nothing better comes, and
    /// the failure class (`None`: not a failure weir judges, such as a 3xx: given as it is).
    Failed(A, Option<Failure>),
}

/// The protocol-specific half of the router. See the [module docs](self).
pub trait Judge<C>: Clone + Send + Sync + 'static {
    /// The request a target takes.
    type Request;
    /// What a target answers.
    type Response;
    /// What the client gets.
    type Answer: Send + 'static;
    /// Reads a result to its commit point.
    type Future: Future<Output = Judged<Self::Answer>> + Send;
    /// What one attempt carries from its request to its judgement (a trace span, the
    /// call's bookkeeping; `()` when nothing).
    type Attempt: Send + 'static;

    /// The request for target `target` (its model name, its headers), and the attempt's
    /// state.
    fn request(&self, target: usize, call: &C) -> (Self::Request, Self::Attempt);

    /// Judges target `target`'s result.
    fn judge(
        &self,
        target: usize,
        attempt: Self::Attempt,
        result: Result<Self::Response, BoxError>,
    ) -> Self::Future;

    /// The request that continues an answer cut after its commit point on `target` (see
    /// [`Cut`]), or `None` when `target` cannot continue it. Its result is judged by
    /// [`judge`](Self::judge) like any other. By default nothing is continued.
    fn resume(&self, target: usize, call: &C, cut: &Cut) -> Option<(Self::Request, Self::Attempt)> {
        let _ = (target, call, cut);
        None
    }

    /// Called with each answer that committed, and a way to make a [`Resumer`] for it: a
    /// judge whose answers are streams hands the resumer to the stream's body
    /// ([`StreamBody::resume_with`](crate::stream::StreamBody::resume_with)), so that a cut
    /// continues as more attempts of this router. By default the answer is left as it is.
    fn committed(
        &self,
        target: usize,
        call: &C,
        answer: &mut Self::Answer,
        resumer: impl FnOnce() -> Resumer<Self::Answer>,
    ) {
        let _ = (target, call, answer, resumer);
    }
}

/// An answer cut after its commit point, as a continuation is asked of another target.
#[derive(Clone, Debug)]
pub struct Cut {
    /// What the client has of the answer.
    pub answer: weir_llm::stream::Cut,
    /// The target whose stream was cut.
    pub from: usize,
    /// What cut it.
    pub failure: Failure,
}

/// Continues a cut answer on a route's other targets, as more attempts of the call that
/// committed it: each target must be ready (an open breaker is skipped), each attempt is a
/// withdrawal from the retry budget, failures before the continuation's own commit point are
/// retried or failed over by the retry policy, and nothing starts after the route's deadline
/// (counted from the cut). Targets after the cut one are tried first, then those before it.
pub struct Resumer<T> {
    resume: Box<dyn ResumeOnce<T>>,
}

impl<T> std::fmt::Debug for Resumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resumer").finish_non_exhaustive()
    }
}

type Resuming<T> = Pin<Box<dyn Future<Output = Option<T>> + Send>>;

trait ResumeOnce<T>: Send {
    fn resume(self: Box<Self>, cut: weir_llm::stream::Cut, failure: Failure) -> Resuming<T>;
}

impl<T: Send + 'static> Resumer<T> {
    /// Continues the answer, of which the client has `cut`, cut by `failure`: the committed
    /// continuation, or `None` when no target could continue it.
    pub fn resume(
        self,
        cut: weir_llm::stream::Cut,
        failure: Failure,
    ) -> impl Future<Output = Option<T>> + Send + 'static {
        self.resume.resume(cut, failure)
    }

    /// A resumer whose continuation is `f` of this one's (`None` drops it).
    pub fn map<U, F>(self, f: F) -> Resumer<U>
    where
        U: Send + 'static,
        F: FnOnce(T) -> Option<U> + Send + 'static,
    {
        Resumer {
            resume: Box::new(Mapped { inner: self, f }),
        }
    }
}

struct Mapped<T, F> {
    inner: Resumer<T>,
    f: F,
}

impl<T, U, F> ResumeOnce<U> for Mapped<T, F>
where
    T: Send + 'static,
    U: Send + 'static,
    F: FnOnce(T) -> Option<U> + Send + 'static,
{
    fn resume(self: Box<Self>, cut: weir_llm::stream::Cut, failure: Failure) -> Resuming<U> {
        let Mapped { inner, f } = *self;
        Box::pin(async move { inner.resume(cut, failure).await.and_then(f) })
    }
}

/// One target of a route.
#[derive(Clone, Debug)]
pub struct Target<S> {
    service: S,
    context_window: Option<u32>,
    model: Option<Arc<str>>,
    weight: u32,
}

/// Where a call may still go after context-length refusals: never to a model that refused
/// it (the same model on another provider has the same window), and never to a target whose
/// known window is no larger than the largest known window that refused it.
#[derive(Debug, Default)]
struct Fit {
    min_window: Option<u32>,
    refused: Vec<usize>,
}

impl Fit {
    fn allows<S>(&self, targets: &[Target<S>], index: usize) -> bool {
        let candidate = &targets[index];
        let same_model = self.refused.iter().any(|&r| {
            r == index
                || matches!((&targets[r].model, &candidate.model), (Some(a), Some(b)) if a == b)
        });
        let larger = match (self.min_window, candidate.context_window) {
            (Some(min), Some(window)) => window > min,
            _ => true,
        };
        !same_model && larger
    }

    /// Target `index` refused the call for its context length.
    fn refused<S>(&mut self, targets: &[Target<S>], index: usize) {
        self.refused.push(index);
        if let Some(window) = targets[index].context_window {
            self.min_window = Some(self.min_window.map_or(window, |m| m.max(window)));
        }
    }
}

impl<S> Target<S> {
    /// A target with weight 1, no known context window and a model of its own.
    pub fn new(service: S) -> Self {
        Self {
            service,
            context_window: None,
            model: None,
            weight: 1,
        }
    }

    /// The model it serves: after `context_length_exceeded` on one target, no target of the
    /// same model is tried (whatever its provider).
    pub fn model(mut self, model: impl Into<Arc<str>>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Its model's context window: after `context_length_exceeded` only targets with a larger
    /// window (or an unknown one, of another model) are tried.
    pub fn context_window(mut self, tokens: Option<u32>) -> Self {
        self.context_window = tokens;
        self
    }

    /// Its weight under [`Order::Weighted`].
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }
}

/// In which order a call tries the targets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Order {
    /// As listed: the first is preferred.
    #[default]
    Priority,
    /// Drawn for each call by weight (a target of weight 3 comes first three times as often as
    /// one of weight 1); the rest follow in drawn order.
    Weighted,
}

/// The router's answer: what the client gets, from which target, after how many attempts.
#[derive(Debug)]
pub struct Routed<A> {
    /// The answer (committed, or the last one when nothing better came).
    pub answer: A,
    /// The index of the target whose answer was committed.
    pub target: Option<usize>,
    /// Attempts made, hedges included.
    pub attempts: u32,
}

/// No target could take the call at all (every one was not ready).
#[derive(Debug)]
pub struct NoTarget(());

impl std::fmt::Display for NoTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no target of the route is ready")
    }
}

impl std::error::Error for NoTarget {}

/// A source of uniform samples in `[0, 1)`, injected so that tests are deterministic.
pub type Rng = Arc<Mutex<dyn FnMut() -> f64 + Send>>;

struct Shared<S, J> {
    targets: Vec<Target<S>>,
    judge: J,
    policy: RetryPolicy,
    budget: Mutex<RetryBudget>,
    deadline: Duration,
    hedge_after: Option<Duration>,
    queue_timeout: Duration,
    order: Order,
    rng: Rng,
}

/// The failover router. Clones share targets, budget and random source.
pub struct Failover<S, J> {
    shared: Arc<Shared<S, J>>,
}

impl<S, J> Clone for Failover<S, J> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<S, J> std::fmt::Debug for Failover<S, J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failover")
            .field("targets", &self.shared.targets.len())
            .field("order", &self.shared.order)
            .finish_non_exhaustive()
    }
}

fn default_rng() -> Rng {
    use std::hash::BuildHasher;
    let mut state = std::collections::hash_map::RandomState::new().hash_one(0u64) | 1;
    Arc::new(Mutex::new(move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    }))
}

impl<S, J> Failover<S, J> {
    /// A priority router with the default policy, budget (20% + 1/s over 10 s) and a 120 s
    /// deadline.
    pub fn new(targets: Vec<Target<S>>, judge: J) -> Self {
        Self::builder(targets, judge).build()
    }

    /// A router to configure.
    pub fn builder(targets: Vec<Target<S>>, judge: J) -> Builder<S, J> {
        Builder {
            targets,
            judge,
            policy: RetryPolicy::default(),
            budget: RetryBudget::standard(Instant::now()),
            deadline: Duration::from_secs(120),
            hedge_after: None,
            queue_timeout: Duration::ZERO,
            order: Order::Priority,
            rng: default_rng(),
        }
    }

    /// The targets.
    pub fn targets(&self) -> impl Iterator<Item = &S> {
        self.shared.targets.iter().map(|t| &t.service)
    }
}

/// Configures a [`Failover`].
pub struct Builder<S, J> {
    targets: Vec<Target<S>>,
    judge: J,
    policy: RetryPolicy,
    budget: RetryBudget,
    deadline: Duration,
    hedge_after: Option<Duration>,
    queue_timeout: Duration,
    order: Order,
    rng: Rng,
}

impl<S, J> std::fmt::Debug for Builder<S, J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder").finish_non_exhaustive()
    }
}

impl<S, J> Builder<S, J> {
    /// The retry policy.
    pub fn policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The retry budget.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = budget;
        self
    }

    /// No retry or failover starts after this long from the call.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Race a first attempt that has not committed after this long against the next target.
    pub fn hedge_after(mut self, after: Option<Duration>) -> Self {
        self.hedge_after = after;
        self
    }

    /// When no target is ready, how long a call waits for one to become ready (a target at
    /// its concurrency limit, a breaker about to half-open) before it gives up with
    /// [`NoTarget`]; never past the deadline. Zero (the default) gives up at once.
    pub fn queue_timeout(mut self, wait: Duration) -> Self {
        self.queue_timeout = wait;
        self
    }

    /// The order targets are tried in.
    pub fn order(mut self, order: Order) -> Self {
        self.order = order;
        self
    }

    /// The random source (jitter, weighted order).
    pub fn rng(mut self, rng: Rng) -> Self {
        self.rng = rng;
        self
    }

    /// The router.
    pub fn build(self) -> Failover<S, J> {
        Failover {
            shared: Arc::new(Shared {
                targets: self.targets,
                judge: self.judge,
                policy: self.policy,
                budget: Mutex::new(self.budget),
                deadline: self.deadline,
                hedge_after: self.hedge_after,
                queue_timeout: self.queue_timeout,
                order: self.order,
                rng: self.rng,
            }),
        }
    }
}

impl<S, J> Shared<S, J> {
    fn sample(&self) -> f64 {
        (self.rng.lock().expect("rng lock"))()
    }

    fn withdraw(&self) -> bool {
        self.budget
            .lock()
            .expect("budget lock")
            .withdraw(Instant::now())
    }

    /// The order of this call: indices into `targets`.
    fn order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.targets.len()).collect();
        if self.order == Order::Weighted {
            // Efraimidis-Spirakis: sort by u^(1/w), largest first.
            let mut keyed: Vec<(f64, usize)> = order
                .iter()
                .map(|&i| {
                    let w = f64::from(self.targets[i].weight.max(1));
                    (self.sample().max(f64::MIN_POSITIVE).powf(1.0 / w), i)
                })
                .collect();
            keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
            order = keyed.into_iter().map(|(_, i)| i).collect();
        }
        order
    }
}

fn ready_now<S: Service<R>, R>(service: &mut S) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    matches!(service.poll_ready(&mut cx), Poll::Ready(Ok(())))
}

impl<S, J> Shared<S, J>
where
    S: Clone,
{
    /// The first target in `order[from..]` that is ready now (and, after a context-length
    /// refusal, that `fit` allows).
    fn ready<R>(&self, order: &[usize], from: usize, fit: &Fit) -> Option<(usize, usize, S)>
    where
        S: Service<R>,
    {
        self.candidates(order, from, fit)
            .find_map(|(position, index, mut service)| {
                ready_now(&mut service).then_some((position, index, service))
            })
    }

    /// Fresh clones of the targets in `order[from..]` that `fit` allows.
    fn candidates<'a>(
        &'a self,
        order: &'a [usize],
        from: usize,
        fit: &'a Fit,
    ) -> impl Iterator<Item = (usize, usize, S)> + 'a {
        order
            .iter()
            .enumerate()
            .skip(from)
            .filter(move |(_, &index)| fit.allows(&self.targets, index))
            .map(|(position, &index)| (position, index, self.targets[index].service.clone()))
    }

    /// Like [`ready`](Self::ready), but when none is ready now, waits up to `queue_timeout`
    /// (and never past `deadline`) for the first of them to become ready.
    async fn next_ready<R>(
        &self,
        order: &[usize],
        from: usize,
        fit: &Fit,
        deadline: Instant,
    ) -> Option<(usize, usize, S)>
    where
        S: Service<R>,
    {
        if let Some(found) = self.ready(order, from, fit) {
            return Some(found);
        }
        if self.queue_timeout.is_zero() {
            return None;
        }
        let mut waiting: Vec<_> = self.candidates(order, from, fit).collect();
        let first_ready = std::future::poll_fn(|cx| {
            let ready = waiting
                .iter_mut()
                .position(|(_, _, service)| matches!(service.poll_ready(cx), Poll::Ready(Ok(()))));
            ready.map_or(Poll::Pending, Poll::Ready)
        });
        let until = deadline.min(Instant::now() + self.queue_timeout);
        let at = tokio::time::timeout_at(until, first_ready).await.ok()?;
        Some(waiting.swap_remove(at))
    }
}

type Attempt<A> = Pin<Box<dyn Future<Output = Judged<A>> + Send>>;

impl<S, J> Shared<S, J>
where
    S: Clone + Send + Sync + 'static,
    J: 'static,
{
    fn attempt<C>(&self, mut service: S, index: usize, call: &C) -> Attempt<J::Answer>
    where
        S: Service<J::Request, Response = J::Response>,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        J: Judge<C>,
    {
        let (request, attempt) = self.judge.request(index, call);
        let future = service.call(request);
        let judge = self.judge.clone();
        Box::pin(async move {
            let result = future.await.map_err(Into::into);
            judge.judge(index, attempt, result).await
        })
    }
}

impl<S, J, C> Service<C> for Failover<S, J>
where
    S: Service<J::Request, Response = J::Response> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    J: Judge<C>,
    J::Request: Send,
    C: Clone + Send + Sync + 'static,
{
    type Response = Routed<J::Answer>;
    type Error = NoTarget;
    type Future = Pin<Box<dyn Future<Output = Result<Routed<J::Answer>, NoTarget>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), NoTarget>> {
        // Targets are checked per call; a route with none ready answers at once.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: C) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move { route(shared, call).await })
    }
}

async fn route<S, J, C>(shared: Arc<Shared<S, J>>, call: C) -> Result<Routed<J::Answer>, NoTarget>
where
    S: Service<J::Request, Response = J::Response> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    J: Judge<C>,
    J::Request: Send,
    C: Clone + Send + Sync + 'static,
{
    shared
        .budget
        .lock()
        .expect("budget lock")
        .deposit(Instant::now());
    let deadline = Instant::now() + shared.deadline;
    let order: Arc<[usize]> = shared.order().into();
    let mut attempts = 0;
    let mut last = None;
    let mut from = 0;
    let mut fit = Fit::default();
    let mut hedged = false;
    'targets: while let Some((position, index, mut service)) = shared
        .next_ready::<J::Request>(&order, from, &fit, deadline)
        .await
    {
        from = position + 1;
        let mut on_target = 0;
        loop {
            attempts += 1;
            on_target += 1;
            let first = shared.attempt(service, index, &call);
            let judged = match shared.hedge_after {
                Some(after) if !hedged => {
                    hedged = true;
                    let mut first = first;
                    tokio::select! {
                        judged = &mut first => judged,
                        _ = tokio::time::sleep(after) => {
                            match hedge(&shared, &call, &order, from, &fit, first, &mut attempts).await {
                                Hedge::Won(mut answer, at) => {
                                    commit(&shared, &call, &order, at, &mut answer);
                                    return Ok(Routed { answer, target: Some(at), attempts });
                                }
                                Hedge::Primary(judged, used) => {
                                    from = from.max(used);
                                    judged
                                }
                            }
                        }
                    }
                }
                _ => first.await,
            };
            let failure = match judged {
                Judged::Commit(mut answer) => {
                    commit(&shared, &call, &order, index, &mut answer);
                    return Ok(Routed {
                        answer,
                        target: Some(index),
                        attempts,
                    });
                }
                Judged::Failed(answer, failure) => {
                    last = Some(answer);
                    match failure {
                        Some(failure) => failure,
                        None => break 'targets,
                    }
                }
            };
            let decision = shared.policy.decide(failure, on_target, shared.sample());
            match decision {
                Decision::GiveUp => break 'targets,
                Decision::NextTarget => {
                    if matches!(
                        failure,
                        Failure::Rejected {
                            reason: Rejection::ContextLengthExceeded,
                            ..
                        }
                    ) {
                        fit.refused(&shared.targets, index);
                    }
                    if !shared.withdraw() {
                        break 'targets;
                    }
                    continue 'targets;
                }
                Decision::RetrySame { after } => {
                    if Instant::now() + after > deadline || !shared.withdraw() {
                        break 'targets;
                    }
                    tokio::time::sleep(after).await;
                    // The target must be ready again (its breaker may have opened).
                    service = shared.targets[index].service.clone();
                    if !ready_now(&mut service) {
                        continue 'targets;
                    }
                }
            }
        }
    }
    match last {
        Some(answer) => Ok(Routed {
            answer,
            target: None,
            attempts,
        }),
        None => Err(NoTarget(())),
    }
}

/// The router's side of a [`Resumer`]: the call, and where in its order the answer came from.
struct Resume<S, J, C> {
    shared: Arc<Shared<S, J>>,
    call: C,
    order: Arc<[usize]>,
    served: usize,
}

impl<S, J, C> Resume<S, J, C>
where
    S: Service<J::Request, Response = J::Response> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    J: Judge<C>,
    J::Request: Send,
    C: Clone + Send + Sync + 'static,
{
    fn resumer(
        shared: &Arc<Shared<S, J>>,
        call: &C,
        order: &Arc<[usize]>,
        served: usize,
    ) -> Resumer<J::Answer> {
        Resumer {
            resume: Box::new(Self {
                shared: shared.clone(),
                call: call.clone(),
                order: order.clone(),
                served,
            }),
        }
    }

    async fn run(self, answer: weir_llm::stream::Cut, failure: Failure) -> Option<J::Answer> {
        let Self {
            shared,
            call,
            order,
            served,
        } = self;
        let deadline = Instant::now() + shared.deadline;
        let count = order.len();
        // The targets after the cut one, then those before it.
        let turn: Vec<usize> = (1..count)
            .map(|step| order[(served + step) % count])
            .collect();
        let cut = Cut {
            answer,
            from: order[served],
            failure,
        };
        let mut from = 0;
        while let Some((position, index, mut service)) = shared
            .next_ready::<J::Request>(&turn, from, &Fit::default(), deadline)
            .await
        {
            from = position + 1;
            let mut on_target = 0;
            loop {
                if !shared.withdraw() {
                    return None;
                }
                let Some((request, attempt)) = shared.judge.resume(index, &call, &cut) else {
                    break;
                };
                on_target += 1;
                let future = service.call(request);
                let result = future.await.map_err(Into::into);
                let failure = match shared.judge.judge(index, attempt, result).await {
                    Judged::Commit(mut answer) => {
                        let at = order.iter().position(|&i| i == index).unwrap_or(served);
                        let judge = shared.judge.clone();
                        judge.committed(index, &call, &mut answer, || {
                            Self::resumer(&shared, &call, &order, at)
                        });
                        return Some(answer);
                    }
                    Judged::Failed(_, Some(failure)) => failure,
                    Judged::Failed(_, None) => return None,
                };
                match shared.policy.decide(failure, on_target, shared.sample()) {
                    Decision::GiveUp => return None,
                    Decision::NextTarget => break,
                    Decision::RetrySame { after } => {
                        if Instant::now() + after > deadline {
                            return None;
                        }
                        tokio::time::sleep(after).await;
                        service = shared.targets[index].service.clone();
                        if !ready_now(&mut service) {
                            break;
                        }
                    }
                }
            }
        }
        None
    }
}

impl<S, J, C> ResumeOnce<J::Answer> for Resume<S, J, C>
where
    S: Service<J::Request, Response = J::Response> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    J: Judge<C>,
    J::Request: Send,
    C: Clone + Send + Sync + 'static,
{
    fn resume(
        self: Box<Self>,
        cut: weir_llm::stream::Cut,
        failure: Failure,
    ) -> Resuming<J::Answer> {
        Box::pin(self.run(cut, failure))
    }
}

/// Tells the judge that `target`'s answer committed, with the means to continue it.
fn commit<S, J, C>(
    shared: &Arc<Shared<S, J>>,
    call: &C,
    order: &Arc<[usize]>,
    target: usize,
    answer: &mut J::Answer,
) where
    S: Service<J::Request, Response = J::Response> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    J: Judge<C>,
    J::Request: Send,
    C: Clone + Send + Sync + 'static,
{
    let at = order.iter().position(|&i| i == target).unwrap_or(0);
    shared.judge.committed(target, call, answer, || {
        Resume::resumer(shared, call, order, at)
    });
}

enum Hedge<A> {
    /// The hedge (on the target at this index) committed first.
    Won(A, usize),
    /// The first attempt's verdict; targets before this position were tried.
    Primary(Judged<A>, usize),
}

/// Starts the call on the next ready target beside `first`. A hedge that commits first wins
/// (the other attempt is dropped, which cancels it); a hedge that fails is forgotten.
async fn hedge<S, J, C>(
    shared: &Shared<S, J>,
    call: &C,
    order: &[usize],
    from: usize,
    fit: &Fit,
    mut first: Attempt<J::Answer>,
    attempts: &mut u32,
) -> Hedge<J::Answer>
where
    S: Service<J::Request, Response = J::Response> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    J: Judge<C>,
{
    let Some((position, index, service)) = shared.ready::<J::Request>(order, from, fit) else {
        return Hedge::Primary(first.await, 0);
    };
    if !shared.withdraw() {
        return Hedge::Primary(first.await, 0);
    }
    *attempts += 1;
    let mut second = shared.attempt(service, index, call);
    tokio::select! {
        judged = &mut first => match judged {
            Judged::Commit(_) => Hedge::Primary(judged, position + 1),
            Judged::Failed(..) => match second.await {
                Judged::Commit(answer) => Hedge::Won(answer, index),
                Judged::Failed(..) => Hedge::Primary(judged, position + 1),
            },
        },
        judged = &mut second => match judged {
            Judged::Commit(answer) => Hedge::Won(answer, index),
            Judged::Failed(..) => Hedge::Primary(first.await, position + 1),
        },
    }
}

#[cfg(test)]
mod tests;
