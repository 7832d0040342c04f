//! Requests of keys whose policy needs approvals (warm keys): they wait, durably, for
//! enough approver signatures and for their time lock, then sign. The coordinator
//! only keeps the books: every signer verifies the approvals and counts the time lock
//! itself, from when it first saw the request (`Propose`), on its own clock.

use std::sync::Arc;
use std::time::Duration;

use custody_audit::export::{
    Approved, PolicyChangeRequested, PolicyChanged, RequestCreated, APPROVED, POLICY_CHANGED,
    POLICY_CHANGE_REQUESTED, REQUEST_CREATED,
};
use custody_audit::transcript::ApprovalRecord;
use custody_protocol::proto::{
    Approval, ProposeRequest, Settlement, SignResponse, SigningRequest, Transfer,
};
use prost::Message as _;
use tonic::{Code, Status};
use tracing::{info, warn};

use crate::core::{AnyKey, Core};
use crate::signatures::{sign_and_record, sign_proto, store_err};
use crate::store::{Hex, RequestEvent, RequestState, WaitingRequest};

/// How often waiting requests whose approvals are complete are looked at.
const TICK: Duration = Duration::from_secs(1);

pub(crate) fn transfer_of(w: &WaitingRequest) -> Option<Transfer> {
    w.transfer
        .as_ref()
        .map(|(asset, amount, destination, memo)| Transfer {
            asset: asset.clone(),
            amount: amount.clone(),
            destination: destination.clone(),
            memo: memo.clone(),
        })
}

/// The settlement batch header of `w`, when it is one.
pub(crate) fn settlement_of(w: &WaitingRequest) -> Option<Settlement> {
    if w.settlement.is_empty() {
        return None;
    }
    Settlement::decode(w.settlement.as_ref()).ok()
}

pub(crate) fn approvals_of(w: &WaitingRequest) -> Vec<Approval> {
    w.approvals
        .iter()
        .map(|(a, s)| Approval {
            approver: a.to_vec(),
            signature: s.to_vec(),
        })
        .collect()
}

/// What approvers sign for `w`: for a signature, `TaggedHash("custody/v1/approval",
/// key id, message)`; for a policy change, [`hot_warm_cold::Policy::change_digest`].
fn approval_digest(w: &WaitingRequest) -> [u8; 32] {
    if w.is_policy_change() {
        let current: [u8; 32] = w.current_policy[..].try_into().unwrap_or_default();
        return hot_warm_cold::Policy::from_json(&w.new_policy)
            .map(|p| p.change_digest(&w.key_id, w.policy_version, &current))
            .unwrap_or_default();
    }
    hot_warm_cold::approval_digest(&w.key_id, &w.message)
}

/// Who approves `w`: the key's approvers for a signature, its admins for a policy
/// change.
fn rule<'a>(
    w: &WaitingRequest,
    policy: &'a hot_warm_cold::Policy,
) -> Option<&'a hot_warm_cold::ApprovalRule> {
    if w.is_policy_change() {
        policy.admins.as_ref()
    } else {
        policy.approvals.as_ref()
    }
}

/// Distinct valid approvals from the approvers of `w`.
fn valid(w: &WaitingRequest, policy: &hot_warm_cold::Policy) -> usize {
    let Some(rule) = rule(w, policy) else {
        return 0;
    };
    let approvals: Vec<hot_warm_cold::Approval> = approvals_of(w)
        .into_iter()
        .filter_map(|a| {
            Some(hot_warm_cold::Approval {
                approver: a.approver.try_into().ok()?,
                signature: a.signature,
            })
        })
        .collect();
    rule.valid(&approval_digest(w), &approvals)
}

fn required(w: &WaitingRequest, policy: &hot_warm_cold::Policy) -> usize {
    rule(w, policy).map_or(0, |r| r.required as usize)
}

