#![no_main]
//! A key share as unsealed from storage.
libfuzzer_sys::fuzz_target!(|data: &[u8]| custody_protocol::fuzzing::key_share(data));
