//! Honest streams at any cut point. A hostile primary (`weir_test::raw`) writes a short
//! streamed answer byte for byte, chunk framing included, and ends it at every byte offset of
//! the wire (inside the head, a chunk-size line, a `data:` line, a multi-byte character, the
//! blank line of an event, after `[DONE]`), by a clean close and by a reset. A healthy mock is
//! the route's second target. Whatever the cut, the client gets either exactly the whole
//! answer (one id, `[DONE]`, a clean end) or, when nothing can continue it, the whole events
//! it already had, one parseable error event and a broken body. Never a spliced line.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use weir_llm::sse::SseDecoder;
use weir_test::raw::{chat_answer, sse_response, End, RawUpstream};
use weir_test::script::word_token;
use weir_test::MockUpstream;

/// Tokens with a multi-byte character in each, so that some cuts fall inside one.
const WORD: &str = "wörld";
const CHUNKS: u32 = 3;

fn tokens() -> Vec<String> {
    (0..CHUNKS).map(|i| word_token(WORD, i)).collect()
}

fn answer() -> String {
    tokens().concat()
}

struct Setup {
    primary: RawUpstream,
    backup: MockUpstream,
    weir: weir::Running,
    wire: Vec<u8>,
}

/// weir over the raw primary and a mock backup whose continuation is `continuation`. The
/// primary's breaker is off and the retry budget generous, so that every request meets the
/// cut (these are the matrix's conditions, not defaults).
async fn setup(continuation: &str) -> Setup {
    let wire = sse_response(&chat_answer("chatcmpl-primary", "m", &tokens(), None));
    let primary = RawUpstream::start(wire.clone(), End::Whole).await;
    let backup = MockUpstream::start().await;
    let weir = weir_e2e::weir_with(&[
        weir_e2e::provider(
            "primary",
            &primary.base_url(),
            "breaker = { consecutive_failures = 0, error_rate = 0 }",
        ),
        weir_e2e::provider("backup", &backup.base_url(), ""),
        weir_e2e::route(
            "gpt-test",
            &format!(
                r#"[{{ provider = "primary", model = "m" }},
           {{ provider = "backup", model = "m@chunks={CHUNKS},word={WORD}", continuation = "{continuation}" }}]"#
            ),
            "retry_budget = { ratio = 10, per_second = 1000 }",
        ),
    ])
    .await;
    Setup {
        primary,
        backup,
        weir,
        wire,
    }
}

/// What a client received: every byte, and whether the body ended cleanly.
struct Got {
    status: u16,
    bytes: Bytes,
    broken: bool,
}

impl Got {
    /// The events' data, checking that the bytes hold whole events only and that each is
    /// JSON (or `[DONE]`): a spliced line would be neither.
    fn events(&self, what: &str) -> Vec<serde_json::Value> {
        let mut decoder = SseDecoder::new();
        decoder.push(self.bytes.clone());
        let mut out = Vec::new();
        while let Some(e) = decoder.next_event().unwrap() {
            let data = e.data_str();
            if data == "[DONE]" {
                out.push(serde_json::Value::String("[DONE]".into()));
                continue;
            }
            let value = serde_json::from_str(&data).unwrap_or_else(|_| {
                panic!("{what}: an unreadable event reached the client: {data:?}")
            });
            out.push(value);
        }
        assert!(
            !decoder.has_partial_event(),
            "{what}: half an event reached the client: {:?}",
            String::from_utf8_lossy(&self.bytes)
        );
        out
    }
}

fn text(events: &[serde_json::Value]) -> String {
    events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect()
}

async fn ask(weir: &weir::Running) -> Got {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::post(format!("http://{}/v1/chat/completions", weir.addr()))
        .body(Full::new(Bytes::from_static(
            br#"{"model":"gpt-test","stream":true,"messages":[]}"#,
        )))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let read = weir_e2e::read(response).await;
    Got {
        status,
        bytes: read.bytes,
        broken: read.error.is_some(),
    }
}

