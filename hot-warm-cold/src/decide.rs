//! The one decision: may this key sign this request now?
//!
//! [`decide`] is a plain function of the key's status, its policy, the signer's own
//! spend ledger, the request, the approvals presented, when the signer first saw the
//! request and the signer's clock. It performs no I/O. A signer calls it before any
//! signature share leaves, and records an allowed transfer in its ledger durably
//! before releasing the share.

use serde::{Deserialize, Serialize};

use crate::lifecycle::State;
use crate::policy::Policy;
use crate::request::{Approval, Request};

/// What the signer knows of a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyStatus {
    /// Key id (bound into every transfer message and approval).
    pub key_id: String,
    /// Lifecycle state.
    pub state: State,
    /// When the key became active (Unix seconds).
    pub created_at: u64,
    /// Signature shares this signer has released for the key.
    pub signatures: u64,
}

/// The transfers a signer has released shares for: `(time, asset, amount)`, oldest
/// first. The signer keeps it durably; the decision only reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendLedger {
    entries: Vec<(u64, String, u128)>,
}

impl SpendLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a released transfer.
    pub fn record(&mut self, time: u64, asset: &str, amount: u128) {
        self.entries.push((time, asset.to_string(), amount));
    }

    /// Total of `asset` released in the window `(now - window, now]`; entries dated
    /// after `now` (a clock that went back) count too, so a clock change never frees
    /// budget.
    pub fn spent(&self, asset: &str, now: u64, window: u64) -> u128 {
        let from = now.saturating_sub(window);
        self.entries
            .iter()
            .filter(|(t, a, _)| a == asset && (*t > from || now < window))
            .fold(0u128, |acc, (_, _, v)| acc.saturating_add(*v))
    }

    /// Drops entries older than `before` (they can no longer count in any window that
    /// ends at or after `before + window`).
    pub fn prune(&mut self, before: u64) {
        self.entries.retain(|(t, _, _)| *t >= before);
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &[(u64, String, u128)] {
        &self.entries
    }
}

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "kebab-case", tag = "reason")]
pub enum DenyReason {
    /// The key is not in a signing state.
    #[error("key is {}, not active", .0.name())]
    NotActive(State),
    /// The key is older than its policy allows.
    #[error("key is {age_secs} s old, policy allows {max_secs} s: rotate it")]
    TooOld {
        /// Age.
        age_secs: u64,
        /// Limit.
        max_secs: u64,
    },
    /// The key has made as many signatures as its policy allows.
    #[error("key has made {count} signatures, policy allows {max}: rotate it")]
    TooManySignatures {
        /// Count.
        count: u64,
        /// Limit.
        max: u64,
    },
    /// A malformed request.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Raw messages are not allowed for this key.
    #[error("this key signs structured transfers only, not raw messages")]
    RawNotAllowed,
    /// The asset has no limits in the policy.
    #[error("asset {0} is not allowed for this key")]
    UnknownAsset(String),
    /// Larger than the per-request limit.
    #[error("amount {amount} exceeds the per-request limit {limit}")]
    OverRequestLimit {
        /// Asked.
        amount: u128,
        /// Limit.
        limit: u128,
    },
    /// The rolling-window limit would be exceeded.
    #[error("{spent} already spent in the last {window_secs} s; {amount} more exceeds the limit {limit}")]
    OverWindowLimit {
        /// Spent in the window.
        spent: u128,
        /// Asked.
        amount: u128,
        /// Limit.
        limit: u128,
        /// Window.
        window_secs: u64,
    },
    /// The destination is not on the allowlist.
    #[error("destination {0} is not on the allowlist")]
    DestinationNotAllowed(String),
    /// Not enough valid approvals from distinct listed approvers.
    #[error("{valid} valid approvals, {required} required")]
    NotEnoughApprovals {
        /// Distinct, listed approvers with a valid signature.
        valid: usize,
        /// k.
        required: u16,
    },
    /// The time lock has not run out.
    #[error("time lock: {remaining_secs} s to wait")]
    TimeLocked {
        /// Seconds left.
        remaining_secs: u64,
    },
    /// The request id was admitted before for another message.
    #[error("request id {0} was already used for another message")]
    RequestIdReused(String),
    /// The batch was settled before with other content.
    #[error("batch {0} was already settled with other content")]
    BatchReused(String),
    /// The request id was proposed before for another message.
    #[error("request id {0} was already proposed for another message")]
    ProposedForAnother(String),
    /// The signing package's message is not the message of the request it claims to
    /// be (the text says which).
    #[error("{0}")]
    MessageMismatch(String),
    /// A cold request's nonces were used already, for another signing package.
    #[error("the nonces of this request are already used for another signing package")]
    NoncesUsed,
    /// A policy change without the approvals of the admins the current policy names.
    #[error("policy change not approved: {0}")]
    PolicyChangeNotApproved(String),
}

