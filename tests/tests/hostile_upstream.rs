//! A hostile upstream against weir's HTTP/1.1 client: framing that RFC 9112 (and hyper)
//! refuse is refused, a response head that is not an answer is a malformed answer (failed over,
//! else a 502 that says why), and a connection is reused only when it is provably clean.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;
use weir_test::raw::{chunked, End, RawUpstream};

async fn weir_over(upstream: &RawUpstream) -> weir::Running {
    weir_e2e::weir_with(&[
        weir_e2e::provider(
            "hostile",
            &upstream.base_url(),
            "breaker = { consecutive_failures = 0, error_rate = 0 }",
        ),
        weir_e2e::route("gpt-test", r#"[{ provider = "hostile", model = "m" }]"#, ""),
    ])
    .await
}

struct Got {
    status: u16,
    body: String,
    broken: bool,
}

/// A non-streaming completion through weir.
async fn ask(weir: &weir::Running) -> Got {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::post(format!("http://{}/v1/chat/completions", weir.addr()))
        .body(Full::new(Bytes::from_static(
            br#"{"model":"gpt-test","messages":[]}"#,
        )))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let read = weir_e2e::read(response).await;
    Got {
        status,
        body: String::from_utf8_lossy(&read.bytes).into_owned(),
        broken: read.error.is_some(),
    }
}

const ANSWER: &str = r#"{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}"#;

fn with_length(length: &str, body: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n{body}").into_bytes()
}

fn assert_malformed(got: &Got, why: &str, what: &str) {
    assert_eq!(got.status, 502, "{what}: {}", got.body);
    let error: serde_json::Value = serde_json::from_str(&got.body).unwrap();
    assert_eq!(error["error"]["code"], "malformed_answer", "{what}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("sent a malformed response"),
        "{what}: {message}"
    );
    assert!(message.contains(why), "{what}: {message}");
}

#[tokio::test(start_paused = true)]
async fn a_content_length_is_digits_only() {
    let n = ANSWER.len();
    for length in [
        format!("+{n}"),
        format!("-{n}"),
        format!("0x{n:x}"),
        format!("{n} {n}"),
        format!("{n}, {}", n + 1),
    ] {
        let upstream = RawUpstream::start(with_length(&length, ANSWER), End::Whole).await;
        let weir = weir_over(&upstream).await;
        assert_malformed(&ask(&weir).await, "content-length", &length);
    }
    // A list of the same value is one value (RFC 9110 8.6, as hyper reads it).
    let upstream = RawUpstream::start(with_length(&format!("{n}, {n}"), ANSWER), End::Whole).await;
    let weir = weir_over(&upstream).await;
    let got = ask(&weir).await;
    assert_eq!((got.status, got.body.as_str()), (200, ANSWER));
}

fn with_chunks(size_lines: &[&str]) -> Vec<u8> {
    let mut wire =
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec();
    for line in size_lines {
        wire.extend_from_slice(line.as_bytes());
        wire.extend_from_slice(b"\r\n");
    }
    wire
}

#[tokio::test(start_paused = true)]
async fn a_chunk_size_is_hex_digits_only() {
    let n = ANSWER.len();
    for size in [
        format!("+{n:x}"),
        format!(" {n:x}"),
        format!("0x{n:x}"),
        format!("{n:x}g"),
    ] {
        let mut wire = with_chunks(&[&size]);
        wire.extend_from_slice(format!("{ANSWER}\r\n0\r\n\r\n").as_bytes());
        let upstream = RawUpstream::start(wire, End::Whole).await;
        let weir = weir_over(&upstream).await;
        assert_malformed(&ask(&weir).await, "chunk size", &size);
    }
    // Spaces after the digits, an extension and upper-case hex are the grammar's.
    let mut wire = with_chunks(&[&format!("{n:X}  ;name=value")]);
    wire.extend_from_slice(format!("{ANSWER}\r\n0\r\n\r\n").as_bytes());
    let upstream = RawUpstream::start(wire, End::Whole).await;
    let weir = weir_over(&upstream).await;
    assert_eq!(ask(&weir).await.body, ANSWER);
}

#[tokio::test(start_paused = true)]
async fn content_length_with_chunked_is_chunked_and_the_connection_is_not_reused() {
    let mut wire = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    wire.extend_from_slice(&chunked(&[ANSWER]));
    let upstream = RawUpstream::start(wire, End::Whole).await;
    let weir = weir_over(&upstream).await;
    for _ in 0..3 {
        assert_eq!(ask(&weir).await.body, ANSWER, "chunked wins");
    }
    assert_eq!(upstream.connections(), 3, "a new connection each time");
}

#[tokio::test(start_paused = true)]
async fn a_head_that_is_not_an_answer_is_malformed() {
    let cases = [
        (
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
                .to_owned(),
            "switched protocols",
        ),
        (
            format!(
                "HTTP/1.1 999 Odd\r\ncontent-length: {}\r\n\r\n{ANSWER}",
                ANSWER.len()
            ),
            "status",
        ),
        (
            "HTTP/1.1 600 Odd\r\ncontent-length: 0\r\n\r\n".to_owned(),
            "status",
        ),
        ("HTTP/1.1 100 Continue\r\n\r\n".repeat(20), "too many 1xx"),
    ];
    for (wire, why) in cases {
        let upstream = RawUpstream::start(wire.into_bytes(), End::Whole).await;
        let weir = weir_over(&upstream).await;
        assert_malformed(&ask(&weir).await, why, why);
    }
    // A few interim responses before the answer are fine.
    let wire = format!(
        "{}{}",
        "HTTP/1.1 100 Continue\r\n\r\n".repeat(3),
        String::from_utf8(with_length(&ANSWER.len().to_string(), ANSWER)).unwrap()
    );
    let upstream = RawUpstream::start(wire.into_bytes(), End::Whole).await;
    let weir = weir_over(&upstream).await;
    assert_eq!(ask(&weir).await.body, ANSWER);
}

#[tokio::test(start_paused = true)]
async fn trailers_are_bounded() {
    let mut wire = with_chunks(&[&format!("{:x}", ANSWER.len())]);
    wire.extend_from_slice(format!("{ANSWER}\r\n0\r\n").as_bytes());
    for i in 0..200 {
        wire.extend_from_slice(format!("x-trailer-{i}: v\r\n").as_bytes());
    }
    wire.extend_from_slice(b"\r\n");
    let upstream = RawUpstream::start(wire, End::Whole).await;
    let weir = weir_over(&upstream).await;
    assert_malformed(&ask(&weir).await, "trailers", "200 trailers");
}

#[tokio::test(start_paused = true)]
async fn bytes_after_an_answer_never_become_the_next_answer() {
    let injected = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n{\"injected\":true}".to_owned();
    for delay in [Duration::ZERO, Duration::from_millis(5)] {
        let upstream =
            RawUpstream::start(with_length(&ANSWER.len().to_string(), ANSWER), End::Whole).await;
        upstream.set_after(delay, injected.clone().into_bytes());
        let weir = weir_over(&upstream).await;
        for i in 0..5 {
            let got = ask(&weir).await;
            assert_eq!(
                (got.status, got.body.as_str()),
                (200, ANSWER),
                "request {i}, extra bytes {delay:?} later"
            );
            assert!(!got.broken);
            // The next request comes after the extra bytes arrived.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            upstream.connections(),
            5,
            "no connection that said too much was reused"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_clean_connection_is_reused() {
    let upstream =
        RawUpstream::start(with_length(&ANSWER.len().to_string(), ANSWER), End::Whole).await;
    let weir = weir_over(&upstream).await;
    for _ in 0..3 {
        assert_eq!(ask(&weir).await.body, ANSWER);
    }
    assert_eq!(upstream.connections(), 1);
}
