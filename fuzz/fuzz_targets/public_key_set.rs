#![no_main]
//! A public key set as stored and exchanged (canonical encoding).
libfuzzer_sys::fuzz_target!(|data: &[u8]| custody_protocol::fuzzing::public_key_set(data));
