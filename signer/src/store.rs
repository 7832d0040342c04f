//! The signer's durable state: one record per key in `sled`, the share sealed.

use serde::{Deserialize, Serialize};

use custody_protocol::{IdentityPublic, ParticipantId, Suite};

/// Lifecycle of a key as this signer sees it (`pending` until every participant
/// confirmed the DKG, then `active`, and onwards along the lifecycle).
pub use hot_warm_cold::State as KeyState;

/// A stored key share.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Key id (chosen by the coordinator).
    pub key_id: String,
    /// Suite name.
    pub suite: String,
    /// Our participant id in this key.
    pub me: u16,
    /// State.
    pub state: KeyState,
    /// DKG session id, hex.
    pub session: String,
    /// Every participant's identity (hex of 64 bytes), by participant id.
    pub roster: Vec<(u16, String)>,
    /// The share, sealed (hex).
    pub sealed_share: String,
    /// Canonical public key set (hex).
    pub public_key_set: String,
    /// The policy this signer enforces for the key (records written before policies
    /// existed get the development policy).
    #[serde(default = "hot_warm_cold::Policy::permissive_hot")]
    pub policy: hot_warm_cold::Policy,
    /// When the key's share was stored (Unix seconds).
    #[serde(default)]
    pub created_at: u64,
    /// A refreshed share this signer confirmed and has not applied yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_refresh: Option<PendingRefresh>,
    /// Session id of the last refresh applied, hex.
    #[serde(default)]
    pub last_refresh: String,
    /// How many times the policy changed (admin approvals bind to it).
    #[serde(default)]
    pub policy_version: u64,
}

/// A refreshed share, durable before its confirmation leaves; it replaces the share
/// when every participant's confirmation arrives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingRefresh {
    /// Refresh session id, hex.
    pub session: String,
    /// The new share, sealed (hex).
    pub sealed_share: String,
    /// The new public key set (hex).
    pub public_key_set: String,
}

/// What this signer has released for a key: the count of signature shares and the
/// transfers within the policy's longest window. Written durably before a share
/// leaves the signer, for keys whose policy has limits.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Signature shares released.
    pub signatures: u64,
    /// Transfers released, within the longest window.
    pub ledger: hot_warm_cold::SpendLedger,
    /// Requests admitted within the longest window: request id → (time, hash of the
    /// signed message). A retry of the same request (another quorum, a lost answer)
    /// is not counted twice; the same id for another message is refused.
    #[serde(default)]
    pub requests: std::collections::BTreeMap<String, (u64, [u8; 32])>,
}

impl KeyRecord {
    /// The suite.
    pub fn suite(&self) -> Result<Suite, String> {
        self.suite.parse().map_err(|e| format!("{e}"))
    }

    /// The roster as the engine wants it.
    pub fn roster(&self) -> Result<custody_protocol::Roster, String> {
        self.roster
            .iter()
            .map(|(p, h)| {
                let id = ParticipantId::new(*p).ok_or("participant 0")?;
                let bytes = hex::decode(h).map_err(|e| e.to_string())?;
                let public = IdentityPublic::from_bytes(&bytes).map_err(|e| e.to_string())?;
                Ok((id, public))
            })
            .collect()
    }
}

/// Associated data binding a sealed share to its signer, key and format version, so a
/// blob cannot be moved to another key or signer.
pub fn share_aad(signer: &str, key_id: &str) -> Vec<u8> {
    format!("custody/v1/key-share\0{signer}\0{key_id}\0v1").into_bytes()
}

/// Associated data of the sealed identity.
pub fn identity_aad(signer: &str) -> Vec<u8> {
    format!("custody/v1/identity\0signer\0{signer}").into_bytes()
}
