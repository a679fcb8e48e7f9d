//! Circuit breakers per provider: a failing provider is taken out (by traffic or by health
//! probes), routes go to the next target, and a provider that recovers comes back.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;
use tokio::time::Instant;
use weir_e2e::{assert_openai_error, header, read, Harness};
use weir_test::MockUpstream;

async fn two_providers(primary_extra: &str) -> (MockUpstream, MockUpstream, weir::Running) {
    let s = weir_e2e::two::setup(None, primary_extra, None).await;
    (s.primary, s.backup, s.weir)
}

async fn ask(weir: &weir::Running) -> (u16, Option<String>) {
    let got = weir_e2e::two::ask(weir, "").await;
    (got.status, got.provider)
}

async fn admin_providers(weir: &weir::Running) -> serde_json::Value {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = Request::get(format!("http://{}/admin/providers", weir.admin_addr()))
        .body(Full::default())
        .unwrap();
    let body = client
        .request(request)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();
    serde_json::from_slice(&body.to_bytes()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_provider_down_for_a_minute_is_skipped_then_used_again() {
    // Probes every 5 s; no user request is ever used as a half-open probe.
    let (primary, backup, weir) = two_providers(
        r#"health = { probe = "models", interval = "5s", timeout = "1s" }
breaker = { half_open_probes = 0 }"#,
    )
    .await;
    let t0 = Instant::now();
    primary.set_defaults(Some("fault=503"));

    // Three failed probes (5, 10, 15 s) take the primary out before traffic starts.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let page = admin_providers(&weir).await;
    assert_ne!(page["providers"][0]["state"], "closed");
    assert!(page["providers"][0]["last_error"]
        .as_str()
        .unwrap()
        .contains("503"));

    let mut served = Vec::new();
    let mut healed_at = None;
    while t0.elapsed() < Duration::from_secs(90) {
        if healed_at.is_none() && t0.elapsed() >= Duration::from_secs(58) {
            primary.set_defaults(None); // recovers just before the probe at 60 s
            healed_at = Some(t0.elapsed());
        }
        let (status, provider) = ask(&weir).await;
        assert_eq!(status, 200, "every request is served");
        served.push((t0.elapsed().as_secs(), provider.unwrap()));
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    let while_down: Vec<_> = served.iter().filter(|(t, _)| *t < 60).collect();
    assert!(while_down.len() >= 13);
    assert!(while_down.iter().all(|(_, p)| p == "backup"), "{served:?}");
    let after: Vec<_> = served.iter().filter(|(t, _)| *t > 60).collect();
    assert_eq!(
        after[0].1, "primary",
        "the first request after recovery: {served:?}"
    );
    assert!(after.iter().all(|(_, p)| p == "primary"));

    // While it was down the primary saw probes only: no user request was risked on it.
    let down: Vec<_> = primary
        .requests()
        .into_iter()
        .filter(|r| r.at.duration_since(t0) < Duration::from_secs(58))
        .collect();
    assert!(down
        .iter()
        .all(|r| r.method == http::Method::GET && r.path == "/v1/models"));
    assert_eq!(down.len(), 11, "one probe every 5 s: {down:?}");
    assert!(backup
        .requests()
        .iter()
        .all(|r| r.at.duration_since(t0) < Duration::from_secs(61)));
    weir.drain().await;
}

#[tokio::test]
async fn traffic_trips_the_breaker_and_a_route_with_no_target_left_answers_503() {
    let h =
        Harness::with_provider(r#"breaker = { consecutive_failures = 3, open_for = "30s" }"#).await;
    for _ in 0..3 {
        let response = h.chat_stream("fault=503").await;
        assert_eq!(response.status(), 503);
        read(response).await;
    }
    let response = h.chat_stream("chunks=2").await;
    assert_eq!(response.status(), 503);
    let retry: u64 = header(response.headers(), "retry-after")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (27..=33).contains(&retry),
        "the open period, 30 s ± 10% jitter: {retry}"
    );
    let error = assert_openai_error(&read(response).await);
    assert_eq!(error["code"], "no_healthy_target");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("`gpt-test`")
            && message.contains("`mock` (`mock-upstream`): circuit open"),
        "{message}"
    );
    assert_eq!(
        h.mock.requests().len(),
        3,
        "an open breaker sends nothing upstream"
    );
}

#[tokio::test]
async fn client_errors_never_trip_the_breaker() {
    let h = Harness::with_provider(r#"breaker = { consecutive_failures = 2 }"#).await;
    for directive in [
        "fault=context_length",
        "fault=content_policy",
        "fault=context_length",
    ] {
        let response = h.chat_stream(directive).await;
        assert_eq!(response.status(), 400);
        read(response).await;
    }
    let ok = h.chat_stream("chunks=2").await;
    assert_eq!(ok.status(), 200, "4xx are the client's fault");
}

#[tokio::test(start_paused = true)]
async fn broken_and_stalled_streams_count_as_failures() {
    let h = Harness::with_provider(
        r#"idle_timeout = "2s"
breaker = { consecutive_failures = 2 }"#,
    )
    .await;
    let broken = read(h.chat_stream("chunks=5,fault=reset_after:2").await).await;
    assert!(broken.error.is_some());
    let stalled = read(h.chat_stream("chunks=5,fault=stall_after:2").await).await;
    assert!(stalled.error.is_some());
    let refused = h.chat_stream("chunks=2").await;
    assert_eq!(
        refused.status(),
        503,
        "two failed streams opened the breaker"
    );
}

#[tokio::test(start_paused = true)]
async fn health_probes_stop_when_weir_drains() {
    let (primary, _backup, weir) =
        two_providers(r#"health = { probe = "models", interval = "5s" }"#).await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(primary.requests().len(), 2, "probes at 5 s and 10 s");
    assert!(weir.drain().await);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(primary.requests().len(), 2, "no probe after the drain");
}

#[tokio::test]
async fn in_band_error_events_count_as_failures() {
    let h = Harness::with_provider(r#"breaker = { consecutive_failures = 2 }"#).await;
    for _ in 0..2 {
        let got = read(h.chat_stream("chunks=5,fault=error_event_at:1").await).await;
        assert!(got.error.is_some());
    }
    let refused = h.chat_stream("chunks=2").await;
    assert_eq!(
        refused.status(),
        503,
        "two in-band errors opened the breaker"
    );
}
