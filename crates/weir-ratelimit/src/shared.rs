//! Limits shared by many replicas through Redis (feature `redis`).
//!
//! A shared limiter keeps each key's GCRA state (its theoretical arrival time, one per quota)
//! in Redis, and decides with one server-side script that checks both quotas and writes them
//! only when both admit: atomic across replicas, one round trip per decision. The script is
//! loaded once and called by its hash (`EVALSHA`; redis-rs loads it again if the server lost
//! it). Time is the Redis server's (`TIME`), so replicas with skewed clocks agree. Each key
//! expires once its quotas are full again, so Redis holds only the keys in use. Settling a
//! token charge from the real usage (a refund or a debt) is a second script, sent without
//! waiting for it; the settles made within a millisecond (an answer's limits end together)
//! go in one call.
//!
//! Redis down or slow never stops the caller: a decision that gets no answer within the
//! store's budget is taken by the limiter's local share (its quotas ÷ the replica count),
//! counted in [`RedisStore::fallbacks`], logged once per outage; the next decision tries
//! Redis again. [`OnFailure::Closed`] refuses instead (503).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a shared limiter does when Redis does not answer within its budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnFailure {
    /// Decide locally, with this replica's share of each quota (fail open).
    #[default]
    Open,
    /// Refuse the call with a 503 (fail closed).
    Closed,
}

/// Settings of a [`RedisStore`].
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    pub url: String,
    /// Prefix of every key weir writes (so several deployments can share one Redis).
    pub namespace: String,
    /// The longest a decision waits for Redis.
    pub budget: Duration,
    /// What happens when Redis does not answer in time.
    pub on_failure: OnFailure,
    /// How many replicas share the limits: a local share is each quota divided by it.
    pub replicas: u32,
}

/// One Redis, shared by every limiter built with
/// [`LimiterBuilder::shared`](crate::LimiterBuilder::shared). Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Store>,
}

struct Store {
    client: redis::Client,
    settings: RedisSettings,
    /// The connection once made (redis-rs's manager reconnects it after a failure).
    connection: tokio::sync::watch::Sender<Option<redis::aio::ConnectionManager>>,
    connecting: AtomicBool,
    admit: redis::Script,
    settle: redis::Script,
    cool: redis::Script,
    /// Decisions Redis answered.
    answered: AtomicU64,
    /// Decisions taken locally (or refused) because Redis did not answer in time.
    fallbacks: AtomicU64,
    /// Whether the last decision fell back (the outage is logged once, when it starts).
    down: AtomicBool,
    /// Settles waiting to be sent together: (key, delta in microseconds).
    pending: std::sync::Mutex<Vec<(String, f64)>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never shown.
        f.debug_struct("RedisStore")
            .field("namespace", &self.inner.settings.namespace)
            .field("budget", &self.inner.settings.budget)
            .field("on_failure", &self.inner.settings.on_failure)
            .field("replicas", &self.inner.settings.replicas)
            .finish_non_exhaustive()
    }
}

/// Both quotas in one step: check each, write both only if both admit.
///
/// KEYS: the requests key, the tokens key. ARGV: the requests cell and burst, the tokens cell
/// and burst (a cell of 0: no such quota), the tokens asked. Times in microseconds.
/// Returns {refused (0 none, 1 requests, 2 tokens), retry after, requests remaining, requests
/// reset, tokens remaining, tokens reset}.
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function tat(key)
  local v = tonumber(redis.call('GET', key) or now)
  if v < now then return now end
  return v
end
local function standing(at, cell, burst)
  if cell <= 0 then return 0, 0 end
  local used = at - now
  return math.max(burst - math.ceil(used / cell - 1e-9), 0), math.ceil(used)
end
local function keep(key, at)
  redis.call('SET', key, string.format('%.3f', at), 'PX', math.ceil((at - now) / 1000) + 1000)
