//! The Responses and Messages shapes, end to end over a socket (HTTP/1.1, chunked bodies decoded
//! here, so that a clean end and a cut are told apart).

use crate::{script, MockConfig, MockUpstream};
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One answer as read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
    /// The chunked body ended with its terminating chunk.
    complete: bool,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The SSE events: `(event name, data)`.
    fn events(&self) -> Vec<(Option<String>, String)> {
        self.body
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|event| {
                let mut name = None;
                let mut data = String::new();
                for line in event.lines() {
                    if let Some(n) = line.strip_prefix("event: ") {
                        name = Some(n.to_owned());
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data = d.to_owned();
                    } else if !line.starts_with(':') {
                        panic!("unexpected SSE line {line:?}");
                    }
                }
                (name, data)
            })
            .collect()
    }

    /// The events' data, parsed, checking each event's name is its data's `type`.
    fn typed(&self) -> Vec<Value> {
        self.events()
            .into_iter()
            .map(|(name, data)| {
                let value: Value =
                    serde_json::from_str(&data).unwrap_or_else(|e| panic!("{e}: {data}"));
                assert_eq!(name.as_deref(), value["type"].as_str(), "{data}");
                value
            })
            .collect()
    }
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// Sends one request and reads the answer to its end (or its cut).
async fn call(
    mock: &MockUpstream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut stream = TcpStream::connect(mock.addr()).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: mock\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("content-type: application/json\r\n");
    }
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    });
    read.await.expect("the answer ends");
    decode(&raw)
}

