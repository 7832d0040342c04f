//! The `custody.v1.Signer` gRPC adapter: for each RPC, authorize the caller (only the
//! coordinator; a refusal is recorded), convert the request into the core's typed ask
//! (fields checked, `INVALID_ARGUMENT` naming the field), call the core, and map its
//! error with [`Error::into_status`]. No decision is made here.

use std::sync::Arc;

use custody_audit::export as ax;
use custody_pki::Role;
use custody_protocol::api;
use custody_protocol::proto::signer_server::Signer;
use custody_protocol::proto::*;
use custody_protocol::{IdentityPublic, ParticipantId};
use tonic::{Request, Response, Status};
use tracing::info;

use crate::core::Core;
use crate::dkg::{DkgStart, Inbox};
use crate::error::{Error, Result};
use crate::lifecycle::{LifecycleAsk, PolicyChange};
use crate::repair::{RepairHelp, RepairRecover};
use crate::signing::{Claim, SignAsk};
use crate::store::KeyState;

/// The gRPC service over a signer's core.
#[derive(Debug, Clone)]
pub(crate) struct SignerService(pub SignerApi);

/// Checks a key id or request id (see [`api::check_id`]).
pub(crate) fn check_id(field: &str, id: &str) -> Result<String> {
    api::check_id(field, id).map_err(Error::from_field)?;
    Ok(id.to_string())
}

fn participant(field: &str, v: u32) -> Result<ParticipantId> {
    api::participant(field, v).map_err(Error::from_field)
}

fn participants(field: &str, list: &[u32]) -> Result<Vec<ParticipantId>> {
    list.iter().map(|p| participant(field, *p)).collect()
}

fn session(field: &str, bytes: &[u8]) -> Result<custody_protocol::SessionId> {
    api::session(field, bytes).map_err(Error::from_field)
}

fn inbox(list: &[Relayed], field: &str) -> Result<Inbox> {
    list.iter()
        .map(|r| Ok((participant(field, r.from)?, r.envelope.clone())))
        .collect()
}

fn relayed(from: ParticipantId, list: Vec<(ParticipantId, Vec<u8>)>) -> Vec<Relayed> {
    list.into_iter()
        .map(|(to, envelope)| Relayed {
            from: from.get() as u32,
            to: to.get() as u32,
            envelope,
        })
        .collect()
}

fn policy(json: &str) -> Result<hot_warm_cold::Policy> {
    hot_warm_cold::Policy::from_json(json).map_err(|e| Error::Invalid(format!("policy: {e}")))
}

fn certificates(list: &[Participant]) -> Result<Vec<(ParticipantId, Vec<u8>)>> {
    list.iter()
        .map(|p| Ok((participant("participants.id", p.id)?, p.certificate.clone())))
        .collect()
}

/// Approvals as the engine takes them; malformed ones are refused.
pub(crate) fn approvals(
    list: &[custody_protocol::proto::Approval],
) -> Result<Vec<hot_warm_cold::Approval>> {
    custody_api::approvals(list).map_err(Error::Invalid)
}

/// A request's transfer or settlement part, checked (the error names the field).
fn claim(
    request_id: &str,
    transfer: Option<&custody_protocol::proto::Transfer>,
    settlement: Option<&custody_protocol::proto::Settlement>,
    message: Option<Vec<u8>>,
) -> Result<Claim> {
    let transfer = transfer
        .map(|t| custody_api::transfer(t, request_id))
        .transpose()
        .map_err(Error::Invalid)?;
    let settlement = settlement
        .map(|s| custody_api::settlement(s, request_id))
        .transpose()
        .map_err(Error::Invalid)?;
    Claim::new(request_id, transfer, settlement, message)
}

impl SignerService {
    /// Only the coordinator may call a signer; a refusal is recorded in the audit log.
    /// Returns the coordinator's identity, from its certificate.
    fn authorize<T>(&self, req: &Request<T>) -> Result<IdentityPublic, Status> {
        let info = custody_pki::authorize(req, &[Role::Coordinator]).inspect_err(|st| {
            let rpc = req
                .extensions()
                .get::<tonic::GrpcMethod>()
                .map(|m| m.method().to_string())
                .unwrap_or_default();
            self.0 .0.audit.record(
                ax::AUTH_DENIED,
                &ax::AuthDenied {
                    rpc,
                    reason: st.message().to_string(),
                },
            );
        })?;
        info.identity
            .ok_or_else(|| Status::permission_denied("coordinator certificate carries no identity"))
    }
}