end
local rc, rb = tonumber(ARGV[1]), tonumber(ARGV[2])
local tc, tb, n = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local rt, tt = now, now
if rc > 0 then rt = tat(KEYS[1]) end
if tc > 0 then tt = tat(KEYS[2]) end
local rn, tn = rt + rc, tt + n * tc
local refused, wait = 0, 0
if rc > 0 and rn - rb * rc > now then
  refused, wait = 1, rn - rb * rc - now
elseif tc > 0 and tn - tb * tc > now then
  refused, wait = 2, tn - tb * tc - now
end
if refused == 0 then
  if rc > 0 then keep(KEYS[1], rn); rt = rn end
  if tc > 0 and n > 0 then keep(KEYS[2], tn); tt = tn end
end
local rr, rs = standing(rt, rc, rb)
local tr, ts = standing(tt, tc, tb)
return {refused, math.ceil(wait), rr, rs, tr, ts}
";

/// Moves each key's arrival time by a delta (a refund below zero, a debt above), never below
/// now. KEYS: the keys; ARGV: their deltas in microseconds.
const SETTLE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i, key in ipairs(KEYS) do
  local at = tonumber(redis.call('GET', key) or now)
  local d = tonumber(ARGV[i])
  if d > 0 and at < now then at = now end
  at = at + d
  if at <= now then
    redis.call('DEL', key)
  else
    redis.call('SET', key, string.format('%.3f', at), 'PX', math.ceil((at - now) / 1000) + 1000)
  end
end
return 1
";

/// A cool-down as long as the longest published: KEYS[1] the name's key, ARGV[1] milliseconds.
const COOL: &str = r"
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
";

/// What Redis decided for one call.
pub(crate) struct Decision {
    pub(crate) refused: u8,
    pub(crate) retry_after: Duration,
    pub(crate) requests: (u32, Duration),
    pub(crate) tokens: (u32, Duration),
}

impl RedisStore {
    /// A store for `settings`; the connection is made on first use (and again after a
    /// failure), so Redis may be down when this is called.
    pub fn new(settings: RedisSettings) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(settings.url.as_str())?;
        Ok(Self {
            inner: Arc::new(Store {
                client,
                settings,
                connection: tokio::sync::watch::Sender::new(None),
                connecting: AtomicBool::new(false),
                admit: redis::Script::new(ADMIT),
                settle: redis::Script::new(SETTLE),
                cool: redis::Script::new(COOL),
                answered: AtomicU64::new(0),
                fallbacks: AtomicU64::new(0),
                down: AtomicBool::new(false),
                pending: std::sync::Mutex::new(Vec::new()),
            }),
        })
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &RedisSettings {
        &self.inner.settings
    }

    /// Decisions Redis answered.
    pub fn answered(&self) -> u64 {
        self.inner.answered.load(Ordering::Relaxed)
    }

    /// Decisions taken by the local share (or refused, failing closed) because Redis did not
    /// answer within the budget.
    pub fn fallbacks(&self) -> u64 {
        self.inner.fallbacks.load(Ordering::Relaxed)
    }

    /// Whether the last decision fell back.
    pub fn is_down(&self) -> bool {
        self.inner.down.load(Ordering::Relaxed)
    }

    /// How many replicas share the limits.
    pub(crate) fn replicas(&self) -> u32 {
        self.inner.settings.replicas.max(1)
    }

    pub(crate) fn key(&self, limiter: &str, quota: &str, hash: u64) -> String {
        format!(
            "{}:{limiter}:{quota}:{hash:016x}",
            self.inner.settings.namespace
        )
    }

    pub(crate) fn on_failure(&self) -> OnFailure {
        self.inner.settings.on_failure
    }

    /// The connection; while there is none, one is being made and this waits for it (the
    /// caller bounds the wait).
    async fn connection(&self) -> Option<redis::aio::ConnectionManager> {
        let mut made = self.inner.connection.subscribe();
        if let Some(c) = made.borrow().as_ref() {
            return Some(c.clone());
        }
        self.connect();
        let c = made.wait_for(Option::is_some).await.ok()?;
        c.clone()
    }

