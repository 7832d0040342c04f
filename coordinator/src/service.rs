//! The `custody.v1.Custody` gRPC service (the process around it is `crate::server`).

use std::sync::Arc;

use custody_pki::Role;
use custody_protocol::proto::custody_server::Custody;
use custody_protocol::proto::*;
use custody_protocol::{api, wire, Suite};
use rand_core::{OsRng, RngCore};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::core::Core;
use crate::dkg::{self, KeySpec};
use crate::lifecycle::apply_event;
use crate::signatures::{sign_and_record, sign_proto, store_err};
use crate::signers::SignerHandle;
use crate::store::KeyMeta;
use custody_audit::export::{AuthDenied, AUTH_DENIED};

/// Longest key name.
const MAX_NAME: usize = 128;

#[derive(Clone, Debug)]
/// The `custody.v1.Custody` service over the cluster's state and the console's.
pub(crate) struct CustodyService(pub Arc<Core>, pub Arc<crate::console::Console>);

fn key_proto(m: &KeyMeta) -> Key {
    Key {
        key_id: m.key_id.clone(),
        name: m.name.clone(),
        suite: m.suite.clone(),
        threshold: m.threshold as u32,
        signers: m.signers.clone(),
        public_key: m.public_key.to_vec(),
        tier: m.tier.name().into(),
        state: m.state.name().into(),
        created_at: m.created_at,
        public_key_set: m.public_key_set.to_vec(),
        policy: m.policy.canonical(),
        rotated_from: m.rotated_from.clone(),
        rotated_to: m.rotated_to.clone(),
        state_reason: m.state_reason.clone(),
    }
}

/// `data` in 1 MiB chunks, as a stream's items.
pub(crate) fn chunks(data: Vec<u8>) -> Vec<Result<AuditChunk, Status>> {
    data.chunks(1 << 20)
        .map(|c| Ok(AuditChunk { data: c.to_vec() }))
        .collect()
}

impl CustodyService {
    /// Checks the caller's certificate and role; a refusal is recorded in the audit log.
    fn authorize<T>(
        &self,
        req: &Request<T>,
        roles: &[Role],
    ) -> Result<custody_pki::PeerInfo, Status> {
        custody_pki::authorize(req, roles).inspect_err(|st| {
            let rpc = req
                .extensions()
                .get::<tonic::GrpcMethod>()
                .map(|m| m.method().to_string())
                .unwrap_or_default();
            self.0.audit.record(
                AUTH_DENIED,
                &AuthDenied {
                    rpc,
                    reason: st.message().to_string(),
                },
            );
        })
    }

    fn spec(&self, r: CreateKeyRequest) -> Result<KeySpec, Status> {
        let core = &self.0;
        let suite: Suite = api::suite("suite", &r.suite)?;
        let policy = hot_warm_cold::Policy::from_json(&r.policy)
            .map_err(|e| Status::invalid_argument(format!("policy: {e}")))?;
        let tier = match r.tier.as_str() {
            "" => policy.tier,
            t => t
                .parse::<hot_warm_cold::Tier>()
                .map_err(|e| Status::invalid_argument(format!("tier: {e}")))?,
        };
        if tier != policy.tier {
            return Err(Status::invalid_argument(format!(
                "tier: {} but the policy says {}",
                tier.name(),
                policy.tier.name()
            )));
        }

        if r.name.len() > MAX_NAME || r.name.chars().any(char::is_control) {
            return Err(Status::invalid_argument(format!(
                "name: at most {MAX_NAME} bytes, no control characters"
            )));
        }
        let signers: Vec<Arc<SignerHandle>> = if !r.signers.is_empty() {
            let mut out: Vec<Arc<SignerHandle>> = Vec::new();
            for name in &r.signers {
                let h = core.signer(name).ok_or_else(|| {
                    Status::invalid_argument(format!("signers: unknown signer {name:?}"))
                })?;
                if out.iter().any(|o| o.name == *name) {
                    return Err(Status::invalid_argument(format!(
                        "signers: {name} listed twice"
                    )));
                }
                out.push(h.clone());
            }
            out
        } else if r.signer_count > 0 {
            let n = r.signer_count as usize;
            if n > core.signers.len() {
                return Err(Status::invalid_argument(format!(
                    "signer_count: {n} signers asked, the cluster has {}",
                    core.signers.len()
                )));
            }
            // Prefer signers not failing right now.
            let mut all: Vec<_> = core.signers.clone();
            all.sort_by_key(|h| h.backing_off());
            all.truncate(n);
            all.sort_by_key(|h| core.signers.iter().position(|s| s.name == h.name));
            all
        } else {
            core.signers.clone()
        };
        let n = signers.len();
        let threshold = if r.threshold == 0 {
            core.default_threshold.min(n as u16)
        } else {
            u16::try_from(r.threshold)
                .map_err(|_| Status::invalid_argument("threshold: too large"))?
        };
        if threshold < 2 || threshold as usize > n {
            return Err(Status::invalid_argument(format!(
                "threshold: {threshold} with {n} signers; need 2 <= t <= n"
            )));
        }
        Ok(KeySpec {
            suite,
            threshold,
            signers,
            name: r.name,
            tier,
            policy,
        })
    }
}

