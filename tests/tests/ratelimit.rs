//! Client keys, client-side rate limits (per key, per route, server-wide) with their headers
//! and usage settling, and a provider's own rate limit.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;
use tokio::time::Instant;
use weir_e2e::{assert_openai_error, header, read, two, Read};
use weir_test::MockUpstream;

const TEAM_A: &str = "sk-weir-team-a-7f3e";
const TEAM_B: &str = "sk-weir-team-b-19c2";

/// weir over one mock, with client keys, `route_extra` in the `gpt-test` route, and a second
/// route, `other`.
async fn start(route_extra: &str, keys: &str) -> (MockUpstream, weir::Running) {
    let rest = format!(
        "[[routes]]\nmodel = \"other\"\ntargets = [{{ provider = \"mock\", model = \"m\" }}]\n{keys}"
    );
    weir_e2e::one_mock("", route_extra, &rest).await
}

fn keys(a_limits: &str) -> String {
    format!(
        r#"
[[keys]]
name = "team-a"
hash = "{}"
limits = {a_limits}

[[keys]]
name = "team-b"
hash = "{}"
models = ["gpt-test"]
"#,
        weir::config::hash_key(TEAM_A),
        weir::config::hash_key(TEAM_B)
    )
}

/// A streaming chat request with `key` (if any), its body, its mock directives.
async fn ask(
    weir: &weir::Running,
    key: Option<&str>,
    body: &'static str,
) -> http::Response<hyper::body::Incoming> {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let mut request = Request::post(format!("http://{}/v1/chat/completions", weir.addr()))
        .header("x-mock", "chunks=3");
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    client
        .request(
            request
                .body(Full::new(Bytes::from_static(body.as_bytes())))
                .unwrap(),
        )
        .await
        .unwrap()
}

const CHAT: &str =
    r#"{"model":"gpt-test","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

async fn metrics(weir: &weir::Running) -> String {
    weir_e2e::metrics_at(weir.admin_addr()).await
}