fn state(s: KeyState) -> String {
    s.name().to_string()
}

/// The Signer API's requests answered by a signer's core, without a network: what the
/// gRPC service calls once it has authorized the caller, and what an in-process link
/// (tests) calls directly, naming the coordinator it speaks for.
#[derive(Debug, Clone)]
pub struct SignerApi(pub(crate) Arc<Core>);

impl SignerApi {
    /// Opens a signer's state (identity, store, audit log, keys) without listening
    /// anywhere, reading time from `clock`.
    pub fn open(
        config: &crate::Config,
        clock: Arc<dyn custody_ops::clock::Clock>,
    ) -> Result<SignerApi, crate::StartError> {
        Ok(SignerApi(Arc::new(Core::open(config, clock)?)))
    }

    /// Who this signer is.
    pub fn identity(&self) -> IdentityResponse {
        let c = &self.0;
        IdentityResponse {
            name: c.name.clone(),
            identity: c.identity.public().to_bytes().to_vec(),
            certificate: c.cert_der.clone(),
            sealer: c.sealer.describe(),
        }
    }

    /// The audit log, sealed for `nonce`.
    pub async fn export_audit(&self, nonce: &[u8]) -> Result<Vec<u8>, Status> {
        api::check_nonce(nonce)?;
        let log = self.0.audit.export(nonce).await.map_err(Error::from)?;
        info!(bytes = log.len(), "audit log exported");
        Ok(log)
    }

    /// `dkg_start`, asked by the coordinator whose identity is `coordinator`.
    pub async fn dkg_start(
        &self,
        coordinator: IdentityPublic,
        r: DkgStartRequest,
    ) -> Result<DkgStartResponse, Status> {
        let ask = DkgStart {
            key_id: check_id("key_id", &r.key_id)?,
            session: session("session", &r.session)?,
            suite: api::suite("suite", &r.suite)?,
            threshold: u16::try_from(r.threshold)
                .map_err(|_| Status::invalid_argument("threshold: too large"))?,
            me: participant("me", r.me)?,
            policy: policy(&r.policy)?,
            participants: certificates(&r.participants)?,
            refresh: r.refresh,
            coordinator,
        };
        let round1 = self.0.dkg_start(ask).await?;
        Ok(DkgStartResponse { round1 })
    }

    /// `dkg_round1`, asked by the coordinator whose identity is `coordinator`.
    pub async fn dkg_round1(
        &self,
        _coordinator: IdentityPublic,
        r: DkgRound1Request,
    ) -> Result<DkgRound1Response, Status> {
        let out = self
            .0
            .dkg_round1(
                session("session", &r.session)?,
                inbox(&r.round1, "round1.from")?,
            )
            .await?;
        Ok(DkgRound1Response {
            echo: out.echo,
            shares: out
                .shares
                .into_iter()
                .map(|(to, envelope)| Relayed {
                    from: 0,
                    to: to.get() as u32,
                    envelope,
                })
                .collect(),
        })
    }

    /// `dkg_round2`, asked by the coordinator whose identity is `coordinator`.
    pub async fn dkg_round2(
        &self,
        _coordinator: IdentityPublic,
        r: DkgRound2Request,
    ) -> Result<DkgRound2Response, Status> {
        let out = self
            .0
            .dkg_round2(
                session("session", &r.session)?,
                inbox(&r.echoes, "echoes.from")?,
                inbox(&r.shares, "shares.from")?,
            )
            .await?;
        Ok(DkgRound2Response {
            confirmation: out.confirmation,
            public_key_set: out.public_key_set,
        })
    }

    /// `dkg_finalize`, asked by the coordinator whose identity is `coordinator`.
    pub async fn dkg_finalize(
        &self,
        _coordinator: IdentityPublic,
        r: DkgFinalizeRequest,
    ) -> Result<DkgFinalizeResponse, Status> {
        self.0
            .dkg_finalize(
                session("session", &r.session)?,
                inbox(&r.confirmations, "confirmations.from")?,
            )
            .await?;
        Ok(DkgFinalizeResponse {})
    }

    /// `commit`, asked by the coordinator whose identity is `coordinator`.
    pub async fn commit(
        &self,
        _coordinator: IdentityPublic,
        r: CommitRequest,
    ) -> Result<CommitResponse, Status> {
        let batch = self.0.commit(&r.key_id, r.count).await?;
        Ok(CommitResponse { batch })
    }

