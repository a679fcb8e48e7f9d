//! `GET /v1/ws` with a real WebSocket client (tokio-tungstenite): completions streamed as
//! messages through the same stack as HTTP, and the connection's limits.

use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use weir_e2e::{metrics_at, one_mock, sample};
use weir_test::answer;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens `/v1/ws` with extra request headers.
async fn open(addr: SocketAddr, headers: &[(&str, &str)]) -> Result<Ws, WsError> {
    let mut request = format!("ws://{addr}/v1/ws").into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(ws, _)| ws)
}

async fn send(ws: &mut Ws, json: serde_json::Value) {
    ws.send(Message::text(json.to_string())).await.unwrap();
}

/// The next JSON message (pings answered by the client library are skipped).
async fn next(ws: &mut Ws) -> serde_json::Value {
    loop {
        match ws.next().await.expect("the connection is open").unwrap() {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The close frame the server sends (code and reason).
async fn closed(ws: &mut Ws) -> (CloseCode, String) {
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(Some(frame)))) => return (frame.code, frame.reason.to_string()),
            Some(Ok(Message::Close(None))) | None => panic!("closed without a frame"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("{e}"),
        }
    }
}

/// Messages for completion `id` up to its `done` or `error`: its content, and the last message.
async fn collect(
    ws: &mut Ws,
    id: &str,
    others: &mut Vec<serde_json::Value>,
) -> (String, serde_json::Value) {
    let mut content = String::new();
    loop {
        let message = next(ws).await;
        if message["id"] != id {
            others.push(message);
            continue;
        }
        match message["type"].as_str().unwrap() {
            "chunk" => {
                if let Some(text) = message["delta"]["choices"][0]["delta"]["content"].as_str() {
                    content.push_str(text);
                }
            }
            _ => return (content, message),
        }
    }
}

