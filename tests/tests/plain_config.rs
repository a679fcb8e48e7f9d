//! The config a team writes first: one provider, a route over two of its models, every
//! other setting at its default (health probes on). Each failure class of one model must be
//! met by the other; attempts and their timing are read from the mock's log.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;
use tokio::time::Instant;
use weir_e2e::{header, read};
use weir_test::MockUpstream;

/// The provider as a first config has it: a name, a URL, nothing tuned.
fn provider(name: &str, mock: &MockUpstream) -> String {
    format!(
        "\n[[providers]]\nname = \"{name}\"\nbase_url = \"{}\"\nallow_http = true\n",
        mock.base_url()
    )
}

/// One provider, the route `gpt` over `gpt-4o` then `gpt-4.1`, and the route `mini` over
/// `gpt-4o-mini`: defaults everywhere.
async fn plain() -> (MockUpstream, weir::Running) {
    let mock = MockUpstream::start().await;
    let weir = weir_e2e::weir_with(&[
        provider("openai", &mock),
        weir_e2e::route(
            "gpt",
            r#"[{ provider = "openai", model = "gpt-4o" }, { provider = "openai", model = "gpt-4.1" }]"#,
            "",
        ),
        weir_e2e::route("mini", r#"[{ provider = "openai", model = "gpt-4o-mini" }]"#, ""),
    ])
    .await;
    (mock, weir)
}

/// What a client got for one streamed completion.
struct Got {
    status: u16,
    headers: http::HeaderMap,
    body: String,
    content: String,
}

async fn ask(weir: &weir::Running, model: &str) -> Got {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::post(format!("http://{}/v1/chat/completions", weir.addr()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!(
            r#"{{"model":"{model}","stream":true,"messages":[{{"role":"user","content":"hi"}}]}}"#
        ))))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let read = read(response).await;
    Got {
        status,
        headers,
        body: String::from_utf8_lossy(&read.bytes).into_owned(),
        content: read.content(),
    }
}

/// The chat completions the mock received from `t0` on, as (seconds since `t0`, model).
fn calls(mock: &MockUpstream, t0: Instant) -> Vec<(u64, String)> {
    calls_after(mock, t0, 0)
}

