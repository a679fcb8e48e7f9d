use crate::{Aimd, Backpressure, Limit, Mode, ResponseBody, Shed, WriteStall};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Channel};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

type Sender = http_body_util::channel::Sender<Bytes>;
type Upstream = Response<Channel<Bytes>>;
type Ready = std::future::Ready<Result<Upstream, Infallible>>;

/// A streaming upstream: every call answers 200 with a body that the test ends through the
/// sender it finds in `senders` (in call order), tagged with the call's `x-n` header.
#[derive(Clone, Default)]
struct Streams {
    senders: Arc<Mutex<Vec<(u32, Sender)>>>,
    status: Arc<Mutex<Option<StatusCode>>>,
}

impl Streams {
    fn service(
        &self,
    ) -> impl Service<Request<()>, Response = Upstream, Error = Infallible, Future = Ready> + Clone
    {
        let senders = self.senders.clone();
        let status = self.status.clone();
        tower::service_fn(move |req: Request<()>| {
            let n = req.headers()["x-n"].to_str().unwrap().parse().unwrap();
            let (tx, body) = Channel::<Bytes>::new(4);
            senders.lock().unwrap().push((n, tx));
            let mut response = Response::new(body);
            if let Some(status) = *status.lock().unwrap() {
                *response.status_mut() = status;
            }
            std::future::ready(Ok(response))
        })
    }

    /// Ends the stream of call `n`.
    fn end(&self, n: u32) {
        let mut senders = self.senders.lock().unwrap();
        let at = senders
            .iter()
            .position(|(m, _)| *m == n)
            .expect("call made");
        senders.remove(at);
    }

    /// Sends one data frame on the stream of call `n`.
    fn send(&self, n: u32) {
        let mut senders = self.senders.lock().unwrap();
        let (_, tx) = senders
            .iter_mut()
            .find(|(m, _)| *m == n)
            .expect("call made");
        tx.try_send(http_body::Frame::data(Bytes::from("data: {}\n\n")))
            .expect("room in the channel");
    }

    fn calls(&self) -> Vec<u32> {
        self.senders
            .lock()
            .unwrap()
            .iter()
            .map(|(n, _)| *n)
            .collect()
    }
}

fn request(n: u32) -> Request<()> {
    Request::builder().header("x-n", n).body(()).unwrap()
}

type Answer = Response<ResponseBody<Channel<Bytes>>>;

