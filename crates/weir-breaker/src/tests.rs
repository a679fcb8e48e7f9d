//! The layer under paused time, with tower-test mocks.

use crate::policy::{Policy, PolicyConfig, State};
use crate::{BoxError, Breaker, BreakerLayer, Mode};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready_ok};
use tower::{Service, ServiceExt};
use tower_test::mock;

/// A response body fed by the test: data, then an end or an error.
#[derive(Debug)]
struct TestBody(mpsc::UnboundedReceiver<Result<Bytes, BoxError>>);

impl Body for TestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|r| r.map(|r| r.map(Frame::data)))
    }
}

fn body() -> (mpsc::UnboundedSender<Result<Bytes, BoxError>>, TestBody) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, TestBody(rx))
}

fn status(code: u16) -> Response<TestBody> {
    let (_, b) = body();
    let mut response = Response::new(b);
    *response.status_mut() = StatusCode::from_u16(code).unwrap();
    response
}

fn breaker() -> Breaker {
    let config = PolicyConfig {
        failure_rate: None,
        jitter: 0.0,
        ..PolicyConfig::default()
    };
    Breaker::with_policy(Policy::with_jitter(config, Instant::now(), || 0.5))
}

type Mock = mock::Mock<Request<()>, Response<TestBody>>;
type Handle = mock::Handle<Request<()>, Response<TestBody>>;

fn layered(breaker: &Breaker, mode: Mode) -> (crate::CircuitBreaker<Mock>, Handle) {
    let (service, handle) = mock::pair::<Request<()>, Response<TestBody>>();
    let layer = BreakerLayer::new(breaker.clone()).mode(mode);
    (tower_layer::Layer::layer(&layer, service), handle)
}

/// Sends one call through `service` and has the mock answer `code`; returns the response.
async fn call(
    service: &mut crate::CircuitBreaker<Mock>,
    handle: &mut Handle,
    response: Response<TestBody>,
) -> Response<crate::ResponseBody<TestBody, crate::classify::LlmEos>> {
    let future = service.ready().await.unwrap().call(Request::new(()));
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_response(response);
    future.await.unwrap()
}

async fn trip(service: &mut crate::CircuitBreaker<Mock>, handle: &mut Handle) {
    for _ in 0..3 {
        let response = call(service, handle, status(503)).await;
        assert_eq!(response.status(), 503);
    }
}

#[tokio::test(start_paused = true)]
async fn open_breaker_is_not_ready_until_open_for_passes() {
    let breaker = breaker();
    let (mut service, mut handle) = layered(&breaker, Mode::Wait);
    trip(&mut service, &mut handle).await;
    assert!(matches!(breaker.state(), State::Open { .. }));

    let mut task = tokio_test::task::spawn(());
    task.enter(|cx, _| assert!(service.poll_ready(cx).is_pending()));
    tokio::time::advance(Duration::from_secs(9)).await;
    assert!(!task.is_woken());
    task.enter(|cx, _| assert!(service.poll_ready(cx).is_pending()));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(task.is_woken(), "woken when the breaker may probe");
    task.enter(|cx, _| assert!(service.poll_ready(cx).is_ready()));
    assert_eq!(breaker.state(), State::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn half_open_lets_exactly_the_probe_count_through_under_concurrency() {
    let breaker = breaker(); // half_open_probes = 1
    let (mut service, mut handle) = layered(&breaker, Mode::Wait);
    trip(&mut service, &mut handle).await;
    tokio::time::advance(Duration::from_secs(10)).await;

    let mut callers: Vec<_> = (0..50)
        .map(|_| tokio_test::task::spawn(service.clone().oneshot(Request::new(()))))
        .collect();
    for caller in &mut callers {
        assert_pending!(caller.poll());
    }
    // One probe reached the upstream; nobody else did.
    let (_, reply) = handle.next_request().await.unwrap();
    assert_pending!(handle.poll_request());
    reply.send_response(status(200));
    let mut succeeded = 0;
    for caller in &mut callers {
        if let Poll::Ready(response) = caller.poll() {
            let mut response = response.unwrap();
            // The probe's outcome is settled at the end of its body.
            let _ = response.body_mut().frame().await;
            succeeded += 1;
        }
    }
    assert_eq!(succeeded, 1);
    assert_eq!(
        breaker.state(),
        State::Closed,
        "a successful probe closes it"
    );
    // Closed: the waiting callers are woken and go through.
    for caller in &mut callers {
        if caller.is_woken() {
            let _ = caller.poll();
        }
    }
    let mut served = 0;
    while let Poll::Ready(Some((_, reply))) = handle.poll_request() {
        reply.send_response(status(200));
        served += 1;
    }
    assert_eq!(served, 49);
}

#[tokio::test(start_paused = true)]
async fn outcome_of_a_stream_is_settled_at_its_end() {
    let breaker = breaker();
    let (mut service, mut handle) = layered(&breaker, Mode::Wait);
    // Streams that break after their headers are failures...
    for _ in 0..2 {
        let (tx, b) = body();
        let mut response = call(&mut service, &mut handle, Response::new(b)).await;
        tx.send(Ok(Bytes::from_static(b"data: x\n\n"))).unwrap();
        tx.send(Err("reset".into())).unwrap();
        assert!(response.body_mut().frame().await.unwrap().is_ok());
        assert_eq!(breaker.state(), State::Closed, "not settled at headers");
        assert!(response.body_mut().frame().await.unwrap().is_err());
    }
    // ...a client going away says nothing...
    let (_tx, b) = body();
    drop(call(&mut service, &mut handle, Response::new(b)).await);
    assert_eq!(breaker.state(), State::Closed);
    // ...and a third broken stream trips it.
    let (tx, b) = body();
    let mut response = call(&mut service, &mut handle, Response::new(b)).await;
    tx.send(Err("reset".into())).unwrap();
    assert!(response.body_mut().frame().await.unwrap().is_err());
    assert!(matches!(breaker.state(), State::Open { .. }));
}

#[tokio::test(start_paused = true)]
async fn running_streams_finish_when_the_breaker_opens() {
    let breaker = breaker();
    let (mut service, mut handle) = layered(&breaker, Mode::Wait);
    let (tx, b) = body();
    let mut running = call(&mut service, &mut handle, Response::new(b)).await;
    trip(&mut service, &mut handle).await;
    assert!(matches!(breaker.state(), State::Open { .. }));
    tx.send(Ok(Bytes::from_static(b"data: still here\n\n")))
        .unwrap();
    drop(tx);
    let rest = running.body_mut().collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"data: still here\n\n");
}

#[tokio::test(start_paused = true)]
async fn shed_mode_answers_503_without_calling_the_upstream() {
    let breaker = breaker();
    let (mut service, mut handle) = layered(&breaker, Mode::Shed);
    trip(&mut service, &mut handle).await;
    tokio::time::advance(Duration::from_millis(2500)).await;
    let response = service
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "8", "7.5 s rounded up");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"]["code"], "circuit_open");
    assert_pending!(handle.poll_request());
}

