//! The official `openai` (Responses API) and `anthropic` (Messages API) Python SDKs through
//! weir, on the mock speaking both: whole answers, usage, tool use, an unknown model, a 429
//! and a 529 failed over before the first token, a cut after it rescued or ended honestly,
//! stored responses fetched from the provider that made them, `count_tokens`.
//!
//! Needs a Python with both packages: `WEIR_PYTHON`, or `.venv/bin/python` at the workspace
//! root (`cargo xtask test` creates it from `tests/python/requirements.txt`).

use std::path::Path;
use weir_test::{MockConfig, MockUpstream};

const PROVIDER_KEY: &str = "sk-provider-0123456789abcdef";
const CLIENT_KEY: &str = "sk-weir-client-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_and_anthropic_sdks_speak_their_apis_through_weir() {
    // The mock wants the provider key: as a bearer token on OpenAI's paths, as `x-api-key`
    // on Anthropic's.
    let mock = MockUpstream::start_with(MockConfig {
        api_key: Some(PROVIDER_KEY.to_owned()),
        ..MockConfig::default()
    })
    .await;
    let provider = |name: &str, api: &str| {
        weir_e2e::provider(
            name,
            &mock.base_url(),
            &format!("api = \"{api}\"\napi_key = \"${{WEIR_E2E_PROVIDER_KEY}}\""),
        )
    };
    let two = |first: &str, provider: &str, continuation: &str| {
        format!(
            r#"[{{ provider = "{provider}", model = "{first}" }},
                {{ provider = "{provider}", model = "m", continuation = "{continuation}" }}]"#
        )
    };
    let budget = "retry_budget = { ratio = 10, per_second = 1000 }";
    let sections = [
        provider("oa", "openai"),
        provider("an", "anthropic"),
        weir_e2e::route("gpt-r", r#"[{ provider = "oa", model = "m" }]"#, ""),
        weir_e2e::route(
            "gpt-r-429",
            &two("m@fault=429,retry_after=1", "oa", "replay"),
            budget,
        ),
        weir_e2e::route(
            "gpt-r-cut",
            &two("m@fault=reset_after:3", "oa", "replay"),
            budget,
        ),
        weir_e2e::route(
            "gpt-r-none",
            &two("m@fault=reset_after:3", "oa", "none"),
            budget,
        ),
        weir_e2e::route("claude", r#"[{ provider = "an", model = "m" }]"#, ""),
        weir_e2e::route("claude-529", &two("m@fault=529", "an", "prefill"), budget),
        weir_e2e::route(
            "claude-cut",
            &two("m@fault=reset_after:3", "an", "prefill"),
            budget,
        ),
        weir_e2e::route(
            "claude-none",
            &two("m@fault=reset_after:3", "an", "none"),
            budget,
        ),
    ];
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nforward_headers = [\"x-mock\"]\n{}\n[[keys]]\nname = \"sdk\"\nhash = \"{}\"\n",
        sections.concat(),
        weir::config::hash_key(CLIENT_KEY)
    );
    let config = weir::config::parse(Path::new("apis.toml"), &text, &|name| {
        (name == "WEIR_E2E_PROVIDER_KEY").then(|| PROVIDER_KEY.to_owned())
    })
    .unwrap();
    let weir = weir::start(&config).await.unwrap();
    let stdout = weir_e2e::run_python(
        "the openai and anthropic SDKs",
        "apis_sdk_check.py",
        &[weir.addr().to_string(), CLIENT_KEY.to_string()],
    )
    .await;
    println!("{stdout}");
    for step in [
        "ok responses.create(stream=True)",
        "ok responses.stream get_final_response",
        "ok responses.create whole",
        "ok responses.retrieve and delete",
        "ok responses tool call",
        "ok responses unknown model -> 404",
        "ok responses 429 failed over",
        "ok responses cut after the first token rescued by replay",
        "ok responses cut with nothing to continue ends honestly",
        "ok messages.stream text_stream",
        "ok messages.create whole",
        "ok messages.create(stream=True)",
        "ok messages tool use",
        "ok messages unknown model -> 404 not_found_error",
        "ok messages wrong key -> 401",
        "ok messages 529 failed over",
        "ok messages cut after the first token rescued by prefill",
        "ok messages cut with nothing to continue raises",
        "ok messages.count_tokens",
    ] {
        assert!(stdout.contains(step), "missing `{step}` in:\n{stdout}");
    }
    // Metrics count both APIs under their routes' labels, with the usage of their final
    // events (each of these routes answered several 20-token texts).
    let metrics = weir_e2e::parse_prometheus(&weir_e2e::metrics_at(weir.admin_addr()).await);
    let tokens = |route: &str, kind: &str| -> f64 {
        metrics
            .iter()
            .filter(|m| m.name == "weir_tokens_total")
            .filter(|m| m.label("route") == Some(route) && m.label("direction") == Some(kind))
            .map(|m| m.value)
            .sum()
    };
    for route in ["gpt-r", "claude"] {
        assert!(tokens(route, "output") >= 60.0, "{route}: {metrics:?}");
        assert!(tokens(route, "input") > 0.0, "{route}");
    }
    let requests_of = |route: &str| -> f64 {
        metrics
            .iter()
            .filter(|m| m.name == "weir_requests_total" && m.label("route") == Some(route))
            .map(|m| m.value)
            .sum()
    };
    assert_eq!(
        requests_of("claude-cut"),
        1.0,
        "a rescued stream is one request"
    );
    let requests = mock.requests();
    let anthropic: Vec<_> = requests
        .iter()
        .filter(|r| r.path.ends_with("/messages"))
        .collect();
    assert!(!anthropic.is_empty());
    for r in &anthropic {
        // weir's provider key, the Anthropic way; the client's key stays at weir.
        assert_eq!(r.headers.get("x-api-key").unwrap(), PROVIDER_KEY);
        assert!(r.headers.get("authorization").is_none());
        assert!(r.headers.get("anthropic-version").is_some());
    }
    assert!(requests
        .iter()
        .all(|r| !format!("{:?}", r.headers).contains(CLIENT_KEY)));
    // The prefill continuation carried the three delivered tokens as the assistant's text,
    // without the trailing space Anthropic refuses there.
    let prefill = anthropic
        .iter()
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
        .find(|b| b["messages"].as_array().is_some_and(|m| m.len() == 2))
        .expect("a prefill continuation");
    assert_eq!(
        prefill["messages"][1],
        serde_json::json!({"role": "assistant", "content": "tok0 tok1 tok2"})
    );
    // The default retry policy, the same for every API: a 429 with `Retry-After: 1` waited out
    // on its target for three attempts a second apart, a 529 (a 5xx) retried once; then the
    // second target answered.
    let asked = |directive: &str| -> Vec<_> {
        requests
            .iter()
            .filter(|r| r.model.as_deref() == Some(directive))
            .map(|r| r.at)
            .collect()
    };
    let limited = asked("m@fault=429,retry_after=1");
    assert_eq!(limited.len(), 3);
    for pair in limited.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= std::time::Duration::from_millis(990), "{gap:?}");
    }
    assert_eq!(asked("m@fault=529").len(), 2);
}

/// The mock's Responses and Messages shapes are what the official SDKs parse: the SDKs
/// against the mock directly (so that the tests above exercise weir against real shapes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_speaks_what_the_official_sdks_parse() {
    let mock = MockUpstream::start_with(MockConfig {
        api_key: Some("test".to_owned()),
        ..MockConfig::default()
    })
    .await;
    let stdout = weir_e2e::run_python(
        "the openai and anthropic SDKs",
        "mock_sdk_shapes.py",
        &[mock.base_url().to_string()],
    )
    .await;
    assert!(stdout.contains("checks passed"), "{stdout}");
}
