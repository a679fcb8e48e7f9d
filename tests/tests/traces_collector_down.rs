//! A collector that takes connections and never answers costs requests nothing: every answer
//! is served in full while the exporter waits, and the spans that do not fit the queue are
//! dropped and counted. (Its own test binary: the subscriber is global to the process.)

use weir_e2e::two::{ask_at, setup_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_collector_never_slows_or_fails_a_request() {
    let collector = weir_e2e::otlp::silent().await;
    let telemetry = format!(
        "[telemetry]\notlp_endpoint = \"http://{collector}\"\nexport_timeout = \"60s\"\nmax_queue = 16\nmax_batch = 8\n"
    );
    let s = setup_with(None, "", None, &telemetry).await;
    let _guard = weir::telemetry::init(&s.config.telemetry).unwrap();
    // 200 streams, 20 at a time. The exporter is stuck on its first batch for the whole run
    // (the export timeout is a minute): what does not fit the queue is dropped.
    for _ in 0..10 {
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let addr = s.weir.addr();
            batch.spawn(async move { ask_at(addr, "chunks=3").await });
        }
        while let Some(got) = batch.join_next().await {
            let got = got.unwrap();
            assert_eq!(got.status, 200);
            assert!(!got.broken);
            assert_eq!(got.text, weir_test::answer(3));
        }
    }
    let metrics = weir_e2e::metrics_at(s.weir.admin_addr()).await;
    let spans = |result: &str| {
        weir_e2e::sample(
            &metrics,
            &format!("weir_trace_spans_total{{result=\"{result}\"}}"),
        )
    };
    assert_eq!(spans("exported"), 0.0);
    // 400 spans were made (a server span and an attempt span per request); the stuck
    // exporter holds at most one batch, the queue 16 more.
    assert!(spans("dropped") >= 400.0 - 16.0 - 8.0, "{metrics}");
}
