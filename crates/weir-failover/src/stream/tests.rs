use super::*;
use http_body_util::BodyExt;
use std::collections::VecDeque;
use std::sync::Mutex;
use weir_llm::stream::ChatWatch;

/// What a scripted upstream body does next.
enum Step {
    Data(&'static str),
    Fail,
    /// Nothing more, ever (a silent upstream).
    Silence,
}

/// A body that plays its steps, then ends cleanly.
struct Scripted(VecDeque<Step>);

impl Body for Scripted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.0.pop_front() {
            None => Poll::Ready(None),
            Some(Step::Data(d)) => {
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(d.as_bytes())))))
            }
            Some(Step::Fail) => Poll::Ready(Some(Err("reset".into()))),
            Some(Step::Silence) => {
                self.0.push_front(Step::Silence);
                Poll::Pending
            }
        }
    }
}

const ONE: &str =
    "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"a\"},\"finish_reason\":null}]}\n\n";
const FINISH: &str =
    "data: {\"id\":\"c\",\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
const DONE: &str = "data: [DONE]\n\n";

type Ends = Arc<Mutex<Vec<Ended>>>;

fn body(
    steps: Vec<Step>,
    max_event: usize,
) -> (
    StreamBody<Scripted, ChatWatch, impl OnEnd<ChatWatch> + Unpin>,
    Ends,
) {
    let ends: Ends = Arc::default();
    let heard = ends.clone();
    let attempt = Attempt::new("up".into(), Duration::from_secs(30))
        .on_end(move |how| heard.lock().unwrap().push(how));
    let body = StreamBody::new(
        Scripted(steps.into()),
        None,
        ChatWatch::new(max_event),
        attempt,
    );
    (body, ends)
}

/// Reads to the end: the bytes, and the error the body ended with, if any.
async fn read_all<B: Body<Data = Bytes> + Unpin>(mut body: B) -> (String, Option<String>)
where
    B::Error: std::fmt::Display,
{
    let mut text = String::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => text.push_str(std::str::from_utf8(&frame.into_data().unwrap()).unwrap()),
            Err(e) => return (text, Some(e.to_string())),
        }
    }
    (text, None)
}

#[tokio::test(start_paused = true)]
async fn a_silent_stream_is_cut_at_the_idle_timeout_and_the_client_told() {
    let (body, ends) = body(vec![Step::Data(ONE), Step::Silence], 1 << 20);
    let started = Instant::now();
    let (text, error) = read_all(body).await;
    assert_eq!(started.elapsed(), Duration::from_secs(30));
    assert!(text.starts_with(ONE));
    let told = &text[ONE.len()..];
    assert!(
        told.starts_with("data: {\"error\"") && told.contains("stream_stalled"),
        "{told}"
    );
    assert!(told.contains("stopped sending for 30s"));
    assert!(error.unwrap().contains("stream_stalled"));
    assert_eq!(
        *ends.lock().unwrap(),
        [Ended::Failed(Failure::StreamStalled)]
    );
}

#[tokio::test(start_paused = true)]
async fn after_done_the_body_ends_at_once() {
    let (mut body, ends) = body(
        vec![Step::Data(ONE), Step::Data(DONE), Step::Silence],
        1 << 20,
    );
    let started = Instant::now();
    let mut text = String::new();
    while let Some(frame) = body.frame().await {
        text.push_str(std::str::from_utf8(&frame.unwrap().into_data().unwrap()).unwrap());
        if text.ends_with(DONE) {
            assert!(body.is_end_stream(), "the [DONE] frame is the last");
        }
    }
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(text, format!("{ONE}{DONE}"));
    assert_eq!(*ends.lock().unwrap(), [Ended::Complete]);
}

#[tokio::test(start_paused = true)]
async fn a_finished_answer_cut_before_done_is_finished_cleanly() {
    for last in [Step::Fail, Step::Silence] {
        let (body, ends) = body(vec![Step::Data(ONE), Step::Data(FINISH), last], 1 << 20);
        let (text, error) = read_all(body).await;
        assert_eq!(text, format!("{ONE}{FINISH}{DONE}"));
        assert_eq!(error, None);
        assert_eq!(*ends.lock().unwrap(), [Ended::Complete]);
    }
}

#[tokio::test(start_paused = true)]
async fn a_cut_inside_an_event_forwards_only_whole_ones() {
    let (body, ends) = body(
        vec![
            Step::Data(ONE),
            Step::Data("data: {\"id\":\"c\",\"cho"),
            Step::Fail,
        ],
        1 << 20,
    );
    let (text, error) = read_all(body).await;
    let (sent, told) = text.split_at(ONE.len());
    assert_eq!(sent, ONE);
    assert!(told.starts_with("data: {\"error\"") && told.ends_with("\n\n"));
    assert_eq!(
        told.matches("data:").count(),
        1,
        "one error event, not glued to anything"
    );
    assert!(error.is_some());
    assert_eq!(
        *ends.lock().unwrap(),
        [Ended::Failed(Failure::StreamBroken)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_clean_end_without_a_finish_is_a_truncation() {
    let (body, _) = body(vec![Step::Data(ONE)], 1 << 20);
    let (text, error) = read_all(body).await;
    assert!(text.contains("ended the stream before the answer was complete"));
    assert!(error.unwrap().contains("stream_broken"));
}

#[tokio::test(start_paused = true)]
async fn an_event_over_the_bound_fails_the_stream() {
    let long: &'static str = Box::leak(format!("data: {}", "x".repeat(2000)).into_boxed_str());
    let (body, ends) = body(vec![Step::Data(ONE), Step::Data(long)], 1024);
    let (text, error) = read_all(body).await;
    assert!(text.contains("cannot be read or is too large"));
    assert!(error.unwrap().contains("malformed_event"));
    assert_eq!(
        *ends.lock().unwrap(),
        [Ended::Failed(Failure::MalformedEvent)]
    );
}

#[tokio::test(start_paused = true)]
async fn the_providers_own_error_event_is_not_repeated() {
    let (body, ends) = body(
        vec![
            Step::Data(ONE),
            Step::Data("data: {\"error\":{\"message\":\"boom\"}}\n\n"),
        ],
        1 << 20,
    );
    let (text, error) = read_all(body).await;
    assert_eq!(text.matches("\"error\"").count(), 1);
    assert!(error.is_some(), "and the body still fails");
    assert_eq!(
        *ends.lock().unwrap(),
        [Ended::Failed(Failure::StreamBroken)]
    );
}