    /// Starts making the connection in the background (a gateway calls it when it builds its
    /// limiters, so that the first decisions find it made).
    pub fn connect_soon(&self) {
        self.connect();
    }

    /// Makes the connection in the background, unless that is under way.
    fn connect(&self) {
        if self.inner.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_response_timeout(Some(Duration::from_secs(1)));
            let made =
                redis::aio::ConnectionManager::new_with_config(store.inner.client.clone(), config)
                    .await;
            if let Ok(c) = made {
                store.inner.connection.send_replace(Some(c));
            }
            store.inner.connecting.store(false, Ordering::Release);
        });
    }

    /// Connects now and pings, waiting at most the budget or half a second, whichever is
    /// longer (for a caller that would rather start connected than call
    /// [`connect_soon`](Self::connect_soon)). Whether Redis answered.
    pub async fn connect_now(&self) -> bool {
        let ping = async {
            let mut c = self.connection().await?;
            redis::cmd("PING").query_async::<String>(&mut c).await.ok()
        };
        matches!(
            tokio::time::timeout(
                self.inner.settings.budget.max(Duration::from_millis(500)),
                ping
            )
            .await,
            Ok(Some(_))
        )
    }

    /// Asks Redis to decide, within the budget; `None` when it did not answer in time.
    pub(crate) async fn decide(
        &self,
        keys: [&str; 2],
        requests: Option<(f64, u32)>,
        tokens: Option<(f64, u32)>,
        asked: u32,
    ) -> Option<Decision> {
        let (rc, rb) = requests.unwrap_or((0.0, 0));
        let (tc, tb) = tokens.unwrap_or((0.0, 0));
        let ask = async {
            let mut c = self.connection().await?;
            let mut invocation = self.inner.admit.prepare_invoke();
            invocation
                .key(keys[0])
                .key(keys[1])
                .arg(rc)
                .arg(rb)
                .arg(tc)
                .arg(tb)
                .arg(asked);
            invocation.invoke_async::<Vec<i64>>(&mut c).await.ok()
        };
        // One budget for the connection (if it is being made) and the answer.
        let reply = match tokio::time::timeout(self.inner.settings.budget, ask).await {
            Ok(Some(reply)) if reply.len() == 6 => Some(reply),
            _ => None,
        };
        let Some(r) = reply else {
            self.inner.fallbacks.fetch_add(1, Ordering::Relaxed);
            if !self.inner.down.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    budget_ms = self.inner.settings.budget.as_millis() as u64,
                    on_failure = ?self.inner.settings.on_failure,
                    "redis did not answer within the budget: rate limits decided by this replica's share until it does"
                );
            }
            return None;
        };
        self.inner.answered.fetch_add(1, Ordering::Relaxed);
        if self.inner.down.swap(false, Ordering::Relaxed) {
            tracing::info!("redis answers again: rate limits shared again");
        }
        let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        let count = |v: i64| u32::try_from(v.max(0)).unwrap_or(u32::MAX);
        Some(Decision {
            refused: u8::try_from(r[0]).unwrap_or(0),
            retry_after: us(r[1]),
            requests: (count(r[2]), us(r[3])),
            tokens: (count(r[4]), us(r[5])),
        })
    }

    /// Tells every replica that `name` (a provider's model, say) asked for calls to stay away
    /// for `wait` (its 429's `Retry-After`); sent in the background. A longer cool-down
    /// already published stands.
    pub fn publish_cool_down(&self, name: &str, wait: Duration) {
        let Some(mut c) = self.inner.connection.borrow().clone() else {
            return;
        };
        let key = format!("{}:cool:{name}", self.inner.settings.namespace);
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        let store = self.clone();
        tokio::spawn(async move {
            let mut invocation = store.inner.cool.prepare_invoke();
            invocation.key(key).arg(ms);
            let call = invocation.invoke_async::<i64>(&mut c);
            let _ = tokio::time::timeout(store.inner.settings.budget * 4, call).await;
        });
    }

    /// How long each of `names` still cools down, as any replica published it (`None` for
    /// one that does not); `None` when Redis did not answer within the budget.
    pub async fn cool_downs(&self, names: &[String]) -> Option<Vec<Option<Duration>>> {
        if names.is_empty() {
            return Some(Vec::new());
        }
        let ask = async {
            let mut c = self.connection().await?;
            let mut pipe = redis::pipe();
            for name in names {
                pipe.cmd("PTTL")
                    .arg(format!("{}:cool:{name}", self.inner.settings.namespace));
            }
            pipe.query_async::<Vec<i64>>(&mut c).await.ok()
        };
        let ttls = tokio::time::timeout(self.inner.settings.budget, ask)
            .await
            .ok()
            .flatten()?;
        Some(
            ttls.into_iter()
                .map(|ms| {
                    u64::try_from(ms)
                        .ok()
                        .filter(|&ms| ms > 0)
                        .map(Duration::from_millis)
                })
                .collect(),
        )
    }

    /// Moves the arrival times of `keys` by their deltas (microseconds), in the background.
    pub(crate) fn settle(&self, moves: Vec<(String, f64)>) {
        if moves.is_empty() {
            return;
        }
        if self.inner.connection.borrow().is_none() {
            // No connection: the estimate stands (Redis lost the state anyway, or will
            // expire it).
            return;
        }
        let first = {
            let mut pending = self.inner.pending.lock().expect("pending lock");
            let first = pending.is_empty();
            pending.extend(moves);
            first
        };
        if !first {
            return;
        }
        // The first settle of a batch sends, a moment later, every settle made meanwhile in
        // one script (an answer's four limits end together): one round trip, not four.
        let store = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(SETTLE_BATCH).await;
            let moves = std::mem::take(&mut *store.inner.pending.lock().expect("pending lock"));
            let Some(mut c) = store.inner.connection.borrow().clone() else {
                return;
            };
            for batch in moves.chunks(64) {
                let mut invocation = store.inner.settle.prepare_invoke();
                for (key, _) in batch {
                    invocation.key(key.as_str());
                }
                for (_, delta) in batch {
                    invocation.arg(*delta);
                }
                let call = invocation.invoke_async::<i64>(&mut c);
                let _ = tokio::time::timeout(store.inner.settings.budget * 4, call).await;
            }
        });
    }
}

