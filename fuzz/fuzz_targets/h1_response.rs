//! weir's HTTP/1.1 response decoder on any bytes, read any way: see
//! `weir_client::fuzzing::check_response`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weir_client::fuzzing::check_response(data));
