#![no_main]
//! Any wire message (header and body), both suites, every kind.
libfuzzer_sys::fuzz_target!(|data: &[u8]| custody_protocol::fuzzing::message(data));
