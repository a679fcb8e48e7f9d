//! The limiter: governor's GCRA over a keyed store, for requests and for tokens, with token
//! charges settled from real usage, pruning and a cap on distinct keys.

use crate::clock::TokioClock;
use governor::clock::{Clock, Reference};
use governor::middleware::{StateInformationMiddleware, StateSnapshot};
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::StateStore;
use governor::{NotUntil, Quota, RateLimiter};
use std::collections::HashMap;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// What a key must be: hashable, comparable, and shareable across tasks.
pub trait Key: Hash + Eq + Clone + Send + Sync + 'static {}

impl<T: Hash + Eq + Clone + Send + Sync + 'static> Key for T {}

/// A rate: so many per minute, with a burst of up to `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    per_minute: NonZeroU32,
    burst: NonZeroU32,
}

impl Rate {
    /// `per_minute`, with a burst of as many (a full minute's worth at once).
    pub fn per_minute(per_minute: NonZeroU32) -> Self {
        Self {
            per_minute,
            burst: per_minute,
        }
    }

    /// The most taken at once, after a quiet period.
    pub fn burst(mut self, burst: NonZeroU32) -> Self {
        self.burst = burst;
        self
    }

    /// Per minute.
    pub fn limit(&self) -> u32 {
        self.per_minute.get()
    }

    /// The most taken at once.
    pub fn burst_size(&self) -> u32 {
        self.burst.get()
    }

    /// One replica's share of the rate, among `replicas`.
    #[cfg(feature = "redis")]
    fn share(&self, replicas: u32) -> Rate {
        let part = |n: u32| NonZeroU32::new((n / replicas.max(1)).max(1)).expect("at least 1");
        Rate::per_minute(part(self.limit())).burst(part(self.burst_size()))
    }

    /// One cell's worth of time, in microseconds (what a shared store counts in).
    #[cfg(feature = "redis")]
    pub(crate) fn cell_micros(&self) -> f64 {
        60e6 / f64::from(self.per_minute.get())
    }

    fn quota(&self) -> Quota {
        let interval = Duration::from_secs(60) / self.per_minute.get();
        Quota::with_period(interval.max(Duration::from_nanos(1)))
            .expect("a non-zero period")
            .allow_burst(self.burst)
    }
}

/// A limiter's shared side: its store, its name there, and the quotas of all replicas.
#[cfg(feature = "redis")]
struct SharedLimit {
    redis: crate::shared::RedisStore,
    name: String,
    requests: Option<Rate>,
    tokens: Option<Rate>,
}

/// The key the store holds: a caller's key, or the shared bucket of keys past the cap.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Slot<K> {
    /// One key.
    Key(K),
    /// Every key that arrived while the store was full.
    Overflow,
}

/// Where a limiter keeps its state: a governor keyed state store (so that a store shared by
/// many replicas can be plugged in later), and whether it holds a key (for the cap).
pub trait Store<K: Key>: ShrinkableKeyedStateStore<Slot<K>> + Send + Sync + 'static {
    /// Whether `key` has state now.
    fn contains(&self, key: &Slot<K>) -> bool;
}

impl<K: Key> Store<K> for DashMapStateStore<Slot<K>> {
    fn contains(&self, key: &Slot<K>) -> bool {
        self.contains_key(key)
    }
}

/// A store behind an `Arc`, so that governor's limiter and the settling code share it.
#[derive(Debug)]
struct Shared<S>(Arc<S>);

impl<S: StateStore> StateStore for Shared<S> {
    type Key = S::Key;

