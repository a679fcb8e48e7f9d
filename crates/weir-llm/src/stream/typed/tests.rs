use super::*;
use crate::sse::SseDecoder;

fn event(name: &str, data: serde_json::Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// A Responses stream of `tokens` (ids `resp`/`item`), its sequence numbers from 0.
fn responses(resp: &str, item: &str, tokens: &[&str], complete: bool) -> String {
    let mut seq = 0;
    let mut next = || {
        seq += 1;
        seq - 1
    };
    let response = |status: &str| serde_json::json!({"id": resp, "object": "response", "status": status, "output": [], "usage": null});
    let mut out = String::new();
    out += &event(
        "response.created",
        serde_json::json!({"type":"response.created","sequence_number":next(),"response":response("in_progress")}),
    );
    out += &event(
        "response.in_progress",
        serde_json::json!({"type":"response.in_progress","sequence_number":next(),"response":response("in_progress")}),
    );
    out += &event(
        "response.output_item.added",
        serde_json::json!({"type":"response.output_item.added","sequence_number":next(),"output_index":0,"item":{"id":item,"type":"message","status":"in_progress","content":[],"role":"assistant"}}),
    );
    out += &event(
        "response.content_part.added",
        serde_json::json!({"type":"response.content_part.added","sequence_number":next(),"item_id":item,"output_index":0,"content_index":0,"part":{"type":"output_text","annotations":[],"text":""}}),
    );
    for t in tokens {
        out += &event(
            "response.output_text.delta",
            serde_json::json!({"type":"response.output_text.delta","sequence_number":next(),"item_id":item,"output_index":0,"content_index":0,"delta":t}),
        );
    }
    let text = tokens.concat();
    out += &event(
        "response.output_text.done",
        serde_json::json!({"type":"response.output_text.done","sequence_number":next(),"item_id":item,"output_index":0,"content_index":0,"text":text}),
    );
    out += &event(
        "response.content_part.done",
        serde_json::json!({"type":"response.content_part.done","sequence_number":next(),"item_id":item,"output_index":0,"content_index":0,"part":{"type":"output_text","annotations":[],"text":text}}),
    );
    out += &event(
        "response.output_item.done",
        serde_json::json!({"type":"response.output_item.done","sequence_number":next(),"output_index":0,"item":{"id":item,"type":"message","status":"completed","content":[{"type":"output_text","annotations":[],"text":text}],"role":"assistant"}}),
    );
    if complete {
        out += &event(
            "response.completed",
            serde_json::json!({"type":"response.completed","sequence_number":next(),"response":{"id":resp,"object":"response","status":"completed","output":[{"id":item,"type":"message","content":[{"type":"output_text","text":text}]}],"usage":{"input_tokens":11,"input_tokens_details":{"cached_tokens":0},"output_tokens":tokens.len(),"output_tokens_details":{"reasoning_tokens":0},"total_tokens":11+tokens.len()}}}),
        );
    }
    out
}

/// A Messages stream of `tokens`.
fn messages(id: &str, tokens: &[&str], output_tokens: usize) -> String {
    let mut out = String::new();
    out += &event(
        "message_start",
        serde_json::json!({"type":"message_start","message":{"id":id,"type":"message","role":"assistant","content":[],"model":"claude","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_read_input_tokens":5,"output_tokens":1}}}),
    );
    out += &event(
        "content_block_start",
        serde_json::json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
    );
    out += "event: ping\ndata: {\"type\": \"ping\"}\n\n";
    for t in tokens {
        out += &event(
            "content_block_delta",
            serde_json::json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":t}}),
        );
    }
    out += &event(
        "content_block_stop",
        serde_json::json!({"type":"content_block_stop","index":0}),
    );
    out += &event(
        "message_delta",
        serde_json::json!({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":output_tokens}}),
    );
    out += &event("message_stop", serde_json::json!({"type":"message_stop"}));
    out
}

/// The events a client decodes from `wire`: (name, data JSON).
fn decoded(wire: &[u8]) -> Vec<(String, serde_json::Value)> {
    let mut decoder = SseDecoder::new();
    decoder.push(Bytes::copy_from_slice(wire));
    let mut out = Vec::new();
    while let Some(e) = decoder.next_event().unwrap() {
        let name =
            String::from_utf8(e.event.clone().map(|n| n.to_vec()).unwrap_or_default()).unwrap();
        out.push((
            name,
            serde_json::from_slice(&e.data).expect("every event parses"),
        ));
    }
    assert!(!decoder.has_partial_event(), "only whole events");
    out
}

fn push_all(watch: &mut TypedWatch, wire: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut from = 0;
    for &to in cuts.iter().chain(std::iter::once(&wire.len())) {
        if let Some(bytes) = watch.push(Bytes::copy_from_slice(&wire[from..to])).unwrap() {
            out.extend_from_slice(&bytes);
        }
        from = to;
    }
    out
}

#[test]
fn a_whole_responses_stream_passes_as_it_came() {
    let wire = responses("resp_1", "msg_1", &["Hel", "lo"], true);
    let mut watch = TypedWatch::new(Api::Responses, 1 << 20);
    let frame = Bytes::from(wire.clone());
    let out = watch.push(frame.clone()).unwrap().unwrap();
    assert_eq!(out.as_ptr(), frame.as_ptr(), "the same bytes, no copy");
    assert!(watch.is_complete() && watch.is_done());
    let meter = watch.meter();
    assert_eq!(
        meter.content_events(),
        5,
        "2 deltas, 3 done events (the end is not content)"
    );
    assert_eq!(
        meter.usage().map(|u| (u.prompt, u.completion, u.total)),
        Some((Some(11), Some(2), 13))
    );
    assert_eq!(meter.finish_reason(), Some("stop"));
    assert!(meter.is_complete());
    // Nothing after the end reaches the client.
    assert_eq!(watch.push(Bytes::from(wire)).unwrap(), None);
}

#[test]
fn openers_are_not_content_and_a_cut_anywhere_leaves_whole_events() {
    let wire = responses("resp_1", "msg_1", &["Hel", "lo"], true).into_bytes();
    for cut in 1..wire.len() {
        let mut watch = TypedWatch::new(Api::Responses, 1 << 20);
        let out = push_all(&mut watch, &wire[..cut], &[]);
        let events = decoded(&out);
        assert!(wire.starts_with(&out));
        let content = events
            .iter()
            .filter(|(n, _)| Api::Responses.kind(n.as_bytes()) == EventKind::Content)
            .count();
        assert_eq!(watch.meter().content_events(), content as u64);
        assert!(!watch.is_complete(), "cut at {cut} is not complete");
    }
}

#[test]
fn a_responses_cut_is_told_with_the_next_sequence_number() {
    let wire = responses("resp_1", "msg_1", &["Hel", "lo"], false);
    let mut watch = TypedWatch::new(Api::Responses, 1 << 20);
    watch.push(Bytes::from(wire)).unwrap();
    assert!(!watch.is_complete(), "no response.completed");
    assert_eq!(watch.finish(), None, "nothing to make up");
    let told = watch.error_event(Failure::StreamBroken, "cut");
    let events = decoded(&told);
    assert_eq!(events[0].0, "error");
    assert_eq!(events[0].1["sequence_number"], 9);
    assert_eq!(events[0].1["code"], "stream_broken");
}

#[test]
fn a_replayed_responses_answer_keeps_the_clients_ids_and_sequence() {
    let tokens = ["Hel", "lo ", "wor", "ld"];
    let first = responses("resp_A", "msg_A", &tokens, true);
    // Cut inside the third delta.
    let cut_at = first.find("\"delta\":\"wor\"").unwrap();
    let mut watch = TypedWatch::new(Api::Responses, 1 << 20).with_transcript();
    let mut client = push_all(&mut watch, &first.as_bytes()[..cut_at], &[]);
    let cut = watch.cut().expect("one text part: continuable");
    assert_eq!(
        (cut.id.as_str(), cut.delivered.as_str(), cut.events),
        ("resp_A", "Hello ", 2)
    );
    watch.resume(Continuation::Replay);
    // The continuation: other ids, its own sequence from 0, the same text in other pieces.
    let second = responses("resp_B", "msg_B", &["Hello", " w", "orld"], true);
    client.extend(push_all(&mut watch, second.as_bytes(), &[100, 700]));
    assert!(watch.is_complete());
    let events = decoded(&client);
    let text: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Hello world", "each piece once");
    let sequence: Vec<u64> = events
        .iter()
        .map(|(_, d)| d["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(
        sequence,
        (0..sequence.len() as u64).collect::<Vec<_>>(),
        "one unbroken sequence"
    );
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names.iter().filter(|n| **n == "response.created").count(),
        1
    );
    assert_eq!(
        names
            .iter()
            .filter(|n| **n == "response.output_item.added")
            .count(),
        1
    );
    assert_eq!(
        names
            .iter()
            .filter(|n| **n == "response.content_part.added")
            .count(),
        1
    );
    let wire = String::from_utf8(client).unwrap();
    assert!(
        !wire.contains("resp_B") && !wire.contains("msg_B"),
        "{wire}"
    );
    let done = &events.last().unwrap().1;
    assert_eq!(done["response"]["id"], "resp_A");
    assert_eq!(
        done["response"]["output"][0]["content"][0]["text"],
        "Hello world"
    );
}

#[test]
fn a_replay_that_says_something_else_stops() {
    let first = responses("resp_A", "msg_A", &["Hel", "lo"], true);
    let cut_at = first.find("\"delta\":\"lo\"").unwrap();
    let mut watch = TypedWatch::new(Api::Responses, 1 << 20).with_transcript();
    push_all(&mut watch, &first.as_bytes()[..cut_at], &[]);
    watch.resume(Continuation::Replay);
    let other = responses("resp_B", "msg_B", &["Goodbye"], true);
    assert_eq!(
        watch.push(Bytes::from(other)).unwrap_err(),
        Failure::StreamBroken
    );
}

#[test]
fn a_function_call_is_never_continued() {
    let mut watch = TypedWatch::new(Api::Responses, 1 << 20).with_transcript();
    let wire = event(
        "response.created",
        serde_json::json!({"type":"response.created","sequence_number":0,"response":{"id":"resp_A"}}),
    ) + &event(
        "response.output_item.added",
        serde_json::json!({"type":"response.output_item.added","sequence_number":1,"output_index":0,"item":{"id":"fc_1","type":"function_call","arguments":"","call_id":"call_1","name":"get_weather"}}),
    ) + &event(
        "response.function_call_arguments.delta",
        serde_json::json!({"type":"response.function_call_arguments.delta","sequence_number":2,"item_id":"fc_1","output_index":0,"delta":"{\"ci"}),
    );
    watch.push(Bytes::from(wire)).unwrap();
    assert_eq!(watch.meter().content_events(), 1);
    assert_eq!(watch.cut(), None);
}

#[test]
fn a_whole_messages_stream_and_its_usage() {
    let wire = messages("msg_1", &["Hi", " there"], 2);
    let mut watch = TypedWatch::new(Api::Messages, 1 << 20);
    push_all(&mut watch, wire.as_bytes(), &[40, 41, 300]);
    assert!(watch.is_done() && watch.is_complete());
    let meter = watch.meter();
    assert_eq!(
        meter.usage().map(|u| (u.prompt, u.completion, u.total)),
        Some((Some(30), Some(2), 32))
    );
    assert_eq!(meter.finish_reason(), Some("stop"));
    assert_eq!(
        meter.content_events(),
        4,
        "2 deltas, the block stop, the message delta"
    );
}

#[test]
fn a_stop_reason_without_message_stop_is_finished_by_weir() {
    let wire = messages("msg_1", &["Hi"], 1);
    let end = wire.find("event: message_stop").unwrap();
    let mut watch = TypedWatch::new(Api::Messages, 1 << 20);
    watch.push(Bytes::from(wire[..end].to_owned())).unwrap();
    assert!(watch.is_complete() && !watch.is_done());
    let tail = watch.finish().unwrap();
    assert_eq!(decoded(&tail)[0].0, "message_stop");
    assert!(watch.is_done());
}

#[test]
fn a_prefilled_messages_answer_continues_the_clients_block() {
    let first = messages("msg_A", &["Hel", "lo ", "wor"], 3);
    let cut_at = first.find("\"text\":\"wor\"").unwrap();
    let mut watch = TypedWatch::new(Api::Messages, 1 << 20).with_transcript();
    let mut client = push_all(&mut watch, &first.as_bytes()[..cut_at], &[]);
    let cut = watch.cut().unwrap();
    assert_eq!(
        (cut.id.as_str(), cut.delivered.as_str(), cut.events),
        ("msg_A", "Hello ", 2)
    );
    watch.resume(Continuation::Prefill);
    // The prefilled continuation (sent "Hello": Anthropic takes no trailing space there)
    // writes the rest only, and counts only that.
    let second = messages("msg_B", &[" world"], 1);
    client.extend(push_all(&mut watch, second.as_bytes(), &[]));
    assert!(watch.is_done() && watch.is_complete());
    let events = decoded(&client);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "ping",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let text: String = events
        .iter()
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "Hello world");
    assert_eq!(
        events[8].1["usage"]["output_tokens"], 3,
        "the delivered deltas counted"
    );
    assert!(!String::from_utf8(client).unwrap().contains("msg_B"));
}

#[test]
fn a_messages_replay_drops_what_the_client_has() {
    let first = messages("msg_A", &["Hel", "lo"], 2);
    let cut_at = first.find("event: content_block_stop").unwrap();
    let mut watch = TypedWatch::new(Api::Messages, 1 << 20).with_transcript();
    let mut client = push_all(&mut watch, &first.as_bytes()[..cut_at], &[]);
    watch.resume(Continuation::Replay);
    client.extend(push_all(
        &mut watch,
        messages("msg_B", &["He", "llo"], 2).as_bytes(),
        &[],
    ));
    let events = decoded(&client);
    let text: String = events
        .iter()
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "Hello");
    assert_eq!(
        events.iter().filter(|(n, _)| n == "message_start").count(),
        1
    );
    assert_eq!(events.last().unwrap().0, "message_stop");
}

