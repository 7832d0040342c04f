#![no_main]
//! An inclusion proof of a payment (custody-payment-proof\/v1 JSON), verified offline.
libfuzzer_sys::fuzz_target!(|data: &[u8]| custody_payments::fuzzing::proof(data));
