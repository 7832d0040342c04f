//! The signer's core: its identity, store, audit log, clock and loaded keys, with the
//! helpers every ceremony shares (loading and unsealing keys, refusing by policy,
//! rosters from certificates).
//!
//! The ceremonies are `impl Core` blocks of their own files ([`crate::dkg`],
//! [`crate::refresh`], [`crate::repair`], [`crate::signing`], [`crate::admission`],
//! [`crate::lifecycle`]); the adapters ([`crate::grpc`], [`crate::cold`]) build typed
//! asks and call them. Nothing here knows gRPC.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use custody_audit::export as ax;
use custody_audit::AuditLog;
use custody_hsm::Sealer;
use custody_ops::clock::Clock;
use custody_pki::server::SharedIdentity;
use custody_pki::Role;
use custody_protocol::{with_suite, KeyShare, ParticipantId, Roster, SessionId};
use tracing::{info, warn};

use crate::config::Config;
use crate::error::{stored_hex, Error, Result};
use crate::fault::Faults;
use crate::keys::{AnyKey, Loaded, Typed};
use crate::sessions::{DkgSession, RepairSession};
use crate::store::{self, KeyRecord, KeyState, Store};
use crate::StartError;

/// Counters the metrics read.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Signature shares issued.
    pub shares_issued: prometheus_client::metrics::counter::Counter,
    /// Requests refused by this signer's policy.
    pub refused: prometheus_client::metrics::counter::Counter,
}

/// A signer's state.
#[derive(Debug)]
pub(crate) struct Core {
    pub name: String,
    pub identity: SharedIdentity,
    pub cert_der: Vec<u8>,
    pub ca_der: Vec<u8>,
    pub sealer: Arc<dyn Sealer>,
    pub store: Store,
    keys: Mutex<HashMap<String, AnyKey>>,
    pub dkg: Mutex<HashMap<SessionId, DkgSession>>,
    pub repairs: Mutex<HashMap<SessionId, RepairSession>>,
    pub faults: Faults,
    /// Our audit log: written before what it records is acknowledged.
    pub audit: AuditLog,
    pub clock: Arc<dyn Clock>,
    pub counters: Counters,
    /// Fault injection (`replay-shares`): the first share response, answered again.
    pub replayed: Mutex<Option<Vec<u8>>>,
    /// One lock per key id, held while its stored record is read, changed and written
    /// back (a lifecycle event, a policy change and a refresh step never interleave
    /// their writes: a destroy's tombstone cannot be overwritten by a stale copy).
    record_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Opens the sealer and the signer's sealed identity (created on first start).
pub(crate) fn open_identity(
    config: &Config,
) -> Result<(SharedIdentity, Arc<dyn Sealer>), StartError> {
    let what = format!("signer {}", config.name);
    custody_pki::server::open_identity(
        &what,
        &config.name,
        &config.data_dir,
        &config.sealer,
        &store::identity_aad(&config.name),
    )
}

impl Core {
    /// Opens the signer's state (identity, sealer, database, audit log, keys), without
    /// listening anywhere.
    pub fn open(config: &Config, clock: Arc<dyn Clock>) -> Result<Core, StartError> {
        let cfg_err = StartError::Config;
        let faults = Faults::from_config(config.fault_injection, &config.name).map_err(cfg_err)?;
        let (identity, sealer) = open_identity(config)?;
        let (cert_der, ca_der) = custody_pki::server::check_own_certificate(
            &config.tls,
            Role::Signer,
            &config.name,
            &identity.public(),
        )?;
        let store = Store::open(&config.data_dir.join("db")).map_err(cfg_err)?;
        let (audit, opened) = AuditLog::open(
            &config.data_dir.join("audit.log"),
            identity.clone(),
            &config.name,
            "signer",
        )
        .map_err(|e| cfg_err(e.to_string()))?;
        info!(path = %audit.path().display(), entries = opened.entries, "audit log open");
        audit.record(
            ax::DAEMON_STARTED,
            &ax::Started {
                version: env!("CARGO_PKG_VERSION").into(),
            },
        );
        let core = Core {
            audit,
            name: config.name.clone(),
            identity,
            cert_der,
            ca_der,
            sealer,
            store,
            keys: Mutex::new(HashMap::new()),
            dkg: Mutex::new(HashMap::new()),
            repairs: Mutex::new(HashMap::new()),
            faults,
            clock,
            counters: Counters::default(),
            replayed: Mutex::new(None),
            record_locks: Mutex::new(HashMap::new()),
        };
        core.load_keys().map_err(|e| cfg_err(e.to_string()))?;
        Ok(core)
    }

    /// Now, on this signer's clock (Unix seconds).
    pub fn now(&self) -> u64 {
        self.clock.now_secs()
    }

    fn load_keys(&self) -> Result<usize> {
        let mut n = 0;
        for rec in self.store.records() {
            let rec = rec?;
            if matches!(rec.state, KeyState::Pending | KeyState::Destroyed) {
                continue;
            }
            let loaded = self.unseal(&rec)?;
            self.insert_key(&rec.key_id, loaded);
            n += 1;
        }
        Ok(n)
    }

