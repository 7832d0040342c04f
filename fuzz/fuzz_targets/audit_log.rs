#![no_main]
//! An exported audit log (records, chain, signatures, seal).
libfuzzer_sys::fuzz_target!(|data: &[u8]| custody_audit::fuzzing::log(data));
