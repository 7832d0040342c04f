//! Air-gapped (cold) signatures: the coordinator writes request files for offline
//! signers and reads back their responses, two trips (commitments, then shares). It
//! checks everything it reads as it would online: each envelope against the signer's
//! identity, each share against its verifying share and the transcript digest.

use std::collections::BTreeMap;
use std::sync::Arc;

use custody_audit::cold::{ColdRequest, ColdResponse, COLD_REQUEST_FORMAT, COLD_RESPONSE_FORMAT};
use custody_audit::transcript::{ApprovalRecord, SignedRequest};
use custody_protocol::proto::{ColdFile, SigningRequest};
use custody_protocol::sign::{self, CommitmentBatch, ShareMessage, SigningPackage, COORDINATOR};
use custody_protocol::wire::{self, Header, Kind};
use custody_protocol::{identity, EngineSuite, ParticipantId, SessionId};
use rand_core::OsRng;
use tonic::Status;
use tracing::info;

use crate::core::{AnyKey, Core, KeyRt};
use crate::requests::{approvals_of, put, to_proto, transfer_of};
use crate::signatures::store_err;
use crate::signing::Signed;
use crate::store::{ColdProgress, WaitingRequest};

fn participant(key: &AnyKey, name: &str) -> Option<ParticipantId> {
    key.meta()
        .signers
        .iter()
        .position(|s| s == name)
        .and_then(|i| ParticipantId::new(i as u16 + 1))
}

fn signed_request(w: &WaitingRequest) -> SignedRequest {
    match &w.transfer {
        Some((asset, amount, destination, memo)) => SignedRequest::Transfer {
            asset: asset.clone(),
            amount: amount.clone(),
            destination: destination.clone(),
            memo: memo.clone(),
        },
        None => SignedRequest::Raw {
            message: hex::encode(&*w.message),
        },
    }
}

fn request_file(
    core: &Core,
    w: &WaitingRequest,
    kind: &str,
    signer: &str,
    package: &[u8],
) -> Result<ColdFile, Status> {
    let mut req = ColdRequest {
        format: COLD_REQUEST_FORMAT.into(),
        kind: kind.into(),
        signer: signer.into(),
        key_id: w.key_id.clone(),
        request_id: w.request_id.clone(),
        request: signed_request(w),
        approvals: w
            .approvals
            .iter()
            .map(|(a, s)| ApprovalRecord {
                approver: hex::encode(&**a),
                signature: hex::encode(&**s),
            })
            .collect(),
        package: hex::encode(package),
        coordinator_certificate: hex::encode(&core.cert_der),
        signature: String::new(),
    };
    let bytes = req.signed_bytes().map_err(Status::internal)?;
    let sig = core
        .identity
        .sign_raw(&bytes)
        .map_err(|e| Status::unavailable(format!("identity key: {e}")))?;
    req.signature = hex::encode(sig);
    Ok(ColdFile {
        name: format!("{}.{kind}.{signer}.json", w.request_id),
        content: serde_json::to_vec_pretty(&req).map_err(|e| Status::internal(e.to_string()))?,
    })
}

/// The request files the next trip needs (for the signers that have not answered).
pub(crate) async fn export(
    core: &Arc<Core>,
    request_id: &str,
    signers: Vec<String>,
) -> Result<Vec<ColdFile>, Status> {
    let _guard = core.request_lock(request_id).await;
    let mut w = core
        .store
        .waiting(request_id)
        .map_err(store_err)?
        .ok_or_else(|| Status::not_found(format!("request {request_id}: no such request")))?;
    if !w.state.is_cold() {
        return Err(Status::failed_precondition(format!(
            "request {request_id} is {}; its cold files exist once it is approved and its time lock has passed",
            w.state.name()
        )));
    }
    let key = core.key(&w.key_id)?;
    let t = key.meta().threshold as usize;
    if w.cold.is_none() {
        let chosen = if signers.is_empty() {
            key.meta().signers.iter().take(t).cloned().collect()
        } else {
            signers
        };
        if chosen.len() != t {
            return Err(Status::invalid_argument(format!(
                "signers: exactly {t} signers of the key are needed, {} named",
                chosen.len()
            )));
        }
        for s in &chosen {
            if participant(&key, s).is_none() {
                return Err(Status::invalid_argument(format!(
                    "signers: {s} holds no share of key {}",
                    w.key_id
                )));
            }
        }
        w.cold = Some(ColdProgress {
            signers: chosen,
            ..ColdProgress::default()
        });
        put(core, &w).await?;
    }
    let progress = w.cold.clone().unwrap_or_default();
    let mut files = Vec::new();
    for s in &progress.signers {
        let p = participant(&key, s).expect("checked").get();
        if progress.package.is_empty() {
            if !progress.commitments.iter().any(|(q, _)| *q == p) {
                files.push(request_file(core, &w, "commit", s, &[])?);
            }
        } else if !progress.shares.iter().any(|(q, _)| *q == p) {
            files.push(request_file(core, &w, "sign", s, &progress.package)?);
        }
    }
    Ok(files)
}

