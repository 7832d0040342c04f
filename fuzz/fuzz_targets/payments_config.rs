#![no_main]
//! payments.toml.
libfuzzer_sys::fuzz_target!(|data: &[u8]| custody_payments::fuzzing::config(data));