/// Whether `w` may be tried at `now`: enough approvals and (for a signature) its time
/// lock over.
fn ready(w: &WaitingRequest, policy: &hot_warm_cold::Policy, now: u64) -> bool {
    let lock = if w.is_policy_change() {
        0
    } else {
        policy.time_lock_secs
    };
    valid(w, policy) >= required(w, policy) && now >= w.created_at.saturating_add(lock)
}

/// The request as clients see it.
pub(crate) fn to_proto(core: &Core, w: &WaitingRequest) -> SigningRequest {
    let policy = core
        .key(&w.key_id)
        .ok()
        .map(|k| k.meta().policy.get().clone());
    let result = if w.state == RequestState::Signed {
        core.store
            .request(&w.request_id)
            .ok()
            .flatten()
            .map(|r| sign_proto(&r, true))
    } else {
        None
    };
    SigningRequest {
        request_id: w.request_id.clone(),
        key_id: w.key_id.clone(),
        message: w.message.to_vec(),
        transfer: transfer_of(w),
        state: w.state.name().into(),
        approval_digest: approval_digest(w).to_vec(),
        approvals: policy.as_ref().map_or(0, |p| valid(w, p)) as u32,
        required: policy.as_ref().map_or(0, |p| required(w, p)) as u32,
        approved_by: w.approvals.iter().map(|(a, _)| a.to_vec()).collect(),
        created_at: w.created_at,
        unlocks_at: if w.is_policy_change() {
            w.created_at
        } else {
            w.created_at
                .saturating_add(policy.as_ref().map_or(0, |p| p.time_lock_secs))
        },
        last_error: w.last_error.clone(),
        result: result.map(Box::new),
        kind: if w.is_policy_change() {
            "policy-change"
        } else {
            "sign"
        }
        .into(),
        new_policy: w.new_policy.clone(),
        current_policy_digest: w.current_policy.to_vec(),
        policy_version: w.policy_version,
        settlement: settlement_of(w),
    }
}

fn pending_response(core: &Core, w: &WaitingRequest) -> SignResponse {
    SignResponse {
        state: "pending".into(),
        pending: Some(Box::new(to_proto(core, w))),
        request_id: w.request_id.clone(),
        key_id: w.key_id.clone(),
        signature: vec![],
        signers: vec![],
        replayed: false,
        message: w.message.to_vec(),
    }
}

pub(crate) async fn put(core: &Core, w: &WaitingRequest) -> Result<(), Status> {
    let (store, w) = (core.store.clone(), w.clone());
    tokio::task::spawn_blocking(move || store.put_waiting(&w))
        .await
        .map_err(|e| Status::internal(format!("task: {e}")))?
        .map_err(store_err)
}

