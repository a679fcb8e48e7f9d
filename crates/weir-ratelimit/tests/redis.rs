//! Limits shared through a real `redis-server` (on a loopback port): several limiters, as
//! several replicas would hold them, one set of quotas; Redis stopped, slowed and back.

use std::num::NonZeroU32;
use std::time::Duration;
use tokio::time::Instant;
use weir_ratelimit::{Limiter, OnFailure, Rate, RedisSettings, RedisStore, Refusal};
use weir_test::redis::RedisServer as Redis;

fn store(redis: &Redis, namespace: &str, on_failure: OnFailure) -> RedisStore {
    RedisStore::new(RedisSettings {
        url: redis.url(),
        namespace: namespace.into(),
        budget: Duration::from_millis(50),
        on_failure,
        replicas: 3,
    })
    .unwrap()
}

/// The tokens `limiter` has left for "k" once `landed` holds (a settle made elsewhere reaches
/// Redis in the background), asked every 2 ms for at most 5 s.
async fn tokens_left_once(limiter: &Limiter<String>, landed: impl Fn(u32) -> bool) -> u32 {
    for _ in 0..2500 {
        let (_, standings) = limiter.check_shared("k".to_string(), 0).await.unwrap();
        let left = standings.tokens.unwrap().remaining;
        if landed(left) {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("the settle never reached Redis");
}

fn n(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v).unwrap()
}

/// Three replicas' limiters of one quota, each with its own connection.
async fn replicas(
    redis: &Redis,
    namespace: &str,
    rpm: u32,
    tpm: Option<u32>,
) -> Vec<Limiter<String>> {
    let mut out = Vec::new();
    for _ in 0..3 {
        let store = store(redis, namespace, OnFailure::Open);
        assert!(store.connect_now().await);
        let mut builder = Limiter::builder().requests(Rate::per_minute(n(rpm)));
        if let Some(tpm) = tpm {
            builder = builder.tokens(Rate::per_minute(n(tpm)));
        }
        out.push(builder.shared(store, "key").build());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_admit_the_configured_number_between_them() {
    let redis = Redis::start();
    let limiters = replicas(&redis, "t1", 600, None).await;
    let mut admitted = [0u32; 3];
    for i in 0..1200 {
        let r = i % 3;
        if limiters[r]
            .check_shared("client-a".to_string(), 0)
            .await
            .is_ok()
        {
            admitted[r] += 1;
        }
    }
    let total: u32 = admitted.iter().sum();
    // The burst is the minute's 600; a few more replenish while the loop runs (10 a second).
    assert!((600..=630).contains(&total), "{admitted:?} = {total}");
    assert!(
        admitted.iter().all(|&a| a > 150),
        "spread across replicas: {admitted:?}"
    );
    // Another key has its own quota.
    assert!(limiters[0]
        .check_shared("client-b".to_string(), 0)
        .await
        .is_ok());
    // A refusal says when to come back, and where the quota stands.
    let (refusal, standings) = limiters[1]
        .check_shared("client-a".to_string(), 0)
        .await
        .unwrap_err();
    match refusal {
        Refusal::Requests { retry_after } => assert!(retry_after <= Duration::from_millis(100)),
        other => panic!("{other:?}"),
    }
    assert_eq!(standings.requests.unwrap().remaining, 0);
    assert_eq!(standings.requests.unwrap().limit, 600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_charges_settle_across_replicas_from_real_usage() {
    let redis = Redis::start();
    let limiters = replicas(&redis, "t2", 1000, Some(1000)).await;
    // Replica 0 admits an estimate of 900 tokens; the answer used 100.
    let (charge, standings) = limiters[0]
        .check_shared("k".to_string(), 900)
        .await
        .unwrap();
    assert_eq!(standings.tokens.unwrap().remaining, 100);
    assert!(matches!(
        limiters[1].check_shared("k".to_string(), 500).await,
        Err((Refusal::Tokens { .. }, _))
    ));
    charge.settle(100);
    // The refund reaches Redis in the background: replica 1 sees it once it has landed.
    let left = tokens_left_once(&limiters[1], |left| left >= 895).await;
    assert!((895..=910).contains(&left), "{left}");
    let (charge, standings) = limiters[1]
        .check_shared("k".to_string(), 500)
        .await
        .unwrap();
    let left = standings.tokens.unwrap().remaining;
    assert!((395..=410).contains(&left), "{left}");
    // A debt: the estimate was 500, the answer used 800; replica 2 sees it.
    charge.settle(800);
    let left = tokens_left_once(&limiters[2], |left| left <= 115).await;
    assert!((95..=115).contains(&left), "{left}");
    // Above the burst: never, and Redis is not asked.
    let before = limiters[2].counts().refused_tokens;
    assert!(matches!(
        limiters[2].check_shared("k".to_string(), 5000).await,
        Err((
            Refusal::TooLarge {
                tokens: 5000,
                burst: 1000
            },
            _
        ))
    ));
    assert_eq!(limiters[2].counts().refused_tokens, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_falls_back_to_the_local_share_within_the_budget_then_shares_again() {
    let mut redis = Redis::start();
    let store = store(&redis, "t3", OnFailure::Open);
    assert!(store.connect_now().await);
    let limiter = Limiter::builder()
        .requests(Rate::per_minute(n(60)))
        .shared(store.clone(), "key")
        .build::<String>();
    assert!(limiter.check_shared("a".into(), 0).await.is_ok());
    assert_eq!((store.answered(), store.fallbacks()), (1, 0));

    redis.stop();
    let mut admitted = 0;
    let mut slowest = Duration::ZERO;
    for _ in 0..40 {
        let t = Instant::now();
        if limiter.check_shared("b".into(), 0).await.is_ok() {
            admitted += 1;
        }
        slowest = slowest.max(t.elapsed());
    }
    // This replica's share: 60 ÷ 3.
    assert_eq!(admitted, 20);
    assert!(store.is_down());
    assert_eq!(store.fallbacks(), 40);
    assert!(
        slowest < Duration::from_millis(250),
        "a decision waited {slowest:?}"
    );

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while limiter.check_shared("c".into(), 0).await.is_ok() && store.is_down() {
        assert!(Instant::now() < deadline, "redis never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!store.is_down());
    let answered = store.answered();
    assert!(limiter.check_shared("c".into(), 0).await.is_ok());
    assert_eq!(store.answered(), answered + 1, "decided by Redis again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_redis_never_holds_a_decision_past_the_budget_and_fails_closed_when_told() {
    let redis = Redis::start();
    let open = store(&redis, "t4", OnFailure::Open);
    let closed = store(&redis, "t4", OnFailure::Closed);
    assert!(open.connect_now().await && closed.connect_now().await);
    let rate = Rate::per_minute(n(600));
    let a = Limiter::builder()
        .requests(rate)
        .shared(open.clone(), "key")
        .build::<String>();
    let b = Limiter::builder()
        .requests(rate)
        .shared(closed.clone(), "key")
        .build::<String>();
    redis.block_for(1.0);
    let t = Instant::now();
    assert!(
        a.check_shared("x".into(), 0).await.is_ok(),
        "fail open: the local share admits"
    );
    assert!(matches!(
        b.check_shared("x".into(), 0).await,
        Err((Refusal::Unavailable, _))
    ));
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(400),
        "two decisions took {took:?}"
    );
    assert_eq!((open.fallbacks(), closed.fallbacks()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_the_url_is_used_and_a_missing_one_falls_back() {
    let redis = Redis::start_with_password("s3cret-pw");
    let good = store(&redis, "t5", OnFailure::Open);
    assert!(
        good.connect_now().await,
        "the password in the URL authenticates"
    );
    let limiter = Limiter::builder()
        .requests(Rate::per_minute(n(60)))
        .shared(good.clone(), "key")
        .build::<String>();
    assert!(limiter.check_shared("a".into(), 0).await.is_ok());
    assert_eq!(good.answered(), 1);
    // Without it Redis refuses every command: the local share decides, never an error.
    let bad = RedisStore::new(RedisSettings {
        url: redis.url_without_password(),
        namespace: "t5".into(),
        budget: Duration::from_millis(50),
        on_failure: OnFailure::Open,
        replicas: 3,
    })
    .unwrap();
    let limiter = Limiter::builder()
        .requests(Rate::per_minute(n(60)))
        .shared(bad.clone(), "key")
        .build::<String>();
    assert!(limiter.check_shared("a".into(), 0).await.is_ok());
    assert_eq!((bad.answered(), bad.fallbacks()), (0, 1));
    // The URL (and its password) never shows in the store's Debug.
    assert!(!format!("{good:?}").contains("s3cret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answers_settles_across_its_limits_go_to_redis_in_one_script() {
    let redis = Redis::start();
    let store = store(&redis, "t6", OnFailure::Open);
    assert!(store.connect_now().await);
    // Four limits of one request (key, route, server, provider), one store.
    let limiters: Vec<Limiter<String>> = ["key", "route", "server", "provider"]
        .iter()
        .map(|name| {
            Limiter::builder()
                .tokens(Rate::per_minute(n(10_000)))
                .shared(store.clone(), *name)
                .build()
        })
        .collect();
    // The settle script's first call loads it (an EVALSHA refused, then one that runs).
    let warm = limiters[0]
        .check_shared("warm".into(), 500)
        .await
        .unwrap()
        .0;
    warm.settle(100);
    let loaded = redis.script_calls() + 2;
    redis
        .until("the settle script loaded and run", |r| {
            r.script_calls() >= loaded
        })
        .await;
    let mut charges = Vec::new();
    for limiter in &limiters {
        charges.push(limiter.check_shared("k".into(), 500).await.unwrap().0);
    }
    let before = redis.script_calls();
    for charge in charges {
        charge.settle(100);
    }
    // Each limit gets its refund (10,000 - 500 + 400, and what replenishes meanwhile, 166 a
    // second); every look at it is a script of its own, counted.
    let mut looks = 0;
    for limiter in &limiters {
        loop {
            looks += 1;
            let (_, standings) = limiter.check_shared("k".into(), 0).await.unwrap();
            let left = standings.tokens.unwrap().remaining;
            if left >= 9895 {
                assert!(left <= 9960, "{left}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    assert_eq!(
        redis.script_calls(),
        before + 1 + looks,
        "one round trip for four settles"
    );
}
