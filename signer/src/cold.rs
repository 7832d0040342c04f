//! The offline file path of an air-gapped (cold) signature: `custody signer offline`
//! answers one request file without listening anywhere (the daemon must not run
//! meanwhile: it holds the database).
//!
//! An adapter like [`crate::grpc`]: it checks the coordinator's certificate and
//! signature over the file, builds the same typed asks, and calls the same core
//! checks as the hot path ([`Core::open_package`], [`Core::admit`],
//! [`Core::share_envelope`]); what differs is only that the nonces are sealed at rest
//! between the two trips, and marked used durably before the share leaves.

use custody_audit::cold::{ColdRequest, ColdResponse, COLD_REQUEST_FORMAT, COLD_RESPONSE_FORMAT};
use custody_audit::export as ax;
use custody_audit::transcript::SignedRequest;
use custody_pki::Role;
use custody_protocol::sign::{self, COORDINATOR};
use custody_protocol::wire::{Header, Kind};
use custody_protocol::{identity, EngineSuite, IdentityPublic, Roster};
use hot_warm_cold::{Approval, Request};
use rand_core::OsRng;
use tracing::info;

use crate::config::Config;
use crate::core::Core;
use crate::error::{stored_hex, Error, Result};
use crate::keys::{with_key, Loaded};
use crate::signing::{encode, Claim};
use crate::store::ColdNonces;

fn cold_aad(signer: &str, key_id: &str, request_id: &str) -> Vec<u8> {
    format!("custody/v1/cold-nonces\0{signer}\0{key_id}\0{request_id}").into_bytes()
}

fn file_hex(field: &str, s: &str) -> Result<Vec<u8>> {
    hex::decode(s).map_err(|_| Error::Invalid(format!("{field}: not hex")))
}

/// Answers one request file and returns the response file's bytes.
pub(crate) async fn offline(config: &Config, request: &[u8]) -> Result<Vec<u8>, String> {
    let req: ColdRequest =
        serde_json::from_slice(request).map_err(|e| format!("request file: {e}"))?;
    if req.format != COLD_REQUEST_FORMAT {
        return Err(format!(
            "request file: format {:?}, expected {COLD_REQUEST_FORMAT:?}",
            req.format
        ));
    }
    if req.signer != config.name {
        return Err(format!(
            "this request is for {}, not for {}",
            req.signer, config.name
        ));
    }
    let core = Core::open(config, custody_ops::clock::system()).map_err(|e| e.to_string())?;
    let envelope = answer(&core, &req).await.map_err(|e| e.to_string())?;
    let resp = ColdResponse {
        format: COLD_RESPONSE_FORMAT.into(),
        kind: req.kind.clone(),
        signer: config.name.clone(),
        key_id: req.key_id.clone(),
        request_id: req.request_id.clone(),
        envelope: hex::encode(envelope),
    };
    serde_json::to_vec_pretty(&resp).map_err(|e| e.to_string())
}

/// The coordinator's identity, once its certificate (our CA, role coordinator) and its
/// signature over the file check.
fn coordinator_of(core: &Core, req: &ColdRequest) -> Result<IdentityPublic> {
    let cert = file_hex("coordinator_certificate", &req.coordinator_certificate)?;
    let info = custody_pki::verify_issued_by(&cert, &core.ca_der)
        .map_err(|e| Error::Forbidden(format!("coordinator certificate: {e}")))?;
    if info.role != Role::Coordinator {
        return Err(Error::Forbidden(format!(
            "the request is signed by a {} certificate, not a coordinator's",
            info.role
        )));
    }
    let coord = info
        .identity
        .ok_or_else(|| Error::Forbidden("coordinator certificate carries no identity".into()))?;
    let sig: [u8; 64] = file_hex("signature", &req.signature)?
        .try_into()
        .map_err(|_| Error::Invalid("signature: not 64 bytes of hex".into()))?;
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&coord.verify)
        .map_err(|_| Error::Forbidden("coordinator identity key is invalid".into()))?;
    vk.verify_strict(
        &req.signed_bytes().map_err(Error::Invalid)?,
        &ed25519_dalek::Signature::from_bytes(&sig),
    )
    .map_err(|_| {
        Error::Forbidden("the coordinator's signature over the request does not verify".into())
    })?;
    Ok(coord)
}

