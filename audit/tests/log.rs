//! The audit log: written by the real writer, verified by the offline verifier, and
//! every mutation (flipped byte, truncation, dropped or reordered entry) detected.

mod common;

use std::sync::OnceLock;

use custody_audit::chain::{verify_log, EXPORT};
use custody_audit::entry::{parse_records, Entry};
use custody_audit::{AuditError, AuditLog};
use custody_protocol::{Identity, IdentityKey};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use common::{shared, Scratch};

const NONCE: &[u8] = b"auditor nonce 42";

fn key(seed: u64) -> IdentityKey {
    IdentityKey::generate(&mut ChaCha20Rng::seed_from_u64(seed))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A log with a genesis, 12 entries written concurrently, and the export seal.
fn exported() -> &'static (Vec<u8>, [u8; 32]) {
    static LOG: OnceLock<(Vec<u8>, [u8; 32])> = OnceLock::new();
    LOG.get_or_init(|| {
        let dir = Scratch::new("log");
        let k = key(1);
        let (log, opened) =
            AuditLog::open(&dir.0.join("audit.log"), shared(&k), "signer-1", "signer").unwrap();
        assert_eq!(opened.entries, 0);
        let bytes = rt().block_on(async {
            let mut tasks = Vec::new();
            for i in 0..12u32 {
                let log = log.clone();
                tasks.push(tokio::spawn(async move {
                    log.append("share-issued", &serde_json::json!({ "n": i }))
                        .await
                }));
            }
            for t in tasks {
                t.await.unwrap().unwrap();
            }
            log.export(NONCE).await.unwrap()
        });
        (bytes, k.public().verify)
    })
}

#[test]
fn a_written_log_verifies_and_survives_restarts_and_torn_writes() {
    let (bytes, writer) = exported();
    let entries = verify_log(bytes, writer, Some(NONCE)).expect("clean log");
    assert_eq!(entries.len(), 14);
    assert_eq!(entries.last().unwrap().kind, EXPORT);
    // Another writer's key, or another nonce, fail.
    assert!(verify_log(bytes, &key(2).public().verify, Some(NONCE)).is_err());
    assert!(verify_log(bytes, writer, Some(b"other")).is_err());

    let dir = Scratch::new("reopen");
    let path = dir.0.join("audit.log");
    let k = key(3);
    let rt = rt();
    {
        let (log, _) = AuditLog::open(&path, shared(&k), "coordinator", "coordinator").unwrap();
        rt.block_on(log.append("daemon-started", &serde_json::json!({})))
            .unwrap();
    }
    // A crash in the middle of a write leaves half a record: cut off on open.
    let mut raw = std::fs::read(&path).unwrap();
    let whole = raw.len();
    raw.extend_from_slice(&[0, 0, 1, 0, 1, 2, 3]);
    std::fs::write(&path, &raw).unwrap();
    let (log, opened) = AuditLog::open(&path, shared(&k), "coordinator", "coordinator").unwrap();
    assert_eq!(opened.entries, 2);
    assert_eq!(opened.truncated_tail, 7);
    assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, whole);
    let sealed = rt.block_on(async {
        log.append("daemon-started", &serde_json::json!({}))
            .await
            .unwrap();
        log.export(b"n2").await.unwrap()
    });
    let entries = verify_log(&sealed, &k.public().verify, Some(b"n2")).unwrap();
    assert_eq!(entries.len(), 4);
    drop(log);

    // Zeros where the file grew before a write's data landed: cut off too, however
    // long (read in chunks, not as a whole file).
    let mut raw = std::fs::read(&path).unwrap();
    let whole = raw.len();
    raw.extend(std::iter::repeat_n(0u8, 3 << 20));
    std::fs::write(&path, &raw).unwrap();
    let (log, opened) = AuditLog::open(&path, shared(&k), "coordinator", "coordinator").unwrap();
    assert_eq!(opened.entries, 4);
    assert_eq!(opened.truncated_tail, 3 << 20);
    assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, whole);
    drop(log);
    // A malformed record with anything but zeros after it is damage, not a torn tail.
    let mut raw = std::fs::read(&path).unwrap();
    raw.extend_from_slice(&[0, 0, 0, 0]);
    raw.extend(std::iter::repeat_n(0u8, 100_000));
    raw.push(1);
    std::fs::write(&path, &raw).unwrap();
    let err = AuditLog::open(&path, shared(&k), "coordinator", "coordinator").unwrap_err();
    assert!(matches!(err, AuditError::Damaged { .. }), "{err}");
    raw.truncate(whole);
    std::fs::write(&path, &raw).unwrap();

    // Another daemon's key cannot continue this log.
    let err = AuditLog::open(&path, shared(&key(4)), "coordinator", "coordinator").unwrap_err();
    assert!(matches!(err, AuditError::Damaged { .. }), "{err}");
    // An altered entry breaks the chain: the daemon refuses to start on it.
    let mut raw = std::fs::read(&path).unwrap();
    raw[60] ^= 1;
    std::fs::write(&path, &raw).unwrap();
    let err = AuditLog::open(&path, shared(&k), "coordinator", "coordinator").unwrap_err();
    assert!(matches!(err, AuditError::Damaged { .. }), "{err}");
}

