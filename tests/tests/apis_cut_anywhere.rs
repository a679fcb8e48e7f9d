//! Honest streams at any cut point, for the Responses and Messages APIs: the byte-offset
//! matrix of `cut_anywhere.rs`. A hostile primary (`weir_test::raw`) writes a short streamed
//! answer in the API's own events, chunk framing included, and ends it at every byte offset
//! (a clean close and a reset); a healthy mock speaking the same API is the route's second
//! target. Whatever the cut, the client gets exactly the whole answer (one response or
//! message, one unbroken sequence, the end event, a clean end) or, when nothing can continue
//! it, the whole events it had, one error event in the API's shape, and a broken body.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use weir_llm::sse::SseDecoder;
use weir_test::raw::{sse_response, End, RawUpstream};
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    Responses,
    Messages,
}

impl Api {
    fn path(self) -> &'static str {
        match self {
            Api::Responses => "/v1/responses",
            Api::Messages => "/v1/messages",
        }
    }

    fn body(self) -> &'static [u8] {
        match self {
            // Not stored: a replay elsewhere may stand in for it.
            Api::Responses => br#"{"model":"gpt-test","stream":true,"store":false,"input":"hi"}"#,
            Api::Messages => {
                br#"{"model":"gpt-test","stream":true,"max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#
            }
        }
    }

    /// The end event's type.
    fn end(self) -> &'static str {
        match self {
            Api::Responses => "response.completed",
            Api::Messages => "message_stop",
        }
    }

    /// The text of the client's events.
    fn text(self, events: &[(String, serde_json::Value)]) -> String {
        events
            .iter()
            .filter_map(|(name, data)| match (self, name.as_str()) {
                (Api::Responses, "response.output_text.delta") => data["delta"].as_str(),
                (Api::Messages, "content_block_delta") => data["delta"]["text"].as_str(),
                _ => None,
            })
            .collect()
    }
}

