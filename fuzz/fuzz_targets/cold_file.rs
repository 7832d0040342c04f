#![no_main]
//! A cold-tier request or response file.
libfuzzer_sys::fuzz_target!(|data: &[u8]| custody_audit::fuzzing::cold_file(data));
