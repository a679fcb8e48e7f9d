use crate::{Labels, MetricsLayer, Phase, Price, PrometheusRecorder, Tally};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::{Service, ServiceExt};

type Sender = http_body_util::channel::Sender<Bytes, &'static str>;

/// A service that answers with a channel body the test feeds, after writing `notes` into the
/// tally.
fn service(
    senders: Arc<Mutex<Vec<Sender>>>,
    status: u16,
    notes: fn(&Tally),
) -> impl Service<
    Request<()>,
    Response = Response<Channel<Bytes, &'static str>>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(move |request: Request<()>| {
        let senders = senders.clone();
        async move {
            let tally = request
                .extensions()
                .get::<Tally>()
                .expect("the layer's tally");
            notes(tally);
            // The gateway's own work before the upstream request leaves.
            tokio::time::sleep(Duration::from_millis(1)).await;
            tally.sent();
            let (tx, body) = Channel::new(8);
            senders.lock().unwrap().push(tx);
            let mut response = Response::new(body);
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
            response
                .headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            response
                .headers_mut()
                .insert("x-request-id", "req-1".parse().unwrap());
            Ok(response)
        }
    })
}

fn routed(tally: &Tally) {
    tally.labels(Labels::new("gpt-4o", "primary", "gpt-4o-2024"));
    tally.operation("chat");
    tally.attempts(1);
    tally.input_estimate(40);
    tally.price(Price {
        input: 2.5,
        output: 10.0,
    });
}

fn chunk(text: &str) -> Bytes {
    Bytes::from(format!(
        "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{text}\"}},\"finish_reason\":null}}]}}\n\n"
    ))
}

const FINISH: &str = "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"length\"}]}\n\n";
const USAGE: &str = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":300,\"total_tokens\":312}}\n\n";

fn render(recorder: &PrometheusRecorder) -> String {
    let mut out = String::new();
    recorder.render(&mut out);
    out
}

/// The value of one sample line, by its name and labels as rendered.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A recorder, and a routed streaming answer whose body the test feeds.
async fn routed_stream() -> (
    Arc<PrometheusRecorder>,
    Response<crate::ResponseBody<Channel<Bytes, &'static str>, PrometheusRecorder>>,
    Sender,
) {
    let recorder = Arc::new(PrometheusRecorder::new());
    let senders = Arc::default();
    let svc = MetricsLayer::new(recorder.clone()).layer_service(service(
        Arc::clone(&senders),
        200,
        routed,
    ));
    let response = svc.oneshot(Request::new(())).await.unwrap();
    let tx = senders.lock().unwrap().remove(0);
    (recorder, response, tx)
}

const LABELS: &str = r#"route="gpt-4o",provider="primary",model="gpt-4o-2024""#;

