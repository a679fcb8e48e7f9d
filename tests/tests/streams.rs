//! A stream that fails after it started tells the client so: an in-band error event and a
//! body that does not end cleanly. Never `[DONE]` after a cut.

use weir_e2e::{read, Harness};

async fn stream(h: &Harness, directive: &str) -> weir_e2e::Read {
    let response = h.chat_stream(directive).await;
    assert_eq!(response.status(), 200);
    read(response).await
}

fn last_error(events: &[String]) -> serde_json::Value {
    let last: serde_json::Value = serde_json::from_str(events.last().unwrap()).unwrap();
    last["error"].clone()
}

#[tokio::test]
async fn reset_mid_stream_ends_with_an_error_event_and_no_done() {
    let h = Harness::start().await;
    let got = stream(&h, "chunks=6,fault=reset_after:3").await;
    let events = got.events();
    assert_eq!(got.content(), "tok0 tok1 tok2 ");
    assert!(!events.iter().any(|e| e == "[DONE]"));
    assert_eq!(last_error(&events)["code"], "stream_broken");
    assert!(got.error.is_some(), "the body must not end cleanly");
}

#[tokio::test(start_paused = true)]
async fn stalled_stream_is_cut_after_the_idle_timeout() {
    let h = Harness::with_provider(r#"idle_timeout = "3s""#).await;
    let started = tokio::time::Instant::now();
    let got = stream(&h, "chunks=6,fault=stall_after:2").await;
    assert_eq!(started.elapsed().as_secs(), 3);
    assert_eq!(got.content(), "tok0 tok1 ");
    assert_eq!(last_error(&got.events())["code"], "stream_stalled");
    assert!(got.error.is_some());
}

#[tokio::test(start_paused = true)]
async fn keep_alive_comments_do_not_count_as_progress() {
    let h = Harness::with_provider(r#"idle_timeout = "3s""#).await;
    let started = tokio::time::Instant::now();
    let got = stream(&h, "chunks=6,fault=stall_after:2,ping_ms=500").await;
    assert_eq!(started.elapsed().as_secs(), 3);
    assert!(
        got.bytes.windows(6).any(|w| w == b": ping"),
        "the comments were forwarded"
    );
    assert_eq!(last_error(&got.events())["code"], "stream_stalled");
}

#[tokio::test(start_paused = true)]
async fn slow_but_live_stream_is_not_cut() {
    // 2 s between chunks under a 3 s idle timeout.
    let h = Harness::with_provider(r#"idle_timeout = "3s""#).await;
    let got = stream(&h, "chunks=4,delay_ms=2000").await;
    assert_eq!(got.error, None);
    assert_eq!(got.content(), "tok0 tok1 tok2 tok3 ");
}

#[tokio::test]
async fn end_with_finish_reason_but_no_done_is_completed() {
    let h = Harness::start().await;
    let got = stream(&h, "chunks=3,fault=no_done").await;
    assert_eq!(got.error, None);
    assert_eq!(got.events().last().map(String::as_str), Some("[DONE]"));
    assert_eq!(got.content(), "tok0 tok1 tok2 ");
}

#[tokio::test]
async fn upstream_in_band_error_ends_the_body_with_an_error() {
    let h = Harness::start().await;
    let got = stream(&h, "chunks=5,fault=error_event_at:2").await;
    let events = got.events();
    assert_eq!(
        last_error(&events)["type"],
        "server_error",
        "the provider's own error event"
    );
    assert_eq!(
        events.iter().filter(|e| e.contains("\"error\"")).count(),
        1,
        "not repeated"
    );
    assert!(!events.iter().any(|e| e == "[DONE]"));
    assert!(got.error.is_some());
}

#[tokio::test]
async fn client_going_away_cancels_the_upstream() {
    use http_body_util::BodyExt;
    let h = Harness::start().await;
    let response = h.chat_stream("chunks=100000,delay_ms=5").await;
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    assert_eq!(h.mock.cancelled_streams(), 0);
    drop(body);
    // The upstream stream is dropped too (a guard bounds the wait; it is not a timing check).
    tokio::time::timeout(std::time::Duration::from_secs(30), h.mock.wait_cancelled(1))
        .await
        .expect("weir cancelled the upstream stream");
}

#[tokio::test]
async fn a_malformed_event_is_dropped_and_counted_and_the_stream_goes_on() {
    let h = Harness::start().await;
    let got = stream(&h, "chunks=5,fault=malformed_at:2").await;
    assert_eq!(got.error, None, "the stream goes on");
    assert_eq!(got.content(), "tok0 tok1 tok2 tok3 tok4 ");
    let events = got.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(
        events
            .iter()
            .all(|e| e == "[DONE]" || serde_json::from_str::<serde_json::Value>(e).is_ok()),
        "every event the client got is JSON: {events:?}"
    );
    // Counted, by provider.
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let scrape = client
        .request(
            http::Request::get(format!("http://{}/metrics", h.admin))
                .body(Default::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let text = scrape.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains("weir_malformed_events_total{provider=\"mock\"} 1"),
        "{text}"
    );
}