    /// `key_lifecycle`, asked by the coordinator whose identity is `coordinator`.
    pub async fn key_lifecycle(
        &self,
        _coordinator: IdentityPublic,
        r: KeyLifecycleRequest,
    ) -> Result<KeyLifecycleResponse, Status> {
        let key_id = check_id("key_id", &r.key_id)?;
        let s = self
            .0
            .lifecycle(&key_id, LifecycleAsk::parse(&r.event)?)
            .await?;
        Ok(KeyLifecycleResponse { state: state(s) })
    }

    /// `sign_share`, asked by the coordinator whose identity is `coordinator`.
    pub async fn sign_share(
        &self,
        coordinator: IdentityPublic,
        r: SignShareRequest,
    ) -> Result<SignShareResponse, Status> {
        // The key first: an unknown key is NOT_FOUND whatever else is wrong.
        let key = self.0.active_key(&r.key_id)?;
        let request_id = check_id("request_id", &r.request_id)?;
        let ask = SignAsk {
            claim: claim(
                &request_id,
                r.transfer.as_ref(),
                r.settlement.as_ref(),
                None,
            )?,
            key_id: r.key_id,
            key,
            approvals: approvals(&r.approvals)?,
            package: r.package,
            coordinator,
        };
        let share = self.0.sign_share(ask).await?;
        Ok(SignShareResponse { share })
    }

    /// `repair_help`, asked by the coordinator whose identity is `coordinator`.
    pub async fn repair_help(
        &self,
        _coordinator: IdentityPublic,
        r: RepairHelpRequest,
    ) -> Result<RepairHelpResponse, Status> {
        let ask = RepairHelp {
            key_id: check_id("key_id", &r.key_id)?,
            session: session("session", &r.session)?,
            helpers: participants("helpers", &r.helpers)?,
            lost: participant("lost", r.lost)?,
        };
        let out = self.0.repair_help(ask).await?;
        Ok(RepairHelpResponse {
            deltas: relayed(out.me, out.deltas),
            attestation: out.attestation,
        })
    }

    /// `repair_sigma`, asked by the coordinator whose identity is `coordinator`.
    pub async fn repair_sigma(
        &self,
        _coordinator: IdentityPublic,
        r: RepairSigmaRequest,
    ) -> Result<RepairSigmaResponse, Status> {
        let sigma = self.0.repair_sigma(
            session("session", &r.session)?,
            inbox(&r.deltas, "deltas.from")?,
        )?;
        Ok(RepairSigmaResponse { sigma })
    }

    /// `repair_recover`, asked by the coordinator whose identity is `coordinator`.
    pub async fn repair_recover(
        &self,
        _coordinator: IdentityPublic,
        r: RepairRecoverRequest,
    ) -> Result<RepairRecoverResponse, Status> {
        let state = KeyState::ALL
            .into_iter()
            .find(|s| s.name() == r.state && *s != KeyState::Pending && *s != KeyState::Destroyed)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "state: {:?} is not a state a repaired key can have",
                    r.state
                ))
            })?;
        let ask = RepairRecover {
            key_id: check_id("key_id", &r.key_id)?,
            session: session("session", &r.session)?,
            suite: api::suite("suite", &r.suite)?,
            me: participant("me", r.me)?,
            helpers: participants("helpers", &r.helpers)?,
            state,
            participants: certificates(&r.participants)?,
            policy: policy(&r.policy)?,
            policy_version: r.policy_version,
            public_key_set: r.public_key_set,
            sigmas: inbox(&r.sigmas, "sigmas.from")?,
            attestations: inbox(&r.attestations, "attestations.from")?,
        };
        let attestation = self.0.repair_recover(ask).await?;
        Ok(RepairRecoverResponse { attestation })
    }

    /// `set_policy`, asked by the coordinator whose identity is `coordinator`.
    pub async fn set_policy(
        &self,
        _coordinator: IdentityPublic,
        r: SetPolicyRequest,
    ) -> Result<SetPolicyResponse, Status> {
        let key_id = check_id("key_id", &r.key_id)?;
        if r.policy.trim().is_empty() {
            return Err(Status::invalid_argument("policy: empty"));
        }
        let ask = PolicyChange {
            key_id,
            policy: policy(&r.policy)?,
            approvals: approvals(&r.approvals)?,
        };
        let digest = self.0.set_policy(ask).await?;
        Ok(SetPolicyResponse {
            policy_digest: digest.to_vec(),
        })
    }

    /// `propose`, asked by the coordinator whose identity is `coordinator`.
    pub async fn propose(
        &self,
        _coordinator: IdentityPublic,
        r: ProposeRequest,
    ) -> Result<ProposeResponse, Status> {
        let key_id = check_id("key_id", &r.key_id)?;
        let request_id = check_id("request_id", &r.request_id)?;
        self.0.active_key(&key_id)?;
        let request = claim(
            &request_id,
            r.transfer.as_ref(),
            r.settlement.as_ref(),
            Some(r.message),
        )?
        .request()
        .ok_or_else(|| Status::internal("a proposal carries its message"))?;
        let first_seen = self.0.propose(&key_id, &request).await?;
        Ok(ProposeResponse { first_seen })
    }
}

