//! The SSE decoder, the whole-event framer and the chat stream watch on any bytes, cut any
//! way: see `weir_llm::fuzzing::check_sse`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_llm::fuzzing::check_sse(data));
