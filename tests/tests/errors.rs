//! Bad requests and failed upstreams get OpenAI-style errors with the right status.

use weir_e2e::{assert_openai_error, header, read, Harness};

#[tokio::test]
async fn unknown_model_is_404() {
    let h = Harness::start().await;
    let response = h
        .post(
            "/v1/chat/completions",
            r#"{"model":"gpt-nope","stream":true}"#,
            &[],
        )
        .await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        header(response.headers(), "content-type"),
        Some("application/json")
    );
    let error = assert_openai_error(&read(response).await);
    assert_eq!(error["code"], "model_not_found");
    assert_eq!(error["param"], "model");
    assert!(error["message"].as_str().unwrap().contains("gpt-nope"));
    assert!(h.mock.requests().is_empty(), "nothing reached the upstream");

    // A 40 KB model name is not echoed whole: messages shorten what the client sent.
    let long = "m".repeat(40_000);
    let response = h
        .post(
            "/v1/chat/completions",
            &format!(r#"{{"model":"{long}"}}"#),
            &[],
        )
        .await;
    assert_eq!(response.status(), 404);
    let body = read(response).await;
    assert!(body.bytes.len() < 600, "{} bytes", body.bytes.len());
    let error = assert_openai_error(&body);
    assert!(error["message"].as_str().unwrap().contains("mmm…"));
    let response = h.send(
        http::Request::get(format!("http://{}/v1/models/{}", h.addr, &long[..4000]))
            .body(http_body_util::Full::default())
            .unwrap(),
    );
    let response = response.await;
    assert_eq!(response.status(), 404);
    assert!(read(response).await.bytes.len() < 600);
}

#[tokio::test]
async fn invalid_json_and_missing_model_are_400() {
    let h = Harness::start().await;
    for body in [
        r#"{"model": "gpt-test", "#,
        r#"{"stream":true}"#,
        r#"["gpt-test"]"#,
        r#"{"model":"gpt-test","stream":"yes"}"#,
    ] {
        let response = h.post("/v1/chat/completions", body, &[]).await;
        assert_eq!(response.status(), 400, "{body}");
        let error = assert_openai_error(&read(response).await);
        assert_eq!(error["type"], "invalid_request_error");
    }
    assert!(h.mock.requests().is_empty());
}

#[tokio::test]
async fn body_over_the_limit_is_413_declared_or_not() {
    let h = Harness::start().await;
    let big = format!(r#"{{"model":"gpt-test","pad":"{}"}}"#, "x".repeat(70_000));
    let declared = h.post("/v1/chat/completions", &big, &[]).await;
    assert_eq!(declared.status(), 413);
    assert_eq!(
        assert_openai_error(&read(declared).await)["code"],
        "request_too_large"
    );

    // Chunked, no Content-Length: cut off while reading, before the whole body is sent.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let head =
        "POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\ntransfer-encoding: chunked\r\n\r\n";
    tcp.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 10_000, " ".repeat(10_000));
    for _ in 0..7 {
        tcp.write_all(chunk.as_bytes()).await.unwrap();
    }
    let mut answer = vec![0; 12];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 413");
    assert!(h.mock.requests().is_empty());
}

#[tokio::test]
async fn wrong_method_and_unknown_path() {
    let h = Harness::start().await;
    let get = h
        .send(
            http::Request::get(format!("{}/chat/completions", h.base_url()))
                .body(Default::default())
                .unwrap(),
        )
        .await;
    assert_eq!(get.status(), 405);
    assert_eq!(header(get.headers(), "allow"), Some("POST"));
    assert_openai_error(&read(get).await);
    let unknown = h.post("/v1/assistants", "{}", &[]).await;
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        assert_openai_error(&read(unknown).await)["code"],
        "unknown_url"
    );
}

