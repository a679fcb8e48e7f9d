//! Traces over OTLP/HTTP (protobuf) to an in-process collector. (Its own test binary: the
//! subscriber is global to the process.)

use std::time::Duration;
use weir_e2e::otlp::{self, attr};
use weir_e2e::two::{ask, setup_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_http_collector_with_their_resource() {
    let (collector, received) = otlp::http().await;
    let telemetry = format!(
        "[telemetry]\notlp_endpoint = \"http://{collector}\"\notlp_protocol = \"http/protobuf\"\nservice_name = \"weir-http\"\n"
    );
    let s = setup_with(None, "", None, &telemetry).await;
    let guard = weir::telemetry::init(&s.config.telemetry).unwrap();
    for _ in 0..3 {
        let got = ask(&s.weir, "chunks=2").await;
        assert_eq!(got.status, 200);
    }
    guard.shutdown(Duration::from_secs(5)).await;
    let spans = received.spans();
    let servers: Vec<_> = spans.iter().filter(|s| s.name == "chat gpt-test").collect();
    assert_eq!(servers.len(), 3, "{spans:#?}");
    assert!(servers
        .iter()
        .all(|s| attr(s, "gen_ai.provider.name").as_deref() == Some("primary")));
    // Three traces, each with its attempt.
    for server in servers {
        assert!(spans
            .iter()
            .any(|s| s.parent_span_id == server.span_id && s.trace_id == server.trace_id));
    }
    assert!(received.services().iter().all(|s| s == "weir-http"));
    let metrics = weir_e2e::metrics_at(s.weir.admin_addr()).await;
    assert_eq!(
        weir_e2e::sample(&metrics, r#"weir_trace_spans_total{result="exported"}"#),
        6.0
    );
}
