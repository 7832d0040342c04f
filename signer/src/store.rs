//! The signer's durable state, the only file that names `sled`.
//!
//! One record per key in the default tree (the share sealed), and beside it the trees
//! `usage` (what a key released: [`Usage`]), `settled` (the content each settlement
//! batch was admitted with, for good), `proposed` (when a request was first seen, for
//! time locks) and `cold` (an air-gapped request's sealed nonces between its two
//! trips). Every write that something depends on is flushed before the write
//! returns. The on-disk forms are stable: JSON values under the keys documented on
//! each method.

use serde::{Deserialize, Serialize};

use custody_protocol::{IdentityPublic, ParticipantId, Suite};
pub use hot_warm_cold::Usage;

use crate::error::{Error, Result};

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

/// What an offline signer keeps about one cold request between its two trips.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ColdNonces {
    /// The nonces, sealed (hex); emptied once used.
    pub sealed: String,
    /// Our commitment (encoded body, hex).
    pub commitment: String,
    /// The commitment envelope we answered with (hex).
    pub envelope: String,
    /// Whether the nonces were used (durably, before the share left).
    pub used: bool,
    /// The package they were used for, and the share envelope made (hex).
    pub package: String,
    pub share: String,
    /// The share's session and transcript digest (hex), and whether its share-issued
    /// entry is in the audit log.
    #[serde(default)]
    pub session: String,
    #[serde(default)]
    pub transcript: String,
    #[serde(default)]
    pub logged: bool,
}

/// The signer's database.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    db: sled::Db,
}

fn db_err(e: impl std::fmt::Display) -> Error {
    Error::internal("database", e)
}

fn record_err(e: impl std::fmt::Display) -> Error {
    Error::internal("database record", e)
}

/// `key_id NUL request_id`: the key of the per-request trees.
fn request_key(key_id: &str, request_id: &str) -> Vec<u8> {
    format!("{key_id}\0{request_id}").into_bytes()
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &std::path::Path) -> Result<Store, String> {
        let db = sled::open(path).map_err(|e| format!("database: {e}"))?;
        Ok(Store { db })
    }

    fn tree(&self, name: &str) -> Result<sled::Tree> {
        self.db.open_tree(name).map_err(db_err)
    }

    fn flush(&self) -> Result<()> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| Error::internal("database flush", e))
    }

    fn read<T: serde::de::DeserializeOwned>(tree: &sled::Tree, k: &[u8]) -> Result<Option<T>> {
        match tree.get(k).map_err(db_err)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(record_err),
        }
    }

    /// Every key record (the default tree: key id → [`KeyRecord`]).
    pub fn records(&self) -> impl Iterator<Item = Result<KeyRecord>> + '_ {
        self.db.iter().map(|item| {
            let (_, v) = item.map_err(db_err)?;
            serde_json::from_slice(&v).map_err(record_err)
        })
    }

    /// The record of `key_id`.
    pub fn get(&self, key_id: &str) -> Result<Option<KeyRecord>> {
        Self::read(&self.db, key_id.as_bytes())
    }

    /// Stores a key record, durably.
    pub fn put(&self, rec: &KeyRecord) -> Result<()> {
        let v = serde_json::to_vec(rec).map_err(|e| Error::internal("encode record", e))?;
        self.db
            .insert(rec.key_id.as_bytes(), v)
            .map_err(|e| Error::internal("database write", e))?;
        self.flush()
    }

    /// The key whose refresh `session` (hex) is, pending or already applied.
    pub fn refresh_record(&self, session: &str) -> Result<Option<KeyRecord>> {
        for rec in self.records() {
            let rec = rec?;
            let pending = rec
                .pending_refresh
                .as_ref()
                .is_some_and(|p| p.session == session);
            if pending || rec.last_refresh == session {
                return Ok(Some(rec));
            }
        }
        Ok(None)
    }

    /// What `key_id` released (`usage`: key id → [`Usage`]).
    pub fn usage(&self, key_id: &str) -> Result<Usage> {
        Ok(Self::read(&self.tree("usage")?, key_id.as_bytes())?.unwrap_or_default())
    }

    /// The digest a settlement `request_id` of `key_id` was admitted with
    /// (`settled`: key id NUL request id → 32 raw bytes).
    pub fn settled(&self, key_id: &str, request_id: &str) -> Result<Option<[u8; 32]>> {
        match self
            .tree("settled")?
            .get(request_key(key_id, request_id))
            .map_err(db_err)?
        {
            None => Ok(None),
            Some(v) => v
                .as_ref()
                .try_into()
                .map(Some)
                .map_err(|_| record_err("settled digest is not 32 bytes")),
        }
    }

    /// Stores an admission's plan durably (one flush), before the share leaves.
    pub fn store_plan(
        &self,
        key_id: &str,
        request_id: &str,
        plan: &hot_warm_cold::Plan,
    ) -> Result<()> {
        if plan.is_empty() {
            return Ok(());
        }
        if let Some(d) = plan.settled {
            self.tree("settled")?
                .insert(request_key(key_id, request_id), d.as_slice())
                .map_err(|e| Error::internal("settlement record write", e))?;
        }
        if let Some(usage) = &plan.usage {
            let v = serde_json::to_vec(usage).map_err(|e| Error::internal("encode usage", e))?;
            self.tree("usage")?
                .insert(key_id.as_bytes(), v)
                .map_err(|e| Error::internal("usage write", e))?;
        }
        self.flush()
    }

    /// When `request_id` of `key_id` was first seen (`proposed`: key id NUL request id
    /// → `[unix seconds, hex digest]`).
    pub fn sighting(
        &self,
        key_id: &str,
        request_id: &str,
    ) -> Result<Option<hot_warm_cold::admit::Sighting>> {
        let stored: Option<(u64, String)> =
            Self::read(&self.tree("proposed")?, &request_key(key_id, request_id))?;
        stored
            .map(|(at, d)| {
                let digest = hex::decode(&d)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| record_err("proposed digest is not 32 bytes of hex"))?;
                Ok(hot_warm_cold::admit::Sighting { at, digest })
            })
            .transpose()
    }

    /// Stores a first sighting, durably.
    pub fn put_sighting(
        &self,
        key_id: &str,
        request_id: &str,
        s: &hot_warm_cold::admit::Sighting,
    ) -> Result<()> {
        let v = serde_json::to_vec(&(s.at, hex::encode(s.digest)))
            .map_err(|e| Error::internal("encode", e))?;
        self.tree("proposed")?
            .insert(request_key(key_id, request_id), v)
            .map_err(db_err)?;
        self.flush()
    }

    /// A cold request's nonces (`cold`: key id NUL request id → [`ColdNonces`]).
    pub fn cold(&self, key_id: &str, request_id: &str) -> Result<Option<ColdNonces>> {
        Self::read(&self.tree("cold")?, &request_key(key_id, request_id))
    }

    /// Stores a cold request's nonces record, durably.
    pub fn put_cold(&self, key_id: &str, request_id: &str, rec: &ColdNonces) -> Result<()> {
        let v = serde_json::to_vec(rec).map_err(|e| Error::internal("encode", e))?;
        self.tree("cold")?
            .insert(request_key(key_id, request_id), v)
            .map_err(db_err)?;
        self.flush()
    }
}