/// A new (or repeated) request of a key that needs approvals: recorded durably, told
/// to every signer, and answered with what it waits for.
pub(crate) async fn submit(
    core: &Arc<Core>,
    key: &AnyKey,
    policy: &hot_warm_cold::Policy,
    request_id: &str,
    message: Vec<u8>,
    transfer: Option<Transfer>,
    settlement: Option<Settlement>,
) -> Result<SignResponse, Status> {
    let meta = key.meta();
    if let Some(w) = core.store.waiting(request_id).map_err(store_err)? {
        if w.key_id != meta.key_id || w.message[..] != message[..] {
            return Err(Status::failed_precondition(format!(
                "request_id {request_id} was already used for another key or message"
            )));
        }
        // The caller (Sign) holds this request's lock already.
        let w = attempt_locked(core, w).await?;
        return Ok(match core.store.request(request_id).map_err(store_err)? {
            Some(rec) if w.state == RequestState::Signed => sign_proto(&rec, false),
            _ => pending_response(core, &w),
        });
    }
    let w = WaitingRequest {
        request_id: request_id.to_string(),
        key_id: meta.key_id.clone(),
        message: message.clone().into(),
        transfer: transfer.as_ref().map(|t| {
            (
                t.asset.clone(),
                // Canonical decimal, as the signers parse it.
                t.amount
                    .parse::<u128>()
                    .map_or_else(|_| t.amount.clone(), |a| a.to_string()),
                t.destination.clone(),
                t.memo.clone(),
            )
        }),
        approvals: vec![],
        created_at: core.clock.now_secs(),
        state: RequestState::WaitingApprovals,
        last_error: String::new(),
        kind: "sign".into(),
        new_policy: String::new(),
        current_policy: Hex::default(),
        policy_version: 0,
        cold: None,
        settlement: settlement
            .as_ref()
            .map(|s| s.encode_to_vec().into())
            .unwrap_or_default(),
    };
    core.audit
        .append(
            REQUEST_CREATED,
            &RequestCreated {
                key_id: w.key_id.clone(),
                request_id: w.request_id.clone(),
                approval_digest: hex::encode(approval_digest(&w)),
                request: crate::audit::signed_request(
                    &w.request_id,
                    &message,
                    transfer.as_ref(),
                    settlement.as_ref(),
                ),
            },
        )
        .await
        .map_err(crate::audit::refused)?;
    put(core, &w).await?;
    if policy.time_lock_secs > 0 {
        propose(core, key, &w).await;
    }
    info!(request_id = %w.request_id, key_id = %w.key_id, "request waits for {} approvals", required(&w, policy));
    Ok(pending_response(core, &w))
}

