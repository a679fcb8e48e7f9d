//! `[ratelimit]`: where the rate limits keep their state — in this process, or in Redis,
//! shared by every replica.

use super::provider::env_secret;
use super::read::Table;
use super::Secret;
use std::time::Duration;

/// `[ratelimit]`: where the rate limits' state lives.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum LimitStore {
    /// In this process: each replica has the whole of every limit.
    #[default]
    Local,
    /// In Redis: one set of limits for every replica.
    Redis(Redis),
}

/// `store = "redis"`: the shared store and how it is used.
#[derive(Debug, Clone, PartialEq)]
pub struct Redis {
    /// `url = "${REDIS_URL}"`: `redis://[user:password@]host:port[/db]`, `rediss://` for TLS.
    /// From the environment only (it may hold a password).
    pub url: Secret,
    /// Prefix of every key weir writes (default `weir`).
    pub namespace: String,
    /// The longest a decision waits for Redis (default 5 ms).
    pub budget: Duration,
    /// When Redis does not answer within the budget: decide with this replica's share
    /// (`"open"`, the default) or refuse with 503 (`"closed"`).
    pub fail_closed: bool,
    /// How many replicas share the limits: this replica's share, used while Redis does not
    /// answer, is each limit divided by it.
    pub replicas: u32,
    /// Which limits are shared (`"key"`, `"route"`, `"server"`, `"provider"`; all by
    /// default): each shared one costs a request a Redis round trip.
    pub scopes: Vec<String>,
}

impl Redis {
    /// Whether the limits of `scope` live in Redis.
    pub fn shares(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// The limits that can be shared.
const SCOPES: &[&str] = &["key", "route", "server", "provider"];

/// The keys `[ratelimit]` takes.
pub(super) const KEYS: &[&str] = &[
    "store",
    "url",
    "namespace",
    "budget",
    "on_failure",
    "replicas",
    "scopes",
];

/// Reads `[ratelimit]` (local when the table is absent).
pub(super) fn read(t: Option<&Table<'_>>, env: &dyn Fn(&str) -> Option<String>) -> LimitStore {
    let Some(t) = t else {
        return LimitStore::Local;
    };
    let redis = t.choice("store", &[("local", false), ("redis", true)]);
    if !redis {
        // Every key but `store` is about Redis.
        for &key in KEYS.iter().filter(|k| **k != "store") {
            if let Some(v) = t.get(key) {
                t.problem(v.span(), key, "applies only with store = \"redis\"");
            }
        }
        return LimitStore::Local;
    }
    let url = match t.required("url") {
        Some(v) => {
            let url = env_secret(t, &v, "url", env, false);
            let scheme_ok = url.expose().is_empty()
                || url.expose().starts_with("redis://")
                || url.expose().starts_with("rediss://");
            if !scheme_ok {
                // Never the value: it may hold a password.
                t.problem(v.span, "url", "must be a redis:// or rediss:// URL");
            }
            url
        }
        None => Secret(String::new()),
    };
    let namespace = match t.string("namespace") {
        Some(v) if v.value.is_empty() || v.value.contains(char::is_whitespace) => {
            t.problem(
                v.span,
                "namespace",
                "must be a non-empty word without spaces",
            );
            "weir".to_owned()
        }
        Some(v) => v.value.to_owned(),
        None => "weir".to_owned(),
    };
    let budget = t.positive_duration_or("budget", Duration::from_millis(5));
    let fail_closed = t.choice("on_failure", &[("open", false), ("closed", true)]);
    let replicas = match t.whole32("replicas") {
        Some(v) if v.value == 0 => {
            t.problem(v.span, "replicas", "must be 1 or more");
            1
        }
        Some(v) => v.value,
        None => {
            t.problem(
                t.span(),
                "replicas",
                "is required with store = \"redis\": while Redis does not answer, each replica keeps limit ÷ replicas",
            );
            1
        }
    };
    let scopes = match t.strings("scopes") {
        None => SCOPES.iter().map(|s| (*s).to_owned()).collect(),
        Some(list) => {
            let mut scopes = Vec::new();
            for entry in list {
                if SCOPES.contains(&entry.value) {
                    scopes.push(entry.value.to_owned());
                } else {
                    t.problem(
                        entry.span,
                        "scopes",
                        format!(
                            "`{}` is not one of \"key\", \"route\", \"server\", \"provider\"",
                            super::read::shorten(entry.value)
                        ),
                    );
                }
            }
            scopes
        }
    };
    LimitStore::Redis(Redis {
        url,
        namespace,
        budget,
        fail_closed,
        replicas,
        scopes,
    })
}