#[tonic::async_trait]
impl Custody for CustodyService {
    async fn create_key(&self, req: Request<CreateKeyRequest>) -> Result<Response<Key>, Status> {
        let caller = self.authorize(&req, &[Role::Operator])?;
        let spec = self.spec(req.into_inner())?;
        info!(caller = %caller.name, suite = %spec.suite, "create key");
        let t0 = std::time::Instant::now();
        let meta = dkg::create_key(&self.0, spec).await.inspect_err(|st| {
            warn!("create key failed: {:?}: {}", st.code(), st.message());
        })?;
        self.0
            .metrics
            .dkg(&meta.suite, meta.tier.name(), t0.elapsed());
        Ok(Response::new(key_proto(&meta)))
    }

    async fn get_key(&self, req: Request<GetKeyRequest>) -> Result<Response<Key>, Status> {
        self.authorize(
            &req,
            &[
                Role::Operator,
                Role::Auditor,
                Role::PaymentBackend,
                Role::Payments,
            ],
        )?;
        let r = req.into_inner();
        api::check_id("key_id", &r.key_id)?;
        let k = self.0.key(&r.key_id)?;
        Ok(Response::new(key_proto(k.meta())))
    }

    async fn list_keys(
        &self,
        req: Request<ListKeysRequest>,
    ) -> Result<Response<ListKeysResponse>, Status> {
        self.authorize(&req, &[Role::Operator, Role::Auditor, Role::PaymentBackend])?;
        let mut keys: Vec<KeyMeta> = self.0.key_metas();
        keys.sort_by(|a, b| (a.created_at, &a.key_id).cmp(&(b.created_at, &b.key_id)));
        Ok(Response::new(ListKeysResponse {
            keys: keys.iter().map(key_proto).collect(),
        }))
    }

    async fn sign(&self, req: Request<SignRequest>) -> Result<Response<SignResponse>, Status> {
        let r = self.sign_request(req).await;
        self.0.metrics.sign_outcome(&r);
        r.map(Response::new)
    }

    async fn get_signature(
        &self,
        req: Request<GetSignatureRequest>,
    ) -> Result<Response<SignResponse>, Status> {
        self.authorize(&req, &[Role::Operator, Role::PaymentBackend, Role::Auditor])?;
        let r = req.into_inner();
        api::check_id("request_id", &r.request_id)?;
        let rec = self
            .0
            .store
            .request(&r.request_id)
            .map_err(store_err)?
            .ok_or_else(|| {
                Status::not_found(format!("request {}: no such signing request", r.request_id))
            })?;
        Ok(Response::new(sign_proto(&rec, true)))
    }

    async fn change_key_state(
        &self,
        req: Request<ChangeKeyStateRequest>,
    ) -> Result<Response<Key>, Status> {
        let caller = self.authorize(&req, &[Role::Operator])?;
        let r = req.into_inner();
        api::check_id("key_id", &r.key_id)?;
        let meta = apply_event(&self.0, &r.key_id, &r.event, &caller.name, "", |_| {}).await?;
        warn!(key_id = %meta.key_id, caller = %caller.name, state = meta.state.name(), "key lifecycle: {}", r.event);
        Ok(Response::new(key_proto(&meta)))
    }