    fn measure_and_replace<T, F, E>(&self, key: &Self::Key, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

impl<K: Hash + Eq + Clone, S: ShrinkableKeyedStateStore<K>> ShrinkableKeyedStateStore<K>
    for Shared<S>
{
    fn retain_recent(&self, drop_below: Nanos) {
        self.0.retain_recent(drop_below)
    }

    fn shrink_to_fit(&self) {
        self.0.shrink_to_fit()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

type Gov<K, S> = RateLimiter<Slot<K>, Shared<S>, TokioClock, StateInformationMiddleware>;

/// One GCRA quota over the keyed store.
struct Bucket<K: Key, S: Store<K>> {
    rate: Rate,
    limiter: Gov<K, S>,
    store: Arc<S>,
    clock: TokioClock,
    /// The clock reading governor took as its start (its state is relative to it).
    start: Nanos,
    /// The cost of one cell, in nanoseconds of theoretical arrival time.
    cell: u64,
    _key: std::marker::PhantomData<fn() -> K>,
}

/// How a quota stands for a key after a decision: what the rate-limit headers say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    /// Per minute.
    pub limit: u32,
    /// What could still be taken at once now.
    pub remaining: u32,
    /// Until the quota is whole again.
    pub reset: Duration,
}

impl<K: Key, S: Store<K>> Bucket<K, S> {
    fn new(rate: Rate, store: S, clock: TokioClock) -> Self {
        let store = Arc::new(store);
        let start = clock.now();
        let limiter: RateLimiter<_, _, _, governor::middleware::NoOpMiddleware<Nanos>> =
            RateLimiter::new(rate.quota(), Shared(store.clone()), clock);
        let limiter = limiter.with_middleware::<StateInformationMiddleware>();
        let cell = u64::try_from(rate.quota().replenish_interval().as_nanos()).unwrap_or(u64::MAX);
        Self {
            rate,
            limiter,
            store,
            clock,
            start,
            cell,
            _key: std::marker::PhantomData,
        }
    }

    fn standing(&self, snapshot: &StateSnapshot) -> Standing {
        let remaining = snapshot.remaining_burst_capacity();
        let missing = self.rate.burst.get().saturating_sub(remaining);
        Standing {
            limit: self.rate.limit(),
            remaining,
            reset: Duration::from_nanos(self.cell.saturating_mul(u64::from(missing))),
        }
    }

    fn wait(&self, not_until: &NotUntil<Nanos>) -> Duration {
        not_until.wait_time_from(self.clock.now())
    }

    /// Takes `n` cells, or says how long until they could be taken (`None`: never, `n` is
    /// above the burst).
    fn take(&self, slot: &Slot<K>, n: u32) -> Result<Standing, Option<Duration>> {
        let Some(n) = NonZeroU32::new(n) else {
            return Ok(self.peek(slot));
        };
        match self.limiter.check_key_n(slot, n) {
            Ok(Ok(snapshot)) => Ok(self.standing(&snapshot)),
            Ok(Err(not_until)) => Err(Some(self.wait(&not_until))),
            Err(_) => Err(None),
        }
    }

    /// The standing without taking anything.
    fn peek(&self, slot: &Slot<K>) -> Standing {
        let now = self.now();
        let tat = self
            .store
            .measure_and_replace(slot, |tat| -> Result<(Option<Nanos>, Nanos), ()> {
                // A read: the state is written back as it was.
                Ok((tat, tat.unwrap_or(Nanos::from(0))))
            })
            .ok()
            .flatten()
            .map_or(0, Nanos::as_u64);
        let used = tat.saturating_sub(now.as_u64());
        let used_cells = used.div_ceil(self.cell.max(1));
        let burst = u64::from(self.rate.burst.get());
        Standing {
            limit: self.rate.limit(),
            remaining: u32::try_from(burst.saturating_sub(used_cells)).unwrap_or(0),
            reset: Duration::from_nanos(used),
        }
    }

    /// Governor's time: nanoseconds since its start.
    fn now(&self) -> Nanos {
        self.clock.now().duration_since(self.start)
    }

    /// Gives `n` cells back (a charge that was too high). Never below an empty bucket.
    fn give_back(&self, slot: &Slot<K>, n: u32) {
        let back = self.cell.saturating_mul(u64::from(n));
        let _ = self
            .store
            .measure_and_replace(slot, |tat| -> Result<((), Nanos), ()> {
                let tat = tat.map_or(0, Nanos::as_u64);
                Ok(((), Nanos::from(tat.saturating_sub(back))))
            });
    }

    /// Takes `n` more cells whatever the standing (a charge that was too low): the key is in
    /// debt until they are replenished.
    fn charge_anyway(&self, slot: &Slot<K>, n: u32) {
        let more = self.cell.saturating_mul(u64::from(n));
        let now = self.now().as_u64();
        let _ = self
            .store
            .measure_and_replace(slot, |tat| -> Result<((), Nanos), ()> {
                let tat = tat.map_or(now, Nanos::as_u64).max(now);
                Ok(((), Nanos::from(tat.saturating_add(more))))
            });
    }

    fn prune(&self) {
        self.limiter.retain_recent();
    }
}

/// Why a call was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Over the requests-per-minute quota.
    Requests {
        /// Until one request is allowed again.
        retry_after: Duration,
    },
    /// Over the tokens-per-minute quota.
    Tokens {
        /// Until the request's tokens are allowed again.
        retry_after: Duration,
    },
    /// The shared store did not answer in time, and the limiter fails closed.
    Unavailable,
    /// The request's own token estimate is above the tokens burst: it can never pass.
    TooLarge {
        /// The estimate.
        tokens: u32,
        /// The burst.
        burst: u32,
    },
}

impl Refusal {
    /// A short stable name, for metric labels: `requests`, `tokens` or `too_large`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Requests { .. } => "requests",
            Self::Tokens { .. } => "tokens",
            Self::TooLarge { .. } => "too_large",
            Self::Unavailable => "unavailable",
        }
    }