#[tokio::test(start_paused = true)]
async fn rate_limit_cools_down_without_a_trip() {
    let breaker = breaker();
    let (mut service, mut handle) = layered(&breaker, Mode::Wait);
    for _ in 0..5 {
        let mut response = status(429);
        response
            .headers_mut()
            .insert("retry-after", http::HeaderValue::from_static("4"));
        let future = service.ready().await.unwrap().call(Request::new(()));
        let (_, reply) = handle.next_request().await.unwrap();
        reply.send_response(response);
        assert_eq!(future.await.unwrap().status(), 429);
        tokio::time::advance(Duration::from_secs(4)).await;
    }
    assert_eq!(breaker.state(), State::Closed, "429s never trip it");
    let mut response = status(429);
    response
        .headers_mut()
        .insert("retry-after", http::HeaderValue::from_static("4"));
    let future = service.ready().await.unwrap().call(Request::new(()));
    handle
        .next_request()
        .await
        .unwrap()
        .1
        .send_response(response);
    future.await.unwrap();
    let mut task = tokio_test::task::spawn(());
    task.enter(|cx, _| {
        assert!(
            service.poll_ready(cx).is_pending(),
            "kept away for Retry-After"
        )
    });
    tokio::time::advance(Duration::from_secs(4)).await;
    task.enter(|cx, _| assert_ready_ok!(service.poll_ready(cx)));
}

#[tokio::test(start_paused = true)]
async fn health_probe_recovery_wakes_waiting_callers() {
    let breaker = breaker();
    let (mut service, mut handle) = layered(&breaker, Mode::Wait);
    trip(&mut service, &mut handle).await;
    let mut waiting = tokio_test::task::spawn(service.clone().oneshot(Request::new(())));
    assert_pending!(waiting.poll());
    breaker.probe_result(true, None);
    assert!(waiting.is_woken());
    assert_pending!(waiting.poll());
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_response(status(200));
    assert!(waiting.await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_wrapper_settles_a_call_once() {
    let breaker = breaker();
    let (mut service, mut handle) = layered(&breaker, Mode::Wait);
    for n in 1..=3 {
        let (tx, b) = body();
        let mut response = call(&mut service, &mut handle, Response::new(b)).await;
        // A wrapper above saw the call fail (a stall, an in-band error) and says so...
        let settle = response
            .extensions()
            .get::<crate::Settle>()
            .unwrap()
            .clone();
        settle.failure("stalled");
        // ...so the clean end that follows counts for nothing more.
        drop(tx);
        assert!(response.body_mut().frame().await.is_none());
        let expected_open = n == 3;
        assert_eq!(
            matches!(breaker.state(), State::Open { .. }),
            expected_open,
            "call {n}"
        );
    }
    assert_eq!(breaker.snapshot().last_failure.as_deref(), Some("stalled"));
}