/// How long the first settle of a batch waits for the others.
const SETTLE_BATCH: Duration = Duration::from_millis(1);

/// A charge Redis made: where to give it back or settle it.
pub(crate) struct RemoteCharge {
    pub(crate) redis: RedisStore,
    pub(crate) requests: Option<(String, f64)>,
    pub(crate) tokens: Option<(String, f64)>,
}

impl RemoteCharge {
    /// Gives the request's cell and its tokens back.
    pub(crate) fn cancel(&self, charged: u32) {
        let mut moves = Vec::with_capacity(2);
        if let Some((key, cell)) = &self.requests {
            moves.push((key.clone(), -cell));
        }
        if let Some((key, cell)) = &self.tokens {
            if charged > 0 {
                moves.push((key.clone(), -cell * f64::from(charged)));
            }
        }
        self.redis.settle(moves);
    }

    /// Refunds or charges the difference between the estimate and the usage.
    pub(crate) fn settle(&self, charged: u32, used: u32) {
        if let Some((key, cell)) = &self.tokens {
            let delta = (f64::from(used) - f64::from(charged)) * cell;
            if delta != 0.0 {
                self.redis.settle(vec![(key.clone(), delta)]);
            }
        }
    }
}

/// A stable hash of a key, the same in every replica (of the same build): std's default
/// hasher with its fixed keys.
pub(crate) fn stable_hash<K: std::hash::Hash>(key: &K) -> u64 {
    use std::hash::Hasher;
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    key.hash(&mut h);
    h.finish()
}
