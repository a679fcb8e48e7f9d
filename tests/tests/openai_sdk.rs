//! The official `openai` Python SDK, streaming and not, through weir.
//!
//! Needs a Python with the `openai` package: `WEIR_PYTHON`, or `.venv/bin/python` at the
//! workspace root (`cargo xtask test` creates it).

use weir_e2e::Harness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_streams_through_weir_unchanged() {
    let h = Harness::start().await;
    let stdout = weir_e2e::run_python(
        "the openai SDK",
        "openai_sdk_check.py",
        &[h.base_url().to_string()],
    )
    .await;
    for step in [
        "ok streaming 21",
        "ok streaming usage 20",
        "ok non-streaming",
        "ok unknown model -> 404 model_not_found",
        "ok cut stream raises",
        "ok no retry on top: 2 upstream attempts",
    ] {
        assert!(stdout.contains(step), "missing `{step}` in:\n{stdout}");
    }
    // The SDK sent the failing request once: weir's two attempts are all the mock saw.
    let failing = h
        .mock
        .requests()
        .iter()
        .filter(|r| r.headers.get("x-mock").is_some_and(|v| v == "fault=500"))
        .count();
    assert_eq!(failing, 2, "weir's retry only, none of the SDK's on top");
    // The SDK's key stayed at weir.
    assert!(h
        .mock
        .requests()
        .iter()
        .all(|r| !format!("{:?}", r.headers).contains("sk-client-side-key")));
}

/// weir with three routes over a hostile primary (`weir_test::raw`) and a healthy backup: the
/// backup continues by replay, by prefill, or not at all.
async fn cut_setup() -> (
    weir_test::raw::RawUpstream,
    weir_test::MockUpstream,
    weir::Running,
    Vec<u8>,
) {
    use weir_test::raw::{chat_answer, sse_response, End, RawUpstream};
    let tokens: Vec<String> = (0..3)
        .map(|i| weir_test::script::word_token("wörld", i))
        .collect();
    let wire = sse_response(&chat_answer("chatcmpl-raw", "m", &tokens, None));
    let primary = RawUpstream::start(wire.clone(), End::Whole).await;
    let backup = weir_test::MockUpstream::start().await;
    let route = |name: &str, continuation: &str| {
        weir_e2e::route(
            name,
            &format!(
                r#"[{{ provider = "primary", model = "m" }},
           {{ provider = "backup", model = "m@chunks=3,word=wörld", continuation = "{continuation}" }}]"#
            ),
            "retry_budget = { ratio = 10, per_second = 1000 }",
        )
    };
    let weir = weir_e2e::weir_with(&[
        weir_e2e::provider(
            "primary",
            &primary.base_url(),
            "breaker = { consecutive_failures = 0, error_rate = 0 }",
        ),
        weir_e2e::provider("backup", &backup.base_url(), ""),
        route("gpt-replay", "replay"),
        route("gpt-prefill", "prefill"),
        route("gpt-none", "none"),
    ])
    .await;
    (primary, backup, weir, wire)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_gets_whole_answers_or_an_error_at_any_cut() {
    let (_primary, _backup, weir, wire) = cut_setup().await;
    let find = |needle: &[u8]| {
        wire.windows(needle.len())
            .position(|w| w == needle)
            .unwrap()
    };
    let head = find(b"\r\n\r\n") + 4;
    let second = find("wörld1".as_bytes());
    let finish = find(b"\"stop\"");
    // Inside the head, inside the first chunk-size line, inside `data:`, inside the `ö` of
    // the second token, in the blank line after it, inside the next chunk-size line, after
    // the finish chunk, inside [DONE], and before the last chunk.
    let offsets = [
        10,
        head + 1,
        head + 6,
        second + 2,
        second + 40,
        find(b"}]}\n\n\r\n") + 5,
        find(b"}]}\n\n\r\n") + 8,
        finish + 30,
        find(b"[DONE]") + 3,
        wire.len() - 3,
    ];
    let expected: String = (0..3)
        .map(|i| weir_test::script::word_token("wörld", i))
        .collect();
    let mut args = vec![format!("http://{}/v1", weir.addr()), expected.clone()];
    args.extend(offsets.iter().map(usize::to_string));
    let stdout = weir_e2e::run_python("the openai SDK", "openai_cut_check.py", &args).await;
    println!("{stdout}");
    let checked = offsets.len() * 2 * 3;
    assert!(
        stdout.contains(&format!("ok cuts {checked} streams")),
        "{stdout}"
    );
    // Most of these cuts come after the first token: with nothing to continue, the SDK raised.
    let raised: usize = stdout
        .split_whitespace()
        .rev()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(raised >= 8, "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_lists_and_retrieves_the_models_its_key_may_use() {
    let mock = weir_test::MockUpstream::start().await;
    let key = "sk-team-a-0123456789";
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{}{}{}{}\n[[keys]]\nname = \"team-a\"\nhash = \"{}\"\nmodels = [\"gpt-a\", \"team/b\"]\n",
        weir_e2e::provider("mock", &mock.base_url(), ""),
        weir_e2e::route("gpt-a", r#"[{ provider = "mock", model = "m" }]"#, ""),
        weir_e2e::route("team/b", r#"[{ provider = "mock", model = "m" }]"#, ""),
        weir_e2e::route("gpt-secret", r#"[{ provider = "mock", model = "m" }]"#, ""),
        weir::config::hash_key(key),
    );
    let config = weir::config::parse("models.toml".as_ref(), &text, &|_| None).unwrap();
    let weir = weir::start(&config).await.unwrap();
    let stdout = weir_e2e::run_python(
        "the openai SDK",
        "openai_models_check.py",
        &[format!("http://{}/v1", weir.addr()), key.to_string()],
    )
    .await;
    for step in [
        "ok models.list ['gpt-a', 'team/b']",
        "ok models.retrieve gpt-a",
        "ok models.retrieve with a slash",
        "ok models.retrieve of a model the key may not use",
    ] {
        assert!(stdout.contains(step), "missing `{step}` in:\n{stdout}");
    }
}