impl DenyReason {
    /// Every reason's tag (the `reason` field of its JSON, and what signers send in
    /// `custody-deny-reason` metadata).
    pub const TAGS: &'static [&'static str] = &[
        "not-active",
        "too-old",
        "too-many-signatures",
        "invalid-request",
        "raw-not-allowed",
        "unknown-asset",
        "over-request-limit",
        "over-window-limit",
        "destination-not-allowed",
        "not-enough-approvals",
        "time-locked",
        "request-id-reused",
        "batch-reused",
        "proposed-for-another",
        "message-mismatch",
        "nonces-used",
        "policy-change-not-approved",
    ];

    /// This reason's tag.
    pub fn tag(&self) -> &'static str {
        match self {
            DenyReason::NotActive(_) => "not-active",
            DenyReason::TooOld { .. } => "too-old",
            DenyReason::TooManySignatures { .. } => "too-many-signatures",
            DenyReason::InvalidRequest(_) => "invalid-request",
            DenyReason::RawNotAllowed => "raw-not-allowed",
            DenyReason::UnknownAsset(_) => "unknown-asset",
            DenyReason::OverRequestLimit { .. } => "over-request-limit",
            DenyReason::OverWindowLimit { .. } => "over-window-limit",
            DenyReason::DestinationNotAllowed(_) => "destination-not-allowed",
            DenyReason::NotEnoughApprovals { .. } => "not-enough-approvals",
            DenyReason::TimeLocked { .. } => "time-locked",
            DenyReason::RequestIdReused(_) => "request-id-reused",
            DenyReason::BatchReused(_) => "batch-reused",
            DenyReason::ProposedForAnother(_) => "proposed-for-another",
            DenyReason::MessageMismatch(_) => "message-mismatch",
            DenyReason::NoncesUsed => "nonces-used",
            DenyReason::PolicyChangeNotApproved(_) => "policy-change-not-approved",
        }
    }
}

/// Allow, or deny with the reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// The key may sign the request now.
    Allow,
    /// It may not, and why.
    Deny(DenyReason),
}