    /// How long until it may pass (`None`: never as it is).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Requests { retry_after } | Self::Tokens { retry_after } => Some(*retry_after),
            Self::Unavailable => Some(Duration::from_secs(1)),
            Self::TooLarge { .. } => None,
        }
    }
}

/// The standing of both quotas at a decision (`None` for a quota not set).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Standings {
    /// Requests per minute.
    pub requests: Option<Standing>,
    /// Tokens per minute.
    pub tokens: Option<Standing>,
}

/// Counts of what a limiter decided.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Calls admitted.
    pub admitted: u64,
    /// Calls refused over the requests quota.
    pub refused_requests: u64,
    /// Calls refused over the tokens quota (or too large for it).
    pub refused_tokens: u64,
    /// Calls that waited before being admitted (wait mode).
    pub waited: u64,
    /// Keys held now.
    pub keys: usize,
}

/// Settings of a [`Limiter`].
#[derive(Clone, Debug)]
pub struct LimiterBuilder {
    requests: Option<Rate>,
    tokens: Option<Rate>,
    max_keys: usize,
    #[cfg(feature = "redis")]
    shared: Option<(crate::shared::RedisStore, String)>,
}

impl LimiterBuilder {
    /// A requests-per-minute quota.
    pub fn requests(mut self, rate: Rate) -> Self {
        self.requests = Some(rate);
        self
    }

    /// A tokens-per-minute quota.
    pub fn tokens(mut self, rate: Rate) -> Self {
        self.tokens = Some(rate);
        self
    }

    /// The most distinct keys held (default 100,000). Past it, after pruning the keys whose
    /// state is back to full, new keys share one overflow bucket: memory stays bounded, and a
    /// flood of fresh keys cannot push out the keys already limited.
    pub fn max_keys(mut self, max: usize) -> Self {
        self.max_keys = max.max(1);
        self
    }

    /// Shares the quotas with other replicas through `store`, under `name` (which tells this
    /// limiter's keys from other limiters' in the same Redis: "server", "route:chat"...).
    /// The in-memory state then holds this replica's share, used when Redis does not answer.
    #[cfg(feature = "redis")]
    pub fn shared(mut self, store: crate::shared::RedisStore, name: impl Into<String>) -> Self {
        self.shared = Some((store, name.into()));
        self
    }

    /// The limiter, over in-memory state (governor's `DashMap` store).
    pub fn build<K: Key>(self) -> Limiter<K> {
        self.build_with(DashMapStateStore::default, TokioClock::new())
    }

    /// The limiter over state stores made by `store` (one per quota), timed by `clock`.
    pub fn build_with<K: Key, S: Store<K>>(
        self,
        store: impl Fn() -> S,
        clock: TokioClock,
    ) -> Limiter<K, S> {
        #[cfg(feature = "redis")]
        let (local_rate, shared) = match self.shared {
            Some((redis, name)) => {
                let replicas = redis.replicas();
                let shared = SharedLimit {
                    redis,
                    name,
                    requests: self.requests,
                    tokens: self.tokens,
                };
                (
                    Box::new(move |r: Rate| r.share(replicas)) as Box<dyn Fn(Rate) -> Rate>,
                    Some(shared),
                )
            }
            None => (Box::new(|r: Rate| r) as Box<dyn Fn(Rate) -> Rate>, None),
        };
        #[cfg(not(feature = "redis"))]
        let local_rate = |r: Rate| r;
        Limiter {
            inner: Arc::new(Inner {
                requests: self
                    .requests
                    .map(|r| Bucket::new(local_rate(r), store(), clock)),
                tokens: self
                    .tokens
                    .map(|r| Bucket::new(local_rate(r), store(), clock)),
                #[cfg(feature = "redis")]
                shared,
                max_keys: self.max_keys,
                last_prune: Mutex::new(None),
                lines: Mutex::new(HashMap::new()),
                admitted: AtomicU64::new(0),
                refused_requests: AtomicU64::new(0),
                refused_tokens: AtomicU64::new(0),
                waited: AtomicU64::new(0),
            }),
        }
    }
}

