//! A complete answer stays complete, and every streamed answer is watched:
//!
//! - after `[DONE]` (or the finish chunk), whatever the upstream does next (closes without its
//!   last chunk, goes silent, sends endless trailers, sends more events) changes neither the
//!   client's answer nor its outcome, and the body ends at once, cleanly;
//! - a streamed request answered with something that is not an event stream is a malformed
//!   answer: failed over when another target can take it, else a 502 that says what came;
//! - a compressed event stream (weir asks for `identity`; some servers compress anyway) is
//!   decoded and watched like any other: whole, it is forwarded whole; cut, it is reported cut.

use bytes::Bytes;
use flate2::write::GzEncoder;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::io::Write;
use std::time::Duration;
use weir_e2e::{metrics_at, parse_prometheus};
use weir_test::raw::{chat_answer, chunked, head, sse_response, End, RawUpstream};
use weir_test::MockUpstream;

const TOKENS: [&str; 3] = ["Hello", ", wör", "ld"];

fn answer_events() -> Vec<String> {
    chat_answer("chatcmpl-raw", "m", &TOKENS, None)
}

/// weir over the raw upstream `primary`, and a mock `backup` when given.
async fn weir_over(primary: &RawUpstream, backup: Option<&MockUpstream>) -> weir::Running {
    let mut sections = vec![weir_e2e::provider(
        "primary",
        &primary.base_url(),
        "idle_timeout = \"5s\"",
    )];
    let targets = match backup {
        Some(backup) => {
            sections.push(weir_e2e::provider("backup", &backup.base_url(), ""));
            r#"[{ provider = "primary", model = "m" }, { provider = "backup", model = "m@chunks=3" }]"#
        }
        None => r#"[{ provider = "primary", model = "m" }]"#,
    };
    sections.push(weir_e2e::route("gpt-test", targets, ""));
    weir_e2e::weir_with(&sections).await
}

struct Got {
    status: u16,
    read: weir_e2e::Read,
}

async fn ask(weir: &weir::Running) -> Got {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::post(format!("http://{}/v1/chat/completions", weir.addr()))
        .body(Full::new(Bytes::from_static(
            br#"{"model":"gpt-test","stream":true,"messages":[]}"#,
        )))
        .unwrap();
    let response = client.request(request).await.unwrap();
    Got {
        status: response.status().as_u16(),
        read: weir_e2e::read(response).await,
    }
}

/// `weir_requests_total` for `outcome`, all labels together.
async fn outcomes(weir: &weir::Running, outcome: &str) -> f64 {
    parse_prometheus(&metrics_at(weir.admin_addr()).await)
        .iter()
        .filter(|s| s.name == "weir_requests_total" && s.label("outcome") == Some(outcome))
        .map(|s| s.value)
        .sum()
}

fn assert_complete(got: &Got, what: &str) {
    assert_eq!(got.status, 200, "{what}");
    assert_eq!(got.read.content(), TOKENS.concat(), "{what}");
    let events = got.read.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{what}");
    assert_eq!(
        events.iter().filter(|e| *e == "[DONE]").count(),
        1,
        "{what}"
    );
    assert!(
        !events.iter().any(|e| e.contains("\"error\"")),
        "{what}: no error after [DONE]"
    );
    assert!(got.read.error.is_none(), "{what}: the body ends cleanly");
}

/// The wire of the whole answer, without the last chunk (`0\r\n\r\n`).
fn without_last_chunk() -> Vec<u8> {
    let mut wire = sse_response(&answer_events());
    wire.truncate(wire.len() - b"0\r\n\r\n".len());
    wire
}