fn completion(id: &str, model: &str) -> serde_json::Value {
    serde_json::json!({"type": "completion", "id": id, "model": model, "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5})
}

#[tokio::test(start_paused = true)]
async fn a_completion_streams_as_chunks_then_done_through_the_same_stack() {
    let (_mock, weir) = one_mock("", "", "").await;
    let mut ws = open(weir.addr(), &[("x-mock", "chunks=4")]).await.unwrap();
    send(&mut ws, serde_json::json!({"type": "ping", "id": 9})).await;
    assert_eq!(
        next(&mut ws).await,
        serde_json::json!({"type": "pong", "id": 9})
    );
    send(&mut ws, completion("a", "gpt-test")).await;
    let (content, done) = collect(&mut ws, "a", &mut Vec::new()).await;
    assert_eq!(content, answer(4));
    assert_eq!(done["type"], "done");
    assert_eq!(done["finish_reason"], "stop");
    assert_eq!(done["usage"]["completion_tokens"], 4);
    // Counted by the metrics layer like an HTTP request, and the connection is open.
    let text = metrics_at(weir.admin_addr()).await;
    assert_eq!(
        sample(
            &text,
            r#"weir_requests_total{route="gpt-test",provider="mock",model="m",status="200",outcome="ok"}"#
        ),
        1.0
    );
    assert_eq!(sample(&text, "weir_websocket_connections"), 1.0);
    // An unknown model is refused by the gateway, as over HTTP.
    send(&mut ws, completion("b", "no-such-model")).await;
    let (_, refused) = collect(&mut ws, "b", &mut Vec::new()).await;
    assert_eq!(refused["type"], "error");
    assert_eq!(refused["code"], "model_not_found");
}

#[tokio::test(start_paused = true)]
async fn completions_run_concurrently_and_cancel_or_reset_stop_them_upstream() {
    let (mock, weir) = one_mock("", "", "[websocket]\nmax_in_flight = 2").await;
    let mut ws = open(weir.addr(), &[("x-mock", "chunks=50,delay_ms=100")])
        .await
        .unwrap();
    send(&mut ws, completion("slow", "gpt-test")).await;
    send(&mut ws, completion("other", "gpt-test")).await;
    send(&mut ws, completion("third", "gpt-test")).await;
    send(&mut ws, completion("other", "gpt-test")).await;
    // Chunks of both arrive, interleaved; the third is over the bound, the duplicate refused.
    let mut seen = std::collections::HashSet::new();
    let mut refusals = Vec::new();
    while seen.len() < 2 || refusals.len() < 2 {
        let message = next(&mut ws).await;
        match message["type"].as_str().unwrap() {
            "chunk" => {
                seen.insert(message["id"].as_str().unwrap().to_owned());
            }
            "error" => refusals.push((message["id"].clone(), message["code"].clone())),
            other => panic!("{other}"),
        }
    }
    assert!(refusals.contains(&(
        serde_json::json!("third"),
        serde_json::json!("too_many_completions")
    )));
    assert!(refusals.contains(&(
        serde_json::json!("other"),
        serde_json::json!("duplicate_id")
    )));
    send(&mut ws, serde_json::json!({"type": "cancel", "id": "slow"})).await;
    let mut others = Vec::new();
    let (_, cancelled) = collect(&mut ws, "slow", &mut others).await;
    assert_eq!(cancelled["code"], "cancelled");
    tokio::time::timeout(Duration::from_secs(5), mock.wait_cancelled(1))
        .await
        .expect("the cancelled completion's upstream request is cancelled");
    // The other one is untouched and finishes.
    let (content, done) = collect(&mut ws, "other", &mut others).await;
    assert_eq!(done["type"], "done");
    assert!(answer(50).ends_with(&content));
    // The cancelled one is counted as an HTTP client that went away mid-stream is: the
    // status it had, outcome `cancelled`, the provider that was answering.
    let text = metrics_at(weir.admin_addr()).await;
    assert_eq!(
        sample(
            &text,
            r#"weir_requests_total{route="gpt-test",provider="mock",model="m",status="200",outcome="cancelled"}"#
        ),
        1.0,
        "{text}"
    );

    // A reset cancels everything in flight.
    send(&mut ws, completion("x", "gpt-test")).await;
    send(&mut ws, completion("y", "gpt-test")).await;
    let mut started = std::collections::HashSet::new();
    while started.len() < 2 {
        let message = next(&mut ws).await;
        if message["type"] == "chunk" {
            started.insert(message["id"].as_str().unwrap().to_owned());
        }
    }
    send(&mut ws, serde_json::json!({"type": "reset"})).await;
    let mut cancelled = Vec::new();
    while cancelled.len() < 2 {
        let message = next(&mut ws).await;
        if message["type"] == "error" {
            assert_eq!(message["code"], "cancelled");
            cancelled.push(message["id"].as_str().unwrap().to_owned());
        }
    }
    cancelled.sort();
    assert_eq!(cancelled, ["x", "y"]);
    tokio::time::timeout(Duration::from_secs(5), mock.wait_cancelled(3))
        .await
        .expect("both upstream requests are cancelled");
}

#[tokio::test(start_paused = true)]
async fn invalid_messages_get_an_error_and_the_connection_stays_open() {
    let (_mock, weir) = one_mock("", "", "").await;
    let mut ws = open(weir.addr(), &[]).await.unwrap();
    for bad in [
        "not json".to_owned(),
        r#"{"type":"dance","id":"d"}"#.to_owned(),
        r#"{"type":"completion","model":"gpt-test"}"#.to_owned(),
        r#"{"type":"cancel","id":"nothing"}"#.to_owned(),
    ] {
        ws.send(Message::text(bad.clone())).await.unwrap();
        let message = next(&mut ws).await;
        assert_eq!(message["type"], "error", "{bad}");
    }
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(next(&mut ws).await["code"], "invalid_message");
    send(&mut ws, serde_json::json!({"type": "ping"})).await;
    assert_eq!(next(&mut ws).await["type"], "pong");
}

#[tokio::test(start_paused = true)]
async fn a_message_over_the_size_limit_closes_with_1009() {
    let (_mock, weir) = one_mock("", "", "[websocket]\nmax_message_bytes = 1024").await;
    let mut ws = open(weir.addr(), &[]).await.unwrap();
    let mut big = completion("big", "gpt-test");
    big["messages"][0]["content"] = "x".repeat(4096).into();
    let _ = ws.send(Message::text(big.to_string())).await;
    let (code, reason) = closed(&mut ws).await;
    assert_eq!(code, CloseCode::Size);
    assert!(reason.contains("1024"), "{reason}");
}

#[tokio::test(start_paused = true)]
async fn a_client_over_its_message_rate_is_closed_with_1008() {
    let (_mock, weir) = one_mock(
        "",
        "",
        "[websocket]\nmessages_per_second = 1\nmessage_burst = 3",
    )
    .await;
    let mut ws = open(weir.addr(), &[]).await.unwrap();
    for _ in 0..4 {
        let _ = ws.send(Message::text(r#"{"type":"ping"}"#)).await;
    }
    let mut pongs = 0;
    let (code, reason) = loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(_) => pongs += 1,
            Message::Close(Some(frame)) => break (frame.code, frame.reason.to_string()),
            _ => {}
        }
    };
    assert_eq!(pongs, 3, "the burst is served");
    assert_eq!(code, CloseCode::Policy);
    assert!(reason.contains("rate limit"), "{reason}");
    let text = metrics_at(weir.admin_addr()).await;
    assert_eq!(
        sample(
            &text,
            r#"weir_websocket_closes_total{reason="rate_limited"}"#
        ),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_pinged_then_closed() {
    let (_mock, weir) = one_mock(
        "",
        "",
        "[websocket]\nping_interval = \"20s\"\nidle_timeout = \"60s\"",
    )
    .await;
    let mut ws = open(weir.addr(), &[]).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut pings = 0;
    let (code, reason) = loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Ping(_) => pings += 1,
            Message::Close(Some(frame)) => break (frame.code, frame.reason.to_string()),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!((code, reason.as_str()), (CloseCode::Normal, "idle timeout"));
    assert_eq!(started.elapsed(), Duration::from_secs(60));
    assert_eq!(pings, 2, "pinged at 20 s and 40 s, answered by the client");
}

#[tokio::test(start_paused = true)]
async fn origins_and_keys_are_checked_before_the_upgrade() {
    let key = "sk-ws-client-1";
    let (_mock, weir) = one_mock(
        "",
        "",
        &format!(
            "[websocket]\norigins = [\"https://chat.example.com\"]\n\n[[keys]]\nname = \"app\"\nhash = \"{}\"",
            weir::config::hash_key(key)
        ),
    )
    .await;
    let status = |result: Result<Ws, WsError>| match result {
        Ok(_) => 101,
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("{e}"),
    };
    let bearer = format!("Bearer {key}");
    let auth = ("authorization", bearer.as_str());
    assert_eq!(status(open(weir.addr(), &[]).await), 401);
    assert_eq!(
        status(open(weir.addr(), &[("authorization", "Bearer nope")]).await),
        401
    );
    assert_eq!(status(open(weir.addr(), &[auth]).await), 101);
    assert_eq!(
        status(open(weir.addr(), &[auth, ("origin", "https://evil.example")]).await),
        403
    );
    assert_eq!(
        status(open(weir.addr(), &[auth, ("origin", "https://chat.example.com")]).await),
        101
    );
    // A browser passes its key as a subprotocol beside `weir`, and gets `weir` back.
    let protocols = format!("weir, bearer.{key}");
    let mut request = format!("ws://{}/v1/ws", weir.addr())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", protocols.parse().unwrap());
    request
        .headers_mut()
        .insert("origin", "https://chat.example.com".parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "weir");
    // Its completions carry the key through the stack.
    send(&mut ws, completion("k", "gpt-test")).await;
    let (_, done) = collect(&mut ws, "k", &mut Vec::new()).await;
    assert_eq!(done["type"], "done");
}

#[tokio::test(start_paused = true)]
async fn a_stream_cut_mid_answer_is_continued_on_the_backup() {
    let s = weir_e2e::two::setup(None, "", None).await;
    s.primary.set_defaults(Some("fault=reset_after:3"));
    let mut ws = open(s.weir.addr(), &[("x-mock", "chunks=8")])
        .await
        .unwrap();
    send(&mut ws, completion("r", "gpt-test")).await;
    let (content, done) = collect(&mut ws, "r", &mut Vec::new()).await;
    assert_eq!(done["type"], "done", "{done}");
    assert_eq!(content, answer(8));
    assert_eq!(s.backup.requests().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_cut_and_its_upstream_cancelled() {
    let (mock, weir) = one_mock("client_stall_timeout = \"5s\"", "", "").await;
    // A long answer of 1,000-byte tokens to a client with a 4 KiB receive buffer that sends
    // its completion and never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(weir.addr()).await.unwrap();
    let mut request = format!("ws://{}/v1/ws", weir.addr())
        .into_client_request()
        .unwrap();
    let word = "w".repeat(1000);
    request.headers_mut().insert(
        "x-mock",
        format!("chunks=40000,word={word}").parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    ws.send(Message::text(completion("big", "gpt-test").to_string()))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(60), mock.wait_cancelled(1))
        .await
        .expect("the stalled connection's upstream request is cancelled");
    let cut_after = started.elapsed();
    assert!(
        cut_after >= Duration::from_secs(5) && cut_after < Duration::from_secs(8),
        "cut after {cut_after:?}"
    );
    let pulled = mock.bytes_sent();
    assert!(
        pulled < 20 << 20,
        "weir pulled {pulled} bytes of a 44 MB answer"
    );
    let text = metrics_at(weir.admin_addr()).await;
    assert_eq!(sample(&text, "weir_websocket_connections"), 0.0);
    assert_eq!(
        sample(&text, r#"weir_websocket_closes_total{reason="stalled"}"#),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_drain_lets_completions_finish_then_closes_with_1001() {
    let (_mock, weir) = one_mock("drain_timeout = \"30s\"", "", "").await;
    let mut ws = open(weir.addr(), &[("x-mock", "chunks=10,delay_ms=500")])
        .await
        .unwrap();
    send(&mut ws, completion("last", "gpt-test")).await;
    assert_eq!(next(&mut ws).await["type"], "chunk");
    let addr = weir.addr();
    let drained = tokio::spawn(weir.drain());
    // New connections are refused; the open one finishes its completion first.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(open(addr, &[]).await.is_err());
    let mut refused = Vec::new();
    send(&mut ws, completion("new", "gpt-test")).await;
    let (content, done) = collect(&mut ws, "last", &mut refused).await;
    assert_eq!(done["type"], "done");
    assert!(answer(10).ends_with(&content));
    assert!(
        refused.iter().any(|m| m["code"] == "shutting_down"),
        "{refused:?}"
    );
    let (code, _) = closed(&mut ws).await;
    assert_eq!(code, CloseCode::Away);
    assert!(drained.await.unwrap(), "drained within the deadline");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_answers_pings_is_closed() {
    let (_mock, weir) = one_mock("", "", "[websocket]\nping_interval = \"30s\"").await;
    // Opened and never read: its library cannot answer the pings.
    let _silent = open(weir.addr(), &[]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(59)).await;
    let text = metrics_at(weir.admin_addr()).await;
    assert_eq!(
        sample(&text, "weir_websocket_connections"),
        1.0,
        "pinged at 30 s, open"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let text = metrics_at(weir.admin_addr()).await;
    assert_eq!(
        sample(&text, r#"weir_websocket_closes_total{reason="no_pong"}"#),
        1.0
    );
    assert_eq!(sample(&text, "weir_websocket_connections"), 0.0);
}
