#![no_main]
//! A sealed blob (share, identity, cold nonces) read back from disk.
libfuzzer_sys::fuzz_target!(|data: &[u8]| { let _ = custody_hsm::Sealer::unseal(&custody_hsm::InsecureSoftwareSealer::from_key(&[9; 32], "fuzz".into()), b"fuzz", data); });
