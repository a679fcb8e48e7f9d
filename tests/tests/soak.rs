//! A bounded soak: concurrent clients stream through weir while the primary cuts every answer
//! at a random byte offset (a close, a reset, or silence), and a healthy backup continues them
//! by replay or by prefill. It counts what clients would notice, and above all the streams that
//! looked complete (a clean end after `[DONE]`) but whose text was wrong: that count must be 0.
//!
//! `WEIR_SOAK_STREAMS` (default 2,000) and `WEIR_SOAK_CONCURRENCY` (default 32) size it;
//! `cargo xtask soak` runs a long one in release mode and prints the counts.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use weir_llm::sse::SseDecoder;
use weir_test::raw::{chat_answer, sse_response, End, RawUpstream};
use weir_test::script::word_token;
use weir_test::MockUpstream;

const CHUNKS: u32 = 6;
const WORD: &str = "wörld";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Default, Debug)]
struct Counts {
    whole: AtomicU64,
    /// Ended cleanly after `[DONE]`, yet the text or the ids were wrong: must stay 0.
    wrong_but_complete: AtomicU64,
    /// An unreadable or half event reached the client: must stay 0.
    spliced: AtomicU64,
    /// Told in band that the answer was cut (the backup is healthy: should stay 0).
    told: AtomicU64,
    /// A body that ended uncleanly without an error event: must stay 0.
    silent_cut: AtomicU64,
    /// Not a 200.
    refused: AtomicU64,
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_cut_at_random_bytes_are_never_wrong_and_whole() {
    let streams = env("WEIR_SOAK_STREAMS", 2_000);
    let concurrency = env("WEIR_SOAK_CONCURRENCY", 32);
    let seed = env("WEIR_SOAK_SEED", 0x5eed_cafe);
    let tokens: Vec<String> = (0..CHUNKS).map(|i| word_token(WORD, i)).collect();
    let expected: String = tokens.concat();
    let wire = sse_response(&chat_answer("chatcmpl-soak", "m", &tokens, None));
    let primary = RawUpstream::start(wire.clone(), End::Whole).await;
    let backup = MockUpstream::start().await;
    let route = |name: &str, continuation: &str| {
        weir_e2e::route(
            name,
            &format!(
                r#"[{{ provider = "primary", model = "m" }},
           {{ provider = "backup", model = "m@chunks={CHUNKS},word={WORD}", continuation = "{continuation}" }}]"#
            ),
            "retry_budget = { ratio = 10, per_second = 100000 }\nfirst_token_timeout = \"1s\"",
        )
    };
    let weir = weir_e2e::weir_with(&[
        "[telemetry]\naccess_log = false\nlog_level = \"error\"\n".to_owned(),
        weir_e2e::provider(
            "primary",
            &primary.base_url(),
            "breaker = { consecutive_failures = 0, error_rate = 0 }\nidle_timeout = \"300ms\"\nresponse_timeout = \"1s\"",
        ),
        weir_e2e::provider("backup", &backup.base_url(), ""),
        route("gpt-replay", "replay"),
        route("gpt-prefill", "prefill"),
    ])
    .await;
    let url = format!("http://{}/v1/chat/completions", weir.addr());
    let counts = Arc::new(Counts::default());
    let next = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for worker in 0..concurrency {
        let (url, counts, next, expected) =
            (url.clone(), counts.clone(), next.clone(), expected.clone());
        let wire_len = wire.len();
        clients.push(tokio::spawn(async move {
            let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
            let mut state = seed ^ (worker + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            while next.fetch_add(1, Ordering::Relaxed) < streams {
                let r = xorshift(&mut state);
                let at = (r >> 8) as usize % (wire_len + 1);
                let end = match r % 20 {
                    0 => format!("stall:{at}"),
                    1..=9 => format!("close:{at}"),
                    _ => format!("reset:{at}"),
                };
                let model = if r & (1 << 5) == 0 {
                    "gpt-replay"
                } else {
                    "gpt-prefill"
                };
                let body = format!(r#"{{"model":"{model}","stream":true,"messages":[]}}"#);
                let request = Request::post(&url)
                    .header("x-raw-end", &end)
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                let response = client.request(request).await.unwrap();
                if response.status() != 200 {
                    counts.refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let read = weir_e2e::read(response).await;
                let mut decoder = SseDecoder::new();
                decoder.push(read.bytes.clone());
                let mut events = Vec::new();
                while let Ok(Some(e)) = decoder.next_event() {
                    events.push(e.data_str().into_owned());
                }
                let parsed: Vec<serde_json::Value> = events
                    .iter()
                    .filter(|e| *e != "[DONE]")
                    .filter_map(|e| serde_json::from_str(e).ok())
                    .collect();
                if decoder.has_partial_event() || parsed.len() + 1 < events.len() {
                    counts.spliced.fetch_add(1, Ordering::Relaxed);
                }
                let text: String = parsed
                    .iter()
                    .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
                    .collect();
                let ids: std::collections::HashSet<&str> =
                    parsed.iter().filter_map(|e| e["id"].as_str()).collect();
                let told = parsed.iter().any(|e| e.get("error").is_some());
                let complete =
                    read.error.is_none() && events.last().map(String::as_str) == Some("[DONE]");
                if complete {
                    if text == expected && ids.len() == 1 && !told {
                        counts.whole.fetch_add(1, Ordering::Relaxed);
                    } else {
                        counts.wrong_but_complete.fetch_add(1, Ordering::Relaxed);
                        eprintln!(
                            "WRONG ({model} {end}): {:?}",
                            String::from_utf8_lossy(&read.bytes)
                        );
                    }
                } else if told {
                    counts.told.fetch_add(1, Ordering::Relaxed);
                } else {
                    counts.silent_cut.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    let c = &counts;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "soak: {streams} streams, {concurrency} at a time, seed {seed:#x}: whole {}, wrong but complete {}, spliced {}, told {}, cut silently {}, refused {}; primary answered {}, backup {}",
        load(&c.whole),
        load(&c.wrong_but_complete),
        load(&c.spliced),
        load(&c.told),
        load(&c.silent_cut),
        load(&c.refused),
        primary.requests().len(),
        backup.requests().len(),
    );
    assert_eq!(
        load(&c.wrong_but_complete),
        0,
        "a stream looked whole but was wrong"
    );
    assert_eq!(load(&c.spliced), 0, "half an event reached a client");
    assert_eq!(
        load(&c.silent_cut),
        0,
        "a cut stream ended without saying so"
    );
    assert_eq!(load(&c.refused), 0);
    assert_eq!(
        load(&c.told),
        0,
        "the backup was healthy: every cut should be continued"
    );
    assert_eq!(load(&c.whole), streams);
}
