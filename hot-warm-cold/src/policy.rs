//! Tiers and per-key policy: plain data, checked by [`crate::decide`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// How a key is kept and what a signature needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    /// Signers online; requests signed automatically within limits and allowlists.
    Hot,
    /// Signers online; every request needs k-of-m approvals and waits out a time lock.
    Warm,
    /// Signers air-gapped; requests and responses travel as signed files.
    Cold,
}

impl Tier {
    /// The name used in configs and APIs.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Hot => "hot",
            Tier::Warm => "warm",
            Tier::Cold => "cold",
        }
    }
}

impl std::str::FromStr for Tier {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "hot" => Ok(Tier::Hot),
            "warm" => Ok(Tier::Warm),
            "cold" => Ok(Tier::Cold),
            other => Err(format!(
                "unknown tier {other:?}: expected hot, warm or cold"
            )),
        }
    }
}

/// Limits on one asset, in its minor units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetLimits {
    /// Largest single transfer.
    pub per_request: u128,
    /// Largest total of transfers signed within any `window_secs` window.
    pub per_window: u128,
    /// The rolling window, seconds (at least 1).
    pub window_secs: u64,
}

/// k distinct approvals from a named set of Ed25519 approver keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRule {
    /// How many distinct approvers must sign.
    pub required: u16,
    /// The approvers' Ed25519 public keys (32 bytes each; hex strings in JSON).
    #[serde(with = "hex_keys")]
    pub approvers: BTreeSet<[u8; 32]>,
}

impl ApprovalRule {
    /// The number of distinct approvers of this rule with a valid signature over
    /// `digest` among `approvals` (unlisted keys, bad signatures and repeats do not
    /// count). The one count: request approvals and admins' policy-change approvals,
    /// on the signers and the coordinator.
    pub fn valid(&self, digest: &[u8; 32], approvals: &[crate::request::Approval]) -> usize {
        approvals
            .iter()
            .filter(|a| self.approvers.contains(&a.approver) && a.verifies(digest))
            .map(|a| a.approver)
            .collect::<BTreeSet<_>>()
            .len()
    }
}

/// A set of 32-byte keys as a JSON array of lowercase hex strings.
mod hex_keys {
    use std::collections::BTreeSet;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(keys: &BTreeSet<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(keys.iter().map(hex::encode))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeSet<[u8; 32]>, D::Error> {
        let list = Vec::<String>::deserialize(d)?;
        let mut out = BTreeSet::new();
        for h in list {
            let k: [u8; 32] = hex::decode(&h)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| {
                    serde::de::Error::custom(format!("approver {h:?}: not 32 bytes of hex"))
                })?;
            if !out.insert(k) {
                return Err(serde::de::Error::custom(format!(
                    "approver {h} listed twice"
                )));
            }
        }
        Ok(out)
    }
}

/// What a key may sign.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The tier.
    pub tier: Tier,
    /// Limits per asset; a transfer of an asset not listed is refused.
    pub assets: BTreeMap<String, AssetLimits>,
    /// Destinations allowed; `None` allows any (hot keys for development only).
    pub allowlist: Option<BTreeSet<String>>,
    /// Whether raw messages (not structured transfers) may be signed at all.
    pub allow_raw: bool,
    /// Approvals needed (required for warm and cold keys).
    pub approvals: Option<ApprovalRule>,
    /// Seconds a request must wait after the signer first saw it.
    pub time_lock_secs: u64,
    /// Largest key age in seconds; older keys refuse to sign (rotate them).
    pub max_age_secs: Option<u64>,
    /// Largest number of signatures; past it the key refuses (rotate it). Each
    /// signer counts the shares it released.
    pub max_signatures: Option<u64>,
    /// Who may change this policy: k of a named set of admin keys, whose approvals
    /// of the change every signer verifies. `None`: the policy never changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admins: Option<ApprovalRule>,
}

/// Why a policy is not coherent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A warm or cold key without an approval rule.
    #[error("{0} keys need an approval rule")]
    ApprovalsRequired(&'static str),
    /// k is zero or larger than the number of approvers.
    #[error("approval rule needs 1 <= required <= {approvers}, got {required}")]
    BadApprovalRule {
        /// k.
        required: u16,
        /// m.
        approvers: usize,
    },
    /// A window of zero seconds, or a per-request limit above the window limit.
    #[error("asset {0}: window_secs must be at least 1 and per_request at most per_window")]
    BadLimits(String),
}

