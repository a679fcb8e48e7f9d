//! Concurrency limits held to the end of each stream, queues with deadlines, load shedding,
//! overflow to the next target, and slow clients cut without hurting anyone else.

use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use weir_e2e::{assert_openai_error, header, metrics_at, read, sample, stream_at, two};
use weir_test::MockUpstream;

/// weir over one mock, with `server` lines added to `[server]`.
async fn start(server: &str) -> (MockUpstream, weir::Running) {
    weir_e2e::one_mock(server, "", "").await
}

async fn stream(weir: &weir::Running, directives: &str) -> http::Response<hyper::body::Incoming> {
    stream_at(weir.addr(), directives).await
}

async fn metrics(weir: &weir::Running) -> String {
    metrics_at(weir.admin_addr()).await
}

#[tokio::test(start_paused = true)]
async fn the_server_limit_holds_each_slot_to_the_end_of_its_stream_then_queues_then_sheds() {
    let (_mock, weir) = start(
        r#"max_concurrency = 2
max_queue = 1
queue_timeout = "3s""#,
    )
    .await;
    // Two five-second streams take both slots, for their whole length (not just until
    // their headers are out).
    let started = Instant::now();
    let first = stream(&weir, "chunks=5,delay_ms=1000").await;
    let second = stream(&weir, "chunks=5,delay_ms=1000").await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );

    // A third waits in the queue; a fourth finds the queue full and is refused at once.
    let queued = tokio::spawn({
        let addr = weir.addr();
        async move {
            let response = stream_at(addr, "").await;
            (Instant::now(), response)
        }
    });
    tokio::task::yield_now().await;
    while sample(&metrics(&weir).await, r#"weir_queued{scope="server"}"#) < 1.0 {
        tokio::task::yield_now().await;
    }
    let refused = stream(&weir, "chunks=1").await;
    assert_eq!(refused.status(), 503);
    assert_eq!(started.elapsed(), Duration::ZERO, "refused without waiting");
    assert_eq!(header(refused.headers(), "retry-after"), Some("1"));
    let error = assert_openai_error(&read(refused).await);
    assert_eq!(error["code"], "overloaded");

    // Nothing frees within the queue timeout: the waiting request is refused after 3 s.
    let (at, response) = queued.await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(at.duration_since(started), Duration::from_secs(3));
    assert_eq!(header(response.headers(), "x-weir-shed"), Some("timed_out"));

    // The running streams were never cut; once they end, their slots serve again.
    for answer in [first, second] {
        let read = read(answer).await;
        assert!(read.error.is_none());
        assert_eq!(read.events().last().map(String::as_str), Some("[DONE]"));
    }
    assert_eq!(stream(&weir, "chunks=1").await.status(), 200);
    let text = metrics(&weir).await;
    let shed = |reason: &str| {
        sample(
            &text,
            &format!(r#"weir_shed_total{{scope="server",reason="{reason}"}}"#),
        )
    };
    assert_eq!((shed("queue_full"), shed("timed_out")), (1.0, 1.0));
    assert_eq!(
        sample(&text, r#"weir_concurrency_limit{scope="server"}"#),
        2.0
    );
    assert_eq!(
        sample(&text, r#"weir_queue_wait_seconds_count{scope="server"}"#),
        5.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_queued_request_is_served_when_a_stream_ends() {
    let (_mock, weir) = start(
        r#"max_concurrency = 1
queue_timeout = "10s""#,
    )
    .await;
    let started = Instant::now();
    let first = stream(&weir, "chunks=3,delay_ms=1000").await;
    let waiting = tokio::spawn({
        let addr = weir.addr();
        async move {
            let response = stream_at(addr, "chunks=2").await;
            (Instant::now(), read(response).await)
        }
    });
    let first = read(first).await;
    let ended = Instant::now();
    let (admitted, second) = waiting.await.unwrap();
    assert!(first.error.is_none() && second.error.is_none());
    assert_eq!(second.content(), "tok0 tok1 ");
    // It was let in when the first stream ended, not when the first headers went out.
    assert!(
        admitted >= ended,
        "admitted while the first stream was running"
    );
    // Three chunks a second apart: the first stream lasted 2 s.
    assert_eq!(admitted.duration_since(started), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_provider_at_its_limit_sends_the_request_to_the_next_target() {
    let setup = two::setup(None, "max_concurrency = 1\nmax_queue = 0", None).await;
    let long = stream(&setup.weir, "chunks=3,delay_ms=1000").await;
    assert_eq!(header(long.headers(), "x-weir-provider"), Some("primary"));

    let overflow = two::ask(&setup.weir, "chunks=2").await;
    assert_eq!(overflow.status, 200);
    assert_eq!(overflow.provider.as_deref(), Some("backup"));
    assert_eq!(overflow.text, "tok0 tok1 ");
    assert_eq!(
        setup.primary.requests().len(),
        1,
        "nothing more reached the primary"
    );

    // weir's own limit is not the provider failing: its breaker stays closed.
    assert!(read(long).await.error.is_none());
    let again = two::ask(&setup.weir, "chunks=1").await;
    assert_eq!(again.provider.as_deref(), Some("primary"));
    let text = metrics(&setup.weir).await;
    assert_eq!(
        sample(&text, r#"weir_breaker_state{provider="primary",model="m"}"#),
        0.0
    );
    assert_eq!(
        sample(
            &text,
            r#"weir_shed_total{scope="provider",provider="primary",reason="queue_full"}"#
        ),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_single_target_at_its_limit_makes_the_request_wait_for_it() {
    let setup = two::setup(
        None,
        "max_concurrency = 1\nqueue_timeout = \"10s\"",
        Some(r#"[{ provider = "primary", model = "m" }]"#),
    )
    .await;
    let started = Instant::now();
    let long = stream(&setup.weir, "chunks=2,delay_ms=1000").await;
    let waiting = tokio::spawn({
        let addr = setup.weir.addr();
        async move {
            let response = stream_at(addr, "chunks=1").await;
            (Instant::now(), response.status())
        }
    });
    assert!(read(long).await.error.is_none());
    let ended = started.elapsed();
    let (at, status) = waiting.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(ended, Duration::from_secs(1));
    assert_eq!(
        at.duration_since(started),
        ended,
        "served as the first stream ended"
    );
    assert_eq!(setup.primary.requests().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_cut_and_its_upstream_cancelled_without_delaying_others() {
    let (mock, weir) = start(
        r#"max_concurrency = 8
client_stall_timeout = "5s""#,
    )
    .await;
    // A long answer (about 44 MB: 40,000 chunks of a 1,000-byte token) to a client with a
    // 4 KiB receive buffer that sends its request and never reads.
    let word = "w".repeat(1000);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(weir.addr()).await.unwrap();
    let body = r#"{"model":"gpt-test","stream":true,"messages":[]}"#;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: weir\r\ncontent-type: application/json\r\n\
         x-mock: chunks=40000,word={word}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    slow.write_all(request.as_bytes()).await.unwrap();
    let started = Instant::now();

    // Meanwhile another client streams normally, at full speed.
    let fast = read(stream(&weir, "chunks=5,delay_ms=100").await).await;
    assert!(fast.error.is_none());
    assert_eq!(fast.content(), "tok0 tok1 tok2 tok3 tok4 ");

    tokio::time::timeout(Duration::from_secs(60), mock.wait_cancelled(1))
        .await
        .expect("the stalled stream's upstream request is cancelled");
    let cut_after = started.elapsed();
    assert!(
        cut_after >= Duration::from_secs(5) && cut_after < Duration::from_secs(7),
        "cut after {cut_after:?}"
    );
    // weir stopped pulling the answer when the client stopped reading: what the upstream
    // handed over is what the kernel's socket buffers on both sides and one bounded write
    // buffer hold (about 7 MB here), not the answer.
    let pulled = mock.bytes_sent();
    assert!(
        pulled < 20 << 20,
        "weir pulled {pulled} bytes of a 44 MB answer"
    );
    let text = metrics(&weir).await;
    assert_eq!(sample(&text, r#"weir_in_flight{scope="server"}"#), 0.0);
    drop(slow);
}

#[tokio::test(start_paused = true)]
async fn at_max_connections_a_request_waits_for_a_pooled_connection() {
    let setup = two::setup(
        None,
        "max_connections = 1",
        Some(r#"[{ provider = "primary", model = "m" }]"#),
    )
    .await;
    let long = stream(&setup.weir, "chunks=3,delay_ms=1000").await;
    let text = metrics(&setup.weir).await;
    assert_eq!(
        sample(&text, r#"weir_upstream_pool_in_use{provider="primary"}"#),
        1.0
    );
    let waiting = tokio::spawn({
        let addr = setup.weir.addr();
        async move { read(stream_at(addr, "chunks=1").await).await }
    });
    while sample(
        &metrics(&setup.weir).await,
        r#"weir_upstream_pool_waiting{provider="primary"}"#,
    ) < 1.0
    {
        tokio::task::yield_now().await;
    }
    assert!(read(long).await.error.is_none());
    let second = waiting.await.unwrap();
    assert_eq!(second.content(), "tok0 ");
    assert_eq!(setup.primary.connections(), 1, "one connection, reused");
    let text = metrics(&setup.weir).await;
    assert_eq!(
        sample(&text, r#"weir_upstream_pool_open{provider="primary"}"#),
        1.0
    );
    assert_eq!(
        sample(&text, r#"weir_upstream_pool_idle{provider="primary"}"#),
        1.0
    );
    assert_eq!(
        sample(&text, r#"weir_upstream_pool_waiting{provider="primary"}"#),
        0.0
    );
}