fn event(name: &str, data: serde_json::Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// The primary's answer, one event per chunk.
fn primary_events(api: Api) -> Vec<String> {
    let tokens = tokens();
    let text = answer();
    match api {
        Api::Responses => {
            let mut seq = 0u64;
            let mut e = |name: &str, mut data: serde_json::Value| {
                data["type"] = name.into();
                data["sequence_number"] = seq.into();
                seq += 1;
                event(name, data)
            };
            let response = |status: &str| serde_json::json!({"id":"resp_primary","object":"response","created_at":1700000000,"status":status,"model":"m","output":[],"usage":null});
            let mut out = vec![
                e(
                    "response.created",
                    serde_json::json!({"response": response("in_progress")}),
                ),
                e(
                    "response.in_progress",
                    serde_json::json!({"response": response("in_progress")}),
                ),
                e(
                    "response.output_item.added",
                    serde_json::json!({"output_index":0,"item":{"id":"msg_primary","type":"message","status":"in_progress","content":[],"role":"assistant"}}),
                ),
                e(
                    "response.content_part.added",
                    serde_json::json!({"item_id":"msg_primary","output_index":0,"content_index":0,"part":{"type":"output_text","annotations":[],"text":""}}),
                ),
            ];
            for t in &tokens {
                out.push(e("response.output_text.delta", serde_json::json!({"item_id":"msg_primary","output_index":0,"content_index":0,"delta":t,"logprobs":[]})));
            }
            out.push(e("response.output_text.done", serde_json::json!({"item_id":"msg_primary","output_index":0,"content_index":0,"text":text})));
            out.push(e("response.content_part.done", serde_json::json!({"item_id":"msg_primary","output_index":0,"content_index":0,"part":{"type":"output_text","annotations":[],"text":text}})));
            let item = serde_json::json!({"id":"msg_primary","type":"message","status":"completed","content":[{"type":"output_text","annotations":[],"text":text}],"role":"assistant"});
            out.push(e(
                "response.output_item.done",
                serde_json::json!({"output_index":0,"item":item.clone()}),
            ));
            let mut done = response("completed");
            done["output"] = serde_json::json!([item]);
            done["usage"] = serde_json::json!({"input_tokens":5,"input_tokens_details":{"cached_tokens":0},"output_tokens":CHUNKS,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":5 + CHUNKS});
            out.push(e(
                "response.completed",
                serde_json::json!({"response": done}),
            ));
            out
        }
        Api::Messages => {
            let mut out = vec![
                event(
                    "message_start",
                    serde_json::json!({"type":"message_start","message":{"id":"msg_primary","type":"message","role":"assistant","content":[],"model":"m","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":1}}}),
                ),
                event(
                    "content_block_start",
                    serde_json::json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
                ),
                "event: ping\ndata: {\"type\": \"ping\"}\n\n".to_owned(),
            ];
            for t in &tokens {
                out.push(event("content_block_delta", serde_json::json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":t}})));
            }
            out.push(event(
                "content_block_stop",
                serde_json::json!({"type":"content_block_stop","index":0}),
            ));
            out.push(event("message_delta", serde_json::json!({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":CHUNKS}})));
            out.push(event(
                "message_stop",
                serde_json::json!({"type":"message_stop"}),
            ));
            out
        }
    }
}

struct Setup {
    api: Api,
    primary: RawUpstream,
    backup: MockUpstream,
    weir: weir::Running,
    wire: Vec<u8>,
}

/// weir over the raw primary and a mock backup of `api`, continuing by `continuation`. The
/// primary's breaker is off and the retry budget generous, so that every request meets the
/// cut (the matrix's conditions, not defaults).
async fn setup(api: Api, continuation: &str) -> Setup {
    let wire = sse_response(&primary_events(api));
    let primary = RawUpstream::start(wire.clone(), End::Whole).await;
    let backup = MockUpstream::start().await;
    let kind = match api {
        Api::Responses => "",
        Api::Messages => "api = \"anthropic\"\n",
    };
    let weir = weir_e2e::weir_with(&[
        weir_e2e::provider(
            "primary",
            &primary.base_url(),
            &format!("{kind}breaker = {{ consecutive_failures = 0, error_rate = 0 }}"),
        ),
        weir_e2e::provider("backup", &backup.base_url(), kind),
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
        api,
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
    /// The events (type, data), checking that the bytes hold whole events only and that each
    /// is JSON: a spliced line would be neither.
    fn events(&self, what: &str) -> Vec<(String, serde_json::Value)> {
        let mut decoder = SseDecoder::new();
        decoder.push(self.bytes.clone());
        let mut out = Vec::new();
        while let Some(e) = decoder.next_event().unwrap() {
            let name = String::from_utf8_lossy(e.event.as_deref().unwrap_or_default()).into_owned();
            let data = e.data_str();
            let value: serde_json::Value = serde_json::from_str(&data).unwrap_or_else(|_| {
                panic!("{what}: an unreadable event reached the client: {data:?}")
            });
            assert_eq!(value["type"], name, "{what}: the event's name is its type");
            out.push((name, value));
        }
        assert!(
            !decoder.has_partial_event(),
            "{what}: half an event reached the client: {:?}",
            String::from_utf8_lossy(&self.bytes)
        );
        out
    }
}

async fn ask(s: &Setup) -> Got {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::post(format!("http://{}{}", s.weir.addr(), s.api.path()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(s.api.body())))
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

/// Where the answer is complete: after `response.completed` (Responses), after the
/// `message_delta` with its stop reason (Messages: weir adds the `message_stop` left out).
fn done_at(api: Api, wire: &[u8]) -> usize {
    let marker: &[u8] = match api {
        Api::Responses => b"event: response.completed",
        Api::Messages => b"event: message_delta",
    };
    let at = wire
        .windows(marker.len())
        .position(|w| w == marker)
        .unwrap();
    at + wire[at..].windows(2).position(|w| w == b"\n\n").unwrap() + 2
}

/// Responses: the client's events are numbered 0, 1, 2... whatever was spliced or told.
fn assert_one_sequence(events: &[(String, serde_json::Value)], what: &str) {
    let sequence: Vec<u64> = events
        .iter()
        .map(|(_, d)| d["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(
        sequence,
        (0..sequence.len() as u64).collect::<Vec<_>>(),
        "{what}: one unbroken sequence"
    );
}

/// The whole answer, exactly once, as one response or message, ended properly and cleanly.
fn assert_whole(s: &Setup, got: &Got, what: &str) {
    assert_eq!(got.status, 200, "{what}");
    let events = got.events(what);
    assert_eq!(
        s.api.text(&events),
        answer(),
        "{what}: the text the client got"
    );
    assert_eq!(
        events.last().map(|(n, _)| n.as_str()),
        Some(s.api.end()),
        "{what}: {events:?}"
    );
    assert!(!events.iter().any(|(n, _)| n == "error"), "{what}");
    assert!(!got.broken, "{what}: the body ends cleanly");
    match s.api {
        Api::Responses => {
            assert_one_sequence(&events, what);
            let created = events
                .iter()
                .filter(|(n, _)| n == "response.created")
                .count();
            assert_eq!(created, 1, "{what}");
            let id = &events[0].1["response"]["id"];
            assert_eq!(
                &events.last().unwrap().1["response"]["id"],
                id,
                "{what}: one response"
            );
            let items: Vec<&serde_json::Value> = events
                .iter()
                .filter_map(|(_, d)| d.get("item_id"))
                .collect();
            assert!(
                items.iter().all(|i| *i == items[0]),
                "{what}: one item: {items:?}"
            );
            let done = &events.last().unwrap().1["response"];
            assert_eq!(done["output"][0]["content"][0]["text"], answer(), "{what}");
        }
        Api::Messages => {
            let starts = events
                .iter()
                .filter(|(n, _)| n == "message_start" || n == "content_block_start")
                .count();
            assert_eq!(starts, 2, "{what}: one message, one block");
            let stops = events
                .iter()
                .filter(|(n, _)| n == "content_block_stop")
                .count();
            assert_eq!(stops, 1, "{what}");
        }
    }
}

type Ending = (&'static str, fn(usize) -> End);

fn ends() -> [Ending; 2] {
    [("close", End::CloseAt), ("reset", End::ResetAt)]
}

async fn matrix(api: Api, continuation: &str) {
    let s = setup(api, continuation).await;
    let done = done_at(api, &s.wire);
    let mut rescued = 0;
    for (name, end) in ends() {
        for cut in 0..=s.wire.len() {
            let what = format!(
                "{api:?} {continuation}, {name} at byte {cut} of {}",
                s.wire.len()
            );
            s.primary.set_end(end(cut));
            let asked_backup = s.backup.requests().len();
            let got = ask(&s).await;
            assert_whole(&s, &got, &what);
            let backup_calls = s.backup.requests().len() - asked_backup;
            if cut >= done {
                assert_eq!(backup_calls, 0, "{what}: the primary's answer was complete");
            } else {
                assert_eq!(backup_calls, 1, "{what}: one continuation or failover");
                rescued += 1;
            }
        }
    }
    assert!(rescued > done, "most cuts needed the backup");
}

#[tokio::test(start_paused = true)]
async fn every_responses_cut_is_continued_into_the_whole_answer_by_replay() {
    matrix(Api::Responses, "replay").await;
}

#[tokio::test(start_paused = true)]
async fn every_messages_cut_is_continued_into_the_whole_answer_by_prefill() {
    matrix(Api::Messages, "prefill").await;
}

#[tokio::test(start_paused = true)]
async fn every_messages_cut_is_continued_into_the_whole_answer_by_replay() {
    matrix(Api::Messages, "replay").await;
}

async fn honest(api: Api) {
    let s = setup(api, "none").await;
    let done = done_at(api, &s.wire);
    let mut told = 0;
    for (name, end) in ends() {
        for cut in 0..=s.wire.len() {
            let what = format!("{api:?} no continuation, {name} at byte {cut}");
            s.primary.set_end(end(cut));
            let got = ask(&s).await;
            if !got.broken {
                // Cut before the first output (failed over), or after the answer was whole.
                assert_whole(&s, &got, &what);
                continue;
            }
            assert!(cut < done, "{what}");
            told += 1;
            let events = got.events(&what);
            let ((last, error), before) = events.split_last().unwrap();
            assert_eq!(last, "error", "{what}: one error event, last");
            let message = match api {
                Api::Responses => {
                    assert_eq!(error["code"], "stream_broken", "{what}");
                    assert_one_sequence(&events, &what);
                    error["message"].as_str().unwrap()
                }
                Api::Messages => {
                    assert_eq!(error["error"]["type"], "api_error", "{what}");
                    error["error"]["message"].as_str().unwrap()
                }
            };
            assert!(
                message.contains("ended the stream before the answer was complete"),
                "{what}: {message}"
            );
            assert!(
                before.iter().all(|(n, _)| n != "error" && n != api.end()),
                "{what}: never an end after a cut"
            );
            assert!(
                answer().starts_with(&api.text(before)),
                "{what}: whole tokens, in order"
            );
        }
    }
    assert!(
        told > 2 * (done - 800).min(done / 2),
        "most cuts were told: {told}"
    );
}

#[tokio::test(start_paused = true)]
async fn with_nothing_to_continue_every_responses_cut_is_an_honest_error() {
    honest(Api::Responses).await;
}

#[tokio::test(start_paused = true)]
async fn with_nothing_to_continue_every_messages_cut_is_an_honest_error() {
    honest(Api::Messages).await;
}

#[tokio::test(start_paused = true)]
async fn a_stored_response_is_not_replayed_elsewhere() {
    // `store` defaults to true: the response lives at the primary, so a replay elsewhere
    // would be another response. The cut is told honestly instead.
    let s = setup(Api::Responses, "replay").await;
    // Inside the second delta: the client has the first.
    let deltas: Vec<usize> = (0..s.wire.len() - 7)
        .filter(|&i| &s.wire[i..i + 8] == b"\"delta\":")
        .collect();
    s.primary.set_end(End::ResetAt(deltas[1] + 3));
    let client = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::post(format!("http://{}/v1/responses", s.weir.addr()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"gpt-test","stream":true,"input":"hi"}"#,
        )))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let read = weir_e2e::read(response).await;
    assert!(read.error.is_some(), "a broken body");
    let got = Got {
        status: 200,
        bytes: read.bytes,
        broken: true,
    };
    let events = got.events("stored");
    assert_eq!(events.last().unwrap().0, "error");
    assert_eq!(
        s.backup.requests().len(),
        0,
        "no replay of a stored response"
    );
}
