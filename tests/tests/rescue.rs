//! After the commit point: a stream cut mid-way is continued on the next target, so that the
//! client receives one complete, coherent answer (same id, no text repeated or missing).

use std::time::Duration;
use weir_e2e::two::{ask, setup};
use weir_test::answer;

/// The ids of the events the client received (ignoring [DONE]).
fn ids(events: &[String]) -> Vec<String> {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(e).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

fn assert_one_complete_answer(got: &weir_e2e::two::Answer, chunks: u32) {
    assert_eq!(got.status, 200);
    assert_eq!(
        got.text,
        answer(chunks),
        "one complete answer, nothing repeated or missing"
    );
    assert!(!got.broken, "the body ends cleanly");
    assert_eq!(got.events.last().map(String::as_str), Some("[DONE]"));
    assert!(!got.events.iter().any(|e| e.contains("\"error\"")));
    let ids = ids(&got.events);
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one completion id: {ids:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reset_mid_stream_is_continued_by_replay() {
    let s = setup(None, "", None).await;
    s.primary.set_defaults(Some("fault=reset_after:3"));
    let got = ask(&s.weir, "chunks=8").await;
    assert_one_complete_answer(&got, 8);
    assert_eq!(
        got.provider.as_deref(),
        Some("primary"),
        "headers came from the first provider"
    );
    // Who finished it is said in band, as an SSE comment clients skip.
    assert!(
        got.raw.contains(
            "\n\n: weir continued this answer on backup (primary stream_broken)\n\ndata: "
        ),
        "{}",
        got.raw
    );
    // The backup was asked the same question again.
    let replayed = &s.backup.requests()[0];
    let body: serde_json::Value = serde_json::from_slice(&replayed.body).unwrap();
    assert_eq!(body["messages"], serde_json::json!([]));
}

#[tokio::test(start_paused = true)]
async fn a_reset_mid_stream_is_continued_by_prefill() {
    let targets = r#"[{ provider = "primary", model = "m" },
           { provider = "backup", model = "m", continuation = "prefill" }]"#;
    let s = setup(None, "", Some(targets)).await;
    s.primary.set_defaults(Some("fault=reset_after:3"));
    let got = ask(&s.weir, "chunks=8").await;
    assert_one_complete_answer(&got, 8);
    // The backup got the partial answer as a final assistant message.
    let sent: serde_json::Value = serde_json::from_slice(&s.backup.requests()[0].body).unwrap();
    assert_eq!(
        sent["messages"],
        serde_json::json!([{"role": "assistant", "content": "tok0 tok1 tok2 "}])
    );
}

#[tokio::test(start_paused = true)]
async fn a_stall_mid_stream_is_continued() {
    let s = setup(None, r#"idle_timeout = "2s""#, None).await;
    s.primary.set_defaults(Some("fault=stall_after:4"));
    let started = tokio::time::Instant::now();
    let got = ask(&s.weir, "chunks=6").await;
    assert_one_complete_answer(&got, 6);
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(2),
        "continued once the stall was seen"
    );
}

#[tokio::test(start_paused = true)]
async fn an_end_without_finish_reason_is_continued() {
    let s = setup(None, "", None).await;
    // The stream ends cleanly after 3 chunks: no finish reason, no [DONE]: a truncation.
    s.primary.set_defaults(Some("fault=end_after:3"));
    let got = ask(&s.weir, "chunks=5").await;
    assert_one_complete_answer(&got, 5);
}

#[tokio::test(start_paused = true)]
async fn a_replay_that_diverges_stops_with_an_error() {
    let s = setup(None, "", None).await;
    s.primary.set_defaults(Some("fault=reset_after:3"));
    s.backup.set_defaults(Some("word=other"));
    let got = ask(&s.weir, "chunks=6").await;
    assert!(got.broken, "the body does not end cleanly");
    assert!(!got.events.iter().any(|e| e == "[DONE]"));
    assert_eq!(
        got.text, "tok0 tok1 tok2 ",
        "nothing of the diverging answer reached the client"
    );
    let last: serde_json::Value = serde_json::from_str(got.events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "stream_broken");
}

#[tokio::test(start_paused = true)]
async fn no_continuation_target_means_an_honest_error() {
    let targets = r#"[{ provider = "primary", model = "m" },
           { provider = "backup", model = "m", continuation = "none" }]"#;
    let s = setup(None, "", Some(targets)).await;
    s.primary.set_defaults(Some("fault=reset_after:3"));
    let got = ask(&s.weir, "chunks=6").await;
    assert!(got.broken);
    assert_eq!(got.text, "tok0 tok1 tok2 ");
    assert!(s.backup.requests().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_in_band_error_already_shown_is_not_papered_over() {
    let s = setup(None, "", None).await;
    s.primary.set_defaults(Some("fault=error_event_at:3"));
    let got = ask(&s.weir, "chunks=6").await;
    assert!(got.broken);
    assert!(
        s.backup.requests().is_empty(),
        "the client saw the provider's error"
    );
}

#[tokio::test(start_paused = true)]
async fn every_cut_point_yields_the_whole_answer_by_replay_and_by_prefill() {
    for continuation in ["replay", "prefill"] {
        for cut in 0..7 {
            let targets = format!(
                r#"[{{ provider = "primary", model = "m" }},
           {{ provider = "backup", model = "m", continuation = "{continuation}" }}]"#
            );
            let s = setup(None, "", Some(&targets)).await;
            s.primary
                .set_defaults(Some(&format!("fault=reset_after:{cut}")));
            let got = ask(&s.weir, "chunks=7").await;
            assert_eq!(
                got.text,
                answer(7),
                "{continuation}, cut after {cut} chunks"
            );
            assert!(!got.broken, "{continuation}, cut after {cut}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn usage_after_a_prefill_rescue_covers_what_was_delivered() {
    let targets = r#"[{ provider = "primary", model = "m" },
           { provider = "backup", model = "m", continuation = "prefill" }]"#;
    let s = setup(None, "", Some(targets)).await;
    s.primary.set_defaults(Some("fault=reset_after:3"));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let request = http::Request::post(format!("http://{}/v1/chat/completions", s.weir.addr()))
        .header("x-mock", "chunks=8")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"model":"gpt-test","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
        )))
        .unwrap();
    let got = weir_e2e::read(client.request(request).await.unwrap()).await;
    assert_eq!(got.content(), answer(8));
    let usage = got
        .events()
        .iter()
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
        .find(|e| e["usage"].is_object())
        .expect("the client asked for usage");
    assert_eq!(
        usage["usage"]["completion_tokens"], 8,
        "3 delivered before the cut + 5 after"
    );
}

/// A continuation is an attempt of the router like any other.
mod as_an_attempt {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_spent_retry_budget_means_no_continuation() {
        let targets = r#"[{ provider = "primary", model = "m" }, { provider = "backup", model = "m" }]
    retry_budget = { ratio = 0, per_second = 0 }"#;
        let s = setup(None, "", Some(targets)).await;
        s.primary.set_defaults(Some("fault=reset_after:3"));
        let got = ask(&s.weir, "chunks=6").await;
        assert!(got.broken, "cut, and told so");
        assert_eq!(got.text, "tok0 tok1 tok2 ");
        assert!(
            s.backup.requests().is_empty(),
            "the budget allowed no retry"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_keeps_a_target_from_continuing() {
        let s = setup(
            None,
            "breaker = { consecutive_failures = 0, error_rate = 0 }",
            None,
        )
        .await;
        // Both answer 503: the backup fails twice per request, and its breaker opens.
        s.primary.set_defaults(Some("fault=503"));
        s.backup.set_defaults(Some("fault=503"));
        for _ in 0..2 {
            assert_eq!(ask(&s.weir, "chunks=2").await.status, 503);
        }
        let before = s.backup.requests().len();
        s.primary.set_defaults(Some("fault=reset_after:1"));
        s.backup.set_defaults(None);
        let got = ask(&s.weir, "chunks=4").await;
        assert!(got.broken, "nowhere to continue: told so");
        assert_eq!(got.text, "tok0 ");
        assert_eq!(
            s.backup.requests().len(),
            before,
            "the open breaker kept the backup out of the continuation"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_continuation_refused_with_a_500_is_retried_after_a_backoff() {
        let s = setup(None, "", None).await;
        s.primary.set_defaults(Some("fault=reset_after:2"));
        s.backup
            .set_defaults(Some("fault=500_once,key=continuation"));
        let got = ask(&s.weir, "chunks=5").await;
        assert_one_complete_answer(&got, 5);
        let tries = s.backup.requests();
        assert_eq!(tries.len(), 2, "a 500, then the continuation");
        let pause = tries[1].at - tries[0].at;
        assert!(
            pause >= Duration::from_millis(125) && pause <= Duration::from_millis(250),
            "the policy's backoff: {pause:?}"
        );
    }
}