/// Reads one offline signer's response; builds the package once every commitment is
/// in, and the signature once every share is.
pub(crate) async fn import(core: &Arc<Core>, content: &[u8]) -> Result<SigningRequest, Status> {
    let resp: ColdResponse = serde_json::from_slice(content)
        .map_err(|e| Status::invalid_argument(format!("response file: {e}")))?;
    if resp.format != COLD_RESPONSE_FORMAT {
        return Err(Status::invalid_argument(format!(
            "response file: format {:?}, expected {COLD_RESPONSE_FORMAT:?}",
            resp.format
        )));
    }
    let _guard = core.request_lock(&resp.request_id).await;
    let mut w = core
        .store
        .waiting(&resp.request_id)
        .map_err(store_err)?
        .ok_or_else(|| {
            Status::not_found(format!("request {}: no such request", resp.request_id))
        })?;
    if w.key_id != resp.key_id {
        return Err(Status::invalid_argument(
            "response file: another key than the request's",
        ));
    }
    let key = core.key(&w.key_id)?;
    let p = participant(&key, &resp.signer).ok_or_else(|| {
        Status::invalid_argument(format!(
            "response file: {} holds no share of this key",
            resp.signer
        ))
    })?;
    let progress = w.cold.clone().ok_or_else(|| {
        Status::failed_precondition("no cold files were exported for this request")
    })?;
    if !progress.signers.contains(&resp.signer) {
        return Err(Status::invalid_argument(format!(
            "response file: {} was not asked",
            resp.signer
        )));
    }
    let env = hex::decode(&resp.envelope)
        .map_err(|_| Status::invalid_argument("response file: envelope is not hex"))?;
    let done = match &key {
        AnyKey::Secp(k) => step(core, k, &mut w, p, &resp.kind, env).await?,
        AnyKey::Ed(k) => step(core, k, &mut w, p, &resp.kind, env).await?,
    };
    if let Some(signed) = done {
        let message = w.message.to_vec();
        crate::signatures::record_signature(
            core,
            &key,
            &w.request_id,
            message,
            transfer_of(&w),
            None,
            approvals_of(&w),
            signed,
        )
        .await?;
        w.state = w.state.next(crate::store::RequestEvent::Signed);
        info!(request_id = %w.request_id, "cold signature complete");
    }
    put(core, &w).await?;
    Ok(to_proto(core, &w))
}