#[tokio::test(start_paused = true)]
async fn after_done_nothing_the_transport_does_changes_the_answer() {
    let endless_trailers = {
        let mut wire = without_last_chunk();
        wire.extend_from_slice(b"0\r\n");
        for i in 0..2000 {
            wire.extend_from_slice(format!("x-trailer-{i}: {}\r\n", "t".repeat(40)).as_bytes());
        }
        wire
    };
    let late_events = {
        let mut events = answer_events();
        events.push(chat_answer("late", "m", &["LATE"], None)[0].clone());
        events.push("data: {\"error\":{\"message\":\"late\"}}\n\n".into());
        let mut wire = sse_response(&events);
        wire.truncate(wire.len() - 5);
        wire
    };
    type Case = (&'static str, Vec<u8>, fn(usize) -> End);
    let cases: Vec<Case> = vec![
        (
            "closed without its last chunk",
            without_last_chunk(),
            End::CloseAt,
        ),
        (
            "reset without its last chunk",
            without_last_chunk(),
            End::ResetAt,
        ),
        ("silent after [DONE]", without_last_chunk(), End::StallAt),
        (
            "endless trailers, then silence",
            endless_trailers,
            End::StallAt,
        ),
        (
            "events after [DONE], then silence",
            late_events,
            End::StallAt,
        ),
    ];
    for (what, wire, end) in cases {
        let primary = RawUpstream::start(wire.clone(), end(wire.len())).await;
        let weir = weir_over(&primary, None).await;
        let started = tokio::time::Instant::now();
        let got = ask(&weir).await;
        assert_complete(&got, what);
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "{what}: the body ended at [DONE], not after a timeout"
        );
        assert!(
            !String::from_utf8_lossy(&got.read.bytes).contains("LATE"),
            "{what}"
        );
        assert_eq!(outcomes(&weir, "ok").await, 1.0, "{what}: counted ok");
        assert_eq!(outcomes(&weir, "truncated").await, 0.0, "{what}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_finish_chunk_then_a_cut_is_finished_with_done() {
    let mut events = answer_events();
    events.pop(); // no [DONE]
    let wire = sse_response(&events);
    let cut = wire.len() - b"0\r\n\r\n".len();
    for end in [End::CloseAt(cut), End::ResetAt(cut), End::StallAt(cut)] {
        let primary = RawUpstream::start(wire.clone(), end).await;
        let weir = weir_over(&primary, None).await;
        let got = ask(&weir).await;
        assert_complete(&got, &format!("{end:?}"));
        assert_eq!(outcomes(&weir, "ok").await, 1.0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_is_not_an_event_stream_is_a_malformed_answer() {
    let body = chunked(&answer_events());
    for content_type in ["text/plain", "application/json", "application/x-ndjson"] {
        let mut wire = head(&[
            &format!("content-type: {content_type}"),
            "transfer-encoding: chunked",
        ]);
        wire.extend_from_slice(&body);
        let primary = RawUpstream::start(wire, End::Whole).await;
        // Alone: a 502 that says what came, before anything was streamed.
        let weir = weir_over(&primary, None).await;
        let got = ask(&weir).await;
        assert_eq!(got.status, 502, "{content_type}");
        let error = weir_e2e::assert_openai_error(&got.read);
        assert_eq!(error["code"], "malformed_answer");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(content_type) && message.contains("instead of an event stream"),
            "{message}"
        );
        assert_eq!(outcomes(&weir, "upstream_error").await, 1.0);
        // With a second target: failed over before the first token.
        let backup = MockUpstream::start().await;
        let weir = weir_over(&primary, Some(&backup)).await;
        let got = ask(&weir).await;
        assert_eq!(got.status, 200, "{content_type}");
        assert_eq!(got.read.content(), weir_test::answer(3));
        assert!(got.read.error.is_none());
        assert_eq!(backup.requests().len(), 1);
    }
}

/// The answer as a gzip-compressed event stream, flushed after each event (as a server that
/// compresses a stream must), one chunk per event; and where the third chunk starts.
fn gzipped() -> (Vec<u8>, usize) {
    let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut pieces = Vec::new();
    for event in answer_events() {
        encoder.write_all(event.as_bytes()).unwrap();
        encoder.flush().unwrap();
        pieces.push(std::mem::take(encoder.get_mut()));
    }
    pieces.push(encoder.finish().unwrap());
    let mut wire = head(&[
        "content-type: text/event-stream",
        "content-encoding: gzip",
        "transfer-encoding: chunked",
    ]);
    let third = wire.len() + chunked(&pieces[..2]).len() - b"0\r\n\r\n".len();
    wire.extend_from_slice(&chunked(&pieces));
    (wire, third)
}

#[tokio::test(start_paused = true)]
async fn a_compressed_stream_is_decoded_and_watched() {
    let (wire, third) = gzipped();
    let primary = RawUpstream::start(wire.clone(), End::Whole).await;
    let weir = weir_over(&primary, None).await;
    let got = ask(&weir).await;
    assert_complete(&got, "gzip");
    assert!(primary.requests()[0]
        .head
        .to_ascii_lowercase()
        .contains("accept-encoding: identity"));
    // Counted as what it was: 4 chunk events out (3 tokens and the finish chunk).
    let samples = parse_prometheus(&metrics_at(weir.admin_addr()).await);
    let out: f64 = samples
        .iter()
        .filter(|s| s.name == "weir_tokens_total" && s.label("direction") == Some("output"))
        .map(|s| s.value)
        .sum();
    assert_eq!(out, 4.0);

    // Cut in the compressed bytes of the third event: a cut answer, never a short "ok".
    primary.set_end(End::CloseAt(third + 7));
    let got = ask(&weir).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        got.read.content(),
        TOKENS[..2].concat(),
        "the two whole events"
    );
    assert!(
        got.read.error.is_some(),
        "a cut compressed stream is reported cut"
    );
    let events = got.read.events();
    assert!(events.last().unwrap().contains("\"error\""));
    assert!(!events.iter().any(|e| e == "[DONE]"));
    assert_eq!(outcomes(&weir, "truncated").await, 1.0);
}