/// [`calls`], skipping the first `seen` requests of the mock's log.
fn calls_after(mock: &MockUpstream, t0: Instant, seen: usize) -> Vec<(u64, String)> {
    mock.requests()
        .into_iter()
        .skip(seen)
        .filter(|r| r.path.ends_with("/chat/completions") && r.at >= t0)
        .map(|r| {
            let at = r.at.saturating_duration_since(t0).as_secs();
            (at, r.model.unwrap_or_default())
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_minute_long_outage_of_one_model_is_served_by_the_other_and_ends_within_a_probe_interval()
{
    let (mock, weir) = plain().await;
    let t0 = Instant::now();
    mock.set_model_defaults("gpt-4o", Some("fault=503"));
    let mut served = Vec::new();
    let mut healed = false;
    while t0.elapsed() < Duration::from_secs(120) {
        if !healed && t0.elapsed() >= Duration::from_secs(60) {
            mock.set_model_defaults("gpt-4o", None);
            healed = true;
        }
        let got = ask(&weir, "gpt").await;
        assert_eq!(got.status, 200, "every request is served: {}", got.body);
        let last = calls(&mock, t0).pop().unwrap();
        served.push((t0.elapsed().as_secs(), last.1));
        // The other route on the same provider is never touched by the outage.
        assert_eq!(ask(&weir, "mini").await.status, 200);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let log = calls(&mock, t0);
    let primary: Vec<u64> = log
        .iter()
        .filter(|(at, m)| m == "gpt-4o" && *at < 60)
        .map(|(at, _)| *at)
        .collect();
    let back = served
        .iter()
        .find(|(at, model)| *at >= 60 && model == "gpt-4o")
        .map(|(at, _)| *at)
        .expect("the primary model serves again");
    println!(
        "outage 0-60 s: {} requests, all served; the primary model was tried at {primary:?} s; back on it at {back} s",
        served.iter().filter(|(at, _)| *at < 60).count()
    );
    assert!(
        served
            .iter()
            .filter(|(at, _)| *at < 60)
            .all(|(_, m)| m == "gpt-4.1"),
        "the fallback model served the outage: {served:?}"
    );
    // Three failures open the model's breaker; while open, a one-token probe per interval
    // (30 s) and the breaker's own half-open tries: a handful of attempts, not one per request.
    assert!(
        primary.len() <= 10,
        "attempts on the failing model: {primary:?}"
    );
    assert!(
        back <= 60 + 30 + 2,
        "back within one probe interval: {back} s"
    );
    assert!(
        served
            .iter()
            .filter(|(at, _)| *at > back)
            .all(|(_, m)| m == "gpt-4o"),
        "{served:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_model_leaves_the_others_served_and_all_cooling_down_answers_429() {
    let (mock, weir) = plain().await;
    let t0 = Instant::now();
    mock.set_model_defaults("gpt-4o", Some("fault=429,retry_after=30"));
    let got = ask(&weir, "gpt").await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(
        ask(&weir, "mini").await.status,
        200,
        "another route on the provider"
    );
    let got = ask(&weir, "gpt").await;
    assert_eq!(got.status, 200);
    assert_eq!(
        calls(&mock, t0)
            .iter()
            .filter(|(_, m)| m == "gpt-4o")
            .count(),
        1,
        "the 429 keeps that model out for its Retry-After, not the provider"
    );

    // Now the other model is rate limited too: once both cool down, a 429 with the soonest
    // Retry-After, and nothing sent upstream.
    mock.set_model_defaults("gpt-4.1", Some("fault=429,retry_after=20"));
    let got = ask(&weir, "gpt").await;
    assert_eq!(got.status, 429, "{}", got.body);
    let seen = calls(&mock, t0).len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let got = ask(&weir, "gpt").await;
    assert_eq!(got.status, 429, "{}", got.body);
    let error: serde_json::Value = serde_json::from_str(&got.body).unwrap();
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
    assert_eq!(error["error"]["type"], "rate_limit_error");
    assert_eq!(
        header(&got.headers, "retry-after"),
        Some("15"),
        "the soonest"
    );
    assert_eq!(calls(&mock, t0).len(), seen, "nothing went upstream");
    assert_eq!(ask(&weir, "mini").await.status, 200);
    let metrics = weir_e2e::metrics_at(weir.admin_addr()).await;
    assert!(
        metrics.contains(r#"status="429",outcome="rate_limited"} "#),
        "an upstream 429 is counted as what it is"
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_a_slow_to_answer_and_a_slow_to_start_model_are_left_within_30_s() {
    let (mock, weir) = plain().await;
    for fault in ["fault=silent", "headers_ms=40000", "first_ms=20000"] {
        mock.set_model_defaults("gpt-4o", Some(fault));
        let t0 = Instant::now();
        let got = ask(&weir, "gpt").await;
        let took = t0.elapsed();
        assert_eq!(got.status, 200, "{fault}: {}", got.body);
        assert_eq!(
            header(&got.headers, "x-weir-attempts"),
            Some("2"),
            "{fault}"
        );
        assert_eq!(
            calls(&mock, t0)
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>(),
            ["gpt-4o", "gpt-4.1"],
            "{fault}"
        );
        // One deadline for the start of a stream, from the send: 15 s with a second target.
        assert_eq!(took, Duration::from_secs(15), "{fault}");
        println!("{fault}: failed over after {took:?}, answered by gpt-4.1");
        // Each one is a failure of that model: let its breaker forget before the next case.
        tokio::time::sleep(Duration::from_secs(400)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_context_length_error_goes_to_a_larger_model_never_the_same_one() {
    let small = MockUpstream::start().await;
    let other = MockUpstream::start().await;
    // No context_window anywhere: the catalogue knows gpt-4o (128k) and gpt-4.1 (1M).
    let weir = weir_e2e::weir_with(&[
        provider("openai", &small),
        provider("azure", &other),
        weir_e2e::route(
            "gpt",
            r#"[{ provider = "openai", model = "gpt-4o" }, { provider = "azure", model = "gpt-4o" }, { provider = "openai", model = "gpt-4o-mini" }, { provider = "openai", model = "gpt-4.1" }]"#,
            "",
        ),
        weir_e2e::route(
            "mine",
            r#"[{ provider = "openai", model = "my-model-a" }, { provider = "azure", model = "my-model-a" }, { provider = "openai", model = "my-model-b" }]"#,
            "",
        ),
    ])
    .await;
    let t0 = Instant::now();
    small.set_model_defaults("gpt-4o", Some("fault=context_length"));
    let got = ask(&weir, "gpt").await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(
        calls(&small, t0)
            .iter()
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>(),
        ["gpt-4o", "gpt-4.1"],
        "not gpt-4o again elsewhere, not gpt-4o-mini (no larger)"
    );
    assert!(calls(&other, t0).is_empty());

    // Unknown windows: the next target of another model.
    small.set_model_defaults("my-model-a", Some("fault=context_length"));
    let seen = (small.requests().len(), other.requests().len());
    let got = ask(&weir, "mine").await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(
        calls_after(&small, t0, seen.0)
            .iter()
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>(),
        ["my-model-a", "my-model-b"]
    );
    assert!(
        calls_after(&other, t0, seen.1).is_empty(),
        "never the same model again"
    );
}

#[tokio::test(start_paused = true)]
async fn attempts_are_bounded_and_an_error_after_retries_says_not_to_retry_on_top() {
    let (mock, weir) = plain().await;
    let t0 = Instant::now();
    mock.set_model_defaults("gpt-4o", Some("fault=500"));
    mock.set_model_defaults("gpt-4.1", Some("fault=500"));
    let got = ask(&weir, "gpt").await;
    assert_eq!(got.status, 500);
    let attempts: usize = header(&got.headers, "x-weir-attempts")
        .unwrap()
        .parse()
        .unwrap();
    let log = calls(&mock, t0);
    assert_eq!(log.len(), attempts);
    assert!(attempts <= 4, "{log:?}");
    assert_eq!(header(&got.headers, "x-should-retry"), Some("false"));
    println!("500 on both models: {attempts} upstream calls at {log:?}");

    // One model, a 429 asking for a second: waited out and retried, then passed on with its
    // Retry-After, and the client told not to retry on top.
    let seen = mock.requests().len();
    mock.set_model_defaults("gpt-4o-mini", Some("fault=429,retry_after=1"));
    let got = ask(&weir, "mini").await;
    assert_eq!(got.status, 429);
    let log = calls_after(&mock, t0, seen);
    let attempts: usize = header(&got.headers, "x-weir-attempts")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(log.len(), attempts);
    let gaps: Vec<u64> = log.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(
        gaps.iter().all(|g| *g == 1),
        "spaced by Retry-After: {log:?}"
    );
    assert_eq!(header(&got.headers, "retry-after"), Some("1"));
    assert_eq!(header(&got.headers, "x-should-retry"), Some("false"));
    println!("429 with Retry-After 1 on one model: {attempts} upstream calls at {log:?}");
    assert!(got.content.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_probe_on_a_connection_the_provider_closed_is_tried_fresh_and_not_counted() {
    use weir_test::raw::{End, RawUpstream};
    let models = br#"{"object":"list","data":[]}"#;
    let mut wire = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        models.len()
    )
    .into_bytes();
    wire.extend_from_slice(models);
    let raw = RawUpstream::start(wire, End::Whole).await;
    // A provider that closes a kept-alive connection as the next request arrives on it.
    raw.set_reused_end(Some(End::CloseAt(0)));
    let weir = weir_e2e::weir_with(&[
        format!(
            "\n[[providers]]\nname = \"raw\"\nbase_url = \"{}\"\nallow_http = true\nhealth = {{ interval = \"5s\", unhealthy_after = 1 }}\n",
            raw.base_url()
        ),
        weir_e2e::route("gpt", r#"[{ provider = "raw", model = "gpt-4o" }]"#, ""),
    ])
    .await;
    // Probes at 5 s (a new connection, pooled), 10 s and 15 s (each on the pooled one, which
    // the provider closes, then on a fresh one).
    tokio::time::sleep(Duration::from_secs(16)).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let page = client
        .get(
            format!("http://{}/admin/providers", weir.admin_addr())
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    let page = read(page).await;
    let page: serde_json::Value = serde_json::from_slice(&page.bytes).unwrap();
    assert_eq!(page["providers"][0]["state"], "closed", "{page}");
    assert_eq!(page["providers"][0]["last_error"], serde_json::Value::Null);
    let probes = raw.requests().len();
    assert_eq!(probes, 5, "3 probes, 2 of them sent twice");
    assert_eq!(raw.connections(), 3, "each retry on a fresh connection");
}
