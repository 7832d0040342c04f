//! The coordinator's audit log: what it records, and the export that gathers every
//! signer's log with its own.

use std::sync::Arc;

use custody_audit::export::{self as ax, Bundle, PartyLog};
use custody_audit::transcript::{Message, Party, SignedRequest, SigningTranscript, SIGNING_FORMAT};
use custody_audit::{AuditError, AuditLog};
use custody_protocol::proto::{ExportAuditRequest, Transfer};
use custody_protocol::sign::COORDINATOR;
use custody_protocol::EngineSuite;
use tonic::Status;

use crate::core::{Core, KeyRt};
use crate::signing::Signed;

/// The action the entry records is refused: nothing is acknowledged that is not in
/// the log.
pub(crate) fn refused(e: AuditError) -> Status {
    tracing::error!("{e}");
    Status::unavailable(format!("{e}: refused because it cannot be recorded"))
}

/// Opens the log in the data directory and records the start.
pub(crate) fn open(
    core_dir: &std::path::Path,
    name: &str,
    identity: custody_audit::writer::SharedIdentity,
) -> Result<AuditLog, String> {
    let (log, opened) = AuditLog::open(&core_dir.join("audit.log"), identity, name, "coordinator")
        .map_err(|e| e.to_string())?;
    tracing::info!(path = %log.path().display(), entries = opened.entries, "audit log open");
    log.record(
        ax::DAEMON_STARTED,
        &ax::Started {
            version: env!("CARGO_PKG_VERSION").into(),
        },
    );
    Ok(log)
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
        public_key_set: key.meta.public_key_set.clone(),
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
            let fetch = async {
                let mut c = h.client()?;
                let id = c
                    .identity(custody_protocol::proto::IdentityRequest {})
                    .await?
                    .into_inner();
                let mut stream = c
                    .export_audit(ExportAuditRequest { nonce })
                    .await?
                    .into_inner();
                let mut log = Vec::new();
                while let Some(chunk) = stream.message().await? {
                    log.extend_from_slice(&chunk.data);
                }
                Ok::<_, Status>((id, log))
            };
            let r = match tokio::time::timeout(timeout, fetch).await {
                Ok(r) => r,
                Err(_) => Err(Status::deadline_exceeded("no answer")),
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
                    unavailable: Some(format!("{:?}: {}", st.code(), st.message())),
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
        exported_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
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
        (_, Some(s)) => match hot_warm_cold::Settlement::from_proto(s, request_id) {
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
