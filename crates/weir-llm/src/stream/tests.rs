use super::*;
use crate::sse::SseDecoder;
use proptest::prelude::*;

fn chunk(id: &str, content: &str) -> String {
    serde_json::to_string(&serde_json::json!({
        "id": id, "object": "chat.completion.chunk", "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]
    }))
    .unwrap()
}

fn finish(id: &str) -> String {
    format!(
        r#"{{"id":"{id}","object":"chat.completion.chunk","model":"m","choices":[{{"index":0,"delta":{{}},"finish_reason":"stop"}}]}}"#
    )
}

fn usage(id: &str, prompt: u32, completion: u32) -> String {
    format!(
        r#"{{"id":"{id}","object":"chat.completion.chunk","model":"m","choices":[],"usage":{{"prompt_tokens":{prompt},"completion_tokens":{completion},"total_tokens":{}}}}}"#,
        prompt + completion
    )
}

/// A whole stream: the tokens, a finish chunk, optionally usage, `[DONE]`.
fn stream(id: &str, tokens: &[&str], with_usage: bool) -> Vec<u8> {
    let mut out = String::new();
    for t in tokens {
        out.push_str(&format!("data: {}\n\n", chunk(id, t)));
    }
    out.push_str(&format!("data: {}\n\n", finish(id)));
    if with_usage {
        out.push_str(&format!("data: {}\n\n", usage(id, 7, tokens.len() as u32)));
    }
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

/// What a client makes of bytes: the events' data, and the text of their content deltas.
fn client_view(bytes: &[u8]) -> (Vec<String>, String) {
    let mut decoder = SseDecoder::new();
    decoder.push(Bytes::copy_from_slice(bytes));
    let mut events = Vec::new();
    let mut text = String::new();
    while let Some(e) = decoder.next_event().unwrap() {
        let data = e.data_str().into_owned();
        if let Ok(chunk) = crate::Chunk::parse(data.as_bytes()) {
            if let Some(c) = chunk.content {
                text.push_str(&c);
            }
        }
        events.push(data);
    }
    assert!(
        !decoder.has_partial_event(),
        "the client never holds half an event"
    );
    (events, text)
}

/// Feeds `wire` cut at `cuts`; returns every piece pushed out.
fn feed(watch: &mut ChatWatch, wire: &[u8], cuts: &[usize]) -> Result<Vec<Bytes>, Failure> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    points.sort_unstable();
    points.push(wire.len());
    for end in points {
        if let Some(piece) = watch.push(Bytes::copy_from_slice(&wire[start..end]))? {
            pieces.push(piece);
        }
        start = end;
    }
    Ok(pieces)
}

#[test]
fn a_frame_of_whole_events_passes_as_it_is() {
    let wire = Bytes::from(stream("c", &["a", "b"], false));
    let mut watch = ChatWatch::new(1 << 20);
    let out = watch.push(wire.clone()).unwrap().unwrap();
    assert_eq!(out.as_ptr(), wire.as_ptr(), "no copy");
    assert!(watch.is_complete() && watch.is_done());
    assert_eq!(watch.meter().content_events(), 3);
    assert_eq!(watch.meter().finish_reason(), Some("stop"));
}

#[test]
fn every_byte_offset_yields_whole_events_and_the_same_answer() {
    let wire = stream("c", &["He", "llo ", "wörld"], true);
    for cut in 0..=wire.len() {
        let mut watch = ChatWatch::new(1 << 20);
        let pieces = feed(&mut watch, &wire, &[cut]).unwrap();
        for piece in &pieces {
            client_view(piece);
        }
        assert_eq!(pieces.concat(), wire, "cut at {cut}");
        assert!(watch.is_complete());
    }
}

#[test]
fn a_cut_stream_forwards_only_its_whole_events() {
    let wire = stream("c", &["one ", "two ", "three"], false);
    for cut in 0..wire.len() {
        let mut watch = ChatWatch::new(1 << 20);
        let pieces = feed(&mut watch, &wire[..cut], &[cut / 2]).unwrap();
        let sent = pieces.concat();
        assert!(wire.starts_with(&sent));
        assert!(sent.is_empty() || sent.ends_with(b"\n\n"), "cut at {cut}");
        client_view(&sent);
        assert!(!watch.is_done());
    }
}

#[test]
fn nothing_after_done_reaches_the_client() {
    let mut wire = stream("c", &["a"], false);
    wire.extend_from_slice(format!("data: {}\n\n", chunk("c", "late")).as_bytes());
    let mut watch = ChatWatch::new(1 << 20);
    let out = watch.push(Bytes::from(wire)).unwrap().unwrap();
    assert!(out.ends_with(b"data: [DONE]\n\n"));
    assert_eq!(client_view(&out).1, "a");
    assert_eq!(
        watch.push(Bytes::from_static(b"data: {}\n\n")).unwrap(),
        None
    );
}