    /// Unseals a stored record's share into a loaded key.
    pub fn unseal(&self, rec: &KeyRecord) -> Result<AnyKey> {
        let suite = rec.suite().map_err(|e| Error::internal("record", e))?;
        let blob = stored_hex("sealed share", &rec.sealed_share)?;
        let secret = self
            .sealer
            .unseal(&store::share_aad(&self.name, &rec.key_id), &blob)
            .map_err(|e| Error::internal("unseal share", format!("key {}: {e}", rec.key_id)))?;
        with_suite!(suite, C => {
            let share = KeyShare::<C>::from_secret_bytes(&secret)
                .map_err(|e| Error::internal("share", format!("key {}: {e}", rec.key_id)))?;
            self.loaded::<C>(share, rec)
        })
    }

    /// A key ready for signing: its share, with the record's policy, state and this
    /// signer's usage of it.
    pub fn loaded<C: Typed>(&self, share: KeyShare<C>, rec: &KeyRecord) -> Result<AnyKey> {
        Ok(C::key(Loaded::new(
            share,
            rec.policy.clone(),
            rec.created_at,
            rec.state,
            self.store.usage(&rec.key_id)?,
        )))
    }

    /// Keys loaded (not pending, not destroyed).
    pub fn keys(&self) -> Vec<AnyKey> {
        self.keys.lock().expect("lock").values().cloned().collect()
    }

    /// The loaded key `key_id`, if any.
    pub fn key(&self, key_id: &str) -> Option<AnyKey> {
        self.keys.lock().expect("lock").get(key_id).cloned()
    }

    /// The loaded key `key_id`, or `NOT_FOUND`.
    pub fn active_key(&self, key_id: &str) -> Result<AnyKey> {
        self.key(key_id)
            .ok_or_else(|| Error::NotFound(format!("no active key {key_id}")))
    }

    /// Loads a key, or replaces it (a refreshed or repaired share): the replaced one's
    /// unused nonces are dropped at once, so a request that looked it up before cannot
    /// take one after.
    pub fn insert_key(&self, key_id: &str, key: AnyKey) {
        let old = self
            .keys
            .lock()
            .expect("lock")
            .insert(key_id.to_string(), key);
        if let Some(old) = old {
            old.drop_nonces();
        }
    }

    /// Unloads a destroyed key: its nonces are dropped and a request that looked it up
    /// before sees it destroyed.
    pub fn remove_key(&self, key_id: &str) {
        let old = self.keys.lock().expect("lock").remove(key_id);
        if let Some(old) = old {
            old.set_state(KeyState::Destroyed);
            old.drop_nonces();
        }
    }

    /// Holds `key_id`'s record for a read, change and write back.
    pub async fn lock_record(&self, key_id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .record_locks
            .lock()
            .expect("lock")
            .entry(key_id.to_string())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// The stored record of `key_id`, or `NOT_FOUND`.
    pub fn record(&self, key_id: &str) -> Result<KeyRecord> {
        self.store
            .get(key_id)?
            .ok_or_else(|| Error::NotFound(format!("no key {key_id} on this signer")))
    }

    /// Refuses a request by the key's policy: logged, recorded in the audit log,
    /// `PERMISSION_DENIED` with the reason's tag.
    pub fn deny(&self, key_id: &str, request_id: &str, reason: hot_warm_cold::DenyReason) -> Error {
        let text = format!("policy of key {key_id}: {reason}");
        warn!(%key_id, %request_id, "REFUSED by policy: {text}");
        self.counters.refused.inc();
        self.audit.record(
            ax::SIGN_REFUSED,
            &ax::Refused {
                key_id: key_id.to_string(),
                request_id: request_id.to_string(),
                reason: text.clone(),
            },
        );
        Error::Refused {
            reason: text,
            tag: reason.tag(),
        }
    }

    /// Loads `key_id` in place of what `f` makes of the loaded key, under one lock (a
    /// refresh or destruction cannot slip in between); nothing if it is not loaded.
    pub fn update_key(&self, key_id: &str, f: impl FnOnce(&AnyKey) -> AnyKey) {
        let mut keys = self.keys.lock().expect("lock");
        if let Some(k) = keys.get(key_id) {
            let next = f(k);
            keys.insert(key_id.to_string(), next);
        }
    }

    /// The roster of a ceremony, from CA-signed signer certificates only: each id once,
    /// each identity once.
    pub fn roster_from_certificates(
        &self,
        participants: &[(ParticipantId, Vec<u8>)],
    ) -> Result<Roster> {
        let mut roster = Roster::new();
        for (id, certificate) in participants {
            let id = *id;
            let info = custody_pki::verify_issued_by(certificate, &self.ca_der)
                .map_err(|e| Error::Invalid(format!("participant {id} certificate: {e}")))?;
            if info.role != Role::Signer {
                return Err(Error::Invalid(format!(
                    "participant {id} certificate is not a signer's"
                )));
            }
            let identity = info.identity.ok_or_else(|| {
                Error::Invalid(format!("participant {id} certificate has no identity"))
            })?;
            if roster.get(id).is_some() {
                return Err(Error::Invalid(format!("participant {id} listed twice")));
            }
            if roster.iter().any(|(_, other)| *other == identity) {
                return Err(Error::Invalid(format!(
                    "participant {id} has the identity of another participant"
                )));
            }
            roster.insert(id, identity);
        }
        Ok(roster)
    }

    /// Appends a lifecycle entry and waits until it is durable.
    pub async fn log_lifecycle(&self, key_id: &str, event: &str, state: KeyState) -> Result<()> {
        self.audit
            .append(
                ax::LIFECYCLE,
                &ax::Lifecycle {
                    key_id: key_id.to_string(),
                    event: event.into(),
                    state: state.name().into(),
                    by: String::new(),
                    successor: String::new(),
                },
            )
            .await?;
        Ok(())
    }
}