fn decode(raw: &[u8]) -> Answer {
    let text = String::from_utf8(raw.to_vec()).expect("utf-8 answers");
    let (head, mut rest) = text.split_once("\r\n\r\n").expect("a whole head");
    let status = head[9..12].parse().unwrap();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    if !chunked {
        return Answer {
            status,
            head: head.to_owned(),
            body: rest.to_owned(),
            complete: true,
        };
    }
    let mut body = String::new();
    let mut complete = false;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        if size == 0 {
            complete = after.starts_with("\r\n");
            break;
        }
        if after.len() < size + 2 {
            break;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    Answer {
        status,
        head: head.to_owned(),
        body,
        complete,
    }
}

const ANTHROPIC: (&str, &str) = ("anthropic-version", "2023-06-01");

async fn responses(mock: &MockUpstream, directives: &str, body: &str) -> Answer {
    call(
        mock,
        "POST",
        "/v1/responses",
        &[("x-mock", directives)],
        body,
    )
    .await
}

async fn messages(mock: &MockUpstream, directives: &str, body: &str) -> Answer {
    call(
        mock,
        "POST",
        "/v1/messages",
        &[("x-mock", directives), ANTHROPIC],
        body,
    )
    .await
}

const RESPONSES_STREAM: &str = r#"{"model":"gpt-test","input":"Say the tokens.","stream":true}"#;
const MESSAGES_STREAM: &str = r#"{"model":"claude-test","max_tokens":100,"messages":[{"role":"user","content":"Say the tokens."}],"stream":true}"#;

fn prompt(body: &str) -> u64 {
    (body.len() / 4) as u64
}

#[tokio::test]
async fn responses_stream_events() {
    let mock = MockUpstream::start().await;
    let answer = responses(&mock, "chunks=3", RESPONSES_STREAM).await;
    assert_eq!(answer.status, 200);
    assert!(answer.complete);
    assert!(answer.head.contains("text/event-stream"), "{}", answer.head);
    assert!(!answer.body.contains("[DONE]"));
    let events = answer.typed();
    assert_eq!(
        types(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["sequence_number"], i as u64, "{event}");
    }
    // `type` comes first, then `sequence_number`, as OpenAI writes them.
    assert!(answer
        .events()
        .iter()
        .all(|(_, d)| d.starts_with(r#"{"type":"#) && d.contains(r#"","sequence_number":"#)));
    let created = &events[0]["response"];
    assert_eq!(created["status"], "in_progress");
    assert_eq!(created["output"], serde_json::json!([]));
    assert!(created["usage"].is_null());
    assert_eq!(created["model"], "gpt-test");
    assert_eq!(created["parallel_tool_calls"], true);
    assert_eq!(created["tool_choice"], "auto");
    let id = created["id"].as_str().unwrap();
    assert!(id.starts_with("resp_mock_"));
    let deltas: String = events[4..7]
        .iter()
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, script::answer(3));
    assert_eq!(events[7]["text"], script::answer(3));
    assert_eq!(events[9]["item"]["status"], "completed");
    assert_eq!(events[9]["item"]["content"][0]["text"], script::answer(3));
    let done = &events[10]["response"];
    assert_eq!(done["id"], id);
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0], events[9]["item"]);
    let p = prompt(RESPONSES_STREAM);
    assert_eq!(
        done["usage"],
        serde_json::json!({"input_tokens":p,"input_tokens_details":{"cached_tokens":0},"output_tokens":3,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":p+3})
    );
}

#[tokio::test]
async fn responses_whole_retrieve_delete() {
    let mock = MockUpstream::start().await;
    let body = r#"{"model":"gpt-test","input":[{"role":"user","content":"Hi"}],"instructions":"Be brief.","max_output_tokens":4,"store":false,"tools":[{"type":"function","name":"f","parameters":{}}]}"#;
    let answer = responses(&mock, "", body).await;
    assert_eq!(answer.status, 200);
    let response = answer.json();
    assert_eq!(response["object"], "response");
    assert_eq!(response["status"], "completed");
    assert_eq!(response["instructions"], "Be brief.");
    assert_eq!(response["max_output_tokens"], 4);
    assert_eq!(response["store"], false);
    assert_eq!(response["tools"][0]["name"], "f");
    assert_eq!(response["output"][0]["type"], "message");
    assert_eq!(
        response["output"][0]["content"][0]["text"],
        script::answer(4)
    );
    assert_eq!(response["usage"]["output_tokens"], 4);
    assert_eq!(response["usage"]["input_tokens"], prompt(body));

    let got = call(
        &mock,
        "GET",
        "/v1/responses/resp_mock_9",
        &[("x-mock", "chunks=2")],
        "",
    )
    .await;
    assert_eq!(got.status, 200);
    let got = got.json();
    assert_eq!(got["id"], "resp_mock_9");
    assert_eq!(got["status"], "completed");
    assert_eq!(got["output"][0]["content"][0]["text"], script::answer(2));

    let deleted = call(&mock, "DELETE", "/v1/responses/resp_mock_9", &[], "").await;
    assert_eq!(
        deleted.json(),
        serde_json::json!({"id":"resp_mock_9","object":"response","deleted":true})
    );
}

#[tokio::test]
async fn responses_tool_call() {
    let mock = MockUpstream::start().await;
    let answer = responses(&mock, "tool=get_weather,chunks=4", RESPONSES_STREAM).await;
    let events = answer.typed();
    assert_eq!(
        types(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["sequence_number"], i as u64);
    }
    let added = &events[2]["item"];
    assert_eq!(added["type"], "function_call");
    assert_eq!(added["status"], "in_progress");
    assert_eq!(added["arguments"], "");
    assert_eq!(added["name"], "get_weather");
    assert!(added["call_id"].as_str().unwrap().starts_with("call_mock_"));
    assert!(added["id"].as_str().unwrap().starts_with("fc_mock_"));
    let args: String = events[3..7]
        .iter()
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(args, script::TOOL_ARGUMENTS);
    assert_eq!(events[7]["arguments"], script::TOOL_ARGUMENTS);
    let done = &events[9]["response"];
    assert_eq!(done["output"][0]["arguments"], script::TOOL_ARGUMENTS);
    assert_eq!(done["output"][0]["status"], "completed");
    assert_eq!(done["output"][0]["call_id"], added["call_id"]);
    assert_eq!(done["usage"]["output_tokens"], 4);

    let whole = responses(&mock, "tool=get_weather", r#"{"model":"m","input":"x"}"#).await;
    let output = &whole.json()["output"];
    assert_eq!(output[0]["type"], "function_call");
    assert_eq!(output[0]["arguments"], script::TOOL_ARGUMENTS);
}

#[tokio::test]
async fn messages_stream_events() {
    let mock = MockUpstream::start().await;
    let answer = messages(&mock, "chunks=2", MESSAGES_STREAM).await;
    assert_eq!(answer.status, 200);
    assert!(answer.complete);
    let p = prompt(MESSAGES_STREAM);
    let expected = format!(
        concat!(
            "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_mock_0\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-test\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{{\"input_tokens\":{p},\"output_tokens\":1}}}}}}\n\n",
            "event: content_block_start\ndata: {{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{{\"type\":\"text\",\"text\":\"\"}}}}\n\n",
            "event: ping\ndata: {{\"type\": \"ping\"}}\n\n",
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"tok0 \"}}}}\n\n",
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"tok1 \"}}}}\n\n",
            "event: content_block_stop\ndata: {{\"type\":\"content_block_stop\",\"index\":0}}\n\n",
            "event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\",\"stop_sequence\":null}},\"usage\":{{\"output_tokens\":2}}}}\n\n",
            "event: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n",
        ),
        p = p
    );
    assert_eq!(answer.body, expected);
    answer.typed();

    let whole = messages(
        &mock,
        "chunks=3",
        r#"{"model":"claude-test","max_tokens":2,"system":"Be brief.","messages":[{"role":"user","content":"x"}]}"#,
    )
    .await
    .json();
    assert_eq!(whole["type"], "message");
    assert_eq!(whole["content"][0]["text"], script::answer(2));
    assert_eq!(whole["stop_reason"], "end_turn");
    assert_eq!(whole["usage"]["output_tokens"], 2);
}

#[tokio::test]
async fn messages_prefill() {
    let mock = MockUpstream::start().await;
    // A string, then an array of text blocks: the answer continues after them.
    let body = r#"{"model":"m","max_tokens":100,"stream":true,"messages":[{"role":"user","content":"x"},{"role":"assistant","content":"tok0 tok1 tok2"}]}"#;
    let events = messages(&mock, "chunks=5", body).await.typed();
    let text: String = events
        .iter()
        .filter(|e| e["type"] == "content_block_delta")
        .map(|e| e["delta"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, " tok3 tok4 ");
    let delta = events
        .iter()
        .find(|e| e["type"] == "message_delta")
        .unwrap();
    assert_eq!(delta["usage"]["output_tokens"], 3);

    let body = r#"{"model":"m","max_tokens":100,"messages":[{"role":"user","content":"x"},{"role":"assistant","content":[{"type":"text","text":"tok0 "},{"type":"text","text":"to"}]}]}"#;
    let whole = messages(&mock, "chunks=3", body).await.json();
    assert_eq!(whole["content"][0]["text"], "k1 tok2 ");
    assert_eq!(whole["usage"]["output_tokens"], 2);

    // Not a prefix of the answer: the whole answer.
    let body =
        r#"{"model":"m","max_tokens":100,"messages":[{"role":"assistant","content":"hello"}]}"#;
    let whole = messages(&mock, "chunks=2", body).await.json();
    assert_eq!(whole["content"][0]["text"], script::answer(2));
}

#[tokio::test]
async fn messages_tool_use() {
    let mock = MockUpstream::start().await;
    let events = messages(&mock, "tool=get_weather,chunks=3", MESSAGES_STREAM)
        .await
        .typed();
    assert_eq!(
        types(&events),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    let block = &events[1]["content_block"];
    assert_eq!(block["type"], "tool_use");
    assert_eq!(block["name"], "get_weather");
    assert_eq!(block["input"], serde_json::json!({}));
    assert!(block["id"].as_str().unwrap().starts_with("toolu_mock_"));
    let json: String = events[3..6]
        .iter()
        .map(|e| {
            assert_eq!(e["delta"]["type"], "input_json_delta");
            e["delta"]["partial_json"].as_str().unwrap()
        })
        .collect();
    assert_eq!(json, script::TOOL_ARGUMENTS);
    assert_eq!(events[7]["delta"]["stop_reason"], "tool_use");
    assert_eq!(events[7]["usage"]["output_tokens"], 3);

    let whole = messages(
        &mock,
        "tool=get_weather",
        r#"{"model":"m","max_tokens":5,"messages":[]}"#,
    )
    .await
    .json();
    assert_eq!(whole["stop_reason"], "tool_use");
    assert_eq!(whole["content"][0]["type"], "tool_use");
    assert_eq!(
        whole["content"][0]["input"],
        serde_json::json!({"city":"Paris"})
    );
    assert_eq!(whole["usage"]["output_tokens"], 5);
}

#[tokio::test]
async fn messages_count_tokens() {
    let mock = MockUpstream::start().await;
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hello"}]}"#;
    let answer = call(
        &mock,
        "POST",
        "/v1/messages/count_tokens",
        &[ANTHROPIC],
        body,
    )
    .await;
    assert_eq!(
        answer.json(),
        serde_json::json!({"input_tokens": prompt(body)})
    );
}

#[tokio::test]
async fn errors_in_each_shape() {
    let mock = MockUpstream::start().await;
    let body = r#"{"model":"m","max_tokens":5,"messages":[]}"#;
    for (fault, status, kind) in [
        ("429", 429, "rate_limit_error"),
        ("500", 500, "api_error"),
        ("500_once,key=a", 500, "api_error"),
        ("503", 503, "overloaded_error"),
        ("529", 529, "overloaded_error"),
        ("context_length", 400, "invalid_request_error"),
        ("content_policy", 400, "invalid_request_error"),
    ] {
        let answer = messages(&mock, &format!("fault={fault},retry_after=2"), body).await;
        assert_eq!(answer.status, status, "{fault}");
        let error = answer.json();
        assert_eq!(error["type"], "error", "{fault}");
        assert_eq!(error["error"]["type"], kind, "{fault}");
        assert!(error["error"]["message"].is_string());
        if status == 429 {
            assert!(answer.head.to_ascii_lowercase().contains("retry-after: 2"));
        }
    }
    // `500_once` is healthy the second time.
    assert_eq!(
        messages(&mock, "fault=500_once,key=a", body).await.status,
        200
    );
    let overloaded = messages(&mock, "fault=529", body).await;
    assert_eq!(
        overloaded.body,
        r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
    );
    let echo = call(
        &mock,
        "POST",
        "/v1/messages",
        &[
            ("x-mock", "fault=echo_key"),
            ANTHROPIC,
            ("x-api-key", "sk-ant-secret"),
        ],
        body,
    )
    .await;
    assert_eq!(echo.status, 401);
    assert_eq!(echo.json()["error"]["type"], "authentication_error");
    assert!(echo.body.contains("sk-ant-secret"));

    // Responses and Chat are OpenAI-shaped; 529 exists on Chat too.
    let answer = responses(&mock, "fault=429", r#"{"model":"m","input":"x"}"#).await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.json()["error"]["code"], "rate_limit_exceeded");
    let chat = call(
        &mock,
        "POST",
        "/v1/chat/completions",
        &[("x-mock", "fault=529")],
        r#"{"model":"m","messages":[]}"#,
    )
    .await;
    assert_eq!(chat.status, 529);
    assert_eq!(chat.json()["error"]["code"], "overloaded");

    // A missing `anthropic-version`, and a directive typo, Anthropic-shaped.
    let answer = call(&mock, "POST", "/v1/messages", &[], body).await;
    assert_eq!(answer.status, 400);
    assert_eq!(
        answer.body,
        r#"{"type":"error","error":{"type":"invalid_request_error","message":"anthropic-version: header is required"}}"#
    );
    let answer = messages(&mock, "chunk=3", body).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn anthropic_paths_take_x_api_key() {
    let mock = MockUpstream::start_with(MockConfig {
        api_key: Some("k".into()),
        ..MockConfig::default()
    })
    .await;
    let body = r#"{"model":"m","max_tokens":1,"messages":[]}"#;
    let path = "/v1/messages";
    let ok = call(&mock, "POST", path, &[ANTHROPIC, ("x-api-key", "k")], body).await;
    assert_eq!(ok.status, 200);
    // The anthropic SDK (2.x) sends its key as a bearer token.
    let ok = call(
        &mock,
        "POST",
        path,
        &[ANTHROPIC, ("authorization", "Bearer k")],
        body,
    )
    .await;
    assert_eq!(ok.status, 200);
    let bad = call(
        &mock,
        "POST",
        path,
        &[ANTHROPIC, ("x-api-key", "nope")],
        body,
    )
    .await;
    assert_eq!(bad.status, 401);
    assert_eq!(
        bad.body,
        r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#
    );
    let bad = call(&mock, "POST", path, &[ANTHROPIC], body).await;
    assert_eq!(bad.status, 401);
    // The OpenAI paths still want the bearer key, and answer OpenAI-shaped.
    let bad = call(
        &mock,
        "POST",
        "/v1/responses",
        &[("x-api-key", "k")],
        r#"{"model":"m","input":"x"}"#,
    )
    .await;
    assert_eq!(bad.status, 401);
    assert_eq!(bad.json()["error"]["code"], "invalid_api_key");
}

#[tokio::test]
async fn error_events() {
    let mock = MockUpstream::start().await;
    let answer = responses(&mock, "chunks=5,fault=error_event_at:2", RESPONSES_STREAM).await;
    assert!(answer.complete);
    let events = answer.typed();
    assert_eq!(
        types(&events)[4..],
        [
            "response.output_text.delta",
            "response.output_text.delta",
            "error"
        ]
    );
    let error = events.last().unwrap();
    assert_eq!(error["code"], "server_error");
    assert!(error["param"].is_null());
    assert_eq!(error["sequence_number"], 6);

    let answer = messages(&mock, "chunks=5,fault=error_event_at:2", MESSAGES_STREAM).await;
    assert!(answer.complete);
    assert!(answer.body.ends_with(
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"
    ));
    let events = answer.typed();
    assert_eq!(
        types(&events)
            .iter()
            .filter(|t| **t == "content_block_delta")
            .count(),
        2
    );
}

#[tokio::test]
async fn stream_ends() {
    let mock = MockUpstream::start().await;
    // `no_done`: everything but the last event.
    let events = responses(&mock, "chunks=2,fault=no_done", RESPONSES_STREAM)
        .await
        .typed();
    assert_eq!(types(&events).last(), Some(&"response.output_item.done"));
    assert_eq!(events.len(), 9);
    let events = messages(&mock, "chunks=2,fault=no_done", MESSAGES_STREAM)
        .await
        .typed();
    assert_eq!(types(&events).last(), Some(&"message_delta"));

    // `end_after:K`: K deltas after the opening events, a clean end, no closing events.
    let answer = responses(&mock, "chunks=5,fault=end_after:2", RESPONSES_STREAM).await;
    assert!(answer.complete);
    let events = answer.typed();
    assert_eq!(events.len(), 6);
    assert_eq!(types(&events).last(), Some(&"response.output_text.delta"));
    let answer = messages(&mock, "chunks=5,fault=end_after:0", MESSAGES_STREAM).await;
    assert!(answer.complete);
    assert_eq!(
        types(&answer.typed()),
        ["message_start", "content_block_start", "ping"]
    );

    // `reset_after:K`: cut after K deltas, no terminating chunk.
    for answer in [
        responses(&mock, "chunks=5,fault=reset_after:1", RESPONSES_STREAM).await,
        messages(&mock, "chunks=5,fault=reset_after:1", MESSAGES_STREAM).await,
    ] {
        assert!(!answer.complete, "{}", answer.body);
        let deltas = answer
            .typed()
            .iter()
            .filter(|e| e["type"].as_str().unwrap().contains("delta"))
            .count();
        assert_eq!(deltas, 1, "{}", answer.body);
    }
}

#[tokio::test]
async fn malformed_events() {
    let mock = MockUpstream::start().await;
    for answer in [
        responses(&mock, "chunks=3,fault=malformed_at:1", RESPONSES_STREAM).await,
        messages(&mock, "chunks=3,fault=malformed_at:1", MESSAGES_STREAM).await,
    ] {
        let events = answer.events();
        let broken: Vec<_> = events
            .iter()
            .filter(|(_, d)| serde_json::from_str::<Value>(d).is_err())
            .collect();
        assert_eq!(broken.len(), 1, "{}", answer.body);
        // The stream goes on: every chunk still arrives, and it finishes.
        let text: String = events
            .iter()
            .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
            .filter_map(|e| {
                e["delta"]
                    .as_str()
                    .or(e["delta"]["text"].as_str())
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(text, script::answer(3));
        assert!(answer.complete);
    }
    // The broken event takes no sequence number: the others stay continuous.
    let answer = responses(&mock, "chunks=3,fault=malformed_at:1", RESPONSES_STREAM).await;
    let numbers: Vec<u64> = answer
        .events()
        .iter()
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .map(|e| e["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (0..numbers.len() as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn stalls_ping_in_each_shape() {
    let mock = MockUpstream::start().await;
    for (path, body, headers, ping) in [
        (
            "/v1/messages",
            MESSAGES_STREAM,
            vec![ANTHROPIC],
            "event: ping\ndata: {\"type\": \"ping\"}\n\n",
        ),
        ("/v1/responses", RESPONSES_STREAM, vec![], ": ping\n\n"),
    ] {
        let mut stream = TcpStream::connect(mock.addr()).await.unwrap();
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-mock: chunks=5,fault=stall_after:1,ping_ms=20\r\n",
            body.len()
        );
        for (name, value) in &headers {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        let pings = |raw: &[u8]| String::from_utf8_lossy(raw).matches(ping).count();
        while pings(&raw) < 3 {
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                .await
                .expect("pings keep coming")
                .unwrap();
            assert_ne!(n, 0, "the stalled stream stays open");
            raw.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&raw);
        // One delta, then only pings.
        assert_eq!(text.matches("tok0 ").count(), 1, "{text}");
        assert!(!text.contains("tok1 "), "{text}");
    }
}

#[tokio::test]
async fn chat_ignores_tool() {
    let mock = MockUpstream::start().await;
    let body = r#"{"model":"m","messages":[],"stream":true}"#;
    let plain = call(
        &mock,
        "POST",
        "/v1/chat/completions",
        &[("x-mock", "chunks=2")],
        body,
    )
    .await;
    let tool = call(
        &mock,
        "POST",
        "/v1/chat/completions",
        &[("x-mock", "chunks=2,tool=get_weather")],
        body,
    )
    .await;
    let strip_id = |s: &str| {
        s.replace("chatcmpl-mock-0", "X")
            .replace("chatcmpl-mock-1", "X")
    };
    assert_eq!(strip_id(&plain.body), strip_id(&tool.body));
    assert!(plain.body.ends_with("data: [DONE]\n\n"));
}