/// The typed ask a request file describes.
fn claim_of(req: &ColdRequest) -> Result<Claim> {
    let id = req.request_id.clone();
    let (transfer, settlement, message) = match &req.request {
        SignedRequest::Settlement { .. } => (
            None,
            Some(req.request.settlement(&id).map_err(Error::Invalid)?),
            None,
        ),
        SignedRequest::Transfer {
            asset,
            amount,
            destination,
            memo,
        } => (
            Some(hot_warm_cold::Transfer {
                asset: asset.clone(),
                amount: amount.parse().map_err(|_| {
                    Error::Invalid(format!("transfer amount {amount:?} is not a number"))
                })?,
                destination: destination.clone(),
                request_id: id.clone(),
                memo: memo.clone(),
            }),
            None,
            None,
        ),
        SignedRequest::Raw { message } => (None, None, Some(file_hex("request message", message)?)),
    };
    Claim::new(&id, transfer, settlement, message)
}

async fn answer(core: &Core, req: &ColdRequest) -> Result<Vec<u8>> {
    let coordinator = coordinator_of(core, req)?;
    crate::grpc::check_id("key_id", &req.key_id)?;
    crate::grpc::check_id("request_id", &req.request_id)?;
    let approvals = req
        .approvals
        .iter()
        .map(|a| {
            Ok(custody_protocol::proto::Approval {
                approver: file_hex("approvals.approver", &a.approver)?,
                signature: file_hex("approvals.signature", &a.signature)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let approvals = crate::grpc::approvals(&approvals)?;
    let claim = claim_of(req)?;
    let request = claim
        .request()
        .ok_or_else(|| Error::Invalid("request: no message".into()))?;
    let k = core
        .key(&req.key_id)
        .ok_or_else(|| Error::NotFound(format!("no active key {} on this signer", req.key_id)))?;
    match req.kind.as_str() {
        "commit" => with_key!(&k, C, k => commit::<C>(core, k, &req.key_id, &request).await),
        "sign" => {
            with_key!(&k, C, k => sign::<C>(core, k, &req.key_id, claim, &approvals, coordinator, &req.package).await)
        }
        other => Err(Error::Invalid(format!(
            "kind {other:?} is neither commit nor sign"
        ))),
    }
}

/// Trip 1: draw nonces, seal them at rest, answer with the commitment (the same one
/// again if asked twice).
async fn commit<C: EngineSuite>(
    core: &Core,
    k: &Loaded<C>,
    key_id: &str,
    request: &Request,
) -> Result<Vec<u8>> {
    let request_id = request.request_id();
    if let Some(rec) = core.store.cold(key_id, request_id)? {
        return stored_hex("cold commitment", &rec.envelope);
    }
    // The time lock counts from now on this signer, if the request is new to it.
    core.propose(key_id, request).await?;
    let share = &k.share;
    let (nonces, commitments) = sign::commit(share, &mut OsRng);
    let secret = nonces
        .to_secret_bytes()
        .map_err(|e| Error::internal("nonces", e))?;
    let sealed = core
        .sealer
        .seal(&cold_aad(&core.name, key_id, request_id), &secret)
        .map_err(|e| Error::Unavailable(format!("seal nonces: {e}")))?;
    let header = Header {
        suite: C::SUITE,
        kind: Kind::CommitmentBatch,
        // Bound to this key and request: it cannot stand in for another's.
        session: custody_audit::cold::commit_session(key_id, request_id),
        from: share.id(),
        to: Some(COORDINATOR),
    };
    let env = identity::signed(
        &*core.identity,
        &header,
        &sign::CommitmentBatch(vec![commitments]),
    )
    .map_err(|e| Error::internal("encode", e))?;
    // Sealed and durable before the commitment leaves.
    core.store.put_cold(
        key_id,
        request_id,
        &ColdNonces {
            sealed: hex::encode(sealed),
            commitment: hex::encode(encode(&commitments)?),
            envelope: hex::encode(&env),
            ..ColdNonces::default()
        },
    )?;
    info!(%key_id, %request_id, "cold commitment drawn (nonces sealed at rest)");
    Ok(env)
}

/// Trip 2: check the package as the hot path does, decide under the policy, make the
/// share, mark the nonces used durably, then answer.
async fn sign<C: EngineSuite>(
    core: &Core,
    k: &Loaded<C>,
    key_id: &str,
    claim: Claim,
    approvals: &[Approval],
    coordinator: IdentityPublic,
    package_hex: &str,
) -> Result<Vec<u8>> {
    let request_id = claim.request_id().to_string();
    let mut rec = core.store.cold(key_id, &request_id)?.ok_or_else(|| {
        Error::Precondition(
            "no commitment of this signer for this request: answer its commit request first".into(),
        )
    })?;
    if rec.used {
        if rec.package == package_hex && !rec.share.is_empty() {
            // The same package again: the same share (nothing new is revealed), once
            // its issue is in the audit log.
            if !rec.logged {
                log_share(core, key_id, &request_id, &rec).await?;
                rec.logged = true;
                core.store.put_cold(key_id, &request_id, &rec)?;
            }
            return stored_hex("cold share", &rec.share);
        }
        return Err(core.deny(key_id, &request_id, hot_warm_cold::DenyReason::NoncesUsed));
    }
    let env = file_hex("package", package_hex)?;
    let mut roster = Roster::new();
    roster.insert(COORDINATOR, coordinator);
    let opened = identity::open_from(&roster, COORDINATOR, &env)
        .map_err(Error::protocol("signing package"))?;
    let session = opened.header.session;
    let o = core.open_package(k, key_id, claim, opened.body.to_vec(), session)?;
    if hex::encode(&o.mine) != rec.commitment {
        return Err(Error::Invalid(
            "the signing package does not carry this signer's commitment for this request".into(),
        ));
    }
    // The policy, with this signer's own ledger, approvals check and time lock.
    core.admit(key_id, k, &o.request, approvals)?;
    let secret = core
        .sealer
        .unseal(
            &cold_aad(&core.name, key_id, &request_id),
            &stored_hex("cold nonces", &rec.sealed)?,
        )
        .map_err(|e| Error::Unavailable(format!("unseal nonces: {e}")))?;
    let nonces =
        sign::Nonces::<C>::from_secret_bytes(&secret).map_err(|e| Error::internal("nonces", e))?;
    let transcript = sign::transcript_digest(key_id, &request_id, &o.body);
    // The share is made in memory; nothing leaves before the nonces are marked used.
    let share_env = core.share_envelope(k, nonces, &o, transcript)?;
    // Used (nonces erased), with the share and the package, in one durable write.
    rec.used = true;
    rec.sealed.clear();
    rec.package = package_hex.to_string();
    rec.share = hex::encode(&share_env);
    rec.session = session.to_string();
    rec.transcript = hex::encode(transcript);
    core.store.put_cold(key_id, &request_id, &rec)?;
    log_share(core, key_id, &request_id, &rec).await?;
    rec.logged = true;
    core.store.put_cold(key_id, &request_id, &rec)?;
    info!(%key_id, %request_id, "cold signature share made");
    Ok(share_env)
}

/// The share-issued entry of a cold share (before its response file is written).
async fn log_share(core: &Core, key_id: &str, request_id: &str, rec: &ColdNonces) -> Result<()> {
    core.audit
        .append(
            ax::SHARE_ISSUED,
            &ax::ShareIssued {
                key_id: key_id.to_string(),
                request_id: request_id.to_string(),
                session: rec.session.clone(),
                transcript: rec.transcript.clone(),
            },
        )
        .await?;
    Ok(())
}
