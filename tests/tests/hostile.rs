//! Hostile input: request smuggling and desync probes, malformed heads, header limits and
//! slow clients. Each probe is sent raw, as an attacker would, and must be refused with the
//! connection closed; nothing behind a refused request may be served.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_e2e::{read, Harness};

/// Sends `raw` on a fresh connection and reads until the server closes it.
async fn probe(h: &Harness, raw: &[u8]) -> String {
    let mut conn = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    conn.write_all(raw).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

const SMUGGLED: &str = "POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\ncontent-length: 31\r\n\r\n{\"model\":\"short\",\"stream\":true}";

#[tokio::test(start_paused = true)]
async fn smuggling_and_malformed_heads_are_refused_and_nothing_behind_them_is_served() {
    let h = Harness::start().await;
    let probes: [(&str, String); 9] = [
        (
            "content-length and transfer-encoding",
            format!("POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "two different content-lengths",
            format!("POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!{SMUGGLED}"),
        ),
        (
            "a signed content-length",
            format!("POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\ncontent-length: +5\r\n\r\nhello{SMUGGLED}"),
        ),
        (
            "a transfer-encoding other than chunked",
            format!("POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\ntransfer-encoding: identity\r\ncontent-length: 5\r\n\r\nhello{SMUGGLED}"),
        ),
        (
            "a bad chunk size",
            format!("POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "an obs-fold continuation line",
            format!("GET /v1/models HTTP/1.1\r\nhost: weir\r\nx-a: b\r\n c\r\n\r\n{SMUGGLED}"),
        ),
        (
            "a bare CR in a header",
            format!("GET /v1/models HTTP/1.1\r\nhost: weir\r\nx-a: b\rc\r\n\r\n{SMUGGLED}"),
        ),
        (
            "a space before the colon",
            format!("GET /v1/models HTTP/1.1\r\nhost: weir\r\nx-a : b\r\n\r\n{SMUGGLED}"),
        ),
        (
            "a request line without a version",
            format!("GET /v1/models\r\nhost: weir\r\n\r\n{SMUGGLED}"),
        ),
    ];
    for (what, raw) in &probes {
        let answer = probe(&h, raw.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{what}: {answer}");
        assert_eq!(
            answer.matches("HTTP/1.1").count(),
            1,
            "{what}: one answer, then closed"
        );
    }
    assert!(
        h.mock.requests().is_empty(),
        "no probe, and nothing smuggled behind one, reached the upstream"
    );
}

#[tokio::test(start_paused = true)]
async fn too_many_or_too_large_headers_get_431() {
    let h = Harness::start().await;
    let many: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    let answer = probe(
        &h,
        format!("GET /v1/models HTTP/1.1\r\nhost: weir\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // Heads over 16 KiB: hyper refuses most; one read can take a head past its buffer bound
    // whole, so weir checks the parsed size too (and answers in JSON when it is the one).
    for size in [20 * 1024, 40 * 1024] {
        let big = "a".repeat(size);
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\nconnection: close\r\nx-big: {big}\r\ncontent-length: 17\r\n\r\n{{\"model\":\"short\"}}"
        );
        let answer = probe(&h, request.as_bytes()).await;
        let head = &answer[..80.min(answer.len())];
        assert!(answer.starts_with("HTTP/1.1 431"), "{head}");
        if answer.contains('{') {
            assert!(
                answer.contains("request_header_fields_too_large"),
                "{answer}"
            );
        }
    }
    assert!(h.mock.requests().is_empty());
}

#[tokio::test(start_paused = true)]
async fn forty_slowloris_connections_do_not_keep_a_client_out() {
    let h = Harness::start().await; // header_read_timeout = 5s
    let mut slow = Vec::new();
    for _ in 0..40 {
        let mut conn = tokio::net::TcpStream::connect(h.addr).await.unwrap();
        conn.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\nx-slow: ")
            .await
            .unwrap();
        slow.push(conn);
    }
    // A client arriving now is served at once.
    let started = tokio::time::Instant::now();
    let ok = h
        .post("/v1/chat/completions", r#"{"model":"short"}"#, &[])
        .await;
    assert_eq!(ok.status(), 200);
    assert_eq!(started.elapsed(), Duration::ZERO);
    // And every slow one is cut at the header timeout.
    for mut conn in slow {
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest).await;
    }
    assert_eq!(started.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn nothing_in_a_request_chooses_the_upstream_or_its_key() {
    let h = Harness::start().await; // the mock answers only the provider key weir holds
    let answer = h
        .post(
            "/v1/chat/completions",
            r#"{"model":"short","stream":true}"#,
            &[
                ("host", "evil.example:1"),
                ("x-forwarded-host", "evil.example"),
                ("x-forwarded-proto", "https"),
                ("forwarded", "host=evil.example"),
                ("authorization", "Bearer sk-attacker"),
                ("api-key", "sk-attacker"),
                ("x-api-key", "sk-attacker"),
            ],
        )
        .await;
    assert_eq!(answer.status(), 200, "served by the configured upstream");
    read(answer).await;
    let seen = &h.mock.requests()[0];
    let header = |name: &str| {
        seen.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(
        header("authorization"),
        Some(format!("Bearer {}", weir_e2e::PROVIDER_KEY))
    );
    assert_eq!(header("host"), Some(h.mock.addr().to_string()));
    assert_eq!((header("api-key"), header("x-api-key")), (None, None));

    // A model name is a name, never an address.
    let url_model = h
        .post(
            "/v1/chat/completions",
            r#"{"model":"http://evil.example/v1"}"#,
            &[],
        )
        .await;
    assert_eq!(url_model.status(), 404);
    // An absolute-form request target is routed by its path, to the configured upstream.
    let absolute = probe(
        &h,
        b"POST http://evil.example/v1/chat/completions HTTP/1.1\r\nhost: evil.example\r\nconnection: close\r\ncontent-length: 17\r\n\r\n{\"model\":\"short\"}",
    )
    .await;
    assert!(absolute.starts_with("HTTP/1.1 200"), "{absolute}");
    assert_eq!(h.mock.requests().len(), 2);
}