async fn call<S>(service: &S, n: u32) -> Answer
where
    S: Service<Request<()>, Response = Answer, Error = crate::BoxError> + Clone,
{
    service.clone().oneshot(request(n)).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_permit_is_held_by_the_body_until_it_ends_or_is_dropped() {
    let streams = Streams::default();
    let limit = Limit::builder(2).max_queue(0).build();
    let service = Backpressure::new(streams.service(), limit.clone(), Mode::Wait);

    let first = call(&service, 1).await;
    let second = call(&service, 2).await;
    assert_eq!(
        (first.status(), second.status()),
        (StatusCode::OK, StatusCode::OK)
    );
    assert!(first.body().holds_permit());
    assert_eq!(limit.snapshot().in_flight, 2);
    // Both streams are open after their headers: a third call is refused.
    let third = call(&service, 3).await;
    assert_eq!(third.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(third.headers()["x-weir-shed"], "queue_full");

    // The first stream ends (read to its end): its permit comes back.
    streams.end(1);
    let collected = first.into_body().collect().await.unwrap();
    assert!(collected.to_bytes().is_empty());
    assert_eq!(limit.snapshot().in_flight, 1);
    // The client drops the second body halfway: its permit comes back too.
    drop(second);
    assert_eq!(limit.snapshot().in_flight, 0);
    let fourth = call(&service, 4).await;
    assert_eq!(fourth.status(), StatusCode::OK);
    assert_eq!(
        streams.calls(),
        [2, 4],
        "the refused call never reached upstream"
    );
}

#[tokio::test(start_paused = true)]
async fn waiting_callers_are_admitted_first_come_first_served() {
    let streams = Streams::default();
    let limit = Limit::builder(1)
        .max_queue(10)
        .max_wait(Duration::from_secs(60))
        .build();
    let service = Backpressure::new(streams.service(), limit.clone(), Mode::Wait);
    let holder = call(&service, 0).await;

    let mut waiting = Vec::new();
    for n in 1..=5 {
        let service = service.clone();
        waiting.push(tokio::spawn(async move {
            let answer = call(&service, n).await;
            (n, Instant::now(), answer)
        }));
        // Arrive one after another.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(limit.snapshot().queued, 5);

    // Each stream ends a second after it starts; the queue drains in arrival order.
    drop(holder);
    let mut admitted = Vec::new();
    for task in waiting {
        let (n, at, answer) = task.await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        admitted.push((n, at));
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(answer);
    }
    let order: Vec<u32> = admitted.iter().map(|(n, _)| *n).collect();
    assert_eq!(order, [1, 2, 3, 4, 5]);
    assert_eq!(streams.calls(), [0, 1, 2, 3, 4, 5]);
    let snapshot = limit.snapshot();
    assert_eq!((snapshot.queued, snapshot.in_flight), (0, 0));
    // Waits were measured: the holder none, the first waiter 40 ms, the others 1.03 s to
    // 4 s (each stream lasts 1 s).
    assert_eq!(snapshot.wait_buckets, [1, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0]);
    assert!(
        (snapshot.wait_seconds_sum - 10.15).abs() < 1e-6,
        "{snapshot:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_wait_past_max_wait_is_shed_with_retry_after() {
    let streams = Streams::default();
    let limit = Limit::builder(1)
        .max_queue(4)
        .max_wait(Duration::from_secs(5))
        .retry_after(Duration::from_millis(2500))
        .build();
    let service = Backpressure::new(streams.service(), limit.clone(), Mode::Wait);
    let _holder = call(&service, 0).await;

    let started = Instant::now();
    let refused = call(&service, 1).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(refused.headers()["retry-after"], "3");
    assert_eq!(refused.headers()["x-weir-shed"], "timed_out");
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"]["code"], "overloaded");
    let snapshot = limit.snapshot();
    assert_eq!((snapshot.shed_timed_out, snapshot.queued), (1, 0));
    assert_eq!(streams.calls(), [0]);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_sheds_at_once_and_a_dropped_wait_leaves_the_queue() {
    let streams = Streams::default();
    let limit = Limit::builder(1).max_queue(1).build();
    let service = Backpressure::new(streams.service(), limit.clone(), Mode::Wait);
    let holder = call(&service, 0).await;

    // One caller waits; a caller with its own deadline of 1 s gives up, leaving its place.
    let waiter = tokio::spawn({
        let service = service.clone();
        async move { call(&service, 1).await }
    });
    tokio::task::yield_now().await;
    assert_eq!(limit.snapshot().queued, 1);
    let started = Instant::now();
    let refused = call(&service, 2).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "no wait when the queue is full"
    );

    waiter.abort();
    let _ = waiter.await;
    assert_eq!(limit.snapshot().queued, 0);
    let deadline = tokio::time::timeout(Duration::from_secs(1), call(&service, 3)).await;
    assert!(deadline.is_err());
    assert_eq!(limit.snapshot().queued, 0);

    drop(holder);
    assert_eq!(call(&service, 4).await.status(), StatusCode::OK);
    assert_eq!(limit.snapshot().shed_queue_full, 1);
}

#[tokio::test(start_paused = true)]
async fn a_router_sees_a_full_target_as_not_ready() {
    let streams = Streams::default();
    let limit = Limit::new(1);
    let mut service = Backpressure::new(streams.service(), limit.clone(), Mode::Wait);
    let holder = call(&service, 0).await;
    let mut ready = tokio_test::task::spawn(service.ready());
    assert!(ready.poll().is_pending());
    drop(holder);
    assert!(ready.is_woken());
    assert!(ready.poll().is_ready());
}

#[tokio::test(start_paused = true)]
async fn shed_mode_never_queues() {
    let streams = Streams::default();
    let limit = Limit::new(1);
    let service = Backpressure::new(streams.service(), limit.clone(), Mode::Shed);
    let holder = call(&service, 0).await;
    let started = Instant::now();
    let refused = call(&service, 1).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(started.elapsed(), Duration::ZERO);
    drop(holder);
    assert_eq!(call(&service, 2).await.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn an_adaptive_limit_follows_time_to_first_byte() {
    let streams = Streams::default();
    let limit = Limit::builder(3)
        .adaptive(Aimd::new(1, 10, Duration::from_millis(500)))
        .build();
    let service = Backpressure::new(streams.service(), limit.clone(), Mode::Wait);

    // Every permit is out, and each first byte comes after 2 s: 3 → 2.7 → 2.43 → 2.19.
    let mut slow = Vec::new();
    for n in 0..3 {
        slow.push(call(&service, n).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (n, answer) in (0..).zip(&mut slow) {
        streams.send(n);
        answer.body_mut().frame().await.unwrap().unwrap();
    }
    assert_eq!(limit.snapshot().limit, 2);
    // The permit given up was out: it is retired when it comes back, not reused.
    drop(slow);
    let mut open = vec![call(&service, 3).await, call(&service, 4).await];
    let mut third = tokio_test::task::spawn(call(&service, 5));
    assert!(third.poll().is_pending(), "only two permits now");

    // Quick first bytes raise it again: 2.19 → 2.64 → 3.02, a third permit.
    for (n, answer) in (3..).zip(&mut open) {
        streams.send(n);
        answer.body_mut().frame().await.unwrap().unwrap();
    }
    assert_eq!(limit.snapshot().limit, 3);
    assert!(third.is_woken());
    match third.poll() {
        std::task::Poll::Ready(answer) => assert_eq!(answer.status(), StatusCode::OK),
        std::task::Poll::Pending => panic!("the new permit admits the waiting call"),
    }
}

#[tokio::test(start_paused = true)]
async fn an_error_or_an_overload_answer_lowers_an_adaptive_limit() {
    let streams = Streams::default();
    let limit = Limit::builder(10)
        .adaptive(Aimd::new(1, 10, Duration::from_secs(1)))
        .build();
    let service = Backpressure::new(streams.service(), limit.clone(), Mode::Wait);
    *streams.status.lock().unwrap() = Some(StatusCode::TOO_MANY_REQUESTS);
    drop(call(&service, 0).await);
    assert_eq!(limit.snapshot().limit, 9);
    *streams.status.lock().unwrap() = Some(StatusCode::BAD_REQUEST);
    drop(call(&service, 1).await);
    assert_eq!(
        limit.snapshot().limit,
        9,
        "a 4xx is the client's, not overload"
    );
}

#[tokio::test(start_paused = true)]
async fn a_write_without_progress_fails_after_the_stall_timeout() {
    let (client, server) = tokio::io::duplex(1024);
    let mut io = WriteStall::new(server, Duration::from_secs(10));
    let chunk = [b'x'; 512];
    // The client reads slowly but steadily: 512 bytes every 5 s. Never cut.
    let reader = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut client = client;
        let mut buf = [0; 512];
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            client.read_exact(&mut buf).await.unwrap();
        }
        client // then stops reading, and keeps the connection open
    });
    let started = Instant::now();
    let mut written = 0;
    let error = loop {
        match io.write_all(&chunk).await {
            Ok(()) => written += chunk.len(),
            Err(e) => break e,
        }
    };
    assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
    // 1 KiB of buffer, then 6 reads of 512 bytes; the last read was at 30 s, then 10 s more.
    assert_eq!(written, 1024 + 6 * 512);
    assert_eq!(started.elapsed(), Duration::from_secs(40));
    drop(reader.await.unwrap());
}

#[test]
fn shed_reasons_have_stable_names() {
    assert_eq!(Shed::QueueFull.as_str(), "queue_full");
    assert_eq!(Shed::TimedOut.as_str(), "timed_out");
}
