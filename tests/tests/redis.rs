//! Three weir replicas on one real `redis-server`: one set of rate limits between them, the
//! token limit settled from real usage across replicas, Redis stopped and slowed mid-run.
//! Real time (not paused): Redis answers over a real socket, within a real budget.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;
use tokio::time::Instant;
use weir_e2e::{metrics_at, parse_prometheus};
use weir_test::redis::RedisServer;
use weir_test::MockUpstream;

const KEY: &str = "sk-weir-shared-3c1d";

const ONE_TARGET: &str = r#"[{ provider = "mock", model = "m" }]"#;

/// One replica: the shared mock, the shared Redis, a client key with `limits`, the route's
/// `targets`.
async fn replica(
    mock: &MockUpstream,
    redis: &RedisServer,
    limits: &str,
    targets: &str,
) -> weir::Running {
    let config = replica_config(mock, redis, limits, targets, "e2e");
    weir::start(&config).await.expect("weir starts")
}

/// A replica's config, its keys in Redis under `namespace`.
fn replica_config(
    mock: &MockUpstream,
    redis: &RedisServer,
    limits: &str,
    targets: &str,
    namespace: &str,
) -> weir::config::Config {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[ratelimit]
store = "redis"
url = "${{REDIS_URL}}"
namespace = "{namespace}"
budget = "50ms"
replicas = 3

[[providers]]
name = "mock"
base_url = "{}"
allow_http = true
health = {{ probe = "off" }}

[[routes]]
model = "gpt-test"
targets = {targets}

[[keys]]
name = "team"
hash = "{}"
limits = {limits}
"#,
        mock.base_url(),
        weir::config::hash_key(KEY),
    );
    let url = redis.url();
    let env = move |name: &str| (name == "REDIS_URL").then(|| url.clone());
    weir::config::parse("replica.toml".as_ref(), &text, &env).expect("valid")
}

async fn replicas(limits: &str) -> (MockUpstream, RedisServer, Vec<weir::Running>) {
    replicas_with(limits, ONE_TARGET).await
}

async fn replicas_with(
    limits: &str,
    targets: &str,
) -> (MockUpstream, RedisServer, Vec<weir::Running>) {
    let mock = MockUpstream::start().await;
    let redis = RedisServer::start();
    let mut out = Vec::new();
    for _ in 0..3 {
        out.push(replica(&mock, &redis, limits, targets).await);
    }
    // Each replica's connection is made in the background at start.
    redis
        .until("three replicas connected", |r| r.clients() >= 3)
        .await;
    (mock, redis, out)
}