impl Policy {
    /// Development policy for hot keys: any message, any destination, no limits. What
    /// `custody dev` keys get unless told otherwise.
    pub fn permissive_hot() -> Policy {
        Policy {
            tier: Tier::Hot,
            assets: BTreeMap::new(),
            allowlist: None,
            allow_raw: true,
            approvals: None,
            time_lock_secs: 0,
            max_age_secs: None,
            max_signatures: None,
            admins: None,
        }
    }

    /// SHA-256 of the canonical JSON form.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(self.to_json().as_bytes()).into()
    }

    /// What admins sign to change `current` (this key's policy now, at `version`: the
    /// number of changes it went through) into `self`: `TaggedHash("custody/v1/policy-
    /// change", key id, u64 version, SHA-256 of the current canonical policy, the new
    /// canonical policy)`. Bound to the version, an approval cannot be replayed, not
    /// even after a change back to the same policy.
    pub fn change_digest(&self, key_id: &str, version: u64, current: &[u8; 32]) -> [u8; 32] {
        custody_protocol::hash::TaggedHash::new("custody/v1/policy-change")
            .part(key_id.as_bytes())
            .part(&version.to_be_bytes())
            .part(current)
            .part(self.to_json().as_bytes())
            .finish()
    }

    /// Whether `approvals` change `current` into `self` for `key_id`: `current` must
    /// name admins, and at least their required number of distinct admins must have
    /// signed [`Policy::change_digest`].
    pub fn change_approved(
        &self,
        current: &Policy,
        key_id: &str,
        version: u64,
        approvals: &[crate::request::Approval],
    ) -> Result<(), String> {
        let rule = current
            .admins
            .as_ref()
            .ok_or("the key's policy names no admins: it cannot be changed")?;
        let digest = self.change_digest(key_id, version, &current.digest());
        let valid = rule.valid(&digest, approvals);
        if valid < rule.required as usize {
            return Err(format!(
                "{valid} valid admin approvals of this policy change, {} required",
                rule.required
            ));
        }
        Ok(())
    }

    /// A policy from its JSON form, checked; the empty string is the development
    /// policy ([`Policy::permissive_hot`]).
    pub fn from_json(json: &str) -> Result<Policy, String> {
        if json.trim().is_empty() {
            return Ok(Policy::permissive_hot());
        }
        let p: Policy = serde_json::from_str(json).map_err(|e| e.to_string())?;
        p.check().map_err(|e| e.to_string())?;
        Ok(p)
    }

    /// The canonical JSON form (what the coordinator records and hands every signer).
    pub fn to_json(&self) -> String {
        // Invariant: a Policy is plain data with string map keys; it always serializes.
        serde_json::to_string(self).expect("policy serializes")
    }

    /// Whether signing under this policy needs the signer's durable usage record
    /// (a spend ledger or a signature count); the development policy does not.
    pub fn needs_ledger(&self) -> bool {
        !self.assets.is_empty() || self.max_signatures.is_some()
    }

    /// The longest rolling window of any asset: ledger entries older than this can no
    /// longer count.
    pub fn longest_window(&self) -> u64 {
        self.assets
            .values()
            .map(|l| l.window_secs)
            .max()
            .unwrap_or(0)
    }

    /// Checks the policy is coherent.
    pub fn check(&self) -> Result<(), PolicyError> {
        if self.tier != Tier::Hot && self.approvals.is_none() {
            return Err(PolicyError::ApprovalsRequired(self.tier.name()));
        }
        if let Some(rule) = &self.admins {
            if rule.required == 0 || rule.required as usize > rule.approvers.len() {
                return Err(PolicyError::BadApprovalRule {
                    required: rule.required,
                    approvers: rule.approvers.len(),
                });
            }
        }
        if let Some(rule) = &self.approvals {
            if rule.required == 0 || rule.required as usize > rule.approvers.len() {
                return Err(PolicyError::BadApprovalRule {
                    required: rule.required,
                    approvers: rule.approvers.len(),
                });
            }
        }
        for (asset, l) in &self.assets {
            if l.window_secs == 0 || l.per_request > l.per_window {
                return Err(PolicyError::BadLimits(asset.clone()));
            }
        }
        Ok(())
    }
}