#[test]
fn a_tool_use_or_thinking_block_is_never_continued() {
    for block in [
        serde_json::json!({"type":"tool_use","id":"toolu_1","name":"get_weather","input":{}}),
        serde_json::json!({"type":"thinking","thinking":""}),
    ] {
        let mut watch = TypedWatch::new(Api::Messages, 1 << 20).with_transcript();
        let wire = event(
            "message_start",
            serde_json::json!({"type":"message_start","message":{"id":"msg_A","usage":{"input_tokens":3,"output_tokens":1}}}),
        ) + &event(
            "content_block_start",
            serde_json::json!({"type":"content_block_start","index":0,"content_block":block}),
        );
        watch.push(Bytes::from(wire)).unwrap();
        assert_eq!(watch.cut(), None);
    }
}

#[test]
fn an_error_event_tells_the_client_in_each_shape() {
    let mut watch = TypedWatch::new(Api::Messages, 1 << 20);
    let wire = messages("msg_A", &["Hi"], 1);
    let cut_at = wire.find("event: content_block_stop").unwrap();
    watch.push(Bytes::from(wire[..cut_at].to_owned())).unwrap();
    watch
        .push(Bytes::from_static(b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"))
        .unwrap()
        .unwrap();
    assert!(watch.told() && !watch.is_complete());
    let made = watch.error_event(Failure::StreamStalled, "stalled");
    assert_eq!(decoded(&made)[0].1["error"]["type"], "api_error");
}

#[test]
fn a_prefill_without_its_trailing_whitespace_drops_it_from_the_continuation() {
    let first = messages("msg_A", &["Hello ", "wor"], 2);
    let cut_at = first.find("\"text\":\"wor\"").unwrap();
    let mut watch = TypedWatch::new(Api::Messages, 1 << 20).with_transcript();
    let mut client = push_all(&mut watch, &first.as_bytes()[..cut_at], &[]);
    assert_eq!(
        crate::continuation::prefill_text(Api::Messages, &watch.cut().unwrap().delivered),
        ("Hello", " ")
    );
    watch.resume(Continuation::Prefill);
    // Prefilled with "Hello", the continuation says the space again.
    client.extend(push_all(
        &mut watch,
        messages("msg_B", &[" wor", "ld"], 2).as_bytes(),
        &[],
    ));
    let events = decoded(&client);
    let text: String = events
        .iter()
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "Hello world");
}

#[test]
fn whole_answers_of_both_apis_are_metered() {
    let meter = Meter::default();
    meter.observe_answer(
        Api::Responses,
        br#"{"id":"resp_1","object":"response","status":"completed","output":[{"type":"message","content":[{"type":"output_text","text":"\"input_tokens\":99"}]}],"usage":{"input_tokens":7,"output_tokens":3,"total_tokens":10}}"#,
    );
    assert_eq!(
        meter.usage().map(|u| (u.prompt, u.completion, u.total)),
        Some((Some(7), Some(3), 10))
    );
    assert_eq!(meter.finish_reason(), Some("stop"));
    let meter = Meter::default();
    meter.observe_answer(
        Api::Messages,
        br#"{"id":"msg_1","type":"message","content":[{"type":"tool_use","id":"t","name":"f","input":{}}],"stop_reason":"tool_use","usage":{"input_tokens":12,"cache_read_input_tokens":4,"output_tokens":5}}"#,
    );
    assert_eq!(
        meter.usage().map(|u| (u.prompt, u.completion, u.total)),
        Some((Some(16), Some(5), 21))
    );
    assert_eq!(meter.finish_reason(), Some("tool_calls"));
    assert!(meter.is_complete());
}

#[test]
fn a_typed_watch_costs_a_chat_stream_nothing() {
    // The chat watch is what most streams hold: the enum is no larger than it.
    assert_eq!(
        std::mem::size_of::<crate::stream::ApiWatch>(),
        std::mem::size_of::<crate::stream::ChatWatch>()
    );
}

#[test]
fn an_end_cut_from_its_blank_line_by_a_clean_end_is_still_the_end() {
    for (api, wire, end) in [
        (
            Api::Responses,
            responses("resp_1", "msg_1", &["Hi"], true),
            "event: response.completed",
        ),
        (
            Api::Messages,
            messages("msg_1", &["Hi"], 1),
            "event: message_delta",
        ),
    ] {
        let at = wire.find(end).unwrap();
        let close = at + wire[at..].find("\n\n").unwrap();
        // The end event without its blank line (or with half of it): finished, framed.
        for cut in [close, close + 1] {
            let mut watch = TypedWatch::new(api, 1 << 20);
            let mut client = push_all(&mut watch, &wire.as_bytes()[..cut], &[]);
            assert!(!watch.is_complete(), "{api:?}");
            watch.ended();
            assert!(watch.is_complete(), "{api:?} at {cut}");
            client.extend_from_slice(&watch.finish().unwrap());
            let events = decoded(&client);
            let last = &events.last().unwrap().0;
            assert_eq!(
                last,
                if api == Api::Responses {
                    "response.completed"
                } else {
                    "message_stop"
                }
            );
            assert_eq!(watch.finish(), None, "once");
        }
        // Cut inside its data, right after an inner `}`: not whole, not the end.
        let inner = at + wire[at..close].rfind('}').unwrap();
        let mut watch = TypedWatch::new(api, 1 << 20);
        push_all(&mut watch, &wire.as_bytes()[..inner], &[]);
        watch.ended();
        assert!(!watch.is_complete(), "{api:?}: a cut inside the end event");
        assert_eq!(watch.finish(), None);
    }
}
