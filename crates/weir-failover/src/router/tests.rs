use super::*;
use std::future::{ready, Ready};
use tower::util::BoxCloneSyncService;
use tower::{service_fn, ServiceExt};

type Svc = BoxCloneSyncService<u32, u16, BoxError>;

/// Each target answers its fixed status; the answer says who answered.
fn target(status: u16) -> Svc {
    BoxCloneSyncService::new(service_fn(move |_: u32| async move {
        Ok::<u16, BoxError>(status)
    }))
}

#[derive(Clone)]
struct ByStatus;

impl Judge<u32> for ByStatus {
    type Request = u32;
    type Response = u16;
    type Answer = (usize, u16);
    type Future = Ready<Judged<(usize, u16)>>;
    type Attempt = ();

    fn request(&self, _: usize, call: &u32) -> (u32, ()) {
        (*call, ())
    }

    fn judge(&self, target: usize, _: (), result: Result<u16, BoxError>) -> Self::Future {
        ready(match result {
            Ok(200) => Judged::Commit((target, 200)),
            Ok(status) => Judged::Failed(
                (target, status),
                Some(Failure::Upstream5xx {
                    status: http::StatusCode::from_u16(status).unwrap(),
                }),
            ),
            Err(_) => Judged::Failed((target, 502), Some(Failure::Connect)),
        })
    }
}

fn seeded() -> Rng {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    Arc::new(Mutex::new(move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    }))
}

#[tokio::test(start_paused = true)]
async fn weighted_order_follows_the_weights() {
    let router = Failover::builder(
        vec![
            Target::new(target(200)).weight(3),
            Target::new(target(200)).weight(1),
        ],
        ByStatus,
    )
    .order(Order::Weighted)
    .rng(seeded())
    .build();
    let mut first = [0u32; 2];
    for call in 0..4000 {
        let routed = router.clone().oneshot(call).await.unwrap();
        first[routed.target.unwrap()] += 1;
    }
    let share = f64::from(first[0]) / 4000.0;
    assert!(
        (0.72..0.78).contains(&share),
        "weight 3 of 4 served {share}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_target_that_is_not_ready_is_skipped() {
    let (busy, mut handle) = tower_test::mock::pair::<u32, u16>();
    handle.allow(0); // never ready
    let busy = BoxCloneSyncService::new(busy.map_err(|e: BoxError| e));
    let router = Failover::new(vec![Target::new(busy), Target::new(target(200))], ByStatus);
    let routed = router.oneshot(7).await.unwrap();
    assert_eq!((routed.answer, routed.attempts), ((1, 200), 1));
}

#[tokio::test(start_paused = true)]
async fn no_ready_target_at_all_is_an_error_and_failures_give_the_last_answer() {
    let (busy, mut handle) = tower_test::mock::pair::<u32, u16>();
    handle.allow(0);
    let busy = BoxCloneSyncService::new(busy.map_err(|e: BoxError| e));
    let none = Failover::new(vec![Target::new(busy)], ByStatus);
    assert!(none.oneshot(1).await.is_err());

    let failing = Failover::new(
        vec![Target::new(target(503)), Target::new(target(500))],
        ByStatus,
    );
    let routed = failing.oneshot(1).await.unwrap();
    assert_eq!(routed.target, None, "nothing committed");
    assert_eq!(routed.answer, (1, 500), "the last answer");
    assert_eq!(routed.attempts, 4, "each target: one try and one retry");
}

#[tokio::test(start_paused = true)]
async fn with_a_queue_timeout_a_call_waits_for_a_busy_target() {
    let (busy, mut handle) = tower_test::mock::pair::<u32, u16>();
    handle.allow(0);
    let busy = BoxCloneSyncService::new(busy.map_err(|e: BoxError| e));
    let router = Failover::builder(vec![Target::new(busy)], ByStatus)
        .queue_timeout(Duration::from_secs(5))
        .build();
    let started = Instant::now();
    let call = tokio::spawn(router.clone().oneshot(1));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A slot frees after 2 s: the waiting call takes it.
    handle.allow(1);
    let (request, respond) = handle.next_request().await.unwrap();
    assert_eq!(request, 1);
    respond.send_response(200);
    let routed = call.await.unwrap().unwrap();
    assert_eq!((routed.answer, routed.target), ((0, 200), Some(0)));
    assert_eq!(started.elapsed(), Duration::from_secs(2));

    // Nothing frees: the call gives up after the queue timeout, or at its deadline if sooner.
    let started = Instant::now();
    assert!(router.oneshot(2).await.is_err());
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    let (busy, mut handle) = tower_test::mock::pair::<u32, u16>();
    handle.allow(0);
    let busy = BoxCloneSyncService::new(busy.map_err(|e: BoxError| e));
    let short = Failover::builder(vec![Target::new(busy)], ByStatus)
        .queue_timeout(Duration::from_secs(5))
        .deadline(Duration::from_secs(3))
        .build();
    let started = Instant::now();
    assert!(short.oneshot(3).await.is_err());
    assert_eq!(started.elapsed(), Duration::from_secs(3));
}
