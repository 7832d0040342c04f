#![no_main]
//! A key policy (JSON).
libfuzzer_sys::fuzz_target!(|data: &[u8]| custody_audit::fuzzing::policy(data));
