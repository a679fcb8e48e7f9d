use crate::{Global, Header, Limiter, Mode, Rate, RateLimit, Refusal};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use std::convert::Infallible;
use std::num::NonZeroU32;
use std::time::Duration;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

fn n(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v).unwrap()
}

type Answer = Response<Full<Bytes>>;
type Ready = std::future::Ready<Result<Answer, Infallible>>;

/// An upstream whose answer is `body`.
fn upstream(
    body: &'static str,
) -> impl Service<Request<()>, Response = Answer, Error = Infallible, Future = Ready> + Clone {
    tower::service_fn(move |_: Request<()>| {
        std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(
            body.as_bytes(),
        )))))
    })
}

fn user(name: &str) -> Request<()> {
    Request::builder().header("x-user", name).body(()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn burst_plus_one_is_refused_with_the_time_until_a_request_fits() {
    let limiter = Limiter::builder()
        .requests(Rate::per_minute(n(60)).burst(n(3)))
        .build();
    for _ in 0..3 {
        assert!(limiter.check((), 0).is_ok());
    }
    let (refusal, standings) = limiter.check((), 0).unwrap_err();
    // One request a second: the next fits in one second.
    assert_eq!(
        refusal,
        Refusal::Requests {
            retry_after: Duration::from_secs(1)
        }
    );
    assert_eq!(standings.requests.unwrap().remaining, 0);
    tokio::time::advance(Duration::from_millis(999)).await;
    assert!(limiter.check((), 0).is_err());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(limiter.check((), 0).is_ok());

    // Through the service: a 429 with Retry-After and the headers.
    let limiter = Limiter::builder().requests(Rate::per_minute(n(2))).build();
    let mut service = RateLimit::new(
        upstream("{}"),
        crate::Keyed::new(limiter, Global),
        crate::LlmCost::default(),
        Mode::Reject,
    );
    for remaining in ["1", "0"] {
        let ok = service
            .ready()
            .await
            .unwrap()
            .call(user("a"))
            .await
            .unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()["x-ratelimit-remaining-requests"], remaining);
        assert_eq!(ok.headers()["x-ratelimit-limit-requests"], "2");
    }
    let refused = service
        .ready()
        .await
        .unwrap()
        .call(user("a"))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "30");
    assert_eq!(refused.headers()["x-ratelimit-reset-requests"], "1m0s");
    assert_eq!(refused.headers()["ratelimit"], "\"requests\";r=0;t=60");
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"]["type"], "rate_limit_error");
    assert_eq!(json["error"]["code"], "rate_limit_exceeded");
}

#[tokio::test(start_paused = true)]
async fn keys_are_isolated() {
    let limiter = Limiter::builder().requests(Rate::per_minute(n(1))).build();
    let mut service = RateLimit::new(
        upstream("{}"),
        crate::Keyed::new(limiter.clone(), Header("x-user".parse().unwrap())),
        crate::LlmCost::default(),
        Mode::Reject,
    );
    let status = |who: &'static str| {
        let call = service.clone().oneshot(user(who));
        async move { call.await.unwrap().status() }
    };
    assert_eq!(status("ada").await, StatusCode::OK);
    assert_eq!(status("ada").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(status("grace").await, StatusCode::OK);
    assert_eq!(status("grace").await, StatusCode::TOO_MANY_REQUESTS);
    // Without the header, a request is not limited by this layer.
    let anonymous = service.ready().await.unwrap().call(Request::new(())).await;
    assert_eq!(anonymous.unwrap().status(), StatusCode::OK);
    assert_eq!(limiter.counts().keys, 2);
}

