//! Structured requests and approvals.
//!
//! A [`Transfer`]'s signed message is not chosen by whoever relays it: each signer
//! computes it from the request's fields as a domain-separated canonical hash
//! ([`Transfer::message`]), bound to the key it is signed with. Approvers sign the same
//! digest ([`Request::approval_message`]).

use custody_protocol::hash::TaggedHash;
use serde::{Deserialize, Serialize};

/// Longest asset name, destination, request id or memo, in bytes.
pub const MAX_FIELD: usize = 256;

/// A transfer of `amount` minor units of `asset` to `destination`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    /// Asset code, e.g. `BTC`, `EUR`.
    pub asset: String,
    /// Amount in the asset's minor units.
    pub amount: u128,
    /// Destination address or account.
    pub destination: String,
    /// The client's request id (unique per key).
    pub request_id: String,
    /// Free text, signed but not interpreted.
    pub memo: String,
}

impl Transfer {
    /// Checks field lengths and that the amount is not zero.
    pub fn check(&self) -> Result<(), String> {
        for (name, v) in [
            ("asset", &self.asset),
            ("destination", &self.destination),
            ("request_id", &self.request_id),
            ("memo", &self.memo),
        ] {
            if v.len() > MAX_FIELD {
                return Err(format!("{name}: at most {MAX_FIELD} bytes"));
            }
            if name != "memo" && v.is_empty() {
                return Err(format!("{name}: must not be empty"));
            }
        }
        if self.amount == 0 {
            return Err("amount: must be positive".into());
        }
        Ok(())
    }

    /// The 32-byte message the signers sign for this transfer with key `key_id`:
    /// `TaggedHash("custody/v1/transfer", key_id, asset, amount (16 bytes BE),
    /// destination, request_id, memo)`.
    pub fn message(&self, key_id: &str) -> [u8; 32] {
        TaggedHash::new("custody/v1/transfer")
            .part(key_id.as_bytes())
            .part(self.asset.as_bytes())
            .part(&self.amount.to_be_bytes())
            .part(self.destination.as_bytes())
            .part(self.request_id.as_bytes())
            .part(self.memo.as_bytes())
            .finish()
    }
}

/// A settlement: the header of a batch of payments, which commits to them by a Merkle
/// root; the payments daemon asks for it to be signed. Its message, like a
/// transfer's, is computed by each signer from its fields.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settlement {
    /// The batch.
    pub batch_id: String,
    /// Merkle root of its payments.
    pub root: [u8; 32],
    /// Number of payments.
    pub count: u64,
    /// Total per currency, minor units.
    pub totals: std::collections::BTreeMap<String, u128>,
    /// Period of its payments (Unix ms).
    pub period_start_ms: u64,
    /// End of the period.
    pub period_end_ms: u64,
    /// The request id.
    pub request_id: String,
}

impl Settlement {
    /// Checks the fields.
    pub fn check(&self) -> Result<(), String> {
        if self.batch_id.is_empty() || self.batch_id.len() > MAX_FIELD {
            return Err(format!("batch_id: 1 to {MAX_FIELD} bytes"));
        }
        // One settlement per batch: its request id is the batch's.
        if self.request_id != format!("settle-{}", self.batch_id) {
            return Err(format!(
                "request_id: a settlement's is settle-{}",
                self.batch_id
            ));
        }
        if self.count == 0 {
            return Err("count: must be positive".into());
        }
        if self.totals.is_empty() || self.totals.len() > 256 {
            return Err("totals: 1 to 256 currencies".into());
        }
        for (c, t) in &self.totals {
            if c.is_empty() || c.len() > 16 || *t == 0 {
                return Err(format!(
                    "totals: {c:?}: a currency name and a positive total"
                ));
            }
        }
        if self.period_end_ms < self.period_start_ms {
            return Err("period: ends before it starts".into());
        }
        Ok(())
    }

    /// The 32-byte message the signers sign: `TaggedHash("custody/v1/settlement",
    /// key_id, request_id, batch_id, root, count (8 bytes BE), (currency, total (16
    /// bytes BE))* ascending, period start (8 BE), period end (8 BE))`.
    pub fn message(&self, key_id: &str) -> [u8; 32] {
        let mut h = TaggedHash::new("custody/v1/settlement")
            .part(key_id.as_bytes())
            .part(self.request_id.as_bytes())
            .part(self.batch_id.as_bytes())
            .part(&self.root)
            .part(&self.count.to_be_bytes());
        for (c, t) in &self.totals {
            h = h.part(c.as_bytes()).part(&t.to_be_bytes());
        }
        h.part(&self.period_start_ms.to_be_bytes())
            .part(&self.period_end_ms.to_be_bytes())
            .finish()
    }
}

/// What a client asks a key to sign.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Request {
    /// A structured transfer: the message is derived from it.
    Transfer(Transfer),
    /// A settlement batch header: the message is derived from it.
    Settlement(Settlement),
    /// Exact bytes, only where the key's policy allows raw signing.
    Raw {
        /// The client's request id.
        request_id: String,
        /// The bytes to sign.
        message: Vec<u8>,
    },
}

impl Request {
    /// The bytes the signers sign.
    pub fn message(&self, key_id: &str) -> Vec<u8> {
        match self {
            Request::Transfer(t) => t.message(key_id).to_vec(),
            Request::Settlement(s) => s.message(key_id).to_vec(),
            Request::Raw { message, .. } => message.clone(),
        }
    }

    /// What approvers sign: [`approval_digest`] of its message.
    pub fn approval_message(&self, key_id: &str) -> [u8; 32] {
        approval_digest(key_id, &self.message(key_id))
    }

    /// The request id.
    pub fn request_id(&self) -> &str {
        match self {
            Request::Transfer(t) => &t.request_id,
            Request::Settlement(s) => &s.request_id,
            Request::Raw { request_id, .. } => request_id,
        }
    }
}

/// What approvers sign for a request of key `key_id` whose signed message is
/// `message`: `TaggedHash("custody/v1/approval", key_id, message)`. The one definition:
/// signers, the coordinator, the CLI and the audit verifier all call this.
pub fn approval_digest(key_id: &str, message: &[u8]) -> [u8; 32] {
    TaggedHash::new("custody/v1/approval")
        .part(key_id.as_bytes())
        .part(message)
        .finish()
}

/// An approver's Ed25519 signature over [`Request::approval_message`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Approval {
    /// The approver's public key.
    pub approver: [u8; 32],
    /// The signature (64 bytes).
    pub signature: Vec<u8>,
}

impl Approval {
    /// Whether the signature is a valid (strict RFC 8032) signature by `approver` over
    /// `digest`.
    pub fn verifies(&self, digest: &[u8; 32]) -> bool {
        let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&self.approver) else {
            return false;
        };
        let Ok(sig) = ed25519_dalek::Signature::from_slice(&self.signature) else {
            return false;
        };
        vk.verify_strict(digest, &sig).is_ok()
    }
}
