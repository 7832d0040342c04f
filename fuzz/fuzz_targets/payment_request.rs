#![no_main]
//! A payment backend's CreatePayment or Tokenize request (protobuf), as checked before storing.
libfuzzer_sys::fuzz_target!(|data: &[u8]| custody_payments::fuzzing::request(data));
