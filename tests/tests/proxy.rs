//! Requests pass through weir unchanged, with weir's key and request id, and nothing else.

use weir_e2e::{header, read, Harness, PROVIDER_KEY};
use weir_test::answer;

const STREAM: &str = r#"{"model":"gpt-test","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Say it."}]}"#;

#[tokio::test]
async fn streamed_events_arrive_unchanged_and_in_order() {
    let h = Harness::start().await;
    let through = read(h.post("/v1/chat/completions", STREAM, &[]).await).await;
    assert_eq!(through.error, None);
    // The same request straight to a fresh mock: byte for byte what weir delivered.
    let direct_harness = Harness::start().await;
    let direct_body = STREAM.replace("gpt-test", "mock-upstream");
    let direct = read(direct_harness.post_direct(&direct_body).await).await;
    assert_eq!(through.bytes, direct.bytes);
    assert_eq!(through.content(), answer(20));
    let events = through.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(events[events.len() - 2].contains(r#""usage":"#));
    assert!(
        through.frames > 1,
        "streamed in several frames, not one buffer"
    );
}

#[tokio::test]
async fn non_streaming_answer_passes_through() {
    let h = Harness::start().await;
    let response = h
        .post(
            "/v1/chat/completions",
            r#"{"model":"short","messages":[]}"#,
            &[],
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(response.headers(), "content-type"),
        Some("application/json")
    );
    let json = read(response).await.json();
    assert_eq!(json["object"], "chat.completion");
    assert_eq!(json["choices"][0]["message"]["content"], answer(3));
    assert_eq!(
        json["model"], "mock-upstream@chunks=3",
        "the model that answered"
    );
}

#[tokio::test]
async fn completions_embeddings_and_models() {
    let h = Harness::start().await;
    let completion = read(
        h.post(
            "/v1/completions",
            r#"{"model":"short","prompt":"x","stream":true}"#,
            &[],
        )
        .await,
    )
    .await;
    assert_eq!(completion.content(), answer(3));
    assert!(completion.bytes.ends_with(b"data: [DONE]\n\n"));

    let embedding = read(
        h.post(
            "/v1/embeddings",
            r#"{"model":"gpt-test","input":"hello"}"#,
            &[],
        )
        .await,
    )
    .await;
    assert_eq!(embedding.json()["data"][0]["object"], "embedding");
    let paths: Vec<String> = h.mock.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/v1/completions", "/v1/embeddings"]);

    let models = h
        .send(
            http::Request::get(format!("{}/models", h.base_url()))
                .body(Default::default())
                .unwrap(),
        )
        .await;
    let models = read(models).await.json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gpt-test", "short"]);
}

#[tokio::test]
async fn model_is_rewritten_and_everything_else_kept() {
    let h = Harness::start().await;
    let body = r#"{"temperature":0.25,"model":"short","messages":[{"role":"user","content":"é"}],"user":"u1"}"#;
    read(h.post("/v1/chat/completions", body, &[]).await).await;
    let sent = &h.mock.requests()[0];
    assert_eq!(
        std::str::from_utf8(&sent.body).unwrap(),
        body.replace(r#""model":"short""#, r#""model":"mock-upstream@chunks=3""#)
    );
}

#[tokio::test]
async fn client_key_and_hop_by_hop_headers_stay_at_weir() {
    let h = Harness::start().await;
    let response = h
        .post(
            "/v1/chat/completions",
            r#"{"model":"short"}"#,
            &[
                ("authorization", "Bearer client-secret-key"),
                ("x-api-key", "client-secret-key"),
                ("connection", "keep-alive, x-hop-secret"),
                ("x-hop-secret", "1"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("x-app-trace", "not listed"),
                ("user-agent", "OpenAI/Python 1.99"),
            ],
        )
        .await;
    assert_eq!(
        response.status(),
        200,
        "the mock accepted weir's provider key"
    );
    let sent = &h.mock.requests()[0].headers;
    assert_eq!(
        header(sent, "authorization"),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );
    for name in [
        "x-api-key",
        "connection",
        "x-hop-secret",
        "keep-alive",
        "te",
        "x-app-trace",
    ] {
        assert!(!sent.contains_key(name), "{name} was forwarded");
    }
    assert_eq!(header(sent, "user-agent"), Some("OpenAI/Python 1.99"));
    assert!(!format!("{sent:?}").contains("client-secret-key"));
}

#[tokio::test]
async fn a_form_labelled_body_goes_upstream_as_json_and_no_client_picks_the_account() {
    let h = Harness::start().await;
    // What `curl -d '{...}'` sends, with the headers that pick an OpenAI account.
    let response = h
        .send(
            http::Request::post(format!("http://{}/v1/chat/completions", h.addr))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("openai-organization", "org-client-chosen")
                .header("openai-project", "proj-client-chosen")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    br#"{"model":"short","messages":[{"role":"user","content":"hi"}]}"#,
                )))
                .unwrap(),
        )
        .await;
    assert_eq!(
        response.status(),
        200,
        "the mock reads only JSON-labelled bodies"
    );
    let sent = &h.mock.requests()[0].headers;
    assert_eq!(header(sent, "content-type"), Some("application/json"));
    let shown = format!("{sent:?}");
    assert!(!shown.contains("client-chosen"), "{shown}");

    // The same body sent straight to the mock, labelled as curl labels it, is refused: the
    // relabelling is what made it work.
    let direct = h
        .post_direct_with(
            r#"{"model":"short","messages":[]}"#,
            "application/x-www-form-urlencoded",
        )
        .await;
    assert_eq!(direct.status(), 400);
}

#[tokio::test]
async fn request_id_is_kept_or_made_and_sent_both_ways() {
    let h = Harness::start().await;
    let given = h
        .post(
            "/v1/chat/completions",
            r#"{"model":"short"}"#,
            &[("x-request-id", "req-abc-123")],
        )
        .await;
    assert_eq!(header(given.headers(), "x-request-id"), Some("req-abc-123"));
    read(given).await;
    let made = h
        .post("/v1/chat/completions", r#"{"model":"short"}"#, &[])
        .await;
    let made_id = header(made.headers(), "x-request-id").unwrap().to_owned();
    assert!(made_id.starts_with("weir-"));
    read(made).await;
    let log = h.mock.requests();
    assert_eq!(header(&log[0].headers, "x-request-id"), Some("req-abc-123"));
    assert_eq!(
        header(&log[1].headers, "x-request-id"),
        Some(made_id.as_str())
    );
}

#[tokio::test]
async fn h2c_clients_are_served() {
    let h = Harness::start().await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let request = http::Request::post(format!("{}/chat/completions", h.base_url()))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"model":"short","stream":true}"#,
        )))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let got = read(response).await;
    assert_eq!(got.content(), answer(3));
    assert_eq!(got.error, None);
}

#[tokio::test]
async fn weir_asks_for_usage_and_strips_it_when_the_client_did_not() {
    let h = Harness::start().await;
    let got = read(
        h.post(
            "/v1/chat/completions",
            r#"{"model":"gpt-test","stream":true,"messages":[]}"#,
            &[],
        )
        .await,
    )
    .await;
    assert_eq!(got.error, None);
    assert_eq!(got.content(), answer(20));
    let events = got.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(
        !events.iter().any(|e| e.contains("\"usage\"")),
        "no usage the client did not ask for"
    );
    // Upstream, weir asked for it.
    let sent: serde_json::Value = serde_json::from_slice(&h.mock.requests()[0].body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
}
