//! A signature made and recorded: the quorum signs ([`crate::signing`]), the whole
//! ceremony goes into the audit log, then the result into the store, before anyone
//! learns the signature; the key's signature count and its automatic retirement at the
//! limit. Every path that signs (hot requests, warm requests once approved, the cold
//! path's last share) records through here.

use std::sync::Arc;

use custody_audit::export::{Refused, Signature as AuditedSignature, SIGNATURE, SIGN_REFUSED};
use custody_protocol::proto::*;
use tonic::Status;
use tracing::warn;

use crate::core::{AnyKey, Core};
use crate::lifecycle::retire_by_policy;
use crate::signing;
use crate::store::SignRecord;

/// The stored result as clients see it.
pub(crate) fn sign_proto(r: &SignRecord, replayed: bool) -> SignResponse {
    SignResponse {
        state: "signed".into(),
        pending: None,
        request_id: r.request_id.clone(),
        key_id: r.key_id.clone(),
        signature: r.signature.to_vec(),
        signers: r.signers.iter().map(|p| *p as u32).collect(),
        replayed,
        message: r.message.to_vec(),
    }
}

/// A store failure as a status (logged here).
pub(crate) fn store_err(e: crate::store::StoreError) -> Status {
    warn!("store: {e}");
    Status::internal(format!("coordinator storage: {e}"))
}

/// Signs with `key` and records the result: the whole ceremony in the audit log, then
/// the result in the store, before anyone learns the signature.
pub(crate) async fn sign_and_record(
    core: &Arc<Core>,
    key: &AnyKey,
    request_id: &str,
    message: Vec<u8>,
    transfer: Option<Transfer>,
    settlement: Option<custody_protocol::proto::Settlement>,
    approvals: Vec<custody_protocol::proto::Approval>,
) -> Result<SignRecord, Status> {
    let key_id = &key.meta().key_id;
    let t0 = std::time::Instant::now();
    let signed = match key {
        AnyKey::Secp(k) => {
            signing::sign(
                core,
                k,
                message.clone(),
                request_id,
                transfer.clone(),
                settlement.clone(),
                approvals.clone(),
            )
            .await
        }
        AnyKey::Ed(k) => {
            signing::sign(
                core,
                k,
                message.clone(),
                request_id,
                transfer.clone(),
                settlement.clone(),
                approvals.clone(),
            )
            .await
        }
    };
    let signed = match signed {
        Ok(s) => s,
        Err(st) => {
            if st.code() == tonic::Code::PermissionDenied {
                core.audit.record(
                    SIGN_REFUSED,
                    &Refused {
                        key_id: key_id.to_string(),
                        request_id: request_id.to_string(),
                        reason: st.message().to_string(),
                    },
                );
            }
            return Err(st);
        }
    };
    let rec = record_signature(
        core, key, request_id, message, transfer, settlement, approvals, signed,
    )
    .await?;
    core.metrics.signed(key.meta(), t0.elapsed());
    Ok(rec)
}

/// Records a finished signature: its whole ceremony in the audit log, then the result
/// in the store, before anyone learns it.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn record_signature(
    core: &Arc<Core>,
    key: &AnyKey,
    request_id: &str,
    message: Vec<u8>,
    transfer: Option<Transfer>,
    settlement: Option<custody_protocol::proto::Settlement>,
    approvals: Vec<custody_protocol::proto::Approval>,
    signed: signing::Signed,
) -> Result<SignRecord, Status> {
    let key_id = &key.meta().key_id;
    let transcript = match key {
        AnyKey::Secp(k) => crate::audit::signing_transcript(
            core,
            k,
            request_id,
            &message,
            transfer.as_ref(),
            settlement.as_ref(),
            &approvals,
            &signed,
        ),
        AnyKey::Ed(k) => crate::audit::signing_transcript(
            core,
            k,
            request_id,
            &message,
            transfer.as_ref(),
            settlement.as_ref(),
            &approvals,
            &signed,
        ),
    };
    core.audit
        .append(SIGNATURE, &AuditedSignature { transcript })
        .await
        .map_err(crate::audit::refused)?;
    let rec = SignRecord {
        request_id: request_id.to_string(),
        key_id: key_id.to_string(),
        message: message.clone().into(),
        signature: signed.signature.to_vec().into(),
        signers: signed.signers.iter().map(|p| p.get()).collect(),
        session: signed.session.to_string(),
        created_at_ms: core.clock.now_ms(),
    };
    let t0 = std::time::Instant::now();
    // A maximum number of signatures: counted here, by what this coordinator signed
    // (a signer's word alone does not retire a key); at the limit the key retires.
    // Counted before the result is stored: sled recovers its writes in order, so a
    // crash never keeps the result without its count (a count without its result is
    // counted again when the result comes back from the audit log: early, never late).
    let mut limit = None;
    if let Some(max) = key.meta().policy.get().max_signatures {
        limit = Some((core.store.bump_signatures(key_id).map_err(store_err)?, max));
    }
    // Durable already, in the audit log; the store flushes it in the background.
    core.store.put_request(&rec).map_err(store_err)?;
    if let Some((n, max)) = limit.filter(|(n, max)| n >= max) {
        let (core, key_id) = (core.clone(), key_id.to_string());
        let why = format!("{n} signatures made, policy allows {max}");
        tokio::spawn(async move {
            if let Err(e) = retire_by_policy(&core, &key_id, &why).await {
                warn!(%key_id, "automatic retirement not complete: {}", e.message());
            }
        });
    }
    tracing::debug!(
        store_us = t0.elapsed().as_micros() as u64,
        "signing result stored"
    );
    Ok(rec)
}