#[tokio::test(start_paused = true)]
async fn upstream_errors_pass_through_with_their_status_once_retries_are_spent() {
    let h = Harness::start().await;
    // (fault, status the client gets, attempts upstream)
    let cases = [
        ("fault=503", 503, 2), // one retry on the same target, no other target
        ("fault=context_length", 400, 1), // never retried on the same model
        ("fault=content_policy", 400, 1), // the client's fault: passed on at once
        ("fault=429,retry_after=3", 429, 3), // Retry-After waited out, 3 attempts in all
    ];
    let mut seen = 0;
    for (directive, status, attempts) in cases {
        let started = tokio::time::Instant::now();
        let response = h.chat_stream(directive).await;
        assert_eq!(response.status(), status, "{directive}");
        // Said when the answer took more than one attempt.
        let said = (attempts > 1).then(|| attempts.to_string());
        assert_eq!(
            header(response.headers(), "x-weir-attempts"),
            said.as_deref(),
            "{directive}"
        );
        if status == 429 {
            assert_eq!(header(response.headers(), "retry-after"), Some("3"));
            assert_eq!(started.elapsed().as_secs(), 6, "two waits of 3 s");
        }
        assert_openai_error(&read(response).await);
        let log = h.mock.requests();
        assert_eq!(log.len(), seen + attempts as usize, "{directive}");
        if status == 429 {
            let gaps: Vec<u64> = log[seen..]
                .windows(2)
                .map(|w| w[1].at.duration_since(w[0].at).as_secs())
                .collect();
            assert_eq!(
                gaps,
                [3, 3],
                "attempts spaced by the provider's Retry-After"
            );
        }
        seen = log.len();
    }
    // The provider asked for 3 s: weir keeps its only target out until then, and says so as
    // the rate limit it is (a 429 clients back off on, not a 503).
    let response = h.chat_stream("chunks=2").await;
    assert_eq!(response.status(), 429);
    assert_eq!(header(response.headers(), "retry-after"), Some("3"));
    let error = assert_openai_error(&read(response).await);
    assert_eq!(error["code"], "rate_limit_exceeded");
    assert_eq!(error["type"], "rate_limit_error");
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("`mock` (`mock-upstream`): rate limited by the provider, cooling down"));
    assert_eq!(
        h.mock.requests().len(),
        seen,
        "that request never reached the provider"
    );
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let h = Harness::start().await;
    // Point a second weir at a closed port.
    let text = weir_e2e::config_text(&h.mock, "")
        .replace(&h.mock.base_url(), &format!("http://127.0.0.1:{port}/v1"));
    let config = weir::config::parse("x.toml".as_ref(), &text, &|name| {
        (!name.starts_with("OTEL_")).then(|| "k".into())
    })
    .unwrap();
    let weir = weir::start(&config).await.unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let request = http::Request::post(format!("http://{}/v1/chat/completions", weir.addr()))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"model":"gpt-test","stream":true}"#,
        )))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 502);
    let error = assert_openai_error(&read(response).await);
    assert_eq!(error["code"], "upstream_connect_error");
}

#[tokio::test(start_paused = true)]
async fn a_silent_upstream_is_504_at_the_stream_deadline_or_the_response_timeout() {
    // A stream's start has one deadline, headers included: `first_token_timeout` (60 s by
    // default for a route with one target), whatever `response_timeout` says.
    let h = Harness::with_provider(r#"response_timeout = "5s""#).await;
    let started = tokio::time::Instant::now();
    let response = h.chat_stream("fault=silent").await;
    assert_eq!(response.status(), 504);
    assert_eq!(started.elapsed().as_secs(), 60);
    assert_eq!(
        assert_openai_error(&read(response).await)["code"],
        "upstream_timeout"
    );
    // A whole answer is `response_timeout`'s.
    let started = tokio::time::Instant::now();
    let response = h
        .post(
            "/v1/chat/completions",
            r#"{"model":"gpt-test"}"#,
            &[("x-mock", "fault=silent")],
        )
        .await;
    assert_eq!(response.status(), 504);
    assert_eq!(started.elapsed().as_secs(), 5);
}

#[tokio::test]
async fn reset_before_headers_is_502() {
    let h = Harness::start().await;
    let response = h.chat_stream("fault=reset").await;
    assert_eq!(response.status(), 502);
    assert_openai_error(&read(response).await);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start().await; // header_read_timeout = 5s
    let mut slow = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\nx-slow: ")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut rest = Vec::new();
    // The server closes the connection (answering 408 at most); it never waits forever.
    let _ = slow.read_to_end(&mut rest).await;
    assert_eq!(started.elapsed().as_secs(), 5);
    let answer = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    // Meanwhile the server still serves others.
    let ok = h
        .post("/v1/chat/completions", r#"{"model":"short"}"#, &[])
        .await;
    assert_eq!(ok.status(), 200);
}
