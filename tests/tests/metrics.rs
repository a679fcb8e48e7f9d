//! `/metrics` as Prometheus scrapes it: parsed whole, after answers that failed over, were
//! rescued, or were refused.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use weir_e2e::two::{ask, setup_with};
use weir_e2e::{metrics_at, parse_prometheus, read, Sample};

const PRICES: &str = r#"
[prices]
m = { input = 2.0, output = 8.0 }
"#;

fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    find(samples, name, labels)
        .unwrap_or_else(|| panic!("no {name} {labels:?}"))
        .value
}

/// A streamed chat answer that shows its usage to the client: (prompt, completion) tokens,
/// and the attempts it took.
async fn ask_with_usage(weir: &weir::Running) -> (u64, u64, f64) {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::post(format!("http://{}/v1/chat/completions", weir.addr()))
        .header("x-mock", "chunks=6")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"gpt-test","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hello there"}]}"#,
        )))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let attempts =
        weir_e2e::header(response.headers(), "x-weir-attempts").map_or(1.0, |a| a.parse().unwrap());
    let read = read(response).await;
    let usage = read
        .events()
        .iter()
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
        .find_map(|v| Some(v.get("usage")?.clone()))
        .expect("the client asked for usage");
    (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
        attempts,
    )
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_failed_over_is_counted_timed_and_priced() {
    let s = setup_with(None, "", None, PRICES).await;
    s.primary.set_defaults(Some("fault=503"));
    let got = ask(&s.weir, "chunks=5").await;
    assert_eq!((got.status, got.provider.as_deref()), (200, Some("backup")));
    let (prompt, completion, attempts) = ask_with_usage(&s.weir).await;
    assert_eq!(completion, 6);
    let first_attempts: f64 = got.attempts.as_deref().unwrap().parse().unwrap();

    let samples = parse_prometheus(&metrics_at(s.weir.admin_addr()).await);
    let backup = [
        ("route", "gpt-test"),
        ("provider", "backup"),
        ("model", "m"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
        backup.iter().chain(extra).copied().collect()
    };
    assert_eq!(
        value(
            &samples,
            "weir_requests_total",
            &with(&[("status", "200"), ("outcome", "ok")])
        ),
        2.0
    );
    // Each request failed over once: primary answered 503 twice (a retry), then backup.
    assert_eq!(
        value(
            &samples,
            "weir_failovers_total",
            &[
                ("route", "gpt-test"),
                ("from", "primary"),
                ("to", "backup"),
                ("phase", "before_first_token")
            ]
        ),
        2.0
    );
    // Every attempt beyond each request's first (as `x-weir-attempts` told the clients).
    assert_eq!(
        value(&samples, "weir_retries_total", &backup),
        first_attempts - 1.0 + attempts - 1.0
    );
    for histogram in [
        "weir_time_to_first_token_seconds_count",
        "weir_request_duration_seconds_count",
        "weir_overhead_seconds_count",
    ] {
        assert_eq!(value(&samples, histogram, &backup), 2.0, "{histogram}");
    }
    // Gaps between chunks: 4 + 5 content chunks, plus the finish chunk of each.
    assert!(value(&samples, "weir_inter_token_seconds_count", &backup) >= 9.0);
    // Tokens: usage as reported, whether the client saw it (the second answer) or weir kept
    // it from the client (the first, which did not ask for it).
    let tokens = |direction| {
        value(
            &samples,
            "weir_tokens_total",
            &with(&[("direction", direction)]),
        )
    };
    let first_prompt = tokens("input") - prompt as f64;
    assert!(first_prompt > 0.0);
    assert_eq!(tokens("output"), (5 + completion) as f64);
    let cost = value(&samples, "weir_cost_usd_total", &backup);
    let expected = (tokens("input") * 2.0 + tokens("output") * 8.0) / 1e6;
    assert!((cost - expected).abs() < 1e-9, "{cost} vs {expected}");
    assert_eq!(value(&samples, "weir_active_streams", &backup), 0.0);
    // The other layers' families are in the same scrape.
    for family in [
        "weir_breaker_state",
        "weir_upstream_pool_open",
        "weir_in_flight",
        "weir_trace_spans_total",
    ] {
        assert!(samples.iter().any(|s| s.name == family), "{family} missing");
    }
}

#[tokio::test(start_paused = true)]
async fn a_rescued_stream_counts_as_rescued_on_the_provider_that_finished_it() {
    let s = setup_with(None, "", None, "").await;
    s.primary.set_defaults(Some("fault=reset_after:3"));
    let got = ask(&s.weir, "chunks=8").await;
    assert!(!got.broken);
    let samples = parse_prometheus(&metrics_at(s.weir.admin_addr()).await);
    assert_eq!(
        value(
            &samples,
            "weir_failovers_total",
            &[
                ("from", "primary"),
                ("to", "backup"),
                ("phase", "after_first_token")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "weir_requests_total",
            &[("provider", "backup"), ("outcome", "rescued")]
        ),
        1.0
    );
    // The gauge went up on primary and down on backup; each reads 0 once the stream is over.
    for provider in ["primary", "backup"] {
        if let Some(s) = find(&samples, "weir_active_streams", &[("provider", provider)]) {
            assert_eq!(s.value, 0.0, "{provider}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_cut_stream_is_truncated_and_what_clients_send_never_becomes_a_label() {
    let s = setup_with(
        None,
        "",
        Some(r#"[{ provider = "primary", model = "m" }]"#),
        "",
    )
    .await;
    s.primary.set_defaults(Some("fault=reset_after:2"));
    let got = ask(&s.weir, "chunks=5").await;
    assert!(got.broken);
    // Unknown models, paths and headers chosen by a client.
    let client = Client::builder(TokioExecutor::new()).build_http();
    for (path, model) in [
        ("/v1/chat/completions", "attacker-model-1"),
        ("/v1/attacker-path", "gpt-test"),
    ] {
        let request = Request::post(format!("http://{}{path}", s.weir.addr()))
            .header("x-attacker", "attacker-header")
            .header("x-request-id", "attacker-id")
            .body(Full::new(Bytes::from(format!(
                r#"{{"model":"{model}","stream":true,"messages":[]}}"#
            ))))
            .unwrap();
        let status = client.request(request).await.unwrap().status();
        assert_eq!(status, 404);
    }
    let text = metrics_at(s.weir.admin_addr()).await;
    assert!(!text.contains("attacker"), "{text}");
    let samples = parse_prometheus(&text);
    assert_eq!(
        value(
            &samples,
            "weir_requests_total",
            &[
                ("provider", "primary"),
                ("status", "200"),
                ("outcome", "truncated")
            ]
        ),
        1.0
    );
    // Refused before routing: counted with empty labels.
    assert_eq!(
        value(
            &samples,
            "weir_requests_total",
            &[
                ("route", ""),
                ("status", "404"),
                ("outcome", "client_error")
            ]
        ),
        2.0,
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_upstream_error_is_counted_with_the_provider_that_answered_it() {
    let s = setup_with(
        None,
        "",
        Some(r#"[{ provider = "primary", model = "m" }]"#),
        "",
    )
    .await;
    s.primary.set_defaults(Some("fault=500"));
    let got = ask(&s.weir, "chunks=5").await;
    assert_eq!(got.status, 500);
    let samples = parse_prometheus(&metrics_at(s.weir.admin_addr()).await);
    let counted: Vec<_> = samples
        .iter()
        .filter(|x| x.name == "weir_requests_total" && x.label("status") == Some("500"))
        .map(|x| (x.label("provider"), x.label("model"), x.value))
        .collect();
    assert_eq!(counted, [(Some("primary"), Some("m"), 1.0)]);
}
