//! Before the commit point a failed attempt is invisible to the client: weir retries the same
//! target or fails over to the next, by failure class. Attempt counts and spacing are read
//! from the mocks' logs.

use std::time::Duration;
use tokio::time::Instant;
use weir_e2e::two::{ask, setup};
use weir_test::{answer, MockUpstream};

fn gaps(mock: &MockUpstream) -> Vec<Duration> {
    mock.requests()
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_500_once_is_retried_on_the_same_target_after_a_backoff() {
    let s = setup(None, "", None).await;
    let got = ask(&s.weir, "chunks=3,fault=500_once,key=a").await;
    assert_eq!(
        (got.status, got.provider.as_deref()),
        (200, Some("primary"))
    );
    assert_eq!(got.attempts.as_deref(), Some("2"));
    assert_eq!(got.text, answer(3), "the client sees one clean answer");
    assert_eq!(s.primary.requests().len(), 2);
    let gap = gaps(&s.primary)[0];
    assert!(
        gap >= Duration::from_millis(125) && gap <= Duration::from_millis(250),
        "{gap:?}"
    );
    assert!(s.backup.requests().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_provider_answering_503_is_retried_once_then_failed_over() {
    let s = setup(None, "", None).await;
    s.primary.set_defaults(Some("fault=503"));
    let got = ask(&s.weir, "chunks=3").await;
    assert_eq!((got.status, got.provider.as_deref()), (200, Some("backup")));
    assert_eq!(got.attempts.as_deref(), Some("3"));
    assert_eq!(got.text, answer(3));
    assert_eq!(s.primary.requests().len(), 2);
    assert_eq!(s.backup.requests().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_refused_connection_is_retried_at_once_then_failed_over() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", dead.local_addr().unwrap());
    drop(dead);
    let s = setup(Some(url), "", None).await;
    let started = Instant::now();
    let got = ask(&s.weir, "chunks=2").await;
    assert_eq!((got.status, got.provider.as_deref()), (200, Some("backup")));
    assert_eq!(
        got.attempts.as_deref(),
        Some("3"),
        "two connects, then the backup"
    );
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "no backoff for a refused connection"
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_provider_is_not_retried() {
    let s = setup(None, r#"response_timeout = "4s""#, None).await;
    s.primary.set_defaults(Some("fault=silent"));
    let started = Instant::now();
    let got = ask(&s.weir, "chunks=2").await;
    assert_eq!((got.status, got.provider.as_deref()), (200, Some("backup")));
    assert_eq!(got.attempts.as_deref(), Some("2"));
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(15),
        "one stream deadline (first_token_timeout, 15 s by default with a second target), then the backup"
    );
    assert_eq!(s.primary.requests().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_long_retry_after_fails_over_at_once_and_keeps_the_target_out() {
    let s = setup(None, "", None).await;
    s.primary.set_defaults(Some("fault=429,retry_after=30"));
    let started = Instant::now();
    let got = ask(&s.weir, "chunks=2").await;
    assert_eq!((got.status, got.provider.as_deref()), (200, Some("backup")));
    assert_eq!(started.elapsed(), Duration::ZERO);
    // The primary asked for 30 s: the next requests go straight to the backup.
    let again = ask(&s.weir, "chunks=2").await;
    assert_eq!(again.provider.as_deref(), Some("backup"));
    assert_eq!(again.attempts.as_deref(), None);
    assert_eq!(s.primary.requests().len(), 1);
    tokio::time::sleep(Duration::from_secs(30)).await;
    s.primary.set_defaults(None);
    let later = ask(&s.weir, "chunks=2").await;
    assert_eq!(
        later.provider.as_deref(),
        Some("primary"),
        "back after its Retry-After"
    );
}

#[tokio::test(start_paused = true)]
async fn a_429_without_retry_after_backs_off_with_jitter_then_fails_over() {
    let s = setup(None, "", None).await;
    s.primary.set_defaults(Some("fault=429"));
    let got = ask(&s.weir, "chunks=2").await;
    assert_eq!((got.status, got.provider.as_deref()), (200, Some("backup")));
    assert_eq!(
        got.attempts.as_deref(),
        Some("4"),
        "3 on the primary, then the backup"
    );
    let gaps = gaps(&s.primary);
    assert_eq!(gaps.len(), 2);
    assert!(
        gaps[0] >= Duration::from_millis(125) && gaps[0] <= Duration::from_millis(250),
        "{gaps:?}"
    );
    assert!(
        gaps[1] >= Duration::from_millis(250) && gaps[1] <= Duration::from_millis(500),
        "{gaps:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn context_length_goes_to_a_larger_window_only() {
    let targets = r#"[{ provider = "primary", model = "small", context_window = 8192 },
           { provider = "backup", model = "same-size", context_window = 8192 },
           { provider = "backup", model = "large", context_window = 131072 }]"#;
    let s = setup(None, "", Some(targets)).await;
    s.primary.set_defaults(Some("fault=context_length"));
    let got = ask(&s.weir, "chunks=2").await;
    assert_eq!((got.status, got.provider.as_deref()), (200, Some("backup")));
    assert_eq!(
        got.attempts.as_deref(),
        Some("2"),
        "the 8k backup is skipped"
    );
    let models: Vec<_> = s
        .backup
        .requests()
        .iter()
        .map(|r| r.model.clone().unwrap())
        .collect();
    assert_eq!(models, ["large"]);
    assert_eq!(
        s.primary.requests().len(),
        1,
        "never retried on the same model"
    );
}

#[tokio::test(start_paused = true)]
async fn context_length_with_no_larger_window_returns_the_error() {
    let s = setup(None, "", None).await; // no windows configured
    s.primary.set_defaults(Some("fault=context_length"));
    let got = ask(&s.weir, "chunks=2").await;
    assert_eq!(got.status, 400);
    assert!(
        got.text.contains("context_length_exceeded"),
        "the provider's own body: {}",
        got.text
    );
    assert!(s.backup.requests().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_content_policy_refusal_is_passed_on_untouched() {
    let s = setup(None, "", None).await;
    s.primary.set_defaults(Some("fault=content_policy"));
    let got = ask(&s.weir, "chunks=2").await;
    assert_eq!(got.status, 400);
    assert_eq!(got.provider.as_deref(), Some("primary"));
    assert!(got.text.contains("content_policy_violation"));
    assert!(s.backup.requests().is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_retry_budget_keeps_an_outage_from_multiplying_load() {
    // No breaker, so only the budget holds retries back: 20% of requests + 1/s over 10 s.
    let s = setup(
        None,
        r#"breaker = { consecutive_failures = 0, error_rate = 0 }"#,
        Some(r#"[{ provider = "primary", model = "m" }]"#),
    )
    .await;
    s.primary.set_defaults(Some("fault=503"));
    for _ in 0..100 {
        let got = ask(&s.weir, "chunks=2").await;
        assert_eq!(got.status, 503);
    }
    let attempts = s.primary.requests().len();
    // 100 first attempts; without a budget every one would be retried (200).
    assert!(attempts <= 100 + 20 + 10 + 1, "{attempts} attempts");
    assert!(attempts > 100, "some retries were allowed");
}

// ---- the commit point: nothing reaches the client before the first event ----------------

#[tokio::test(start_paused = true)]
async fn a_stream_reset_before_its_first_event_is_failed_over_invisibly() {
    let s = setup(None, "", None).await;
    s.primary.set_defaults(Some("fault=reset_after:0"));
    let got = ask(&s.weir, "chunks=4").await;
    assert_eq!((got.status, got.provider.as_deref()), (200, Some("backup")));
    assert_eq!(got.attempts.as_deref(), Some("2"));
    assert_eq!(got.text, answer(4), "one complete answer, from the backup");
}

#[tokio::test(start_paused = true)]
async fn no_first_token_in_time_fails_over() {
    let s = setup(
        None,
        "",
        Some(
            r#"[{ provider = "primary", model = "m" }, { provider = "backup", model = "m" }]
first_token_timeout = "2s""#,
        ),
    )
    .await;
    s.primary.set_defaults(Some("first_ms=10000"));
    let started = Instant::now();
    let got = ask(&s.weir, "chunks=3").await;
    assert_eq!((got.status, got.provider.as_deref()), (200, Some("backup")));
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    assert_eq!(got.text, answer(3));
    // The slow stream was dropped: the primary's stream was cancelled.
    tokio::time::timeout(Duration::from_secs(5), s.primary.wait_cancelled(1))
        .await
        .expect("the abandoned upstream stream is cancelled");
}

#[tokio::test(start_paused = true)]
async fn an_in_band_error_as_the_first_event_fails_over() {
    let s = setup(None, "", None).await;
    s.primary.set_defaults(Some("fault=error_event_at:0"));
    let got = ask(&s.weir, "chunks=3").await;
    assert_eq!((got.status, got.provider.as_deref()), (200, Some("backup")));
    assert_eq!(got.text, answer(3));
    assert!(!got.text.contains("error"));
}

#[tokio::test(start_paused = true)]
async fn when_every_target_fails_before_the_first_token_the_client_gets_an_error_not_a_stream() {
    let s = setup(None, "", None).await;
    s.primary.set_defaults(Some("fault=reset_after:0"));
    s.backup.set_defaults(Some("fault=reset_after:0"));
    let got = ask(&s.weir, "chunks=3").await;
    assert_eq!(got.status, 502);
    assert!(
        got.text.contains("failed before its first token"),
        "{}",
        got.text
    );
    assert_eq!(got.attempts.as_deref(), Some("2"));
}

#[tokio::test(start_paused = true)]
async fn a_healthy_answer_takes_one_attempt() {
    let s = setup(None, "", None).await;
    let got = ask(&s.weir, "chunks=5").await;
    assert_eq!(
        (got.status, got.provider.as_deref(), got.attempts.as_deref()),
        (200, Some("primary"), None)
    );
    assert_eq!(got.text, answer(5));
}

// ---- hedging ------------------------------------------------------------------------------

const HEDGED: &str = r#"[{ provider = "primary", model = "m" }, { provider = "backup", model = "m" }]
hedge_after = "1s"
first_token_timeout = "30s""#;

#[tokio::test(start_paused = true)]
async fn a_slow_first_token_is_hedged_and_the_faster_answer_wins() {
    let s = setup(None, "", Some(HEDGED)).await;
    s.primary.set_defaults(Some("first_ms=10000"));
    let started = Instant::now();
    let got = ask(&s.weir, "chunks=3").await;
    assert_eq!((got.status, got.provider.as_deref()), (200, Some("backup")));
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(1),
        "the hedge answered at once"
    );
    assert_eq!(got.attempts.as_deref(), Some("2"));
    assert_eq!(got.text, answer(3));
    // The hedge started one second after the first attempt; the loser was cancelled.
    let first = s.primary.requests()[0].at;
    let second = s.backup.requests()[0].at;
    assert_eq!(second.duration_since(first), Duration::from_secs(1));
    tokio::time::timeout(Duration::from_secs(5), s.primary.wait_cancelled(1))
        .await
        .expect("the slower attempt is cancelled");
}

#[tokio::test(start_paused = true)]
async fn a_fast_first_token_is_not_hedged() {
    let s = setup(None, "", Some(HEDGED)).await;
    s.primary.set_defaults(Some("first_ms=500"));
    let got = ask(&s.weir, "chunks=3").await;
    assert_eq!(
        (got.status, got.provider.as_deref()),
        (200, Some("primary"))
    );
    assert_eq!(got.attempts.as_deref(), None);
    assert!(
        s.backup.requests().is_empty(),
        "no hedge before hedge_after"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_limits_come_from_the_route() {
    let targets = r#"[{ provider = "primary", model = "m" }, { provider = "backup", model = "m" }]
retry = { server_error_retries = 0 }"#;
    let s = setup(None, "", Some(targets)).await;
    s.primary.set_defaults(Some("fault=503"));
    let got = ask(&s.weir, "chunks=2").await;
    assert_eq!(
        (got.provider.as_deref(), got.attempts.as_deref()),
        (Some("backup"), Some("2"))
    );
    assert_eq!(
        s.primary.requests().len(),
        1,
        "no retry of the 503 on the primary"
    );
}

#[tokio::test(start_paused = true)]
async fn a_weighted_route_spreads_first_attempts_by_weight() {
    let targets = r#"[{ provider = "primary", model = "m", weight = 3 }, { provider = "backup", model = "m", weight = 1 }]
strategy = "weighted""#;
    let s = setup(None, "", Some(targets)).await;
    for _ in 0..400 {
        assert_eq!(ask(&s.weir, "chunks=1").await.status, 200);
    }
    let (primary, backup) = (s.primary.requests().len(), s.backup.requests().len());
    assert_eq!(primary + backup, 400, "one attempt each");
    let share = backup as f64 / 400.0;
    assert!((0.15..0.35).contains(&share), "weight 1 of 4 took {share}");
    // And a weighted route still fails over.
    s.primary.set_defaults(Some("fault=503"));
    s.backup.set_defaults(Some("fault=503"));
    s.backup.set_defaults(None);
    for _ in 0..20 {
        let got = ask(&s.weir, "chunks=1").await;
        assert_eq!((got.status, got.provider.as_deref()), (200, Some("backup")));
    }
}