#[test]
fn a_log_that_cannot_be_written_fails_closed() {
    let dir = Scratch::new("readonly");
    let path = dir.0.join("audit.log");
    let k = key(6);
    drop(AuditLog::open(&path, shared(&k), "s", "signer").unwrap());
    // The same log on a disk that refuses writes (a read-only handle).
    let ro = std::fs::File::open(&path).unwrap();
    let (log, _) = AuditLog::open_file(&path, ro, shared(&k), "s", "signer").unwrap();
    let rt = rt();
    let first = rt.block_on(log.append("share-issued", &serde_json::json!({})));
    assert!(matches!(first, Err(AuditError::Io { .. })), "{first:?}");
    // Every later append fails too: nothing is acknowledged after a failed write.
    let later = rt.block_on(log.append("share-issued", &serde_json::json!({})));
    assert!(matches!(later, Err(AuditError::Failed { .. })), "{later:?}");
    assert!(rt.block_on(log.export(b"nonce")).is_err());
    // Nothing half-written: the log on disk still verifies up to its last entry.
    let raw = std::fs::read(&path).unwrap();
    assert_eq!(verify_log(&raw, &k.public().verify, None).unwrap().len(), 1);
}

#[test]
fn bad_entries_are_refused_before_writing() {
    let dir = Scratch::new("fields");
    let (log, _) =
        AuditLog::open(&dir.0.join("audit.log"), shared(&key(5)), "s", "signer").unwrap();
    let r = rt().block_on(log.append("Not A Kind", &serde_json::json!({})));
    assert!(matches!(r, Err(AuditError::Entry(_))));
}

fn records(bytes: &[u8]) -> Vec<Vec<u8>> {
    parse_records(bytes)
        .unwrap()
        .iter()
        .map(Entry::to_record)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_flipped_byte_is_detected(at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let (bytes, writer) = exported();
        let mut m = bytes.clone();
        m[at.index(bytes.len())] ^= 1 << bit;
        prop_assert!(verify_log(&m, writer, Some(NONCE)).is_err());
    }

    #[test]
    fn any_truncation_is_detected(len in any::<prop::sample::Index>()) {
        let (bytes, writer) = exported();
        let cut = len.index(bytes.len());
        prop_assert!(verify_log(&bytes[..cut], writer, Some(NONCE)).is_err());
    }

    #[test]
    fn any_dropped_entry_is_detected(i in any::<prop::sample::Index>()) {
        let (bytes, writer) = exported();
        let mut recs = records(bytes);
        recs.remove(i.index(recs.len()));
        prop_assert!(verify_log(&recs.concat(), writer, Some(NONCE)).is_err());
    }

    #[test]
    fn any_reordering_is_detected(i in any::<prop::sample::Index>(), j in any::<prop::sample::Index>()) {
        let (bytes, writer) = exported();
        let mut recs = records(bytes);
        let (i, j) = (i.index(recs.len()), j.index(recs.len()));
        prop_assume!(i != j);
        recs.swap(i, j);
        prop_assert!(verify_log(&recs.concat(), writer, Some(NONCE)).is_err());
    }
}
