#![no_main]
//! An audit export bundle, verified.
libfuzzer_sys::fuzz_target!(|data: &[u8]| custody_audit::fuzzing::bundle(data));