    async fn rotate_key(
        &self,
        req: Request<RotateKeyRequest>,
    ) -> Result<Response<RotateKeyResponse>, Status> {
        let caller = self.authorize(&req, &[Role::Operator])?;
        let r = req.into_inner();
        api::check_id("key_id", &r.key_id)?;
        let core = &self.0;
        let old = core.key(&r.key_id)?.meta().clone();
        if old.state != hot_warm_cold::State::Active {
            return Err(Status::failed_precondition(format!(
                "key {}: only active keys rotate (it is {})",
                old.key_id,
                old.state.name()
            )));
        }
        // The successor: same suite, threshold, signers, tier and policy, by a new DKG.
        let signers = old
            .signers
            .iter()
            .map(|n| {
                core.signer(n)
                    .cloned()
                    .ok_or_else(|| Status::internal(format!("signer {n} is not configured")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let spec = KeySpec {
            suite: old
                .suite
                .parse()
                .map_err(|e| Status::internal(format!("{e}")))?,
            threshold: old.threshold,
            signers,
            name: old.name.clone(),
            tier: old.tier,
            policy: old.policy.get().clone(),
        };
        info!(caller = %caller.name, key_id = %old.key_id, "rotate key");
        let mut new = dkg::create_key(core, spec).await?;
        // Then the old key retires on every signer (and here).
        let successor = new.key_id.clone();
        let retired = apply_event(core, &old.key_id, "retire", &caller.name, &new.key_id, |m| {
            m.rotated_to = successor;
        })
        .await
        .map_err(|st| {
            Status::new(
                st.code(),
                format!(
                    "successor {} was created, but retiring {} failed: {}; run `custody key retire {}`",
                    new.key_id,
                    old.key_id,
                    st.message(),
                    old.key_id
                ),
            )
        })?;
        new.rotated_from = retired.key_id.clone();
        core.record_key(&new).await?;
        warn!(old = %retired.key_id, new = %new.key_id, "key rotated");
        Ok(Response::new(RotateKeyResponse {
            old: Some(key_proto(&retired)),
            new: Some(key_proto(&new)),
        }))
    }

    async fn approve(
        &self,
        req: Request<ApproveRequest>,
    ) -> Result<Response<SigningRequest>, Status> {
        let caller = self.authorize(&req, &[Role::Approver, Role::Operator])?;
        let r = req.into_inner();
        api::check_id("request_id", &r.request_id)?;
        let approval = r
            .approval
            .ok_or_else(|| Status::invalid_argument("approval: missing"))?;
        crate::requests::approve(&self.0, &r.request_id, approval, &caller.name)
            .await
            .map(Response::new)
    }

    async fn change_policy(
        &self,
        req: Request<ChangePolicyRequest>,
    ) -> Result<Response<SigningRequest>, Status> {
        let caller = self.authorize(&req, &[Role::Operator])?;
        let r = req.into_inner();
        api::check_id("key_id", &r.key_id)?;
        api::check_id("request_id", &r.request_id)?;
        info!(caller = %caller.name, key_id = %r.key_id, "policy change proposed");
        crate::requests::propose_policy(&self.0, &r.key_id, &r.policy, &r.request_id)
            .await
            .map(Response::new)
    }

    async fn cold_export(
        &self,
        req: Request<ColdExportRequest>,
    ) -> Result<Response<ColdExportResponse>, Status> {
        self.authorize(&req, &[Role::Operator])?;
        let r = req.into_inner();
        api::check_id("request_id", &r.request_id)?;
        let files = crate::cold::export(&self.0, &r.request_id, r.signers).await?;
        Ok(Response::new(ColdExportResponse { files }))
    }

    async fn cold_import(
        &self,
        req: Request<ColdImportRequest>,
    ) -> Result<Response<SigningRequest>, Status> {
        self.authorize(&req, &[Role::Operator])?;
        let r = req.into_inner();
        crate::cold::import(&self.0, &r.content)
            .await
            .map(Response::new)
    }

    async fn get_request(
        &self,
        req: Request<GetRequestRequest>,
    ) -> Result<Response<SigningRequest>, Status> {
        self.authorize(
            &req,
            &[
                Role::Operator,
                Role::Approver,
                Role::Auditor,
                Role::PaymentBackend,
            ],
        )?;
        let r = req.into_inner();
        api::check_id("request_id", &r.request_id)?;
        let w = self
            .0
            .store
            .waiting(&r.request_id)
            .map_err(store_err)?
            .ok_or_else(|| {
                Status::not_found(format!("request {}: no such request", r.request_id))
            })?;
        Ok(Response::new(crate::requests::to_proto(&self.0, &w)))
    }

    async fn list_requests(
        &self,
        req: Request<ListRequestsRequest>,
    ) -> Result<Response<ListRequestsResponse>, Status> {
        self.authorize(&req, &[Role::Operator, Role::Approver, Role::Auditor])?;
        let mut all = self.0.store.all_waiting().map_err(store_err)?;
        all.sort_by_key(|w| std::cmp::Reverse(w.created_at));
        // Every request still waiting, and the 100 most recent others.
        let (mut open, done): (Vec<_>, Vec<_>) = all.into_iter().partition(|w| {
            matches!(
                w.state,
                crate::store::RequestState::WaitingApprovals
                    | crate::store::RequestState::TimeLocked
            )
        });
        open.extend(done.into_iter().take(100));
        Ok(Response::new(ListRequestsResponse {
            requests: open
                .iter()
                .map(|w| crate::requests::to_proto(&self.0, w))
                .collect(),
        }))
    }

    async fn repair_key(&self, req: Request<RepairKeyRequest>) -> Result<Response<Key>, Status> {
        let caller = self.authorize(&req, &[Role::Operator])?;
        let r = req.into_inner();
        api::check_id("key_id", &r.key_id)?;
        let meta = dkg::repair_key(&self.0, &r.key_id, &r.signer, &caller.name).await?;
        Ok(Response::new(key_proto(&meta)))
    }

    async fn refresh_key(&self, req: Request<RefreshKeyRequest>) -> Result<Response<Key>, Status> {
        let caller = self.authorize(&req, &[Role::Operator])?;
        let r = req.into_inner();
        api::check_id("key_id", &r.key_id)?;
        info!(caller = %caller.name, key_id = %r.key_id, "refresh key");
        let meta = dkg::refresh_key(&self.0, &r.key_id, &caller.name).await?;
        Ok(Response::new(key_proto(&meta)))
    }

    type ExportAuditStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<AuditChunk, Status>> + Send + 'static>,
    >;

    async fn export_audit(
        &self,
        req: Request<ExportAuditRequest>,
    ) -> Result<Response<Self::ExportAuditStream>, Status> {
        let caller = self.authorize(&req, &[Role::Auditor, Role::Operator])?;
        let nonce = req.into_inner().nonce;
        api::check_nonce(&nonce)?;
        let bundle = crate::audit::export(&self.0, &nonce).await?;
        let json = serde_json::to_vec(&bundle).map_err(|e| Status::internal(e.to_string()))?;
        info!(caller = %caller.name, bytes = json.len(), "audit log exported");
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks(json)))))
    }