#[test]
fn complete_needs_the_usage_the_client_asked_for() {
    let mut body = format!("data: {}\n\ndata: {}\n\n", chunk("c", "a"), finish("c"));
    let mut watch = ChatWatch::new(1 << 20).client_wants_usage(true);
    watch.push(Bytes::from(body.clone())).unwrap();
    assert!(!watch.is_complete(), "usage asked for, not there yet");
    assert_eq!(watch.finish(), None);
    body = format!("data: {}\n\n", usage("c", 3, 1));
    watch.push(Bytes::from(body)).unwrap();
    assert!(watch.is_complete());
    assert_eq!(watch.finish().as_deref(), Some(&b"data: [DONE]\n\n"[..]));
    assert!(watch.meter().is_complete());
    let used = watch.meter().usage().unwrap();
    assert_eq!(
        (used.prompt, used.completion, used.total),
        (Some(3), Some(1), 4)
    );
}

#[test]
fn a_finish_reason_without_done_is_finished_with_one() {
    let body = format!("data: {}\n\ndata: {}\n\n", chunk("c", "a"), finish("c"));
    let mut watch = ChatWatch::new(1 << 20);
    watch.push(Bytes::from(body)).unwrap();
    assert!(watch.is_complete() && !watch.is_done());
    assert_eq!(watch.finish().as_deref(), Some(&b"data: [DONE]\n\n"[..]));
    assert!(watch.is_done());
}

#[test]
fn a_done_cut_from_its_blank_line_still_ends_the_answer() {
    let body = format!("data: {}\n\ndata: [DONE]\n", chunk("c", "a"));
    let mut watch = ChatWatch::new(1 << 20);
    watch.push(Bytes::from(body)).unwrap();
    assert!(!watch.is_done() && !watch.is_complete());
    watch.ended();
    assert!(watch.finish().is_some());
}

#[test]
fn usage_weir_asked_for_is_dropped_but_metered() {
    let wire = stream("c", &["a", "b"], true);
    let mut watch = ChatWatch::new(1 << 20).strip_usage(true);
    let out = watch.push(Bytes::from(wire)).unwrap().unwrap();
    let (events, text) = client_view(&out);
    assert_eq!(text, "ab");
    assert!(!events.iter().any(|e| e.contains("usage")));
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(watch.meter().usage().unwrap().total, 9);
    assert_eq!(watch.meter().content_events(), 3);
}

#[test]
fn usage_weir_asked_for_on_a_content_chunk_loses_only_its_field() {
    // LiteLLM's shape: the usage rides on the finish chunk (non-empty `choices`), and other
    // servers put `"usage":null` on every chunk once usage is asked for.
    let with_null = chunk("c", "a").replace("}]}", "}],\"usage\":null}");
    let last = r#"{"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"b"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}"#;
    let wire = format!("data: {with_null}\n\ndata: {last}\n\ndata: [DONE]\n\n");
    let mut watch = ChatWatch::new(1 << 20).strip_usage(true);
    let out = watch.push(Bytes::from(wire.clone())).unwrap().unwrap();
    let (events, text) = client_view(&out);
    assert_eq!(text, "ab", "content untouched");
    assert_eq!(
        events[0],
        chunk("c", "a"),
        "the null usage field is gone, byte for byte"
    );
    assert_eq!(
        events[1],
        r#"{"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"b"},"finish_reason":"stop"}]}"#
    );
    assert_eq!(events[2], "[DONE]");
    assert_eq!(
        watch.meter().usage().unwrap().total,
        9,
        "metered before it went"
    );
    // A client that asked for usage gets it as sent.
    let mut asked = ChatWatch::new(1 << 20).client_wants_usage(true);
    let out = asked.push(Bytes::from(wire.clone())).unwrap().unwrap();
    assert_eq!(&out[..], wire.as_bytes());
}

#[test]
fn a_malformed_event_is_dropped_from_the_middle_of_a_frame() {
    let body = format!(
        "data: {}\n\ndata: {{\"choices\":[{{\"delta\n\ndata: {}\n\n",
        chunk("c", "a"),
        chunk("c", "b")
    );
    let mut watch = ChatWatch::new(1 << 20);
    let out = watch.push(Bytes::from(body)).unwrap().unwrap();
    let (events, text) = client_view(&out);
    assert_eq!((events.len(), text.as_str()), (2, "ab"));
    assert_eq!(watch.take_malformed(), 1);
    assert_eq!(watch.take_malformed(), 0);
}

#[test]
fn an_error_event_is_told() {
    let mut watch = ChatWatch::new(1 << 20);
    watch
        .push(Bytes::from_static(
            b"data: {\"error\":{\"message\":\"boom\"}}\n\n",
        ))
        .unwrap();
    assert!(watch.told() && !watch.is_complete());
}

