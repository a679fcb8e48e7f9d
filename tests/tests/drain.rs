//! Draining: no new connections, /readyz turns 503, live streams finish whole.

use std::time::Duration;
use weir_e2e::{read, Harness};
use weir_test::answer;

#[tokio::test(start_paused = true)]
async fn drain_lets_a_live_stream_finish_and_refuses_new_connections() {
    let mut h = Harness::start().await;
    assert_eq!(h.admin_get("/readyz").await, 200);
    let response = h.chat_stream("chunks=8,delay_ms=500").await;
    assert_eq!(response.status(), 200);
    let reader = tokio::spawn(read(response));

    let weir = h.weir.take().unwrap();
    let drained = tokio::spawn(weir.drain());
    tokio::task::yield_now().await;
    // Draining: the admin port says so, the public port takes no new connection.
    assert_eq!(h.admin_get("/readyz").await, 503);
    assert_eq!(h.admin_get("/healthz").await, 200);
    assert!(tokio::net::TcpStream::connect(h.addr).await.is_err());

    let got = reader.await.unwrap();
    assert_eq!(got.error, None);
    assert_eq!(got.content(), answer(8), "the stream finished whole");
    assert!(drained.await.unwrap(), "drained before the deadline");
}

#[tokio::test(start_paused = true)]
async fn drain_deadline_cuts_a_stream_that_runs_too_long() {
    let mut h = Harness::start().await; // drain_timeout = 10s
    let response = h.chat_stream("chunks=100,delay_ms=1000").await;
    let reader = tokio::spawn(read(response));
    let started = tokio::time::Instant::now();
    let finished = h.weir.take().unwrap().drain().await;
    assert!(!finished);
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    drop(reader);
}