    async fn console_login(
        &self,
        req: Request<ConsoleLoginRequest>,
    ) -> Result<Response<ConsoleLoginResponse>, Status> {
        use base64::Engine as _;
        let caller = self.authorize(&req, &[Role::Operator, Role::Auditor])?;
        let (url, expires_at, spki) =
            self.1
                .login_link(caller.role, &caller.name)
                .ok_or_else(|| {
                    Status::failed_precondition(
                        "the console is off: set console_listen in coordinator.toml",
                    )
                })?;
        // The link is a credential: on record before it is handed out.
        self.0
            .audit
            .append(
                custody_audit::export::CONSOLE_LINK,
                &custody_audit::export::ConsoleLink {
                    caller: caller.name.clone(),
                    role: caller.role.as_str().to_string(),
                    expires_at,
                },
            )
            .await
            .map_err(crate::audit::refused)?;
        info!(caller = %caller.name, "console sign-in link issued");
        Ok(Response::new(ConsoleLoginResponse {
            url,
            expires_at,
            spki_sha256: spki
                .map(|s| base64::engine::general_purpose::STANDARD.encode(s))
                .unwrap_or_default(),
        }))
    }

    async fn cluster_status(
        &self,
        req: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        self.authorize(&req, &[Role::Operator, Role::Auditor])?;
        let core = &self.0;
        // Probe every signer now (bounded by the connect timeout).
        let mut tasks = Vec::new();
        for h in &core.signers {
            let h = h.clone();
            let timeout = core.timeouts.connect() * 2;
            tasks.push(tokio::spawn(async move {
                let _ = h.call(timeout, |l| l.identity()).await;
                let health = h.health();
                SignerStatus {
                    name: h.name.clone(),
                    endpoint: h.endpoint(),
                    reachable: health.reachable,
                    last_seen_ms: health.last_seen_ms,
                    last_error: health.last_error,
                }
            }));
        }
        let mut signers = Vec::new();
        for t in tasks {
            signers.push(
                t.await
                    .map_err(|e| Status::internal(format!("task: {e}")))?,
            );
        }
        Ok(Response::new(ClusterStatusResponse { signers }))
    }
}