#[test]
fn an_event_over_the_bound_fails() {
    let mut watch = ChatWatch::new(64);
    let long = format!("data: {}", "x".repeat(100));
    assert_eq!(
        watch.push(Bytes::from(long)).unwrap_err(),
        Failure::MalformedEvent
    );
}

#[test]
fn tool_calls_are_not_continued() {
    let mut watch = ChatWatch::new(1 << 20).with_transcript();
    watch
        .push(Bytes::from_static(
            b"data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":null,\"tool_calls\":[{\"index\":0}]}}]}\n\n",
        ))
        .unwrap();
    assert_eq!(watch.cut(), None);
}

/// Tokens of an answer, as a model would stream them.
fn tokens() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec("[a-zé世\"\\\\ \\n]{1,6}", 1..12)
}

/// The rest of the answer after `delivered`, as a prefilling target streams it: the rest of
/// a cut token, then the tokens after it.
fn prefill_rest(tokens: &[String], delivered: &str) -> Vec<String> {
    let mut done = 0;
    let mut rest = Vec::new();
    for t in tokens {
        if done + t.len() <= delivered.len() {
            done += t.len();
            continue;
        }
        let cut = delivered.len().saturating_sub(done);
        rest.push(t[cut..].to_owned());
        done += t.len();
    }
    rest
}

proptest! {
    /// The stream is cut at any byte; the client has what went out (whole events only); the
    /// continuation (a replay of the whole answer, or a prefill's rest), read in any chunks,
    /// completes it: one id, exactly the original text, `[DONE]` at the end.
    #[test]
    fn a_cut_at_any_byte_is_continued_into_the_exact_answer(
        tokens in tokens(),
        cut in any::<usize>(),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
        replay in any::<bool>(),
    ) {
        let words: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let original = stream("orig", &words, false);
        let cut = cut % original.len();
        let mut watch = ChatWatch::new(1 << 20).with_transcript();
        let mut sent = feed(&mut watch, &original[..cut], &cuts).unwrap().concat();
        prop_assume!(!watch.is_complete());
        let Some(got) = watch.cut() else {
            // Nothing delivered yet that names the answer: it would have been failed over.
            prop_assert!(client_view(&sent).1.is_empty());
            return Ok(());
        };
        let how = if replay { Continuation::Replay } else { Continuation::Prefill };
        watch.resume(how);
        let continuation = if replay {
            stream("other", &words, true)
        } else {
            let rest = prefill_rest(&tokens, &got.delivered);
            let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
            stream("other", &rest, true)
        };
        for piece in feed(&mut watch, &continuation, &cuts).unwrap() {
            sent.extend_from_slice(&piece);
        }
        let (events, text) = client_view(&sent);
        prop_assert_eq!(text, tokens.concat());
        prop_assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        for e in events.iter().filter(|e| *e != "[DONE]") {
            let v: serde_json::Value = serde_json::from_str(e).unwrap();
            prop_assert_eq!(v["id"].as_str(), Some("orig"));
        }
        prop_assert!(watch.is_done());
    }
}

#[test]
fn a_replay_that_says_something_else_fails() {
    let original = stream("orig", &["ab ", "cd"], false);
    let mut watch = ChatWatch::new(1 << 20).with_transcript();
    let first_event = original.iter().position(|b| *b == b'\n').unwrap() + 2;
    watch
        .push(Bytes::copy_from_slice(&original[..first_event]))
        .unwrap();
    watch.resume(Continuation::Replay);
    let other = stream("x", &["xy ", "cd"], false);
    assert_eq!(
        watch.push(Bytes::from(other)).unwrap_err(),
        Failure::StreamBroken
    );
}

#[test]
fn a_prefill_continuations_usage_counts_what_was_delivered() {
    let original = stream("orig", &["a", "b", "c"], false);
    let two = original
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w == b"\n\n")
        .nth(1)
        .unwrap()
        .0
        + 2;
    let mut watch = ChatWatch::new(1 << 20)
        .with_transcript()
        .client_wants_usage(true);
    watch
        .push(Bytes::copy_from_slice(&original[..two]))
        .unwrap();
    watch.resume(Continuation::Prefill);
    let out = watch
        .push(Bytes::from(stream("n", &["c"], true)))
        .unwrap()
        .unwrap();
    let (events, text) = client_view(&out);
    assert_eq!(text, "c");
    let usage: serde_json::Value = events
        .iter()
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
        .find(|e| e["usage"].is_object())
        .unwrap();
    assert_eq!(
        usage["usage"]["completion_tokens"], 3,
        "1 + the 2 delivered"
    );
    assert_eq!(watch.meter().usage().unwrap().completion, Some(3));
}
