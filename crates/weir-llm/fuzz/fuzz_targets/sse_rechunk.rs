//! The SSE decoder never panics, and any chunking of the input yields the events that the
//! whole input yields. Run: `cargo +nightly fuzz run sse_rechunk` in crates/weir-llm.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use weir_llm::sse::{SseDecoder, SseEvent};

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

fuzz_target!(|data: &[u8]| {
    let Some((&seed, input)) = data.split_first() else { return };
    let whole = decode(&[input]);
    let step = usize::from(seed % 17) + 1;
    let frames: Vec<&[u8]> = input.chunks(step).collect();
    let cut = decode(&frames);
    if let (Ok(whole), Ok(cut)) = (whole, cut) {
        assert_eq!(whole, cut);
    }
    let _ = weir_llm::Chunk::parse(input);
    let _ = weir_llm::LlmRequest::parse(weir_llm::Endpoint::ChatCompletions, input);
});
