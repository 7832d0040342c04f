//! Entry points for the fuzz targets in `fuzz/`: untrusted bytes in, never a panic, and
//! what must hold of whatever parses.

use custody_protocol::Identity;

use crate::chain::verify_log;
use crate::cold::{ColdRequest, ColdResponse};
use crate::entry::parse_records;
use crate::export::{verify_bundle, Bundle};
use crate::transcript::{replay_dkg, replay_repair, replay_signing, RepairTranscript, Trust};
use crate::{DkgTranscript, SigningTranscript};

/// The writer key and nonce the log target verifies against (its seeds are written
/// with them, so the fuzzer starts from logs that verify).
pub fn writer() -> custody_protocol::IdentityKey {
    custody_protocol::IdentityKey::from_secret_bytes(&[7; 64])
}

/// See [`writer`].
pub const FUZZ_NONCE: &[u8] = b"fuzz nonce 16byt";

/// An audit log as exported: every record re-encodes to its own bytes; verification
/// (against a fixed writer key and nonce) never panics.
pub fn log(bytes: &[u8]) {
    if let Ok(entries) = parse_records(bytes) {
        let again: Vec<u8> = entries.iter().flat_map(|e| e.to_record()).collect();
        assert_eq!(again, bytes, "records re-encode to other bytes");
    }
    let _ = verify_log(bytes, &writer().public().verify, Some(FUZZ_NONCE));
}

/// A ceremony transcript of any kind (JSON), replayed with the identities it names.
pub fn transcript(bytes: &[u8]) {
    if let Ok(t) = serde_json::from_slice::<DkgTranscript>(bytes) {
        let _ = replay_dkg(&t, &Trust::Unpinned);
    }
    if let Ok(t) = serde_json::from_slice::<SigningTranscript>(bytes) {
        let _ = replay_signing(&t, &Trust::Unpinned, None);
    }
    if let Ok(t) = serde_json::from_slice::<RepairTranscript>(bytes) {
        let _ = replay_repair(&t, &Trust::Unpinned, None, None);
    }
}

/// An export bundle (JSON), verified with its own identities.
pub fn bundle(bytes: &[u8]) {
    if let Ok(b) = serde_json::from_slice::<Bundle>(bytes) {
        let _ = verify_bundle(&b, &Trust::Unpinned);
    }
}

/// A cold-tier request or response file.
pub fn cold_file(bytes: &[u8]) {
    if let Ok(r) = serde_json::from_slice::<ColdRequest>(bytes) {
        let _ = r.signed_bytes();
    }
    let _ = serde_json::from_slice::<ColdResponse>(bytes);
}

/// A key policy (JSON): whatever parses survives its canonical form unchanged.
pub fn policy(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Ok(p) = hot_warm_cold::Policy::from_json(text) {
        assert_eq!(
            hot_warm_cold::Policy::from_json(&p.to_json()),
            Ok(p),
            "a policy changes through its canonical form"
        );
    }
}