struct Inner<K: Key, S: Store<K>> {
    requests: Option<Bucket<K, S>>,
    tokens: Option<Bucket<K, S>>,
    #[cfg(feature = "redis")]
    shared: Option<SharedLimit>,
    max_keys: usize,
    last_prune: Mutex<Option<Instant>>,
    /// Per key, the line of calls waiting their turn (wait mode), while any waits.
    lines: Mutex<HashMap<Slot<K>, Arc<tokio::sync::Mutex<()>>>>,
    admitted: AtomicU64,
    refused_requests: AtomicU64,
    refused_tokens: AtomicU64,
    waited: AtomicU64,
}

/// A keyed rate limiter with a requests-per-minute and a tokens-per-minute quota. Cheap to
/// clone: clones share the state.
pub struct Limiter<K: Key, S: Store<K> = DashMapStateStore<Slot<K>>> {
    inner: Arc<Inner<K, S>>,
}

impl<K: Key, S: Store<K>> Clone for Limiter<K, S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K: Key, S: Store<K>> std::fmt::Debug for Limiter<K, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("requests", &self.inner.requests.as_ref().map(|b| b.rate))
            .field("tokens", &self.inner.tokens.as_ref().map(|b| b.rate))
            .finish_non_exhaustive()
    }
}

impl Limiter<()> {
    /// A limiter to configure.
    pub fn builder() -> LimiterBuilder {
        LimiterBuilder {
            requests: None,
            tokens: None,
            max_keys: 100_000,
            #[cfg(feature = "redis")]
            shared: None,
        }
    }
}

impl<K: Key, S: Store<K>> Limiter<K, S> {
    /// The requests quota (all replicas', when shared).
    pub fn requests(&self) -> Option<Rate> {
        #[cfg(feature = "redis")]
        if let Some(shared) = &self.inner.shared {
            return shared.requests;
        }
        self.inner.requests.as_ref().map(|b| b.rate)
    }

    /// The tokens quota (all replicas', when shared).
    pub fn tokens(&self) -> Option<Rate> {
        #[cfg(feature = "redis")]
        if let Some(shared) = &self.inner.shared {
            return shared.tokens;
        }
        self.inner.tokens.as_ref().map(|b| b.rate)
    }

    /// Whether its quotas are shared with other replicas (through Redis).
    pub fn is_shared(&self) -> bool {
        #[cfg(feature = "redis")]
        return self.inner.shared.is_some();
        #[cfg(not(feature = "redis"))]
        false
    }

