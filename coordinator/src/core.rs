//! The coordinator's state: identity, signers, keys (with their commitment pools) and
//! the store.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, RwLock};

use custody_pki::server::SharedIdentity;
use custody_protocol::sign::{Commitments, COORDINATOR};
use custody_protocol::{
    with_suite, EngineSuite, IdentityPublic, ParticipantId, PublicKeySet, Roster, Suite,
};
use tonic::Status;

use crate::config::{Config, Timeouts};
use crate::signers::SignerHandle;
use crate::store::{KeyMeta, Store};
use crate::StartError;

/// Loads the coordinator's sealed identity from its data directory, creating it on
/// first start.
pub(crate) fn load_identity(config: &Config) -> Result<SharedIdentity, StartError> {
    let what = format!("coordinator {}", config.name);
    custody_pki::server::open_identity(
        &what,
        &config.name,
        &config.data_dir,
        &config.sealer,
        &crate::identity_aad(&config.name),
    )
    .map(|(key, _)| key)
}

/// Everything the services share.
#[derive(Debug)]
pub(crate) struct Core {
    /// Our name (as in our certificate).
    pub name: String,
    pub identity: SharedIdentity,
    /// Our certificate (DER).
    pub cert_der: Vec<u8>,
    /// Our audit log: written before what it records is acknowledged.
    pub audit: custody_audit::AuditLog,
    pub identity_public: IdentityPublic,
    pub ca_der: Vec<u8>,
    pub store: Store,
    pub signers: Vec<Arc<SignerHandle>>,
    pub timeouts: Timeouts,
    pub default_threshold: u16,
    pub keys: RwLock<HashMap<String, AnyKey>>,
    /// Request ids being signed right now: a repeated id waits for the first.
    pub inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Rotates quorum choice across signers.
    pub rotation: AtomicUsize,
    pub transcripts: std::path::PathBuf,
    /// Metrics and recent history (for the console).
    pub metrics: crate::metrics::Metrics,
    /// The one clock (tests move it).
    pub clock: Arc<dyn custody_ops::clock::Clock>,
}

/// A key loaded for signing, in its suite.
#[derive(Debug, Clone)]
pub(crate) enum AnyKey {
    Secp(Arc<KeyRt<custody_protocol::frost_secp256k1_tr::Secp256K1Sha256TR>>),
    Ed(Arc<KeyRt<custody_protocol::frost_ed25519::Ed25519Sha512>>),
}

impl AnyKey {
    pub fn meta(&self) -> &KeyMeta {
        match self {
            AnyKey::Secp(k) => &k.meta,
            AnyKey::Ed(k) => &k.meta,
        }
    }

    /// Commitments pooled per member signer (by name).
    pub fn pool_levels(&self) -> Vec<(String, usize)> {
        match self {
            AnyKey::Secp(k) => k.pool_levels(),
            AnyKey::Ed(k) => k.pool_levels(),
        }
    }
}

impl<C: EngineSuite> KeyRt<C> {
    /// Commitments pooled per member signer (by name).
    pub fn pool_levels(&self) -> Vec<(String, usize)> {
        let pools = self.pools.lock().expect("lock");
        self.members
            .iter()
            .map(|(p, h)| (h.name.clone(), pools.get(p).map_or(0, |q| q.queue.len())))
            .collect()
    }
}

/// Trait to build an [`AnyKey`] from a generic runtime.
pub(crate) trait IntoAnyKey: EngineSuite + Sized {
    fn wrap(k: Arc<KeyRt<Self>>) -> AnyKey;
}
impl IntoAnyKey for custody_protocol::frost_secp256k1_tr::Secp256K1Sha256TR {
    fn wrap(k: Arc<KeyRt<Self>>) -> AnyKey {
        AnyKey::Secp(k)
    }
}
impl IntoAnyKey for custody_protocol::frost_ed25519::Ed25519Sha512 {
    fn wrap(k: Arc<KeyRt<Self>>) -> AnyKey {
        AnyKey::Ed(k)
    }
}

/// A key and what signing with it needs.
#[derive(Debug)]
pub(crate) struct KeyRt<C: EngineSuite> {
    pub meta: KeyMeta,
    pub public: PublicKeySet<C>,
    /// Participants' identities and the coordinator's own (as `COORDINATOR`).
    pub roster: Roster,
    /// Participant id → signer.
    pub members: Vec<(ParticipantId, Arc<SignerHandle>)>,
    pub pools: Mutex<HashMap<ParticipantId, Pool<C>>>,
}

