#![no_main]
//! A DKG, refresh, signing or repair transcript, replayed.
libfuzzer_sys::fuzz_target!(|data: &[u8]| custody_audit::fuzzing::transcript(data));
