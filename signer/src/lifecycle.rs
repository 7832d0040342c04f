//! A key's lifecycle and policy on this signer: operator events (suspend, resume,
//! retire, destroy; `hot_warm_cold::lifecycle` says which edges exist) and policy
//! changes approved by the key's admins (`Policy::change_approved`).
//!
//! Each change is in the audit log before it takes effect, durable in the store
//! before the in-memory key follows.

use custody_audit::export as ax;
use hot_warm_cold::{Approval, Event, Policy};
use tracing::warn;

use crate::core::Core;
use crate::error::{Error, Result};
use crate::store::KeyState;

/// A lifecycle event the coordinator relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LifecycleAsk {
    /// An operator event.
    Operator(Event),
    /// Abandon an unfinished refresh (`refresh-failed`).
    AbandonRefresh,
}

impl LifecycleAsk {
    /// From its name on the wire.
    pub fn parse(name: &str) -> Result<LifecycleAsk> {
        if name == "refresh-failed" {
            return Ok(LifecycleAsk::AbandonRefresh);
        }
        Event::operator_event(name)
            .map(LifecycleAsk::Operator)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "event: {name:?} is not one of suspend, resume, retire, destroy"
                ))
            })
    }
}

/// The event's name in records.
fn event_name(e: Event) -> &'static str {
    match e {
        Event::Suspend => "suspend",
        Event::Resume => "resume",
        Event::Retire => "retire",
        _ => "destroy",
    }
}

/// A policy change and the admins' approvals of it.
#[derive(Debug)]
pub(crate) struct PolicyChange {
    pub key_id: String,
    pub policy: Policy,
    pub approvals: Vec<Approval>,
}

impl Core {
    /// Applies a lifecycle event; returns the key's state after it. Idempotent.
    pub async fn lifecycle(&self, key_id: &str, ask: LifecycleAsk) -> Result<KeyState> {
        let event = match ask {
            LifecycleAsk::AbandonRefresh => return self.abandon_refresh(key_id).await,
            LifecycleAsk::Operator(e) => e,
        };
        let _held = self.lock_record(key_id).await;
        let mut rec = self.record(key_id)?;
        let target = match event {
            Event::Suspend => KeyState::Suspended,
            Event::Resume => KeyState::Active,
            Event::Retire => KeyState::Retired,
            _ => KeyState::Destroyed,
        };
        if rec.state == target {
            // Idempotent: a retry after a partial failure.
            return Ok(rec.state);
        }
        let next = rec
            .state
            .apply(event)
            .map_err(|e| Error::Precondition(format!("key {key_id}: {e}")))?;
        // In the audit log before it takes effect.
        self.log_lifecycle(key_id, event_name(event), next).await?;
        rec.state = next;
        if next == KeyState::Destroyed {
            // Erase the share; the record stays as a tombstone.
            rec.sealed_share.clear();
        }
        // Durable first; then the in-memory state follows.
        self.store.put(&rec)?;
        if next == KeyState::Destroyed {
            self.remove_key(key_id);
        } else if let Some(k) = self.key(key_id) {
            k.set_state(next);
        }
        warn!(%key_id, state = next.name(), "key lifecycle: {}", event_name(event));
        Ok(next)
    }

    /// Changes a key's policy once its current policy's admins approved; returns the
    /// new policy's digest. Idempotent.
    pub async fn set_policy(&self, ask: PolicyChange) -> Result<[u8; 32]> {
        let key_id = ask.key_id.as_str();
        let new = ask.policy;
        let _held = self.lock_record(key_id).await;
        let mut rec = self.record(key_id)?;
        if rec.policy == new {
            // Already applied (a retry).
            return Ok(new.digest());
        }
        if rec.state == KeyState::Destroyed {
            return Err(Error::Precondition(format!("key {key_id} is destroyed")));
        }
        // The admins named in the policy this signer enforces now must approve.
        new.change_approved(&rec.policy, key_id, rec.policy_version, &ask.approvals)
            .map_err(|why| {
                self.deny(
                    key_id,
                    "policy-change",
                    hot_warm_cold::DenyReason::PolicyChangeNotApproved(why),
                )
            })?;
        self.audit
            .append(
                ax::POLICY_CHANGED,
                &ax::PolicyChanged {
                    key_id: key_id.to_string(),
                    previous_policy_sha256: hex::encode(rec.policy.digest()),
                    version: rec.policy_version,
                    policy: new.to_json(),
                    approvals: ask
                        .approvals
                        .iter()
                        .map(|a| custody_audit::transcript::ApprovalRecord {
                            approver: hex::encode(a.approver),
                            signature: hex::encode(&a.signature),
                        })
                        .collect(),
                },
            )
            .await?;
        rec.policy = new.clone();
        rec.policy_version += 1;
        self.store.put(&rec)?;
        self.update_key(key_id, |k| k.with_policy(new.clone()));
        warn!(%key_id, "policy changed (approved by its admins)");
        Ok(new.digest())
    }
}