/// Commitments drawn ahead from one signer for one key. Each is handed out once.
#[derive(Debug)]
pub(crate) struct Pool<C: EngineSuite> {
    /// The signer's epoch when these were drawn; a newer epoch discards them.
    pub epoch: u64,
    pub queue: VecDeque<Commitments<C>>,
    pub refilling: bool,
}

impl<C: EngineSuite> Default for Pool<C> {
    fn default() -> Self {
        Pool {
            epoch: 0,
            queue: VecDeque::new(),
            refilling: false,
        }
    }
}

/// Held while one task works on a request id (see [`Core::request_lock`]).
pub(crate) struct RequestGuard<'a> {
    map: &'a Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    id: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut map = self.map.lock().expect("lock");
        // Only the map and we hold it: nobody waits; forget it. (Whoever clones it does
        // so under this same map mutex, so the count cannot grow behind our back.)
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(&self.id);
        }
    }
}

impl Core {
    /// Waits until no other task works on request `id`, then holds it until the guard
    /// drops. Every change to a request (signing, approving, cold files) takes it.
    pub async fn request_lock(&self, id: &str) -> RequestGuard<'_> {
        let lock = self
            .inflight
            .lock()
            .expect("lock")
            .entry(id.to_string())
            .or_default()
            .clone();
        let guard = lock.clone().lock_owned().await;
        RequestGuard {
            map: &self.inflight,
            id: id.to_string(),
            lock,
            guard: Some(guard),
        }
    }

    pub fn signer(&self, name: &str) -> Option<&Arc<SignerHandle>> {
        self.signers.iter().find(|s| s.name == name)
    }

    /// Builds the signing runtime of a stored key.
    pub fn load_key(&self, meta: KeyMeta) -> Result<AnyKey, String> {
        let suite: Suite = meta
            .suite
            .parse()
            .map_err(|e| format!("key {}: {e}", meta.key_id))?;
        with_suite!(suite, C => self.load_key_in::<C>(meta).map(C::wrap))
    }

    fn load_key_in<C: EngineSuite + IntoAnyKey>(
        &self,
        meta: KeyMeta,
    ) -> Result<Arc<KeyRt<C>>, String> {
        let err = |e: String| format!("key {}: {e}", meta.key_id);
        let pks = &meta.public_key_set;
        let public = PublicKeySet::<C>::from_bytes(pks).map_err(|e| err(e.to_string()))?;
        if meta.signers.len() != public.participants().len()
            || meta.identities.len() != meta.signers.len()
        {
            return Err(err("signer list does not match the public key set".into()));
        }
        let mut roster = Roster::new();
        let mut members = Vec::new();
        for (i, (name, id_hex)) in meta.signers.iter().zip(&meta.identities).enumerate() {
            let p = ParticipantId::new(i as u16 + 1).ok_or_else(|| err("participant 0".into()))?;
            let bytes = hex::decode(id_hex).map_err(|e| err(e.to_string()))?;
            let id = IdentityPublic::from_bytes(&bytes).map_err(|e| err(e.to_string()))?;
            roster.insert(p, id);
            let handle = self.signer(name).ok_or_else(|| {
                err(format!(
                    "signer {name} is not in this coordinator's configuration"
                ))
            })?;
            members.push((p, handle.clone()));
        }
        roster.insert(COORDINATOR, self.identity_public);
        Ok(Arc::new(KeyRt {
            meta,
            public,
            roster,
            members,
            pools: Mutex::new(HashMap::new()),
        }))
    }

    /// Stores a key's metadata durably (flushed), then puts its signing runtime in
    /// service in place of any older one.
    pub async fn record_key(&self, meta: &KeyMeta) -> Result<(), Status> {
        let (store, m) = (self.store.clone(), meta.clone());
        tokio::task::spawn_blocking(move || store.put_key(&m))
            .await
            .map_err(|e| Status::internal(format!("task: {e}")))?
            .map_err(|e| Status::internal(format!("coordinator storage: {e}")))?;
        let loaded = self.load_key(meta.clone()).map_err(Status::internal)?;
        self.keys
            .write()
            .expect("lock")
            .insert(meta.key_id.clone(), loaded);
        Ok(())
    }

    /// A snapshot of every key's metadata.
    pub fn key_metas(&self) -> Vec<crate::store::KeyMeta> {
        self.keys
            .read()
            .expect("lock")
            .values()
            .map(|k| k.meta().clone())
            .collect()
    }

    pub fn key(&self, key_id: &str) -> Result<AnyKey, Status> {
        self.keys
            .read()
            .expect("lock")
            .get(key_id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("key {key_id}: no such key")))
    }
}
