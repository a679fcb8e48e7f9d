//! The operation in traces: a Responses call and a Messages call each make a server span named
//! for their operation, with `gen_ai.operation.name` saying which. (Its own test binary: the
//! subscriber is global to the process.)

use std::time::Duration;
use weir_e2e::otlp::{self, attr};
use weir_test::MockUpstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_api_is_its_own_operation_in_traces() {
    let (collector, received) = otlp::http().await;
    let mock = MockUpstream::start().await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nauth = \"off\"\n[telemetry]\notlp_endpoint = \"http://{collector}\"\notlp_protocol = \"http/protobuf\"\n{}{}{}{}",
        weir_e2e::provider("oa", &mock.base_url(), ""),
        weir_e2e::provider("an", &mock.base_url(), "api = \"anthropic\""),
        weir_e2e::route(
            "gpt-r",
            r#"[{ provider = "oa", model = "m" }]"#,
            ""
        ),
        weir_e2e::route(
            "claude",
            r#"[{ provider = "an", model = "m" }]"#,
            ""
        ),
    );
    let config = weir::config::parse("traces.toml".as_ref(), &text, &|_| None).unwrap();
    let guard = weir::telemetry::init(&config.telemetry).unwrap();
    let weir = weir::start(&config).await.unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    for (path, body) in [
        (
            "/v1/responses",
            r#"{"model":"gpt-r","input":"hi","stream":true}"#,
        ),
        (
            "/v1/messages",
            r#"{"model":"claude","max_tokens":8,"messages":[{"role":"user","content":"hi"}],"stream":true}"#,
        ),
    ] {
        let request = http::Request::post(format!("http://{}{path}", weir.addr()))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let read = weir_e2e::read(response).await;
        assert!(read.error.is_none());
    }
    guard.shutdown(Duration::from_secs(5)).await;
    let spans = received.spans();
    for (name, operation) in [
        ("responses gpt-r", "responses"),
        ("messages claude", "messages"),
    ] {
        let server = spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no `{name}` span in {spans:#?}"));
        assert_eq!(
            attr(server, "gen_ai.operation.name").as_deref(),
            Some(operation)
        );
        let attempt = spans
            .iter()
            .find(|s| s.parent_span_id == server.span_id)
            .expect("its attempt");
        assert_eq!(
            attr(attempt, "gen_ai.operation.name").as_deref(),
            Some(operation)
        );
        assert_eq!(attempt.name, format!("{operation} m"));
    }
}
