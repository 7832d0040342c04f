//! A key's lifecycle across its signers: an operator event (suspend, resume, retire,
//! destroy) applied by every signer of the key, then recorded; and the automatic
//! retirement of a key past its policy's limits.

use std::sync::Arc;

use custody_audit::export::{Lifecycle, LIFECYCLE};
use custody_protocol::proto::*;
use tonic::Status;
use tracing::warn;

use crate::core::Core;
use crate::store::KeyMeta;

/// Retires `key_id` because a policy limit is reached, and says so (log, audit log,
/// the key's `state_reason`). Every signer refuses past the limit anyway; this makes
/// the state visible and final.
pub(crate) async fn retire_by_policy(
    core: &Arc<Core>,
    key_id: &str,
    why: &str,
) -> Result<(), Status> {
    // One retirement of a key at a time (signing at the limit and the ticker can both
    // ask): the second finds it retired. The lock's id is no client's request id (those
    // have no NUL).
    let _one = core
        .request_lock(&format!("retire-by-policy\0{key_id}"))
        .await;
    if !core.key(key_id)?.meta().state.may_sign() {
        return Ok(());
    }
    let reason = format!("retired automatically: {why}");
    // The state and its reason are recorded together (a reader never sees one without
    // the other).
    let r2 = reason.clone();
    apply_event(core, key_id, "retire", "policy", "", move |m| {
        m.state_reason = r2
    })
    .await?;
    warn!(%key_id, "key {reason}; rotate it to keep signing");
    Ok(())
}

/// Applies an operator lifecycle event to a key on every one of its signers (each
/// idempotently, so a retry after a partial failure completes it), then records it.
pub(crate) async fn apply_event(
    core: &Arc<Core>,
    key_id: &str,
    event_name: &str,
    by: &str,
    successor: &str,
    adjust: impl FnOnce(&mut KeyMeta),
) -> Result<KeyMeta, Status> {
    let r = ChangeKeyStateRequest {
        key_id: key_id.to_string(),
        event: event_name.to_string(),
    };
    let event = hot_warm_cold::Event::operator_event(&r.event).ok_or_else(|| {
        Status::invalid_argument(format!(
            "event: {:?} is not one of suspend, resume, retire, destroy",
            r.event
        ))
    })?;
    let key = core.key(&r.key_id)?;
    let mut meta = key.meta().clone();
    let next = meta
        .state
        .apply(event)
        .map_err(|e| Status::failed_precondition(format!("key {}: {e}", meta.key_id)))?;
    // Every signer of the key applies it to its own record (idempotently, so a
    // retry after a partial failure completes it).
    let mut tasks = Vec::new();
    for name in &meta.signers {
        let h = core
            .signer(name)
            .ok_or_else(|| Status::internal(format!("signer {name} is not configured")))?
            .clone();
        let (key_id, ev, timeout) = (meta.key_id.clone(), r.event.clone(), core.timeouts.dkg());
        tasks.push(tokio::spawn(async move {
            let r = h
                .call(timeout, |l| {
                    l.key_lifecycle(KeyLifecycleRequest { key_id, event: ev })
                })
                .await;
            (h.name.clone(), r)
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        let (name, r) = t
            .await
            .map_err(|e| Status::internal(format!("task: {e}")))?;
        if let Err(e) = r {
            failures.push(format!("{name}: {e}"));
        }
    }
    if !failures.is_empty() {
        return Err(Status::unavailable(format!(
            "key {}: {} not applied by every signer ({}); run it again to complete it",
            meta.key_id,
            r.event,
            failures.join("; ")
        )));
    }
    meta.state = next;
    core.audit
        .append(
            LIFECYCLE,
            &Lifecycle {
                key_id: meta.key_id.clone(),
                event: if successor.is_empty() {
                    r.event.clone()
                } else {
                    "rotate".into()
                },
                state: meta.state.name().into(),
                by: by.to_string(),
                successor: successor.to_string(),
            },
        )
        .await
        .map_err(crate::audit::refused)?;
    adjust(&mut meta);
    core.record_key(&meta).await?;
    Ok(meta)
}