#[tokio::test(start_paused = true)]
async fn missing_unknown_and_almost_right_keys_get_the_same_401() {
    let (mock, weir) = start("", &keys("{ requests_per_minute = 100 }")).await;
    let almost = &TEAM_A[..TEAM_A.len() - 1];
    let mut bodies = Vec::new();
    for key in [None, Some("sk-unknown"), Some(almost), Some("")] {
        let response = ask(&weir, key, CHAT).await;
        assert_eq!(response.status(), 401, "key {key:?}");
        let read = read(response).await;
        let error = assert_openai_error(&read);
        assert_eq!(error["code"], "invalid_api_key");
        assert!(!String::from_utf8_lossy(&read.bytes).contains(almost));
        bodies.push(read.bytes);
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "one body for every failure"
    );
    assert!(mock.requests().is_empty(), "nothing went upstream");

    let ok = read(ask(&weir, Some(TEAM_A), CHAT).await).await;
    assert_eq!(ok.content(), "tok0 tok1 tok2 ");
    // The client's key never goes upstream; the provider's would (none is set here).
    let upstream = &mock.requests()[0];
    assert!(upstream.headers.get("authorization").is_none());

    // team-b may only use gpt-test: another model reads as one that does not exist.
    let other = r#"{"model":"other","stream":true,"messages":[]}"#;
    let refused = ask(&weir, Some(TEAM_B), other).await;
    assert_eq!(refused.status(), 404);
    assert_eq!(
        assert_openai_error(&read(refused).await)["code"],
        "model_not_found"
    );
    assert_eq!(ask(&weir, Some(TEAM_A), other).await.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn a_key_over_its_requests_per_minute_gets_429_and_other_keys_do_not() {
    let (mock, weir) = start("", &keys("{ requests_per_minute = 2 }")).await;
    for remaining in ["1", "0"] {
        let response = ask(&weir, Some(TEAM_A), CHAT).await;
        assert_eq!(response.status(), 200);
        // Headers on a stream too: decided at admission.
        assert_eq!(
            header(response.headers(), "x-ratelimit-remaining-requests"),
            Some(remaining)
        );
        assert_eq!(
            header(response.headers(), "x-ratelimit-limit-requests"),
            Some("2")
        );
        assert!(header(response.headers(), "ratelimit-policy").is_some());
        assert!(read(response).await.error.is_none());
    }
    let refused = ask(&weir, Some(TEAM_A), CHAT).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(header(refused.headers(), "retry-after"), Some("30"));
    let error = assert_openai_error(&read(refused).await);
    assert_eq!(error["type"], "rate_limit_error");
    assert_eq!(
        mock.requests().len(),
        2,
        "the refused request never went upstream"
    );

    // team-b has no limit of its own.
    assert_eq!(ask(&weir, Some(TEAM_B), CHAT).await.status(), 200);
    // After 30 s one more request fits.
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(ask(&weir, Some(TEAM_A), CHAT).await.status(), 200);

    let text = metrics(&weir).await;
    assert!(text.contains(
        r#"weir_ratelimit_rejections_total{scope="key",name="team-a",reason="requests"} 1"#
    ));
    assert!(!text.contains(TEAM_A), "the key itself is never a label");
}

/// The usage a stream reported (the client asked for it).
fn total_tokens(read: &Read) -> u32 {
    let usage = read
        .events()
        .into_iter()
        .rfind(|e| e.contains("\"usage\""))
        .expect("a usage event");
    let json: serde_json::Value = serde_json::from_str(&usage).unwrap();
    json["usage"]["total_tokens"].as_u64().unwrap() as u32
}

#[tokio::test(start_paused = true)]
async fn a_route_token_limit_charges_the_estimate_then_the_real_usage() {
    let (_mock, weir) = start("rate_limit = { tokens_per_minute = 3000 }", "").await;
    // Estimated at the prompt (a few tokens) plus max_tokens 1,000.
    const CAPPED: &str = r#"{"model":"gpt-test","stream":true,"max_tokens":1000,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    let first = ask(&weir, None, CAPPED).await;
    assert_eq!(first.status(), 200);
    let after_first: u32 = header(first.headers(), "x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    let estimate = 3000 - after_first;
    assert!((1000..1100).contains(&estimate), "estimate {estimate}");
    let first = read(first).await;
    let used = total_tokens(&first);
    assert!(used < 100, "the mock used {used}");

    // The second request sees the first charged at its real usage, not its estimate.
    let second = ask(&weir, None, CAPPED).await;
    let after_second: u32 = header(second.headers(), "x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(after_second, 3000 - used - estimate);
    read(second).await;

    // A request whose estimate is over the whole minute's tokens is refused as too large.
    const HUGE: &str = r#"{"model":"gpt-test","stream":true,"max_tokens":5000,"messages":[]}"#;
    let refused = ask(&weir, None, HUGE).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().get("retry-after").is_none());
    assert_eq!(
        assert_openai_error(&read(refused).await)["code"],
        "request_too_large"
    );
}

#[tokio::test(start_paused = true)]
async fn a_provider_at_its_published_limit_sends_the_request_to_the_next_target() {
    let setup = two::setup(None, "rate_limit = { requests_per_minute = 1 }", None).await;
    let first = two::ask(&setup.weir, "chunks=2").await;
    assert_eq!(first.provider.as_deref(), Some("primary"));
    let second = two::ask(&setup.weir, "chunks=2").await;
    assert_eq!(
        (second.status, second.provider.as_deref()),
        (200, Some("backup"))
    );
    assert_eq!(
        setup.primary.requests().len(),
        1,
        "weir, not the provider, said no"
    );
    let text = metrics(&setup.weir).await;
    assert!(text.contains(
        r#"weir_ratelimit_rejections_total{scope="provider",name="primary",reason="requests"} 1"#
    ));
    assert!(text.contains(r#"weir_breaker_state{provider="primary",model="m"} 0"#));
}

#[tokio::test(start_paused = true)]
async fn a_request_waits_for_a_single_provider_limit_it_can_wait_for() {
    let setup = two::setup(
        None,
        "rate_limit = { requests_per_minute = 60, request_burst = 1, wait = \"5s\" }",
        Some(r#"[{ provider = "primary", model = "m" }]"#),
    )
    .await;
    let started = Instant::now();
    for _ in 0..3 {
        let answer = two::ask(&setup.weir, "chunks=1").await;
        assert_eq!(answer.status, 200);
    }
    // One a second: the second waited 1 s, the third 1 s more.
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(setup.primary.requests().len(), 3);
}