#[tonic::async_trait]
impl Signer for SignerService {
    async fn identity(
        &self,
        req: Request<IdentityRequest>,
    ) -> Result<Response<IdentityResponse>, Status> {
        custody_pki::authorize(&req, &[Role::Coordinator, Role::Operator, Role::Auditor])?;
        Ok(Response::new(self.0.identity()))
    }

    async fn dkg_start(
        &self,
        req: Request<DkgStartRequest>,
    ) -> Result<Response<DkgStartResponse>, Status> {
        let coordinator = self.authorize(&req)?;
        self.0
            .dkg_start(coordinator, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn dkg_round1(
        &self,
        req: Request<DkgRound1Request>,
    ) -> Result<Response<DkgRound1Response>, Status> {
        let coordinator = self.authorize(&req)?;
        self.0
            .dkg_round1(coordinator, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn dkg_round2(
        &self,
        req: Request<DkgRound2Request>,
    ) -> Result<Response<DkgRound2Response>, Status> {
        let coordinator = self.authorize(&req)?;
        self.0
            .dkg_round2(coordinator, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn dkg_finalize(
        &self,
        req: Request<DkgFinalizeRequest>,
    ) -> Result<Response<DkgFinalizeResponse>, Status> {
        let coordinator = self.authorize(&req)?;
        self.0
            .dkg_finalize(coordinator, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn commit(
        &self,
        req: Request<CommitRequest>,
    ) -> Result<Response<CommitResponse>, Status> {
        let coordinator = self.authorize(&req)?;
        self.0
            .commit(coordinator, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn key_lifecycle(
        &self,
        req: Request<KeyLifecycleRequest>,
    ) -> Result<Response<KeyLifecycleResponse>, Status> {
        let coordinator = self.authorize(&req)?;
        self.0
            .key_lifecycle(coordinator, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn sign_share(
        &self,
        req: Request<SignShareRequest>,
    ) -> Result<Response<SignShareResponse>, Status> {
        let coordinator = self.authorize(&req)?;
        self.0
            .sign_share(coordinator, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn repair_help(
        &self,
        req: Request<RepairHelpRequest>,
    ) -> Result<Response<RepairHelpResponse>, Status> {
        let coordinator = self.authorize(&req)?;
        self.0
            .repair_help(coordinator, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn repair_sigma(
        &self,
        req: Request<RepairSigmaRequest>,
    ) -> Result<Response<RepairSigmaResponse>, Status> {
        let coordinator = self.authorize(&req)?;
        self.0
            .repair_sigma(coordinator, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn repair_recover(
        &self,
        req: Request<RepairRecoverRequest>,
    ) -> Result<Response<RepairRecoverResponse>, Status> {
        let coordinator = self.authorize(&req)?;
        self.0
            .repair_recover(coordinator, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn set_policy(
        &self,
        req: Request<SetPolicyRequest>,
    ) -> Result<Response<SetPolicyResponse>, Status> {
        let coordinator = self.authorize(&req)?;
        self.0
            .set_policy(coordinator, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn propose(
        &self,
        req: Request<ProposeRequest>,
    ) -> Result<Response<ProposeResponse>, Status> {
        let coordinator = self.authorize(&req)?;
        self.0
            .propose(coordinator, req.into_inner())
            .await
            .map(Response::new)
    }

    type ExportAuditStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<AuditChunk, Status>> + Send + 'static>,
    >;

    async fn export_audit(
        &self,
        req: Request<ExportAuditRequest>,
    ) -> Result<Response<Self::ExportAuditStream>, Status> {
        self.authorize(&req)?;
        let log = self.0.export_audit(&req.into_inner().nonce).await?;
        let chunks: Vec<Result<AuditChunk, Status>> = log
            .chunks(1 << 20)
            .map(|c| Ok(AuditChunk { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }
}
