//! The shared limit: permits, the bounded FIFO queue in front of them, and what they measured.

use crate::adaptive::{Aimd, AimdState};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Why a call was refused instead of admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shed {
    /// Every permit was taken and the wait queue was full (or there is no queue).
    QueueFull,
    /// The call waited in the queue for the whole of `max_wait` without a permit freeing.
    TimedOut,
}

impl Shed {
    /// A short name for logs and metric labels: `queue_full` or `timed_out`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::TimedOut => "timed_out",
        }
    }
}

impl std::fmt::Display for Shed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::QueueFull => "every permit is taken and the wait queue is full",
            Self::TimedOut => "no permit freed within the longest wait",
        })
    }
}

impl std::error::Error for Shed {}

/// Upper bounds, in seconds, of the queue-wait histogram's buckets (the last is `+Inf`).
pub const WAIT_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0];

/// How long admitted and shed calls waited for a decision, as a histogram.
#[derive(Debug, Default)]
struct Waits {
    /// Cumulative-free counts per bucket of [`WAIT_BUCKETS`], plus one for `+Inf`.
    buckets: [AtomicU64; WAIT_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Waits {
    fn record(&self, waited: Duration) {
        let seconds = waited.as_secs_f64();
        let bucket = WAIT_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(WAIT_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// What a limit holds and has done, read at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The number of permits (it moves under an adaptive limit).
    pub limit: usize,
    /// Calls holding a permit: admitted and not yet finished (their bodies included).
    pub in_flight: usize,
    /// Calls waiting in the queue.
    pub queued: usize,
    /// Calls admitted since the start.
    pub admitted: u64,
    /// Calls refused because the queue was full.
    pub shed_queue_full: u64,
    /// Calls refused because they waited `max_wait` in vain.
    pub shed_timed_out: u64,
    /// Per bucket of [`WAIT_BUCKETS`] (and a last one for `+Inf`), how many calls waited that
    /// long for their decision; not cumulative.
    pub wait_buckets: Vec<u64>,
    /// The sum of every wait, in seconds.
    pub wait_seconds_sum: f64,
}

/// Settings of a [`Limit`].
#[derive(Clone, Debug)]
pub struct LimitBuilder {
    max_concurrency: usize,
    max_queue: usize,
    max_wait: Option<Duration>,
    retry_after: Duration,
    adaptive: Option<Aimd>,
}

impl LimitBuilder {
    /// How many calls may wait for a permit at once (default: as many as there are permits).
    /// Zero sheds a call at once when every permit is taken.
    pub fn max_queue(mut self, max: usize) -> Self {
        self.max_queue = max;
        self
    }

    /// The longest a call waits in the queue before it is shed (default 30 s; `None` waits
    /// until the caller gives up, for instance at its own deadline).
    pub fn max_wait(mut self, wait: impl Into<Option<Duration>>) -> Self {
        self.max_wait = wait.into();
        self
    }

    /// The `Retry-After` a shed call is answered with (default 1 s; rounded up to seconds).
    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = wait;
        self
    }

    /// Lets the number of permits follow time to first byte and overload signals, within the
    /// bounds of `aimd`; it starts at `max_concurrency`. Off by default.
    pub fn adaptive(mut self, aimd: Aimd) -> Self {
        self.adaptive = Some(aimd);
        self
    }

    /// The limit.
    pub fn build(self) -> Limit {
        let adaptive = self
            .adaptive
            .map(|aimd| Mutex::new(AimdState::new(aimd, self.max_concurrency)));
        let limit = adaptive.as_ref().map_or(self.max_concurrency, |a| {
            a.lock().expect("adaptive lock").limit()
        });
        Limit {
            shared: Arc::new(Shared {
                semaphore: Arc::new(Semaphore::new(limit)),
                limit: AtomicUsize::new(limit),
                debt: AtomicUsize::new(0),
                max_queue: self.max_queue,
                max_wait: self.max_wait,
                retry_after: self.retry_after,
                queued: AtomicUsize::new(0),
                in_flight: AtomicUsize::new(0),
                admitted: AtomicU64::new(0),
                shed_queue_full: AtomicU64::new(0),
                shed_timed_out: AtomicU64::new(0),
                waits: Waits::default(),
                adaptive,
            }),
        }
    }
}

#[derive(Debug)]
struct Shared {
    semaphore: Arc<Semaphore>,
    /// The current number of permits.
    limit: AtomicUsize,
    /// Permits to retire as they come back (the limit was lowered while they were out).
    debt: AtomicUsize,
    max_queue: usize,
    max_wait: Option<Duration>,
    retry_after: Duration,
    queued: AtomicUsize,
    in_flight: AtomicUsize,
    admitted: AtomicU64,
    shed_queue_full: AtomicU64,
    shed_timed_out: AtomicU64,
    waits: Waits,
    adaptive: Option<Mutex<AimdState>>,
}

/// A concurrency limit with a bounded FIFO wait queue in front of it. Cheap to clone: every
/// clone shares the same permits, so give one limit to every service that should share it.
///
/// A [`Permit`] is held until the response body ends or is dropped, not just until the
/// response headers (unlike tower's `ConcurrencyLimit`): a 60-second stream holds its permit
/// for 60 seconds. Waiters are served first come, first served (tokio's semaphore is fair).
#[derive(Clone, Debug)]
pub struct Limit {
    shared: Arc<Shared>,
}

impl Limit {
    /// A limit of `max_concurrency` calls at once, with a queue as long and 30 s of waiting.
    pub fn builder(max_concurrency: usize) -> LimitBuilder {
        LimitBuilder {
            max_concurrency,
            max_queue: max_concurrency,
            max_wait: Some(Duration::from_secs(30)),
            retry_after: Duration::from_secs(1),
            adaptive: None,
        }
    }

    /// A limit of `max_concurrency` with the default queue.
    pub fn new(max_concurrency: usize) -> Self {
        Self::builder(max_concurrency).build()
    }

    /// A permit if one is free now. Never jumps the queue: while calls wait, no permit is free.
    pub fn try_acquire(&self) -> Option<Permit> {
        let permit = self.shared.semaphore.clone().try_acquire_owned().ok()?;
        self.shared.waits.record(Duration::ZERO);
        Some(self.admit(permit))
    }

    /// A permit: at once if one is free, else after waiting in the queue. Refused when the
    /// queue is full or `max_wait` passes first. Dropping the future leaves the queue, which
    /// is how a caller's own deadline applies.
    pub fn acquire(&self) -> impl Future<Output = Result<Permit, Shed>> + Send + Sync + 'static {
        let this = self.clone();
        let ready = self.try_acquire();
        let slot = match ready {
            Some(_) => None,
            None => Some(self.enter_queue()),
        };
        async move {
            if let Some(permit) = ready {
                return Ok(permit);
            }
            this.wait(slot.expect("queued when not ready")?).await
        }
    }

    /// A place in the queue, or [`Shed::QueueFull`].
    pub(crate) fn enter_queue(&self) -> Result<QueueSlot, Shed> {
        let shared = &self.shared;
        let mut queued = shared.queued.load(Ordering::Relaxed);
        loop {
            if queued >= shared.max_queue {
                return Err(self.refuse());
            }
            match shared.queued.compare_exchange_weak(
                queued,
                queued + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Ok(QueueSlot {
                        shared: shared.clone(),
                        since: Instant::now(),
                    })
                }
                Err(now) => queued = now,
            }
        }
    }

    /// Counts a call refused without waiting (the queue is full, or there is none).
    pub(crate) fn refuse(&self) -> Shed {
        self.shared.shed_queue_full.fetch_add(1, Ordering::Relaxed);
        self.shared.waits.record(Duration::ZERO);
        Shed::QueueFull
    }

    /// Waits in the queue, holding `slot`, for a permit.
    pub(crate) async fn wait(self, slot: QueueSlot) -> Result<Permit, Shed> {
        let acquire = self.shared.semaphore.clone().acquire_owned();
        let acquired = match self.shared.max_wait {
            Some(max) => tokio::time::timeout_at(slot.since + max, acquire)
                .await
                .ok(),
            None => Some(acquire.await),
        };
        let waited = slot.since.elapsed();
        drop(slot);
        self.shared.waits.record(waited);
        match acquired {
            Some(Ok(permit)) => Ok(self.admit(permit)),
            // The semaphore is never closed; a closed one reads as a wait that ran out.
            Some(Err(_)) | None => {
                self.shared.shed_timed_out.fetch_add(1, Ordering::Relaxed);
                Err(Shed::TimedOut)
            }
        }
    }

    fn admit(&self, permit: OwnedSemaphorePermit) -> Permit {
        self.shared.admitted.fetch_add(1, Ordering::Relaxed);
        self.shared.in_flight.fetch_add(1, Ordering::Relaxed);
        Permit {
            permit: Some(permit),
            shared: self.shared.clone(),
            since: Instant::now(),
            sampled: false,
        }
    }

    /// The `Retry-After` for a shed call.
    pub fn retry_after(&self) -> Duration {
        self.shared.retry_after
    }

    /// What the limit holds and has done now.
    pub fn snapshot(&self) -> Snapshot {
        let s = &self.shared;
        Snapshot {
            limit: s.limit.load(Ordering::Relaxed),
            in_flight: s.in_flight.load(Ordering::Relaxed),
            queued: s.queued.load(Ordering::Relaxed),
            admitted: s.admitted.load(Ordering::Relaxed),
            shed_queue_full: s.shed_queue_full.load(Ordering::Relaxed),
            shed_timed_out: s.shed_timed_out.load(Ordering::Relaxed),
            wait_buckets: s
                .waits
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            wait_seconds_sum: s.waits.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// A place in the wait queue; leaving it (by any path) makes room.
#[derive(Debug)]
pub(crate) struct QueueSlot {
    shared: Arc<Shared>,
    since: Instant,
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.shared.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One admitted call's permit: released when dropped (the layer's response body holds it to
/// the end of the stream).
#[derive(Debug)]
pub struct Permit {
    permit: Option<OwnedSemaphorePermit>,
    shared: Arc<Shared>,
    since: Instant,
    sampled: bool,
}

impl Permit {
    /// Reports the call's first byte of answer (once; later calls are ignored): under an
    /// adaptive limit, a first byte later than the target lowers the limit.
    pub fn first_byte(&mut self) {
        self.sample(false);
    }

    /// Reports that the call met overload (an error, a 429 or a 5xx): under an adaptive
    /// limit, that lowers the limit. Once per permit, like [`first_byte`](Self::first_byte).
    pub fn overloaded(&mut self) {
        self.sample(true);
    }

    fn sample(&mut self, overloaded: bool) {
        if std::mem::replace(&mut self.sampled, true) {
            return;
        }
        let Some(adaptive) = &self.shared.adaptive else {
            return;
        };
        let elapsed = self.since.elapsed();
        let target = adaptive
            .lock()
            .expect("adaptive lock")
            .sample(elapsed, overloaded);
        self.shared.resize(target);
    }
}

impl Shared {
    /// Moves the number of permits to `target`: new permits at once, fewer by retiring free
    /// ones now and the rest as they come back.
    fn resize(&self, target: usize) {
        let current = self.limit.swap(target, Ordering::AcqRel);
        if target > current {
            let mut grow = target - current;
            // Cancel retirements still owed before adding permits.
            while grow > 0 {
                let debt = self.debt.load(Ordering::Acquire);
                if debt == 0 {
                    break;
                }
                let paid = debt.min(grow);
                if self
                    .debt
                    .compare_exchange(debt, debt - paid, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    grow -= paid;
                }
            }
            self.semaphore.add_permits(grow);
        } else if target < current {
            let shrink = current - target;
            let retired = self.semaphore.forget_permits(shrink);
            self.debt.fetch_add(shrink - retired, Ordering::AcqRel);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        let Some(permit) = self.permit.take() else {
            return;
        };
        // A permit owed to a lowered limit is retired instead of returned.
        let mut debt = self.shared.debt.load(Ordering::Acquire);
        while debt > 0 {
            match self.shared.debt.compare_exchange_weak(
                debt,
                debt - 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    permit.forget();
                    return;
                }
                Err(now) => debt = now,
            }
        }
    }
}