/// One response applied to the progress of `w`; the signature when it completes it.
async fn step<C: EngineSuite>(
    core: &Arc<Core>,
    key: &Arc<KeyRt<C>>,
    w: &mut WaitingRequest,
    p: ParticipantId,
    kind: &str,
    env: Vec<u8>,
) -> Result<Option<Signed>, Status> {
    let culprit = |what: &str, e: custody_protocol::Error| {
        Status::invalid_argument(format!("response of participant {p}: {what}: {e}"))
    };
    let mut progress = w.cold.clone().unwrap_or_default();
    let t = key.public.threshold() as usize;
    match kind {
        "commit" => {
            if !progress.package.is_empty() {
                return Err(Status::failed_precondition(
                    "every commitment is in already; import shares",
                ));
            }
            let opened =
                identity::open_from(&key.roster, p, &env).map_err(|e| culprit("commitment", e))?;
            wire::decode_with(
                opened.body,
                C::SUITE,
                Kind::CommitmentBatch,
                &custody_audit::cold::commit_session(&w.key_id, &w.request_id),
                |_, r| CommitmentBatch::<C>::decode_body(r, 1),
            )
            .map_err(|e| culprit("commitment", e))?;
            progress.commitments.retain(|(q, _)| *q != p.get());
            progress.commitments.push((p.get(), env.clone().into()));
            if progress.commitments.len() == t {
                // Every commitment is in: the package, signed by us.
                let mut commitments = BTreeMap::new();
                for (q, e) in &progress.commitments {
                    let q = ParticipantId::new(*q)
                        .ok_or_else(|| Status::internal("stored participant id 0"))?;
                    let bytes = e.to_vec();
                    let opened = identity::open_from(&key.roster, q, &bytes)
                        .map_err(|e| culprit("commitment", e))?;
                    let (_, b) = wire::decode_with(
                        opened.body,
                        C::SUITE,
                        Kind::CommitmentBatch,
                        &custody_audit::cold::commit_session(&w.key_id, &w.request_id),
                        |_, r| CommitmentBatch::<C>::decode_body(r, 1),
                    )
                    .map_err(|e| culprit("commitment", e))?;
                    commitments.insert(q, b.0[0]);
                }
                let session = SessionId::random(&mut OsRng);
                let package = SigningPackage::new(commitments, w.message.to_vec())
                    .map_err(|e| Status::internal(format!("signing package: {e}")))?;
                let header = Header {
                    suite: C::SUITE,
                    kind: Kind::SigningPackage,
                    session,
                    from: COORDINATOR,
                    to: None,
                };
                let env = identity::signed(&*core.identity, &header, &package)
                    .map_err(|e| Status::unavailable(format!("signing package: {e}")))?;
                progress.session = session.to_string();
                progress.package = env.into();
                w.state = w.state.next(crate::store::RequestEvent::ColdCommitted);
            }
            w.cold = Some(progress);
            Ok(None)
        }
        "sign" => {
            if progress.package.is_empty() {
                return Err(Status::failed_precondition(
                    "the signing package does not exist yet: import every commitment first",
                ));
            }
            let package_env = progress.package.to_vec();
            let package_msg = identity::envelope_body(&package_env)
                .map_err(|e| Status::internal(format!("stored package: {e}")))?
                .to_vec();
            let session = SessionId(
                hex::decode(&progress.session)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| Status::internal("stored session"))?,
            );
            let (_, package) = wire::decode_with(
                &package_msg,
                C::SUITE,
                Kind::SigningPackage,
                &session,
                |_, r| SigningPackage::<C>::decode_body(r),
            )
            .map_err(|e| Status::internal(format!("stored package: {e}")))?;
            let opened =
                identity::open_from(&key.roster, p, &env).map_err(|e| culprit("share", e))?;
            let (_, msg) = wire::decode_with(
                opened.body,
                C::SUITE,
                Kind::SignatureShare,
                &session,
                |_, r| ShareMessage::<C>::decode_body(r),
            )
            .map_err(|e| culprit("share", e))?;
            if msg.transcript != sign::transcript_digest(&w.key_id, &w.request_id, &package_msg) {
                return Err(Status::invalid_argument(format!(
                    "response of participant {p}: its share confirms another request or package"
                )));
            }
            sign::verify_share(&key.public, &package, p, &msg.share)
                .map_err(|e| culprit("share", e))?;
            progress.shares.retain(|(q, _)| *q != p.get());
            progress.shares.push((p.get(), env.clone().into()));
            let signers = package.signers();
            let mut result = None;
            if signers
                .iter()
                .all(|q| progress.shares.iter().any(|(s, _)| *s == q.get()))
            {
                let mut shares = BTreeMap::new();
                let mut envs = BTreeMap::new();
                for (q, e) in &progress.shares {
                    let q = ParticipantId::new(*q)
                        .ok_or_else(|| Status::internal("stored participant id 0"))?;
                    let bytes = e.to_vec();
                    let opened = identity::open_from(&key.roster, q, &bytes)
                        .map_err(|e| culprit("share", e))?;
                    let (_, m) = wire::decode_with(
                        opened.body,
                        C::SUITE,
                        Kind::SignatureShare,
                        &session,
                        |_, r| ShareMessage::<C>::decode_body(r),
                    )
                    .map_err(|e| culprit("share", e))?;
                    shares.insert(q, m.share);
                    envs.insert(q, bytes);
                }
                let signature = sign::aggregate(&key.public, &package, &shares)
                    .map_err(|e| Status::internal(format!("aggregation: {e}")))?;
                result = Some(Signed {
                    signature,
                    signers,
                    session,
                    package: package_env,
                    shares: envs,
                });
            }
            w.cold = Some(progress);
            Ok(result)
        }
        other => Err(Status::invalid_argument(format!(
            "response file: kind {other:?}"
        ))),
    }
}