/// A streamed completion, read to its end: the status.
async fn ask(weir: &weir::Running, max_tokens: u32) -> u16 {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let body = format!(
        r#"{{"model":"gpt-test","stream":true,"max_tokens":{max_tokens},"messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    let request = Request::post(format!("http://{}/v1/chat/completions", weir.addr()))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    status
}

/// Whether `/admin/providers` shows `model` cooling down (a retry-after on its breaker).
async fn cooling(weir: &weir::Running, model: &str) -> bool {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let uri = format!("http://{}/admin/providers", weir.admin_addr());
    let response = client.get(uri.parse().unwrap()).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let providers: serde_json::Value = serde_json::from_slice(&body).unwrap();
    providers
        .as_array()
        .or_else(|| providers["providers"].as_array())
        .into_iter()
        .flatten()
        .flat_map(|p| p["models"].as_array().cloned().unwrap_or_default())
        .any(|m| m["model"] == model && !m["retry_after_seconds"].is_null())
}

/// `weir_ratelimit_store_decisions_total{by}` and `weir_ratelimit_store_up` of one replica.
async fn store(weir: &weir::Running) -> (f64, f64, f64) {
    let samples = parse_prometheus(&metrics_at(weir.admin_addr()).await);
    let get = |name: &str, by: Option<&str>| {
        samples
            .iter()
            .find(|s| s.name == name && by.is_none_or(|b| s.label("by") == Some(b)))
            .map_or(f64::NAN, |s| s.value)
    };
    (
        get("weir_ratelimit_store_decisions_total", Some("redis")),
        get("weir_ratelimit_store_decisions_total", Some("fallback")),
        get("weir_ratelimit_store_up", None),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_limit_admits_the_configured_number_across_three_replicas() {
    let (_mock, _redis, weirs) = replicas("{ requests_per_minute = 30 }").await;
    let mut admitted = [0; 3];
    let mut refused = 0;
    for i in 0..90 {
        match ask(&weirs[i % 3], 16).await {
            200 => admitted[i % 3] += 1,
            429 => refused += 1,
            other => panic!("status {other}"),
        }
    }
    let total: u32 = admitted.iter().sum();
    // 30 a minute, and a few more replenished while the 90 run (one each 2 s).
    assert!((30..=32).contains(&total), "{admitted:?}");
    assert_eq!(total + refused, 90);
    assert!(admitted.iter().all(|&a| a >= 8), "spread: {admitted:?}");
    for weir in &weirs {
        let (by_redis, fallback, up) = store(weir).await;
        assert_eq!((by_redis, fallback, up), (30.0, 0.0, 1.0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_limit_settles_across_replicas_from_real_usage() {
    // 1,000 tokens a minute; each request is estimated at about 400 (max_tokens 400 and the
    // prompt) and really uses a few dozen: without the refunds two would pass, then none.
    let (_mock, redis, weirs) = replicas("{ tokens_per_minute = 1000 }").await;
    for i in 0..9 {
        let before = redis.scripts_run();
        assert_eq!(ask(&weirs[i % 3], 400).await, 200, "request {i}");
        // The refund is sent when the answer ends, without waiting: two scripts (the
        // decision, then the settle) once it has landed.
        redis
            .until("the settle", |r| r.scripts_run() >= before + 2)
            .await;
    }
    // Asking for more than the minute's tokens at once is never admitted.
    assert_eq!(ask(&weirs[0], 2000).await, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_run_leaves_each_replica_its_share_then_the_limit_is_shared_again() {
    let (_mock, mut redis, weirs) = replicas("{ requests_per_minute = 30 }").await;
    for i in 0..6 {
        assert_eq!(ask(&weirs[i % 3], 16).await, 200);
    }
    redis.stop();
    // Replica 0 alone: its share is 30 ÷ 3 = 10 (its local state was not used before).
    let mut served = 0;
    let mut slowest = Duration::ZERO;
    for _ in 0..15 {
        let t = Instant::now();
        if ask(&weirs[0], 16).await == 200 {
            served += 1;
        }
        slowest = slowest.max(t.elapsed());
    }
    assert_eq!(served, 10);
    assert!(
        slowest < Duration::from_millis(500),
        "a request took {slowest:?}"
    );
    let (_, fallback, up) = store(&weirs[0]).await;
    assert_eq!((fallback, up), (15.0, 0.0));

    redis.restart();
    // Redis came back empty: the limit starts again from the full 30, shared.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        ask(&weirs[1], 16).await;
        if store(&weirs[1]).await.2 == 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replica 1 never went back to redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (before, _, _) = store(&weirs[1]).await;
    assert_eq!(ask(&weirs[1], 16).await, 200);
    assert_eq!(store(&weirs[1]).await.0, before + 1.0, "decided by redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_holds_no_request_past_the_budget() {
    let (_mock, redis, weirs) = replicas("{ requests_per_minute = 600 }").await;
    assert_eq!(ask(&weirs[0], 16).await, 200);
    redis.block_for(2.0);
    let t = Instant::now();
    for weir in &weirs {
        assert_eq!(ask(weir, 16).await, 200);
    }
    let took = t.elapsed();
    // Three requests, each waiting at most the 50 ms budget for Redis.
    assert!(
        took < Duration::from_millis(900),
        "three requests took {took:?}"
    );
    for weir in &weirs {
        assert_eq!(store(weir).await.1, 1.0, "one fallback each");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_models_429_seen_by_one_replica_keeps_the_others_off_it() {
    let (mock, _redis, weirs) = replicas_with(
        "{ requests_per_minute = 600 }",
        r#"[{ provider = "mock", model = "primary" }, { provider = "mock", model = "backup" }]"#,
    )
    .await;
    mock.set_model_defaults("primary", Some("fault=429,retry_after=30"));
    let models = |from: usize| -> Vec<String> {
        mock.requests()
            .into_iter()
            .skip(from)
            .filter(|r| r.path.ends_with("/chat/completions"))
            .filter_map(|r| r.model)
            .collect()
    };
    // Replica 0 learns it the only way there is: a 429, then the backup.
    assert_eq!(ask(&weirs[0], 16).await, 200);
    assert_eq!(models(0), ["primary", "backup"]);
    // Within a read interval the others know it too: straight to the backup.
    for weir in &weirs[1..] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cooling(weir, "primary").await {
            assert!(
                Instant::now() < deadline,
                "the cool-down never reached a replica"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let seen = mock.requests().len();
    for weir in &weirs[1..] {
        assert_eq!(ask(weir, 16).await, 200);
    }
    assert_eq!(models(seen), ["backup", "backup"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_store_and_the_limits_unless_ratelimit_changed() {
    let mock = MockUpstream::start().await;
    let redis = RedisServer::start();
    let limits = "{ requests_per_minute = 5 }";
    let config = replica_config(&mock, &redis, limits, ONE_TARGET, "e2e");
    let weir = weir::start(&config).await.unwrap();
    redis.until("weir connected", |r| r.clients() >= 1).await;
    for _ in 0..5 {
        assert_eq!(ask(&weir, 16).await, 200);
    }
    // The same [ratelimit] (another route added): the same connection, the same limits.
    let mut changed = config.clone();
    changed.routes.push(changed.routes[0].clone());
    changed.routes[1].model = "other".into();
    weir.reloader().reload(&changed).unwrap();
    assert_eq!(ask(&weir, 16).await, 429, "the key's 5 are spent");
    assert_eq!(
        store(&weir).await.0,
        6.0,
        "the counts go on: the same store"
    );
    // Another namespace: a new store, an empty state.
    let elsewhere = replica_config(&mock, &redis, limits, ONE_TARGET, "e2e-b");
    weir.reloader().reload(&elsewhere).unwrap();
    // The new store connects in the background; the old one's connection may still be
    // open, so the number of clients does not tell: give it the time a start is given.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ask(&weir, 16).await, 200);
    assert_eq!(store(&weir).await.0, 1.0, "a new store");
}
