#![no_main]
//! The coordinator's TOML config.
libfuzzer_sys::fuzz_target!(|data: &[u8]| { let _ = std::str::from_utf8(data).map(custody_coordinator::config::Config::parse); });
