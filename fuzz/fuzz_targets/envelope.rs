#![no_main]
//! A signed envelope from a peer or the relay.
libfuzzer_sys::fuzz_target!(|data: &[u8]| custody_protocol::fuzzing::envelope(data));
