//! The coordinator's audit log: what it records, and the export that gathers every
//! signer's log with its own.

use std::sync::Arc;

use custody_audit::export::{self as ax, Bundle, PartyLog};
use custody_audit::transcript::{Message, Party, SignedRequest, SigningTranscript, SIGNING_FORMAT};
use custody_audit::{AuditError, AuditLog};
use custody_protocol::proto::Transfer;
use custody_protocol::sign::COORDINATOR;
use custody_protocol::EngineSuite;
use tonic::Status;

use crate::core::{Core, KeyRt};
use crate::signing::Signed;
use crate::store::{SignRecord, Store};

/// The action the entry records is refused: nothing is acknowledged that is not in
/// the log.
pub(crate) fn refused(e: AuditError) -> Status {
    tracing::error!("{e}");
    Status::unavailable(format!("{e}: refused because it cannot be recorded"))
}

/// Opens the log in the data directory, puts back into `store` every signing result
/// the log holds and the store lost (the store flushes them in the background: the log
/// is what makes them durable), and records the start.
pub(crate) fn open(
    core_dir: &std::path::Path,
    name: &str,
    identity: custody_audit::writer::SharedIdentity,
    store: &Store,
) -> Result<AuditLog, String> {
    // By request id: should the log hold two signatures of one request (a retry after
    // the store refused the first), the later one is what the client last received.
    let mut lost: std::collections::BTreeMap<String, SignRecord> = Default::default();
    let mut problem = None;
    let (log, opened) = AuditLog::open_visiting(
        &core_dir.join("audit.log"),
        identity,
        name,
        "coordinator",
        &mut |e| {
            if problem.is_none() && e.kind == ax::SIGNATURE {
                match lost_result(store, e) {
                    Ok(Some(rec)) => {
                        lost.insert(rec.request_id.clone(), rec);
                    }
                    Ok(None) => {}
                    Err(why) => problem = Some(format!(
                        "audit entry {} (a signature) cannot be read: {why}; the coordinator does not start, since it could not tell whether that request was signed (check the log with `custody audit verify`)",
                        e.seq
                    )),
                }
            }
        },
    )
    .map_err(|e| e.to_string())?;
    if let Some(p) = problem {
        return Err(p);
    }
    if !lost.is_empty() {
        let lost: Vec<(SignRecord, bool)> = lost
            .into_values()
            .map(|r| {
                let counted = store
                    .key(&r.key_id)
                    .ok()
                    .flatten()
                    .is_some_and(|k| k.policy.get().max_signatures.is_some());
                (r, counted)
            })
            .collect();
        store
            .restore_requests(&lost)
            .map_err(|e| format!("restoring signing results from the audit log: {e}"))?;
        tracing::warn!(
            restored = lost.len(),
            "signing results the database lost in a crash are back, from the audit log"
        );
    }
    tracing::info!(path = %log.path().display(), entries = opened.entries, "audit log open");
    log.record(
        ax::DAEMON_STARTED,
        &ax::Started {
            version: env!("CARGO_PKG_VERSION").into(),
        },
    );
    Ok(log)
}

/// The signing result a `signature` entry records, if the store does not have it.
fn lost_result(store: &Store, e: &custody_audit::Entry) -> Result<Option<SignRecord>, String> {
    // Most are in the store: read only the request id first.
    #[derive(serde::Deserialize)]
    struct Peek {
        transcript: PeekTranscript,
    }
    #[derive(serde::Deserialize)]
    struct PeekTranscript {
        request_id: String,
    }
    let peek: Peek = serde_json::from_slice(&e.body).map_err(|e| e.to_string())?;
    if store
        .has_request(&peek.transcript.request_id)
        .map_err(|e| e.to_string())?
    {
        return Ok(None);
    }
    let t = serde_json::from_slice::<ax::Signature>(&e.body)
        .map_err(|e| e.to_string())?
        .transcript;
    Ok(Some(SignRecord {
        message: t.message()?.into(),
        request_id: t.request_id,
        key_id: t.key_id,
        signature: hex::decode(&t.signature)
            .map_err(|_| "signature entry: signature is not hex".to_string())?
            .into(),
        signers: t.signers.iter().map(|p| p.id).collect(),
        session: t.session,
        created_at_ms: e.time_ms,
    }))
}