impl Decision {
    /// Whether it is [`Decision::Allow`].
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// The number of distinct approvers of `policy`'s rule with a valid signature over
/// `digest` among `approvals` (unlisted keys, bad signatures and repeats do not count).
pub fn valid_approvals(policy: &Policy, digest: &[u8; 32], approvals: &[Approval]) -> usize {
    policy
        .approvals
        .as_ref()
        .map_or(0, |rule| rule.valid(digest, approvals))
}

/// May `key`, under `policy`, sign `request` at time `now` (Unix seconds, the signer's
/// own clock), given the signer's `ledger`, the `approvals` presented and when the
/// signer first saw the request (`first_seen`)?
pub fn decide(
    key: &KeyStatus,
    policy: &Policy,
    ledger: &SpendLedger,
    request: &Request,
    approvals: &[Approval],
    first_seen: u64,
    now: u64,
) -> Decision {
    match check(key, policy, ledger, request, approvals, first_seen, now) {
        Ok(()) => Decision::Allow,
        Err(r) => Decision::Deny(r),
    }
}

fn check(
    key: &KeyStatus,
    policy: &Policy,
    ledger: &SpendLedger,
    request: &Request,
    approvals: &[Approval],
    first_seen: u64,
    now: u64,
) -> Result<(), DenyReason> {
    if !key.state.may_sign() {
        return Err(DenyReason::NotActive(key.state));
    }
    if let Some(max) = policy.max_age_secs {
        let age = now.saturating_sub(key.created_at);
        if age > max {
            return Err(DenyReason::TooOld {
                age_secs: age,
                max_secs: max,
            });
        }
    }
    if let Some(max) = policy.max_signatures {
        if key.signatures >= max {
            return Err(DenyReason::TooManySignatures {
                count: key.signatures,
                max,
            });
        }
    }
    match request {
        Request::Raw { .. } if !policy.allow_raw => return Err(DenyReason::RawNotAllowed),
        Request::Raw { request_id, .. } if request_id.is_empty() => {
            return Err(DenyReason::InvalidRequest(
                "request_id: must not be empty".into(),
            ))
        }
        Request::Raw { .. } => {}
        Request::Settlement(s) => {
            s.check().map_err(DenyReason::InvalidRequest)?;
            // Each currency's total is held to that asset's limits, as a transfer is.
            if !policy.assets.is_empty() || !policy.allow_raw {
                for (currency, total) in &s.totals {
                    let limits = policy
                        .assets
                        .get(currency)
                        .ok_or_else(|| DenyReason::UnknownAsset(currency.clone()))?;
                    if *total > limits.per_request {
                        return Err(DenyReason::OverRequestLimit {
                            amount: *total,
                            limit: limits.per_request,
                        });
                    }
                    let spent = ledger.spent(currency, now, limits.window_secs);
                    if spent.saturating_add(*total) > limits.per_window {
                        return Err(DenyReason::OverWindowLimit {
                            spent,
                            amount: *total,
                            limit: limits.per_window,
                            window_secs: limits.window_secs,
                        });
                    }
                }
            }
        }
        Request::Transfer(t) => {
            t.check().map_err(DenyReason::InvalidRequest)?;
            if let Some(allow) = &policy.allowlist {
                if !allow.contains(&t.destination) {
                    return Err(DenyReason::DestinationNotAllowed(t.destination.clone()));
                }
            }
            if !policy.assets.is_empty() || !policy.allow_raw {
                let limits = policy
                    .assets
                    .get(&t.asset)
                    .ok_or_else(|| DenyReason::UnknownAsset(t.asset.clone()))?;
                if t.amount > limits.per_request {
                    return Err(DenyReason::OverRequestLimit {
                        amount: t.amount,
                        limit: limits.per_request,
                    });
                }
                let spent = ledger.spent(&t.asset, now, limits.window_secs);
                if spent.saturating_add(t.amount) > limits.per_window {
                    return Err(DenyReason::OverWindowLimit {
                        spent,
                        amount: t.amount,
                        limit: limits.per_window,
                        window_secs: limits.window_secs,
                    });
                }
            }
        }
    }
    if let Some(rule) = &policy.approvals {
        let digest = request.approval_message(&key.key_id);
        let valid = valid_approvals(policy, &digest, approvals);
        if valid < rule.required as usize {
            return Err(DenyReason::NotEnoughApprovals {
                valid,
                required: rule.required,
            });
        }
    }
    let unlock = first_seen.saturating_add(policy.time_lock_secs);
    if now < unlock {
        return Err(DenyReason::TimeLocked {
            remaining_secs: unlock - now,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tag_tests {
    use super::*;

    #[test]
    fn every_reason_serializes_with_its_listed_tag() {
        let all = [
            DenyReason::NotActive(crate::State::Suspended),
            DenyReason::TooOld {
                age_secs: 2,
                max_secs: 1,
            },
            DenyReason::TooManySignatures { count: 2, max: 1 },
            DenyReason::InvalidRequest("x".into()),
            DenyReason::RawNotAllowed,
            DenyReason::UnknownAsset("X".into()),
            DenyReason::OverRequestLimit {
                amount: 2,
                limit: 1,
            },
            DenyReason::OverWindowLimit {
                spent: 1,
                amount: 2,
                limit: 2,
                window_secs: 1,
            },
            DenyReason::DestinationNotAllowed("m".into()),
            DenyReason::NotEnoughApprovals {
                valid: 0,
                required: 1,
            },
            DenyReason::TimeLocked { remaining_secs: 1 },
            DenyReason::RequestIdReused("r".into()),
            DenyReason::BatchReused("settle-b".into()),
            DenyReason::ProposedForAnother("r".into()),
            DenyReason::MessageMismatch("m".into()),
            DenyReason::NoncesUsed,
            DenyReason::PolicyChangeNotApproved("p".into()),
        ];
        assert_eq!(all.len(), DenyReason::TAGS.len());
        let mut tags = std::collections::BTreeSet::new();
        for r in all {
            // (Internally tagged: variants holding a bare string do not serialize.)
            if let Ok(v) = serde_json::to_value(&r) {
                assert_eq!(v["reason"], r.tag());
            }
            assert!(DenyReason::TAGS.contains(&r.tag()));
            tags.insert(r.tag());
        }
        assert_eq!(tags.len(), DenyReason::TAGS.len(), "distinct tags");
    }
}