/// Tells every signer of the key about the request, so each starts its time lock now.
/// Best effort: a signer that misses it starts counting when it first sees it.
async fn propose(core: &Arc<Core>, key: &AnyKey, w: &WaitingRequest) {
    let mut tasks = Vec::new();
    for name in &key.meta().signers {
        let Some(h) = core.signer(name).cloned() else {
            continue;
        };
        let req = ProposeRequest {
            key_id: w.key_id.clone(),
            request_id: w.request_id.clone(),
            message: if w.transfer.is_some() || !w.settlement.is_empty() {
                vec![]
            } else {
                w.message.to_vec()
            },
            transfer: transfer_of(w),
            settlement: settlement_of(w),
        };
        let timeout = core.timeouts.sign();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = h.call(timeout, |l| l.propose(req)).await {
                warn!(signer = %h.name, "proposal not delivered: {e}");
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Adds an approval (verified here too, for a clear answer; every signer verifies it
/// again) and signs when the request is ready.
pub(crate) async fn approve(
    core: &Arc<Core>,
    request_id: &str,
    approval: Approval,
    by: &str,
) -> Result<SigningRequest, Status> {
    // Read, change and write the request under its lock (the ticker or another
    // approval may be at it).
    let _guard = core.request_lock(request_id).await;
    let mut w = core
        .store
        .waiting(request_id)
        .map_err(store_err)?
        .ok_or_else(|| {
            Status::not_found(format!(
                "request {request_id}: no such request waiting for approvals"
            ))
        })?;
    let key = core.key(&w.key_id)?;
    let policy = key.meta().policy.get().clone();
    let rule = rule(&w, &policy).ok_or_else(|| {
        Status::failed_precondition("the key's policy takes no approvals for this")
    })?;
    let approver: [u8; 32] = approval
        .approver
        .as_slice()
        .try_into()
        .map_err(|_| Status::invalid_argument("approval.approver: must be 32 bytes"))?;
    if approval.signature.len() != 64 {
        return Err(Status::invalid_argument(
            "approval.signature: must be 64 bytes",
        ));
    }
    if !rule.approvers.contains(&approver) {
        return Err(Status::permission_denied(format!(
            "approver {} is not an approver of key {}",
            hex::encode(approver),
            w.key_id
        )));
    }
    let a = hot_warm_cold::Approval {
        approver,
        signature: approval.signature.clone(),
    };
    if !a.verifies(&approval_digest(&w)) {
        return Err(Status::invalid_argument(
            "approval.signature: does not verify over this request's approval digest",
        ));
    }
    let approver_hex = hex::encode(approver);
    let approver_bytes = Hex(approver.to_vec());
    if w.state.is_final() {
        return Ok(to_proto(core, &w));
    }
    if !w.approvals.iter().any(|(a, _)| *a == approver_bytes) {
        core.audit
            .append(
                APPROVED,
                &Approved {
                    key_id: w.key_id.clone(),
                    request_id: w.request_id.clone(),
                    approval: ApprovalRecord {
                        approver: approver_hex.clone(),
                        signature: hex::encode(&approval.signature),
                    },
                },
            )
            .await
            .map_err(crate::audit::refused)?;
        w.approvals
            .push((approver_bytes, approval.signature.clone().into()));
        put(core, &w).await?;
        info!(%request_id, caller = %by, "approval {} of {}", valid(&w, &policy), rule.required);
    }
    let w = attempt_locked(core, w).await?;
    Ok(to_proto(core, &w))
}

/// Signs `w` if it is ready, under the request's lock; records the outcome.
async fn attempt(core: &Arc<Core>, w: WaitingRequest) -> Result<WaitingRequest, Status> {
    let _guard = core.request_lock(&w.request_id).await;
    attempt_locked(core, w).await
}

async fn attempt_locked(core: &Arc<Core>, w: WaitingRequest) -> Result<WaitingRequest, Status> {
    // Another attempt may have finished while we waited for the lock.
    if core
        .store
        .request(&w.request_id)
        .map_err(store_err)?
        .is_some()
        && !w.is_policy_change()
    {
        let mut w = w;
        if w.state != RequestState::Signed {
            // A stored signature is what happened, whatever the request's record says.
            w.state = RequestState::Signed;
            put(core, &w).await?;
        }
        return Ok(w);
    }
    let mut w = core
        .store
        .waiting(&w.request_id)
        .map_err(store_err)?
        .unwrap_or(w);
    if w.state.is_final() {
        return Ok(w);
    }
    let key = core.key(&w.key_id)?;
    let policy = key.meta().policy.get().clone();
    if w.is_policy_change() {
        if policy.digest()[..] != w.current_policy[..]
            || key.meta().policy_version != w.policy_version
        {
            w.state = w.state.next(RequestEvent::Refused);
            w.last_error = "the key's policy changed since this change was proposed".into();
        } else if valid(&w, &policy) >= required(&w, &policy) {
            match apply_policy(core, &key, &w).await {
                Ok(()) => {
                    w.state = w.state.next(RequestEvent::Applied);
                    w.last_error.clear();
                }
                Err(st) if st.code() == Code::PermissionDenied => {
                    w.state = w.state.next(RequestEvent::Refused);
                    w.last_error = st.message().to_string();
                }
                Err(st) => w.last_error = format!("{:?}: {}", st.code(), st.message()),
            }
        }
        put(core, &w).await?;
        return Ok(w);
    }
    let enough = valid(&w, &policy) >= required(&w, &policy);
    if !ready(&w, &policy, core.clock.now_secs()) {
        let state = w.state.next(RequestEvent::NotReady { enough });
        if w.state != state {
            w.state = state;
            put(core, &w).await?;
        }
        return Ok(w);
    }
    if !key.meta().state.may_sign() {
        w.last_error = format!("key is {}", key.meta().state.name());
        put(core, &w).await?;
        return Ok(w);
    }
    if key.meta().tier == hot_warm_cold::Tier::Cold {
        // Approved: its signers are offline; operators carry the files
        // (`custody cold export` / `custody cold import`).
        let state = w.state.next(RequestEvent::ColdApproved);
        if w.state != state {
            w.state = state;
            put(core, &w).await?;
        }
        return Ok(w);
    }
    let message = w.message.to_vec();
    match sign_and_record(
        core,
        &key,
        &w.request_id,
        message,
        transfer_of(&w),
        settlement_of(&w),
        approvals_of(&w),
    )
    .await
    {
        Ok(_) => {
            w.state = w.state.next(RequestEvent::Signed);
            w.last_error.clear();
            info!(request_id = %w.request_id, "approved request signed");
        }
        // A signer's own time lock has not passed yet (it saw the request later):
        // try again later.
        Err(st)
            if st.code() == Code::PermissionDenied
                && st
                    .metadata()
                    .get(custody_protocol::api::DENY_REASON)
                    .is_some_and(|v| v == "time-locked") =>
        {
            w.state = w.state.next(RequestEvent::SignerTimeLocked);
            w.last_error = st.message().to_string();
        }
        Err(st) if st.code() == Code::PermissionDenied => {
            w.state = w.state.next(RequestEvent::Refused);
            w.last_error = st.message().to_string();
        }
        Err(st) => {
            w.last_error = format!("{:?}: {}", st.code(), st.message());
        }
    }
    put(core, &w).await?;
    Ok(w)
}

/// Has every signer of the key take the new policy of `w` (each verifies the admins'
/// approvals itself), then records it.
async fn apply_policy(core: &Arc<Core>, key: &AnyKey, w: &WaitingRequest) -> Result<(), Status> {
    let mut tasks = Vec::new();
    for name in &key.meta().signers {
        let h = core
            .signer(name)
            .ok_or_else(|| Status::internal(format!("signer {name} is not configured")))?
            .clone();
        let req = custody_protocol::proto::SetPolicyRequest {
            key_id: w.key_id.clone(),
            policy: w.new_policy.clone(),
            approvals: approvals_of(w),
        };
        let timeout = core.timeouts.dkg();
        tasks.push(tokio::spawn(async move {
            let r = h.call(timeout, |l| l.set_policy(req)).await;
            (h.name.clone(), r)
        }));
    }
    let mut failures = Vec::new();
    let mut refused = None;
    for t in tasks {
        let (name, r) = t
            .await
            .map_err(|e| Status::internal(format!("task: {e}")))?;
        match r {
            Ok(_) => {}
            Err(e @ crate::link::LinkError::Refused { .. }) => {
                refused = Some(format!("{name}: {e}"))
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    if let Some(why) = refused {
        return Err(Status::permission_denied(why));
    }
    if !failures.is_empty() {
        return Err(Status::unavailable(format!(
            "not every signer took the new policy yet ({}); retrying",
            failures.join("; ")
        )));
    }
    let mut meta = key.meta().clone();
    let previous = meta.policy.clone();
    meta.policy = crate::store::StoredPolicy::parse(&w.new_policy)
        .map_err(|e| Status::internal(format!("proposed policy: {e}")))?;
    meta.policy_version += 1;
    core.audit
        .append(
            POLICY_CHANGED,
            &PolicyChanged {
                key_id: w.key_id.clone(),
                previous_policy_sha256: hex::encode(previous.get().digest()),
                policy: w.new_policy.clone(),
                version: w.policy_version,
                approvals: w
                    .approvals
                    .iter()
                    .map(|(a, s)| ApprovalRecord {
                        approver: hex::encode(&**a),
                        signature: hex::encode(&**s),
                    })
                    .collect(),
            },
        )
        .await
        .map_err(crate::audit::refused)?;
    core.record_key(&meta).await?;
    warn!(key_id = %w.key_id, request_id = %w.request_id, "policy changed (approved by its admins)");
    Ok(())
}

/// Proposes a new policy for a key; it applies once enough of the key's admins approve.
pub(crate) async fn propose_policy(
    core: &Arc<Core>,
    key_id: &str,
    new_policy: &str,
    request_id: &str,
) -> Result<SigningRequest, Status> {
    let key = core.key(key_id)?;
    let current = key.meta().policy.get().clone();
    if current.admins.is_none() {
        return Err(Status::failed_precondition(format!(
            "key {key_id}: its policy names no admins, so it cannot change"
        )));
    }
    if new_policy.trim().is_empty() {
        return Err(Status::invalid_argument("policy: empty"));
    }
    let _guard = core.request_lock(request_id).await;
    let new = hot_warm_cold::Policy::from_json(new_policy)
        .map_err(|e| Status::invalid_argument(format!("policy: {e}")))?;
    if let Some(w) = core.store.waiting(request_id).map_err(store_err)? {
        if w.key_id != key_id || w.new_policy != new.to_json() {
            return Err(Status::failed_precondition(format!(
                "request_id {request_id} was already used for another request"
            )));
        }
        return Ok(to_proto(core, &w));
    }
    if core.store.request(request_id).map_err(store_err)?.is_some() {
        return Err(Status::failed_precondition(format!(
            "request_id {request_id} was already used for a signature"
        )));
    }
    let w = WaitingRequest {
        request_id: request_id.to_string(),
        key_id: key_id.to_string(),
        message: Hex::default(),
        transfer: None,
        approvals: vec![],
        created_at: core.clock.now_secs(),
        state: RequestState::WaitingApprovals,
        last_error: String::new(),
        kind: "policy-change".into(),
        new_policy: new.to_json(),
        current_policy: current.digest().to_vec().into(),
        policy_version: key.meta().policy_version,
        cold: None,
        settlement: Hex::default(),
    };
    core.audit
        .append(
            POLICY_CHANGE_REQUESTED,
            &PolicyChangeRequested {
                key_id: w.key_id.clone(),
                request_id: w.request_id.clone(),
                policy: w.new_policy.clone(),
                current_policy_sha256: hex::encode(&*w.current_policy),
            },
        )
        .await
        .map_err(crate::audit::refused)?;
    put(core, &w).await?;
    info!(%request_id, %key_id, "policy change waits for {} admin approvals", required(&w, &current));
    Ok(to_proto(core, &w))
}

/// Retires active keys past their policy's maximum age or number of signatures (every
/// signer refuses them already; this says so). Signing retires a key at its limit at
/// once; this also catches a count that reached it otherwise (results put back from
/// the audit log at start, or a retirement that did not complete).
async fn retire_old_keys(core: &Arc<Core>) {
    let keys = core.key_metas();
    for meta in keys {
        if !meta.state.may_sign() {
            continue;
        }
        let policy = meta.policy.get();
        let mut why = None;
        if let Some(max) = policy.max_signatures {
            if let Ok(n) = core.store.signatures(&meta.key_id) {
                if n >= max {
                    why = Some(format!("{n} signatures made, policy allows {max}"));
                }
            }
        }
        if let Some(max) = policy.max_age_secs {
            let age = core.clock.now_secs().saturating_sub(meta.created_at);
            if age > max {
                why = Some(format!("key is {age} s old, policy allows {max} s"));
            }
        }
        if let Some(why) = why {
            if let Err(st) = crate::lifecycle::retire_by_policy(core, &meta.key_id, &why).await {
                warn!(key_id = %meta.key_id, "automatic retirement not complete: {}", st.message());
            }
        }
    }
}

/// Signs waiting requests as their time locks end (and retries those a signer's
/// own time lock held back); retires keys past their maximum age.
pub(crate) fn spawn_ticker(core: Arc<Core>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            retire_old_keys(&core).await;
            let Ok(all) = core.store.open_waiting() else {
                continue;
            };
            for w in all {
                if !matches!(
                    w.state,
                    RequestState::TimeLocked | RequestState::WaitingApprovals
                ) {
                    continue;
                }
                let Ok(key) = core.key(&w.key_id) else {
                    continue;
                };
                let policy = key.meta().policy.get();
                if !ready(&w, policy, core.clock.now_secs()) {
                    continue;
                }
                if let Err(st) = attempt(&core, w).await {
                    warn!("waiting request: {}", st.message());
                }
            }
        }
    });
}
