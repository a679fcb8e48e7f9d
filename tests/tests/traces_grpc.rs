//! Traces over OTLP/gRPC to an in-process collector: a streamed request that failed over is
//! one trace, continued from the client's, with a child span per upstream attempt and the
//! GenAI attributes. (Its own test binary: the subscriber is global to the process.)

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;
use weir_e2e::otlp::{self, attr, hex};
use weir_e2e::two::setup_with;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// The span kinds of OTLP's enum.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;
/// Status codes.
const ERROR: i32 = 2;

// The OTLP exporter over tonic needs a multi-thread runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_over_stream_is_one_trace_with_a_span_per_attempt() {
    let (collector, received) = otlp::grpc().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/v1", dead.local_addr().unwrap());
    drop(dead);
    let telemetry = format!(
        "[telemetry]\notlp_endpoint = \"http://{collector}\"\notlp_protocol = \"grpc\"\nservice_name = \"weir-e2e\"\n"
    );
    let s = setup_with(Some(dead_url), "", None, &telemetry).await;
    let guard = weir::telemetry::init(&s.config.telemetry).unwrap();
    assert!(guard.exporting());

    let client = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::post(format!("http://{}/v1/chat/completions", s.weir.addr()))
        .header("x-mock", "chunks=4")
        .header("traceparent", format!("00-{TRACE}-{CLIENT_SPAN}-01"))
        .header("authorization", "Bearer sk-client-canary-5e1f")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"gpt-test","stream":true,"messages":[{"role":"user","content":"Say hello, secretly"}]}"#,
        )))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(
        weir_e2e::header(response.headers(), "x-weir-attempts"),
        Some("3")
    );
    let read = weir_e2e::read(response).await;
    assert!(read.error.is_none());
    guard.shutdown(Duration::from_secs(5)).await;

    let spans = received.spans();
    assert_eq!(
        received.services().first().map(String::as_str),
        Some("weir-e2e")
    );
    let server = spans
        .iter()
        .find(|s| s.kind == SERVER)
        .unwrap_or_else(|| panic!("no server span in {spans:#?}"));
    // Continued from the client's trace.
    assert_eq!(hex(&server.trace_id), TRACE);
    assert_eq!(hex(&server.parent_span_id), CLIENT_SPAN);
    assert_eq!(server.name, "chat gpt-test");
    for (key, want) in [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.request.model", "gpt-test"),
        ("gen_ai.provider.name", "backup"),
        ("gen_ai.response.model", "m"),
        ("gen_ai.usage.output_tokens", "4"),
        ("gen_ai.response.finish_reasons", "stop"),
        ("http.response.status_code", "200"),
        ("weir.outcome", "ok"),
        ("weir.attempts", "3"),
    ] {
        assert_eq!(attr(server, key).as_deref(), Some(want), "{key}");
    }
    assert!(attr(server, "gen_ai.usage.input_tokens").is_some());
    assert!(
        server.events.iter().any(|e| e.name == "gen_ai.first_token"),
        "time to first token is an event: {:?}",
        server.events
    );
    // No prompt or answer text anywhere.
    let everything = format!("{spans:?}");
    assert!(!everything.contains("secretly") && !everything.contains("tok0"));
    assert!(!everything.contains("canary"), "no key in any span");

    // One child span per attempt: two refused connections to primary, then backup.
    let mut attempts: Vec<_> = spans
        .iter()
        .filter(|s| s.parent_span_id == server.span_id)
        .collect();
    attempts.sort_by_key(|s| s.start_time_unix_nano);
    assert_eq!(attempts.len(), 3, "{attempts:#?}");
    let providers: Vec<_> = attempts
        .iter()
        .map(|s| attr(s, "gen_ai.provider.name").unwrap())
        .collect();
    assert_eq!(providers, ["primary", "primary", "backup"]);
    for failed in &attempts[..2] {
        assert_eq!(failed.kind, CLIENT);
        assert_eq!(failed.status.as_ref().map(|s| s.code), Some(ERROR));
        assert_eq!(attr(failed, "error.type").as_deref(), Some("connect_error"));
    }
    let served = attempts[2];
    assert_ne!(served.status.as_ref().map(|s| s.code), Some(ERROR));
    assert_eq!(
        attr(served, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(hex(&served.trace_id), TRACE);

    // The provider got the attempt's context, not the client's.
    let sent = &s.backup.requests()[0];
    let traceparent = sent.headers.get("traceparent").unwrap().to_str().unwrap();
    assert_eq!(
        traceparent,
        format!("00-{TRACE}-{}-01", hex(&served.span_id))
    );
}