/// The transcript of a finished signature.
#[allow(clippy::too_many_arguments)]
pub(crate) fn signing_transcript<C: EngineSuite>(
    core: &Core,
    key: &KeyRt<C>,
    request_id: &str,
    message: &[u8],
    transfer: Option<&Transfer>,
    settlement: Option<&custody_protocol::proto::Settlement>,
    approvals: &[custody_protocol::proto::Approval],
    signed: &Signed,
) -> SigningTranscript {
    let party = |p: custody_protocol::ParticipantId| Party {
        id: p.get(),
        name: key
            .members
            .iter()
            .find(|(q, _)| *q == p)
            .map(|(_, h)| h.name.clone())
            .unwrap_or_default(),
        identity: key
            .roster
            .get(p)
            .map(|i| hex::encode(i.to_bytes()))
            .unwrap_or_default(),
        certificate: None,
    };
    SigningTranscript {
        format: SIGNING_FORMAT.into(),
        key_id: key.meta.key_id.clone(),
        suite: C::SUITE.name().into(),
        request_id: request_id.into(),
        request: signed_request(request_id, message, transfer, settlement),
        approvals: approvals
            .iter()
            .map(|a| custody_audit::transcript::ApprovalRecord {
                approver: hex::encode(&a.approver),
                signature: hex::encode(&a.signature),
            })
            .collect(),
        session: signed.session.to_string(),
        coordinator: Party {
            id: COORDINATOR.get(),
            name: core.name.clone(),
            identity: hex::encode(core.identity_public.to_bytes()),
            certificate: None,
        },
        signers: signed.signers.iter().map(|p| party(*p)).collect(),
        public_key_set: hex::encode(&*key.meta.public_key_set),
        package: hex::encode(&signed.package),
        shares: signed
            .shares
            .iter()
            .map(|(p, e)| Message {
                from: p.get(),
                envelope: hex::encode(e),
            })
            .collect(),
        signature: hex::encode(signed.signature),
    }
}

/// Gathers every signer's sealed log and ours into one bundle.
pub(crate) async fn export(core: &Arc<Core>, nonce: &[u8]) -> Result<Bundle, Status> {
    let mut tasks = Vec::new();
    for h in &core.signers {
        let (h, nonce, timeout) = (h.clone(), nonce.to_vec(), core.timeouts.dkg());
        tasks.push(tokio::spawn(async move {
            let link = h.link();
            let fetch = async {
                let id = link.identity().await?;
                let log = link.export_audit(nonce).await?;
                Ok::<_, crate::link::LinkError>((id, log))
            };
            let r = match tokio::time::timeout(timeout, fetch).await {
                Ok(r) => r,
                Err(_) => Err(crate::link::LinkError::timed_out("no answer")),
            };
            h.observe(&r);
            match r {
                Ok((id, log)) => PartyLog {
                    name: h.name.clone(),
                    role: "signer".into(),
                    identity: hex::encode(&id.identity),
                    certificate: Some(hex::encode(&id.certificate)),
                    log: hex::encode(log),
                    unavailable: None,
                },
                Err(st) => PartyLog {
                    name: h.name.clone(),
                    role: "signer".into(),
                    identity: String::new(),
                    certificate: None,
                    log: String::new(),
                    unavailable: Some(format!("{:?}: {st}", st.code())),
                },
            }
        }));
    }
    let own = core.audit.export(nonce).await.map_err(refused)?;
    let mut parties = vec![PartyLog {
        name: core.name.clone(),
        role: "coordinator".into(),
        identity: hex::encode(core.identity_public.to_bytes()),
        certificate: Some(hex::encode(&core.cert_der)),
        log: hex::encode(own),
        unavailable: None,
    }];
    for t in tasks {
        parties.push(
            t.await
                .map_err(|e| Status::internal(format!("task: {e}")))?,
        );
    }
    Ok(Bundle {
        format: ax::EXPORT_FORMAT.into(),
        exported_at_ms: core.clock.now_ms(),
        nonce: hex::encode(nonce),
        parties,
    })
}