#[tokio::test(start_paused = true)]
async fn a_stream_is_timed_counted_and_priced_when_it_ends() {
    let (recorder, response, mut tx) = routed_stream().await;
    let text = render(&recorder);
    assert_eq!(
        sample(&text, &format!("weir_active_streams{{{LABELS}}}")),
        Some(1.0)
    );
    let reader = tokio::spawn(response.into_body().collect());
    // First token 200 ms after arrival, then a chunk every 20 ms, then the finish chunk.
    tokio::time::sleep(Duration::from_millis(199)).await;
    for text in ["a", "b", "c", "d"] {
        tx.send_data(chunk(text)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tx.send_data(Bytes::from_static(FINISH.as_bytes()))
        .await
        .unwrap();
    tx.send_data(Bytes::from_static(b"data: [DONE]\n\n"))
        .await
        .unwrap();
    drop(tx);
    reader.await.unwrap().unwrap();

    let text = render(&recorder);
    let at = |name: &str| sample(&text, &format!("{name}{{{LABELS}}}"));
    assert_eq!(
        sample(
            &text,
            &format!("weir_requests_total{{{LABELS},status=\"200\",outcome=\"ok\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(at("weir_active_streams"), Some(0.0));
    // TTFT 0.2 s: in the le="0.2" bucket, not in le="0.1".
    let ttft = |le: &str| {
        sample(
            &text,
            &format!("weir_time_to_first_token_seconds_bucket{{{LABELS},le=\"{le}\"}}"),
        )
    };
    assert_eq!((ttft("0.1"), ttft("0.2")), (Some(0.0), Some(1.0)), "{text}");
    assert_eq!(at("weir_time_to_first_token_seconds_sum"), Some(0.2));
    // Five gaps of 20 ms (the finish chunk included; [DONE] came at once).
    let gaps = |le: &str| {
        sample(
            &text,
            &format!("weir_inter_token_seconds_bucket{{{LABELS},le=\"{le}\"}}"),
        )
    };
    assert_eq!(at("weir_inter_token_seconds_count"), Some(5.0));
    assert_eq!((gaps("0.01"), gaps("0.02")), (Some(1.0), Some(5.0)));
    // No usage in the stream: 40 estimated in, 5 content events out, priced.
    let tokens = |d: &str| {
        sample(
            &text,
            &format!("weir_tokens_total{{{LABELS},direction=\"{d}\"}}"),
        )
    };
    assert_eq!((tokens("input"), tokens("output")), (Some(40.0), Some(5.0)));
    let cost = at("weir_cost_usd_total").unwrap();
    assert!(
        (cost - (40.0 * 2.5 + 5.0 * 10.0) / 1e6).abs() < 1e-12,
        "{cost}"
    );
    // The gateway's own millisecond before the upstream request left.
    assert_eq!(at("weir_overhead_seconds_sum"), Some(0.001));
    assert_eq!(at("weir_request_duration_seconds_count"), Some(1.0));
    // First token at 0.2 s, the end 80 ms later: 5 tokens in 0.08 s.
    let streamed = at("weir_stream_duration_seconds_sum").unwrap();
    assert!((streamed - 0.08).abs() < 1e-9, "{streamed}");
    let rate = at("weir_tokens_per_second_sum").unwrap();
    assert!((rate - 62.5).abs() < 1e-6, "{rate}");
}

#[tokio::test(start_paused = true)]
async fn reported_usage_wins_over_the_estimate() {
    let (recorder, response, mut tx) = routed_stream().await;
    for frame in [chunk("x"), Bytes::from_static(FINISH.as_bytes())] {
        tx.send_data(frame).await.unwrap();
    }
    tx.send_data(Bytes::from_static(USAGE.as_bytes()))
        .await
        .unwrap();
    drop(tx);
    response.into_body().collect().await.unwrap();
    let text = render(&recorder);
    let tokens = |d: &str| {
        sample(
            &text,
            &format!("weir_tokens_total{{{LABELS},direction=\"{d}\"}}"),
        )
    };
    assert_eq!(
        (tokens("input"), tokens("output")),
        (Some(12.0), Some(300.0))
    );
}

#[tokio::test(start_paused = true)]
async fn cut_dropped_and_refused_answers_have_their_outcomes() {
    let recorder = Arc::new(PrometheusRecorder::new());
    let senders: Arc<Mutex<Vec<Sender>>> = Arc::default();
    let layer = MetricsLayer::new(recorder.clone());

    // Cut after a chunk: truncated.
    let svc = layer.layer_service(service(Arc::clone(&senders), 200, routed));
    let response = svc.oneshot(Request::new(())).await.unwrap();
    let mut tx = senders.lock().unwrap().remove(0);
    tx.send_data(chunk("x")).await.unwrap();
    tx.abort("reset");
    assert!(response.into_body().collect().await.is_err());

    // The client goes away mid-stream: cancelled.
    let svc = layer.layer_service(service(Arc::clone(&senders), 200, routed));
    let response = svc.oneshot(Request::new(())).await.unwrap();
    let mut body = response.into_body();
    let mut tx = senders.lock().unwrap().remove(0);
    tx.send_data(chunk("x")).await.unwrap();
    body.frame().await.unwrap().unwrap();
    drop(body);

    // The client goes away before the answer's head.
    let mut svc = layer.layer_service(service(Arc::clone(&senders), 200, routed));
    let call = svc.call(Request::new(()));
    drop(call);

    // Refused (no labels: it never reached a route) and a 503.
    for status in [401, 503] {
        let svc = layer.layer_service(service(Arc::clone(&senders), status, |_| {}));
        let response = svc.oneshot(Request::new(())).await.unwrap();
        drop(senders.lock().unwrap().remove(0));
        response.into_body().collect().await.unwrap();
    }

    let text = render(&recorder);
    let requests = |labels: &str, status: u16, outcome: &str| {
        sample(
            &text,
            &format!("weir_requests_total{{{labels},status=\"{status}\",outcome=\"{outcome}\"}}"),
        )
    };
    let none = r#"route="",provider="",model="""#;
    assert_eq!(requests(LABELS, 200, "truncated"), Some(1.0));
    assert_eq!(requests(LABELS, 200, "cancelled"), Some(1.0));
    assert_eq!(requests(none, 499, "cancelled"), Some(1.0));
    assert_eq!(requests(none, 401, "client_error"), Some(1.0));
    assert_eq!(requests(none, 503, "upstream_error"), Some(1.0));
    assert_eq!(
        sample(&text, &format!("weir_active_streams{{{LABELS}}}")),
        Some(0.0)
    );
}

#[tokio::test(start_paused = true)]
async fn failovers_and_rescues_are_counted_by_phase() {
    let recorder = Arc::new(PrometheusRecorder::new());
    let senders: Arc<Mutex<Vec<Sender>>> = Arc::default();
    let svc = MetricsLayer::new(recorder.clone()).layer_service(service(
        Arc::clone(&senders),
        200,
        |tally| {
            routed(tally);
            tally.attempts(2);
            tally.failover("flaky".into(), "primary".into(), Phase::BeforeFirstToken);
        },
    ));
    let response = svc.oneshot(Request::new(())).await.unwrap();
    let tally = senders.lock().unwrap().remove(0);
    let mut tx = tally;
    tx.send_data(chunk("x")).await.unwrap();
    drop(tx);
    response.into_body().collect().await.unwrap();

    // A stream cut on `primary` and continued on `backup`.
    let svc = MetricsLayer::new(recorder.clone()).layer_service(service(
        Arc::clone(&senders),
        200,
        |tally| {
            routed(tally);
            tally.failover("primary".into(), "backup".into(), Phase::AfterFirstToken);
            tally.provider("backup".into(), "gpt-4o-b".into());
        },
    ));
    let response = svc.oneshot(Request::new(())).await.unwrap();
    drop(senders.lock().unwrap().remove(0));
    response.into_body().collect().await.unwrap();

    let text = render(&recorder);
    assert!(text.contains(r#"weir_failovers_total{route="gpt-4o",from="flaky",to="primary",phase="before_first_token"} 1"#), "{text}");
    assert!(text.contains(r#"weir_failovers_total{route="gpt-4o",from="primary",to="backup",phase="after_first_token"} 1"#), "{text}");
    assert!(text.contains(r#"weir_requests_total{route="gpt-4o",provider="backup",model="gpt-4o-b",status="200",outcome="rescued"} 1"#), "{text}");
    assert_eq!(
        sample(&text, &format!("weir_retries_total{{{LABELS}}}")),
        Some(1.0)
    );
    // The rescued stream opened on `primary` and closed on `backup`: no gauge left behind.
    assert_eq!(
        sample(&text, &format!("weir_active_streams{{{LABELS}}}")),
        Some(0.0)
    );
}

/// Collects the access log's JSON lines.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn one_access_log_line_per_exchange() {
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let recorder = Arc::new(PrometheusRecorder::new());
    let senders: Arc<Mutex<Vec<Sender>>> = Arc::default();
    let svc = MetricsLayer::new(recorder)
        .access_log(true)
        .spans(true)
        .layer_service(service(Arc::clone(&senders), 200, routed));
    let mut request = Request::new(());
    request.headers_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    let response = svc.oneshot(request).await.unwrap();
    let mut tx = senders.lock().unwrap().remove(0);
    tx.send_data(chunk("x")).await.unwrap();
    tx.send_data(Bytes::from_static(FINISH.as_bytes()))
        .await
        .unwrap();
    drop(tx);
    response.into_body().collect().await.unwrap();

    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let access: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["target"] == "weir::access")
        .collect();
    assert_eq!(access.len(), 1, "{text}");
    let line = &access[0];
    assert_eq!(line["request_id"], "req-1");
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(line["route"], "gpt-4o");
    assert_eq!(line["provider"], "primary");
    assert_eq!(line["status"], 200);
    assert_eq!(line["outcome"], "ok");
    assert_eq!(line["attempts"], 1);
    assert_eq!(line["tokens_out"], 2);
    assert_eq!(line["finish_reason"], "length");
    assert!(line["ttft_ms"].as_f64().unwrap() > 0.0);
}

trait LayerService {
    fn layer_service<S>(&self, inner: S) -> crate::Metrics<S, PrometheusRecorder>;
}

impl LayerService for MetricsLayer<PrometheusRecorder> {
    fn layer_service<S>(&self, inner: S) -> crate::Metrics<S, PrometheusRecorder> {
        tower_layer::Layer::layer(self, inner)
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_that_says_it_ended_is_complete_without_another_poll() {
    // hyper stops polling once `is_end_stream` is true: a one-frame answer whose client never
    // reads further is complete, not cancelled.
    let recorder = Arc::new(PrometheusRecorder::new());
    let svc = MetricsLayer::new(recorder.clone()).layer_service(tower::service_fn(
        |_: Request<()>| async {
            let mut response = Response::new(http_body_util::Full::new(Bytes::from_static(
                br#"{"error":{"message":"no such model"}}"#,
            )));
            *response.status_mut() = http::StatusCode::NOT_FOUND;
            Ok::<_, std::convert::Infallible>(response)
        },
    ));
    let response = svc.oneshot(Request::new(())).await.unwrap();
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    assert!(http_body::Body::is_end_stream(&body));
    drop(body);
    let text = render(&recorder);
    assert_eq!(
        sample(
            &text,
            r#"weir_requests_total{route="",provider="",model="",status="404",outcome="client_error"}"#
        ),
        Some(1.0),
        "{text}"
    );
}