    /// The store slot for `key`: its own, or the overflow bucket when the store is full.
    fn slot(&self, key: K) -> Slot<K> {
        let slot = Slot::Key(key);
        let Some(bucket) = self.inner.requests.as_ref().or(self.inner.tokens.as_ref()) else {
            return slot;
        };
        if bucket.store.len() < self.inner.max_keys || bucket.store.contains(&slot) {
            return slot;
        }
        // Full: drop the keys back at full capacity (at most once a second), then decide.
        let now = Instant::now();
        let mut last = self.inner.last_prune.lock().expect("prune lock");
        if last.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
            *last = Some(now);
            drop(last);
            for bucket in [&self.inner.requests, &self.inner.tokens]
                .into_iter()
                .flatten()
            {
                bucket.prune();
            }
            if bucket.store.len() < self.inner.max_keys {
                return slot;
            }
        }
        Slot::Overflow
    }

    /// Admits a call of `key` estimated at `tokens` (its charge, and the quotas' standing for
    /// the headers), or says why not (and until when).
    pub fn check(
        &self,
        key: K,
        tokens: u32,
    ) -> Result<(Charge<K, S>, Standings), (Refusal, Standings)> {
        let slot = self.slot(key);
        let inner = &self.inner;
        let mut standings = Standings::default();
        if let Some(requests) = &inner.requests {
            match requests.take(&slot, 1) {
                Ok(standing) => standings.requests = Some(standing),
                Err(wait) => {
                    inner.refused_requests.fetch_add(1, Ordering::Relaxed);
                    standings.requests = Some(requests.peek(&slot));
                    standings.tokens = inner.tokens.as_ref().map(|t| t.peek(&slot));
                    let retry_after = wait.unwrap_or(Duration::MAX);
                    return Err((Refusal::Requests { retry_after }, standings));
                }
            }
        }
        let mut charged = 0;
        if let Some(bucket) = &inner.tokens {
            match bucket.take(&slot, tokens) {
                Ok(standing) => {
                    standings.tokens = Some(standing);
                    charged = tokens;
                }
                Err(wait) => {
                    inner.refused_tokens.fetch_add(1, Ordering::Relaxed);
                    // The request cell taken above goes back: nothing was admitted.
                    if let Some(requests) = &inner.requests {
                        requests.give_back(&slot, 1);
                        standings.requests = Some(requests.peek(&slot));
                    }
                    standings.tokens = Some(bucket.peek(&slot));
                    let refusal = match wait {
                        Some(retry_after) => Refusal::Tokens { retry_after },
                        None => Refusal::TooLarge {
                            tokens,
                            burst: bucket.rate.burst.get(),
                        },
                    };
                    return Err((refusal, standings));
                }
            }
        }
        inner.admitted.fetch_add(1, Ordering::Relaxed);
        let charge = Charge {
            limiter: self.clone(),
            slot,
            charged,
            #[cfg(feature = "redis")]
            remote: None,
        };
        Ok((charge, standings))
    }

    /// Admits a call like [`check`](Self::check), against the quotas all replicas share
    /// (one Redis round trip); when Redis does not answer within its budget, against this
    /// replica's share (or refused, failing closed). Without a shared store, `check`.
    pub async fn check_shared(
        &self,
        key: K,
        tokens: u32,
    ) -> Result<(Charge<K, S>, Standings), (Refusal, Standings)> {
        #[cfg(feature = "redis")]
        if let Some(shared) = &self.inner.shared {
            return self.check_redis(shared, key, tokens).await;
        }
        self.check(key, tokens)
    }

    #[cfg(feature = "redis")]
    async fn check_redis(
        &self,
        shared: &SharedLimit,
        key: K,
        tokens: u32,
    ) -> Result<(Charge<K, S>, Standings), (Refusal, Standings)> {
        use crate::shared::{stable_hash, OnFailure, RemoteCharge};
        let inner = &self.inner;
        if let Some(rate) = shared.tokens.filter(|r| tokens > r.burst_size()) {
            inner.refused_tokens.fetch_add(1, Ordering::Relaxed);
            let refusal = Refusal::TooLarge {
                tokens,
                burst: rate.burst_size(),
            };
            return Err((refusal, Standings::default()));
        }
        let hash = stable_hash(&key);
        let redis = &shared.redis;
        let requests_key = redis.key(&shared.name, "r", hash);
        let tokens_key = redis.key(&shared.name, "t", hash);
        let requests = shared.requests.map(|r| (r.cell_micros(), r.burst_size()));
        let token_quota = shared.tokens.map(|r| (r.cell_micros(), r.burst_size()));
        let decided = redis
            .decide(
                [requests_key.as_str(), tokens_key.as_str()],
                requests,
                token_quota,
                tokens,
            )
            .await;
        let Some(d) = decided else {
            return match redis.on_failure() {
                OnFailure::Open => self.check(key, tokens),
                OnFailure::Closed => Err((Refusal::Unavailable, Standings::default())),
            };
        };
        let standing = |rate: Option<Rate>, (remaining, reset): (u32, Duration)| {
            rate.map(|r| Standing {
                limit: r.limit(),
                remaining,
                reset,
            })
        };
        let standings = Standings {
            requests: standing(shared.requests, d.requests),
            tokens: standing(shared.tokens, d.tokens),
        };
        match d.refused {
            1 => {
                inner.refused_requests.fetch_add(1, Ordering::Relaxed);
                let refusal = Refusal::Requests {
                    retry_after: d.retry_after,
                };
                Err((refusal, standings))
            }
            2 => {
                inner.refused_tokens.fetch_add(1, Ordering::Relaxed);
                let refusal = Refusal::Tokens {
                    retry_after: d.retry_after,
                };
                Err((refusal, standings))
            }
            _ => {
                inner.admitted.fetch_add(1, Ordering::Relaxed);
                let charged = if shared.tokens.is_some() { tokens } else { 0 };
                let remote = RemoteCharge {
                    redis: redis.clone(),
                    requests: requests.map(|(cell, _)| (requests_key, cell)),
                    tokens: token_quota.map(|(cell, _)| (tokens_key, cell)),
                };
                let charge = Charge {
                    limiter: self.clone(),
                    slot: Slot::Key(key),
                    charged,
                    remote: Some(Box::new(remote)),
                };
                Ok((charge, standings))
            }
        }
    }

    /// The line `key`'s waiting calls queue in, first come first served.
    pub(crate) fn line(&self, key: &K) -> Arc<tokio::sync::Mutex<()>> {
        let mut lines = self.inner.lines.lock().expect("lines lock");
        if lines.len() > 64 {
            // Lines nobody waits in any more.
            lines.retain(|_, line| Arc::strong_count(line) > 1);
        }
        lines.entry(Slot::Key(key.clone())).or_default().clone()
    }

    pub(crate) fn count_wait(&self) {
        self.inner.waited.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts of decisions, and keys held.
    pub fn counts(&self) -> Counts {
        let inner = &self.inner;
        Counts {
            admitted: inner.admitted.load(Ordering::Relaxed),
            refused_requests: inner.refused_requests.load(Ordering::Relaxed),
            refused_tokens: inner.refused_tokens.load(Ordering::Relaxed),
            waited: inner.waited.load(Ordering::Relaxed),
            keys: inner
                .requests
                .as_ref()
                .or(inner.tokens.as_ref())
                .map_or(0, |b| b.store.len()),
        }
    }

    /// Drops the keys whose state is back to full (governor's `retain_recent`).
    pub fn prune(&self) {
        for bucket in [&self.inner.requests, &self.inner.tokens]
            .into_iter()
            .flatten()
        {
            bucket.prune();
        }
    }
}