/// What was asked to be signed, as the audit log records it.
pub(crate) fn signed_request(
    request_id: &str,
    message: &[u8],
    transfer: Option<&Transfer>,
    settlement: Option<&custody_protocol::proto::Settlement>,
) -> SignedRequest {
    match (transfer, settlement) {
        (_, Some(s)) => match custody_api::settlement(s, request_id) {
            Ok(s) => SignedRequest::from_settlement(&s),
            // Checked when the request came in; a raw record keeps the bytes.
            Err(_) => SignedRequest::Raw {
                message: hex::encode(message),
            },
        },
        (Some(t), None) => SignedRequest::Transfer {
            asset: t.asset.clone(),
            // Canonical decimal (the signers parsed it; "+5" and "05" are 5).
            amount: t
                .amount
                .parse::<u128>()
                .map_or_else(|_| t.amount.clone(), |a| a.to_string()),
            destination: t.destination.clone(),
            memo: t.memo.clone(),
        },
        (None, None) => SignedRequest::Raw {
            message: hex::encode(message),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use custody_audit::transcript::SignedRequest;

    fn transcript(request_id: &str, message: &[u8]) -> SigningTranscript {
        let party = |id: u16| Party {
            id,
            name: format!("signer-{id}"),
            identity: String::new(),
            certificate: None,
        };
        SigningTranscript {
            format: SIGNING_FORMAT.into(),
            key_id: "k1".into(),
            suite: "ed25519".into(),
            request_id: request_id.into(),
            request: SignedRequest::Raw {
                message: hex::encode(message),
            },
            approvals: vec![],
            session: "00".repeat(32),
            coordinator: party(0),
            signers: vec![party(1), party(3)],
            public_key_set: String::new(),
            package: String::new(),
            shares: vec![],
            signature: "ab".repeat(64),
        }
    }

    /// Opens the store again once the last run's flusher thread let go of it.
    fn reopen(path: &std::path::Path) -> Store {
        for _ in 0..200 {
            if let Ok(s) = Store::open(path) {
                return s;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Store::open(path).unwrap()
    }

    /// A key with a signature limit (only such keys are counted).
    fn limited_key(key_id: &str) -> crate::store::KeyMeta {
        let mut policy = hot_warm_cold::Policy::permissive_hot();
        policy.max_signatures = Some(100);
        crate::store::KeyMeta {
            key_id: key_id.into(),
            name: String::new(),
            suite: "ed25519".into(),
            threshold: 2,
            signers: vec![],
            identities: vec![],
            public_key: Default::default(),
            public_key_set: Default::default(),
            tier: hot_warm_cold::Tier::Hot,
            state: hot_warm_cold::State::Active,
            created_at: 0,
            dkg_session: String::new(),
            policy: crate::store::StoredPolicy::new(&policy),
            rotated_from: String::new(),
            rotated_to: String::new(),
            state_reason: String::new(),
            policy_version: 0,
            pending_refresh: None,
        }
    }

    /// Appends a `signature` entry and waits for it (and for everything before it,
    /// such as the start entry, so the file is complete before it is opened again).
    async fn sign_entry(log: &AuditLog, t: SigningTranscript) {
        log.append(ax::SIGNATURE, &ax::Signature { transcript: t })
            .await
            .unwrap();
    }

    /// A result the audit log holds and the store lost (a crash before the store's
    /// background flush) is back after the next open, once, and counted once; of two
    /// signatures of one request id the later one comes back.
    #[tokio::test]
    async fn results_lost_by_the_store_come_back_from_the_audit_log() {
        let dir =
            std::env::temp_dir().join(format!("custody-coord-restore-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let id: custody_audit::writer::SharedIdentity =
            Arc::new(custody_protocol::IdentityKey::from_secret_bytes(&[9; 64]));
        {
            // The run that crashed: every result reached the log, one the store.
            let store = Store::open(&dir.join("db")).unwrap();
            store.put_key(&limited_key("k1")).unwrap();
            let log = open(&dir, "coordinator", id.clone(), &store).unwrap();
            sign_entry(&log, transcript("kept", b"one")).await;
            sign_entry(&log, transcript("lost", b"two")).await;
            let mut first = transcript("dup", b"three");
            first.signature = "cd".repeat(64);
            sign_entry(&log, first).await;
            sign_entry(&log, transcript("dup", b"three")).await;
            let bytes = std::fs::read(dir.join("audit.log")).unwrap();
            let entry = custody_audit::entry::parse_records(&bytes)
                .unwrap()
                .into_iter()
                .find(|e| e.kind == ax::SIGNATURE)
                .unwrap();
            let kept = lost_result(&store, &entry).unwrap().unwrap();
            assert_eq!(kept.request_id, "kept");
            store.bump_signatures("k1").unwrap();
            store.put_request(&kept).unwrap();
            store.restore_requests(&[]).unwrap(); // flush
            assert!(lost_result(&store, &entry).unwrap().is_none());
        }
        let store = reopen(&dir.join("db"));
        assert!(store.request("lost").unwrap().is_none());
        let log = open(&dir, "coordinator", id.clone(), &store).unwrap();
        let lost = store.request("lost").unwrap().expect("restored");
        assert_eq!(&*lost.message, b"two");
        assert_eq!(lost.signers, vec![1, 3]);
        assert_eq!(&*lost.signature, &[0xab; 64][..]);
        assert_eq!(lost.key_id, "k1");
        assert!(store.request("kept").unwrap().is_some());
        let dup = store.request("dup").unwrap().expect("restored");
        assert_eq!(
            &*dup.signature,
            &[0xab; 64][..],
            "the later of two signatures"
        );
        // Counted: the kept one before the crash, the two restored ones now.
        assert_eq!(store.signatures("k1").unwrap(), 3);
        sign_entry(&log, transcript("after", b"four")).await;
        store
            .put_request(
                &lost_result(&store, &{
                    let bytes = std::fs::read(dir.join("audit.log")).unwrap();
                    custody_audit::entry::parse_records(&bytes)
                        .unwrap()
                        .pop()
                        .unwrap()
                })
                .unwrap()
                .unwrap(),
            )
            .unwrap();
        store.restore_requests(&[]).unwrap(); // flush
        drop(log);
        drop(store);
        // Opening again restores and counts nothing more.
        let store = reopen(&dir.join("db"));
        let log = open(&dir, "coordinator", id, &store).unwrap();
        assert_eq!(store.signatures("k1").unwrap(), 3);
        sign_entry(&log, transcript("last", b"five")).await;
        drop(log);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