#[tokio::test(start_paused = true)]
async fn a_token_charge_is_settled_from_the_real_usage_at_the_end_of_the_answer() {
    let limiter = Limiter::builder().tokens(Rate::per_minute(n(1000))).build();
    // The estimate is 600 tokens; the answer says it used 100.
    let cost = |estimate: u32| crate::cost::Fixed(estimate);
    let answer = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n\
                  data: {\"choices\":[],\"usage\":{\"prompt_tokens\":40,\"completion_tokens\":60,\"total_tokens\":100}}\n\n\
                  data: [DONE]\n\n";
    let mut service = RateLimit::new(
        upstream(answer),
        crate::Keyed::new(limiter.clone(), Global),
        cost(600),
        Mode::Reject,
    );
    let response = service
        .ready()
        .await
        .unwrap()
        .call(user("a"))
        .await
        .unwrap();
    // The headers were decided at admission: 600 charged.
    assert_eq!(response.headers()["x-ratelimit-remaining-tokens"], "400");
    let (_, standings) = {
        // A request for 500 does not fit while the stream is open...
        limiter.check((), 500).unwrap_err()
    };
    assert_eq!(standings.tokens.unwrap().remaining, 400);
    // ...and does once the answer ended and 500 of the 600 came back.
    response.into_body().collect().await.unwrap();
    let (_charge, standings) = limiter.check((), 500).unwrap();
    assert_eq!(standings.tokens.unwrap().remaining, 400);

    // An answer that used more than its estimate leaves the key in debt.
    let limiter = Limiter::builder().tokens(Rate::per_minute(n(1000))).build();
    let heavy = "{\"usage\":{\"total_tokens\":900}}";
    let mut service = RateLimit::new(
        upstream(heavy),
        crate::Keyed::new(limiter.clone(), Global),
        cost(100),
        Mode::Reject,
    );
    let response = service
        .ready()
        .await
        .unwrap()
        .call(user("a"))
        .await
        .unwrap();
    response.into_body().collect().await.unwrap();
    let (refusal, _) = limiter.check((), 200).unwrap_err();
    // 900 used of 1,000: 200 more fit once 100 more replenished, 6 s at 1,000 a minute.
    assert_eq!(
        refusal,
        Refusal::Tokens {
            retry_after: Duration::from_secs(6)
        }
    );
}

#[tokio::test(start_paused = true)]
async fn an_estimate_above_the_burst_never_fits() {
    let limiter = Limiter::builder()
        .tokens(Rate::per_minute(n(1000)))
        .requests(Rate::per_minute(n(10)))
        .build();
    let (refusal, _) = limiter.check((), 5000).unwrap_err();
    assert_eq!(
        refusal,
        Refusal::TooLarge {
            tokens: 5000,
            burst: 1000
        }
    );
    assert_eq!(refusal.retry_after(), None);
    // The request cell it took was given back.
    let (_, standings) = limiter.check((), 10).unwrap();
    assert_eq!(standings.requests.unwrap().remaining, 9);
}

#[tokio::test(start_paused = true)]
async fn wait_mode_admits_in_order_within_the_deadline() {
    let limiter = Limiter::builder()
        .requests(Rate::per_minute(n(60)).burst(n(1)))
        .build();
    let service = RateLimit::new(
        upstream("{}"),
        crate::Keyed::new(limiter.clone(), Global),
        crate::LlmCost::default(),
        Mode::Wait {
            max_wait: Duration::from_secs(10),
        },
    );
    let started = Instant::now();
    let mut calls = Vec::new();
    for i in 0..5u32 {
        let service = service.clone();
        calls.push(tokio::spawn(async move {
            let response = service.oneshot(user("a")).await.unwrap();
            (i, response.status(), started.elapsed())
        }));
        tokio::task::yield_now().await;
    }
    let mut admitted = Vec::new();
    for call in calls {
        admitted.push(call.await.unwrap());
    }
    // One a second, in the order they came.
    let expected: Vec<_> = (0..5u32)
        .map(|i| (i, StatusCode::OK, Duration::from_secs(u64::from(i))))
        .collect();
    assert_eq!(admitted, expected);
    assert_eq!(limiter.counts().waited, 4);

    // A call that would have to wait past its deadline is refused at once.
    let short = RateLimit::new(
        upstream("{}"),
        crate::Keyed::new(limiter.clone(), Global),
        crate::LlmCost::default(),
        Mode::Wait {
            max_wait: Duration::from_millis(500),
        },
    );
    let at = Instant::now();
    let refused = short.oneshot(user("a")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(at.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn pruning_and_the_cap_bound_memory_under_100000_distinct_keys() {
    let limiter = Limiter::builder()
        .requests(Rate::per_minute(n(60)).burst(n(10)))
        .max_keys(10_000)
        .build();
    for key in 0..100_000u32 {
        // Every key gets an answer, its own while there is room, else the shared bucket's.
        let _ = limiter.check(key, 0);
        if key % 10_000 == 0 {
            tokio::time::advance(Duration::from_millis(100)).await;
        }
    }
    let counts = limiter.counts();
    assert!(counts.keys <= 10_001, "{} keys held", counts.keys);
    // A key admitted before the store filled keeps its own bucket.
    assert!(limiter.check(7, 0).is_ok());
    // Once their buckets are full again (10 s at 1 a second), the keys are pruned.
    tokio::time::advance(Duration::from_secs(11)).await;
    limiter.prune();
    assert_eq!(limiter.counts().keys, 0);
    // And new keys get their own buckets again.
    assert!(limiter.check(123_456, 0).is_ok());
    assert_eq!(limiter.counts().keys, 1);
}

#[tokio::test(start_paused = true)]
async fn a_call_waiting_for_its_turn_holds_no_slot_of_the_inner_service() {
    // One request a second per user; behind the limit, one call at a time.
    let limiter = Limiter::builder()
        .requests(Rate::per_minute(n(60)).burst(n(1)))
        .build();
    let slots = tower::limit::ConcurrencyLimit::new(upstream("{}"), 1);
    let service = RateLimit::new(
        slots,
        crate::Keyed::new(limiter, Header("x-user".parse().unwrap())),
        crate::LlmCost::default(),
        Mode::Wait {
            max_wait: Duration::from_secs(10),
        },
    );
    assert_eq!(
        service.clone().oneshot(user("a")).await.unwrap().status(),
        StatusCode::OK
    );
    // `a` must wait a second for its next call...
    let started = Instant::now();
    let waiting = tokio::spawn(service.clone().oneshot(user("a")));
    tokio::task::yield_now().await;
    // ...and meanwhile `b` gets the only slot at once.
    let b = service.clone().oneshot(user("b")).await.unwrap();
    assert_eq!(
        (b.status(), started.elapsed()),
        (StatusCode::OK, Duration::ZERO)
    );
    drop(b);
    let a = waiting.await.unwrap().unwrap();
    assert_eq!(
        (a.status(), started.elapsed()),
        (StatusCode::OK, Duration::from_secs(1))
    );
}

#[tokio::test(start_paused = true)]
async fn a_meter_from_the_stream_watch_settles_the_charge_without_a_scan() {
    // The answer's bytes say 900 tokens; the meter its watch filled says 100, and wins: the
    // layer reads no bytes.
    let meter = weir_llm::stream::Meter::default();
    meter.observe_whole(
        br#"{"usage":{"prompt_tokens":40,"completion_tokens":60,"total_tokens":100}}"#,
    );
    for in_request in [false, true] {
        let limiter = Limiter::builder().tokens(Rate::per_minute(n(1000))).build();
        let carried = meter.clone();
        let inner = tower::service_fn(move |_: Request<()>| {
            let mut response = Response::new(Full::new(Bytes::from_static(
                br#"{"usage":{"total_tokens":900}}"#,
            )));
            if !in_request {
                response.extensions_mut().insert(carried.clone());
            }
            std::future::ready(Ok::<_, Infallible>(response))
        });
        let mut service = RateLimit::new(
            inner,
            crate::Keyed::new(limiter.clone(), Global),
            crate::cost::Fixed(600),
            Mode::Reject,
        );
        let mut request = user("a");
        if in_request {
            request.extensions_mut().insert(meter.clone());
        }
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        response.into_body().collect().await.unwrap();
        let (_charge, standings) = limiter.check((), 500).unwrap();
        assert_eq!(
            standings.tokens.unwrap().remaining,
            400,
            "settled to the metered 100 (meter in the {})",
            if in_request { "request" } else { "response" }
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_refusal_further_in_gives_this_limits_charge_back() {
    let outer = Limiter::builder().requests(Rate::per_minute(n(10))).build();
    let inner_limiter = Limiter::builder().requests(Rate::per_minute(n(1))).build();
    let inner = RateLimit::new(
        upstream("{}"),
        crate::Keyed::new(inner_limiter, Global),
        crate::LlmCost::default(),
        Mode::Reject,
    );
    let mut service = RateLimit::new(
        inner,
        crate::Keyed::new(outer.clone(), Global),
        crate::LlmCost::default(),
        Mode::Reject,
    );
    for status in [
        StatusCode::OK,
        StatusCode::TOO_MANY_REQUESTS,
        StatusCode::TOO_MANY_REQUESTS,
    ] {
        let response = service
            .ready()
            .await
            .unwrap()
            .call(user("a"))
            .await
            .unwrap();
        assert_eq!(response.status(), status);
        assert!(
            response.extensions().get::<crate::Limited>().is_some() == (status != StatusCode::OK)
        );
    }
    // Only the admitted call is still charged to the outer limit.
    let (_, standings) = outer.check((), 0).unwrap();
    assert_eq!(standings.requests.unwrap().remaining, 8);
}