/// An admitted call's token charge: settle it with the real usage when the call ends.
/// Dropped unsettled, the estimate stands.
pub struct Charge<K: Key, S: Store<K> = DashMapStateStore<Slot<K>>> {
    limiter: Limiter<K, S>,
    slot: Slot<K>,
    charged: u32,
    /// Where the charge was made, when Redis made it.
    #[cfg(feature = "redis")]
    remote: Option<Box<crate::shared::RemoteCharge>>,
}

impl<K: Key, S: Store<K>> std::fmt::Debug for Charge<K, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Charge")
            .field("charged", &self.charged)
            .finish_non_exhaustive()
    }
}

impl<K: Key, S: Store<K>> Charge<K, S> {
    /// The tokens charged up front.
    pub fn charged(&self) -> u32 {
        self.charged
    }

    /// Takes the charge back whole (the request cell and its tokens): the call was refused
    /// by something after this limiter, so nothing was used.
    pub fn cancel(self) {
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.remote {
            remote.cancel(self.charged);
            return;
        }
        if let Some(requests) = &self.limiter.inner.requests {
            requests.give_back(&self.slot, 1);
        }
        if let Some(tokens) = &self.limiter.inner.tokens {
            tokens.give_back(&self.slot, self.charged);
        }
    }

    /// Settles the charge with the tokens really used: the difference is given back, or
    /// charged on top (which may leave the key in debt for a while).
    pub fn settle(self, used: u32) {
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.remote {
            remote.settle(self.charged, used);
            return;
        }
        let Some(bucket) = &self.limiter.inner.tokens else {
            return;
        };
        match used.cmp(&self.charged) {
            std::cmp::Ordering::Less => bucket.give_back(&self.slot, self.charged - used),
            std::cmp::Ordering::Greater => bucket.charge_anyway(&self.slot, used - self.charged),
            std::cmp::Ordering::Equal => {}
        }
    }
}