impl CustodyService {
    /// `Sign`, before its outcome is counted.
    async fn sign_request(&self, req: Request<SignRequest>) -> Result<SignResponse, Status> {
        let caller = self.authorize(
            &req,
            &[Role::Operator, Role::PaymentBackend, Role::Payments],
        )?;
        let r = req.into_inner();
        api::check_id("key_id", &r.key_id)?;
        // Settlements come from the payments daemon only, and it asks for nothing else.
        if r.settlement.is_some() != (caller.role == Role::Payments) {
            return Err(Status::permission_denied(
                if caller.role == Role::Payments {
                    "the payments daemon may ask for settlements only"
                } else {
                    "settlement: only the payments daemon asks for settlements"
                },
            ));
        }
        if r.message.len() > wire::MAX_SIGNING_MESSAGE {
            return Err(Status::invalid_argument(format!(
                "message: {} bytes, at most {} allowed",
                r.message.len(),
                wire::MAX_SIGNING_MESSAGE
            )));
        }
        let request_id = if r.request_id.is_empty() {
            let mut b = [0u8; 16];
            OsRng.fill_bytes(&mut b);
            format!("r-{}", hex::encode(b))
        } else {
            api::check_id("request_id", &r.request_id)?;
            r.request_id
        };
        let core = &self.0;

        // A transfer or settlement: the signed message is derived from it (each signer
        // derives it again and checks it against the key's policy).
        let message = custody_api::ask(
            &request_id,
            &r.message,
            r.transfer.as_ref(),
            r.settlement.as_ref(),
        )
        .map_err(Status::invalid_argument)?
        .message(&r.key_id);
        let (transfer, settlement) = (r.transfer, r.settlement);
        let _guard = core.request_lock(&request_id).await;
        self.sign_once(&request_id, &r.key_id, message, transfer, settlement)
            .await
    }

    async fn sign_once(
        &self,
        request_id: &str,
        key_id: &str,
        message: Vec<u8>,
        transfer: Option<Transfer>,
        settlement: Option<custody_protocol::proto::Settlement>,
    ) -> Result<SignResponse, Status> {
        let core = &self.0;
        if let Some(rec) = core.store.request(request_id).map_err(store_err)? {
            if rec.key_id == key_id && rec.message[..] == message[..] {
                return Ok(sign_proto(&rec, true));
            }
            return Err(Status::failed_precondition(format!(
                "request_id {request_id} was already used for another key or message"
            )));
        }
        let key = core.key(key_id)?;
        if !key.meta().state.may_sign() {
            return Err(Status::failed_precondition(format!(
                "key {key_id} is {}, not active",
                key.meta().state.name()
            )));
        }
        let policy = key.meta().policy.get().clone();
        if settlement.is_some() && key.meta().tier == hot_warm_cold::Tier::Cold {
            return Err(Status::failed_precondition(format!(
                "settlement: key {key_id} is cold; settlements take a hot key (within its limits) or a warm key (with approvals)"
            )));
        }
        if policy.approvals.is_some() {
            // It waits for approvals (and its time lock) before anyone signs.
            return crate::requests::submit(
                core, &key, &policy, request_id, message, transfer, settlement,
            )
            .await;
        }
        let rec = sign_and_record(
            core,
            &key,
            request_id,
            message,
            transfer,
            settlement,
            vec![],
        )
        .await?;
        Ok(sign_proto(&rec, false))
    }
}