/// A way to end an answer at a byte offset, by name.
type Ending = (&'static str, fn(usize) -> End);

fn ends() -> [Ending; 2] {
    [("close", End::CloseAt), ("reset", End::ResetAt)]
}

/// Where the finish chunk has fully arrived: a cut from there on leaves a complete answer
/// (the client asked for no usage), which weir ends with the `[DONE]` the upstream left out.
fn done_at(wire: &[u8]) -> usize {
    let finish = wire
        .windows(b"\"finish_reason\":\"stop\"".len())
        .position(|w| w == b"\"finish_reason\":\"stop\"")
        .unwrap();
    finish
        + wire[finish..]
            .windows(2)
            .position(|w| w == b"\n\n")
            .unwrap()
        + 2
}

/// The whole answer, exactly once, under one id, ended by `[DONE]` and a clean end.
fn assert_whole(got: &Got, what: &str) {
    assert_eq!(got.status, 200, "{what}");
    let events = got.events(what);
    assert_eq!(text(&events), answer(), "{what}: the text the client got");
    assert_eq!(
        events.last().and_then(|e| e.as_str()),
        Some("[DONE]"),
        "{what}"
    );
    let ids: Vec<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "{what}: one id: {ids:?}"
    );
    assert!(!events.iter().any(|e| e.get("error").is_some()), "{what}");
    assert!(!got.broken, "{what}: the body ends cleanly");
}

async fn matrix(continuation: &str) {
    let s = setup(continuation).await;
    let done = done_at(&s.wire);
    let mut rescued = 0;
    for (name, end) in ends() {
        for cut in 0..=s.wire.len() {
            let what = format!("{continuation}, {name} at byte {cut} of {}", s.wire.len());
            s.primary.set_end(end(cut));
            let asked_backup = s.backup.requests().len();
            let got = ask(&s.weir).await;
            assert_whole(&got, &what);
            let backup_calls = s.backup.requests().len() - asked_backup;
            if cut >= done {
                assert_eq!(backup_calls, 0, "{what}: the primary's answer was complete");
            } else {
                assert_eq!(backup_calls, 1, "{what}: one continuation or failover");
                rescued += 1;
            }
        }
    }
    assert!(rescued > 2 * (done - 300), "most cuts needed the backup");
}

#[tokio::test(start_paused = true)]
async fn every_cut_is_continued_into_the_whole_answer_by_replay() {
    matrix("replay").await;
}

#[tokio::test(start_paused = true)]
async fn every_cut_is_continued_into_the_whole_answer_by_prefill() {
    matrix("prefill").await;
    // A prefill carries exactly the whole events the client had, as the assistant's text.
}

#[tokio::test(start_paused = true)]
async fn a_prefill_sends_what_the_client_has() {
    let s = setup("prefill").await;
    // Cut inside the third content event: the client has the first two.
    let second = s
        .wire
        .windows(word_token(WORD, 2).len())
        .position(|w| w == word_token(WORD, 2).as_bytes())
        .unwrap();
    s.primary.set_end(End::ResetAt(second + 2));
    let got = ask(&s.weir).await;
    assert_whole(&got, "prefill after two tokens");
    let sent: serde_json::Value = serde_json::from_slice(&s.backup.requests()[0].body).unwrap();
    assert_eq!(
        sent["messages"],
        serde_json::json!([{"role": "assistant", "content": tokens()[..2].concat()}])
    );
}

#[tokio::test(start_paused = true)]
async fn with_nothing_to_continue_every_cut_is_an_honest_error() {
    let s = setup("none").await;
    let done = done_at(&s.wire);
    let mut told = 0;
    for (name, end) in ends() {
        for cut in 0..=s.wire.len() {
            let what = format!("no continuation, {name} at byte {cut}");
            s.primary.set_end(end(cut));
            let got = ask(&s.weir).await;
            if !got.broken {
                // Cut before the first token (failed over), or after [DONE].
                assert_whole(&got, &what);
                continue;
            }
            assert!(cut < done, "{what}");
            told += 1;
            let events = got.events(&what);
            let (last, before) = events.split_last().unwrap();
            assert_eq!(
                last["error"]["code"], "stream_broken",
                "{what}: one error event, last"
            );
            assert!(
                last["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("ended the stream before the answer was complete"),
                "{what}"
            );
            assert!(before.iter().all(|e| e.get("error").is_none()), "{what}");
            assert!(
                answer().starts_with(&text(before)),
                "{what}: whole tokens, in order"
            );
            assert!(
                !events.iter().any(|e| e == "[DONE]"),
                "{what}: never [DONE] after a cut"
            );
        }
    }
    assert!(told > 100, "most cuts came after the first token: {told}");
    assert!(
        s.backup.requests().len() < 2 * s.wire.len(),
        "the backup was asked only before the first token"
    );
}
