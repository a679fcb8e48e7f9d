//! What the fuzz targets (`fuzz/` at the workspace root) check, as functions: the targets are
//! thin shims over them, and the unit tests replay the committed seeds and every crash ever
//! found (`fuzz/regressions/`) through them. Compiled for tests and with the `fuzzing` feature.

use crate::sse::{Framer, SseDecoder, SseEvent};
use crate::stream::{ApiWatch, ChatWatch, TypedWatch, Watch};
use bytes::Bytes;

fn decode(frames: &[&[u8]]) -> Result<Vec<SseEvent>, ()> {
    let mut decoder = SseDecoder::with_max_event_size(4096);
    let mut events = Vec::new();
    for frame in frames {
        decoder.push(Bytes::copy_from_slice(frame));
        while let Some(event) = decoder.next_event().map_err(|_| ())? {
            events.push(event);
        }
    }
    Ok(events)
}

/// The `sse` fuzz target: the first byte picks a frame size, the rest is the stream.
///
/// - the decoder yields the same events whatever the framing;
/// - the framer hands on a prefix of the input, in pieces that each end on an event
///   boundary, the same bytes whatever the framing, and its events are the decoder's;
/// - the watches (chat, Responses, Messages, and each as a continuation) never panic, and
///   what they forward is whole events;
/// - the chunk and request readers never panic.
pub fn check_sse(data: &[u8]) {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let step = usize::from(seed % 17) + 1;
    let frames: Vec<&[u8]> = input.chunks(step).collect();
    if let (Ok(whole), Ok(cut)) = (decode(&[input]), decode(&frames)) {
        assert_eq!(whole, cut, "events read {step} bytes at a time");
    }
    let framed = |frames: &[&[u8]]| -> Result<(Vec<u8>, Vec<Vec<u8>>), ()> {
        let mut framer = Framer::new(4096);
        let mut out = Vec::new();
        let mut events = Vec::new();
        for frame in frames {
            let piece = framer
                .push(Bytes::copy_from_slice(frame), |e| {
                    if let Some(d) = e.joined_data() {
                        events.push(d.into_owned());
                    }
                })
                .map_err(|_| ())?;
            if let Some(piece) = piece {
                // Each piece alone holds whole events.
                let mut alone = SseDecoder::new();
                alone.push(piece.clone());
                while let Ok(Some(_)) = alone.next_event() {}
                assert!(
                    !alone.has_partial_event(),
                    "a piece ends on an event boundary"
                );
                out.extend_from_slice(&piece);
            }
        }
        Ok((out, events))
    };
    if let (Ok(whole), Ok(cut)) = (framed(&[input]), framed(&frames)) {
        assert_eq!(whole, cut, "framed {step} bytes at a time");
        assert!(input.starts_with(&whole.0));
        if let Ok(decoded) = decode(&[input]) {
            let data: Vec<Vec<u8>> = decoded.into_iter().map(|e| e.data.to_vec()).collect();
            assert_eq!(whole.1, data, "the framer's events are the decoder's");
        }
    }
    let chat = ChatWatch::new(4096).with_transcript().strip_usage(true);
    watched(ApiWatch::Chat(chat), &frames);
    // The typed-event watches, and each again as a continuation (replaying what it had).
    for api in [crate::Api::Responses, crate::Api::Messages] {
        watched(
            ApiWatch::Typed(Box::new(TypedWatch::new(api, 4096).with_transcript())),
            &frames,
        );
    }
    let _ = crate::Chunk::parse(input);
    for endpoint in [
        crate::Endpoint::ChatCompletions,
        crate::Endpoint::Responses,
        crate::Endpoint::Messages,
    ] {
        let _ = crate::LlmRequest::parse(endpoint, input);
    }
}

/// A watch fed `frames`: it never panics, and what it forwards holds whole events only; once
/// cut, the same frames again as the continuation.
fn watched(mut watch: ApiWatch, frames: &[&[u8]]) {
    let mut out = Vec::new();
    let feed = |watch: &mut ApiWatch, out: &mut Vec<u8>| {
        for frame in frames {
            match watch.push(Bytes::copy_from_slice(frame)) {
                Ok(Some(piece)) => out.extend_from_slice(&piece),
                Ok(None) => {}
                Err(_) => break,
            }
        }
    };
    feed(&mut watch, &mut out);
    watch.ended();
    let _ = watch.finish();
    if watch.cut().is_some() && !watch.is_done() {
        watch.resume(crate::stream::Continuation::Replay);
        feed(&mut watch, &mut out);
    }
    let mut decoder = SseDecoder::new();
    decoder.push(Bytes::from(out));
    while let Ok(Some(_)) = decoder.next_event() {}
    assert!(
        !decoder.has_partial_event(),
        "a watch forwards whole events"
    );
}

#[cfg(test)]
mod tests {
    /// Every committed seed and regression input passes the fuzz target's checks.
    #[test]
    fn seeds_and_regressions_pass() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
        let mut seen = 0;
        for dir in ["seeds/sse", "regressions/sse"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                super::check_sse(&std::fs::read(&path).unwrap());
                seen += 1;
            }
        }
        assert!(seen > 0, "the seed corpus is committed");
    }
}
