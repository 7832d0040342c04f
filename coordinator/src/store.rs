//! The coordinator's durable state in `sled`: key metadata and signing results. Every
//! write is flushed before the client hears about it, but for signing results: each
//! is on disk in the audit log (its whole ceremony) before the client hears of it, so
//! the store's copy is written at once (visible to every reader) and flushed in the
//! background by one flusher thread, and the results a crash lost are rebuilt from
//! the audit log when the coordinator starts ([`Store::restore_requests`]). A signature
//! thus costs one sync on the coordinator's path, not two in series.

use serde::{Deserialize, Serialize};

/// One key as the coordinator records it. Holds no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyMeta {
    /// Key id.
    pub key_id: String,
    /// Human-readable name.
    pub name: String,
    /// Suite name.
    pub suite: String,
    /// Threshold t.
    pub threshold: u16,
    /// Signer names; participant `i + 1` is `signers[i]`.
    pub signers: Vec<String>,
    /// Each participant's identity (hex of 64 bytes), in the same order.
    pub identities: Vec<String>,
    /// External public key (hex in the record).
    pub public_key: Hex,
    /// Canonical public key set (hex in the record).
    pub public_key_set: Hex,
    /// Tier.
    pub tier: hot_warm_cold::Tier,
    /// Lifecycle state.
    pub state: hot_warm_cold::State,
    /// Unix seconds.
    pub created_at: u64,
    /// DKG session id, hex.
    pub dkg_session: String,
    /// The policy every signer enforces, parsed at load; stored as its canonical JSON
    /// ("" for keys recorded before policies existed: the development policy).
    #[serde(default)]
    pub policy: StoredPolicy,
    /// The key this one replaced by rotation.
    #[serde(default)]
    pub rotated_from: String,
    /// The key that replaced this one by rotation.
    #[serde(default)]
    pub rotated_to: String,
    /// Why the key is in its state, when the system moved it there.
    #[serde(default)]
    pub state_reason: String,
    /// How many times the policy changed (admin approvals bind to it).
    #[serde(default)]
    pub policy_version: u64,
    /// A refresh every signer confirmed but not every signer applied yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_refresh: Option<PendingRefresh>,
}

/// Bytes stored as a lowercase hex string: decoded when the record is read (a record
/// with malformed hex is a damaged record, refused loudly), never decoded again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hex(pub Vec<u8>);

impl Hex {
    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::ops::Deref for Hex {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Hex {
    fn from(v: Vec<u8>) -> Hex {
        Hex(v)
    }
}

impl Serialize for Hex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(&text)
            .map(Hex)
            .map_err(|e| serde::de::Error::custom(format!("not hex: {e}")))
    }
}

/// A key's policy, parsed once when its record is read; stored (and written back)
/// exactly as the JSON string it was, so records on disk do not change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPolicy {
    json: String,
    policy: hot_warm_cold::Policy,
}

impl Default for StoredPolicy {
    /// The development policy, as records made before policies existed hold it ("").
    fn default() -> Self {
        StoredPolicy {
            json: String::new(),
            policy: hot_warm_cold::Policy::permissive_hot(),
        }
    }
}

impl StoredPolicy {
    /// A policy as it will be stored (its canonical JSON).
    pub fn new(policy: &hot_warm_cold::Policy) -> StoredPolicy {
        StoredPolicy {
            json: policy.to_json(),
            policy: policy.clone(),
        }
    }

    /// A stored JSON policy, checked ("" is the development policy).
    pub fn parse(json: &str) -> Result<StoredPolicy, String> {
        Ok(StoredPolicy {
            json: json.to_string(),
            policy: hot_warm_cold::Policy::from_json(json)?,
        })
    }

    /// The JSON exactly as stored ("" for the development policy of an old record).
    pub fn stored(&self) -> &str {
        &self.json
    }

    /// The policy.
    pub fn get(&self) -> &hot_warm_cold::Policy {
        &self.policy
    }

    /// Its canonical JSON as the signers were given it (the development policy's for a
    /// record that stored "").
    pub fn canonical(&self) -> String {
        if self.json.is_empty() {
            self.policy.to_json()
        } else {
            self.json.clone()
        }
    }
}

impl Serialize for StoredPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.json)
    }
}

impl<'de> Deserialize<'de> for StoredPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let json = String::deserialize(d)?;
        StoredPolicy::parse(&json).map_err(|e| serde::de::Error::custom(format!("policy: {e}")))
    }
}

/// A confirmed refresh waiting for every signer to apply it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRefresh {
    /// Session id, hex.
    pub session: String,
    /// Every participant's signed confirmation, hex, by participant id.
    pub confirmations: Vec<(u16, String)>,
    /// The new public key set, hex.
    pub public_key_set: String,
}

/// A request of a key whose policy needs approvals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingRequest {
    /// Request id.
    pub request_id: String,
    /// Key.
    pub key_id: String,
    /// The message to sign (hex in the record).
    pub message: Hex,
    /// The transfer, when it is one: (asset, amount, destination, memo).
    pub transfer: Option<(String, String, String, String)>,
    /// Approvals so far: (approver, signature), hex in the record.
    pub approvals: Vec<(Hex, Hex)>,
    /// Unix seconds.
    pub created_at: u64,
    /// Where it stands.
    pub state: RequestState,
    /// Why the last attempt did not sign.
    pub last_error: String,
    /// "" or "sign": a signature; "policy-change": a new policy for the key.
    #[serde(default)]
    pub kind: String,
    /// For a policy change: the proposed policy (canonical JSON).
    #[serde(default)]
    pub new_policy: String,
    /// For a policy change: SHA-256 of the policy it replaces (hex in the record).
    #[serde(default)]
    pub current_policy: Hex,
    /// For a policy change: the version it replaces.
    #[serde(default)]
    pub policy_version: u64,
    /// For a cold key: the offline signers' progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold: Option<ColdProgress>,
    /// For a settlement: the batch header, protobuf-encoded (hex in the record).
    #[serde(default, skip_serializing_if = "Hex::is_empty")]
    pub settlement: Hex,
}

/// Where an air-gapped signature is between its trips.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColdProgress {
    /// The chosen signers (t of them), by name.
    pub signers: Vec<String>,
    /// Each chosen signer's commitment envelope, by participant id (hex in the record).
    pub commitments: Vec<(u16, Hex)>,
    /// Signing session, hex (once the package exists).
    pub session: String,
    /// The coordinator-signed package (once every commitment is in; hex in the record).
    pub package: Hex,
    /// Each signer's share envelope, by participant id (hex in the record).
    pub shares: Vec<(u16, Hex)>,
}

/// Where a request that needs approvals stands (stored by these names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RequestState {
    /// Fewer valid approvals than the policy requires.
    WaitingApprovals,
    /// Approved; its time lock (or a signer's own) has not passed.
    TimeLocked,
    /// A cold key's: approved, its offline signers' commitments awaited (trip 1).
    AwaitingColdCommitments,
    /// A cold key's: the package made, its offline signers' shares awaited (trip 2).
    AwaitingColdShares,
    /// Signed (terminal).
    Signed,
    /// Refused for good: a signer's policy, or a policy change gone stale (terminal).
    Refused,
    /// A policy change applied on every signer (terminal).
    Applied,
}

/// What happened to a request, for [`RequestState::next`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestEvent {
    /// Looked at before it may be tried: with `enough` approvals, or not yet.
    NotReady {
        /// Whether the approvals are complete (the time lock is what it waits for).
        enough: bool,
    },
    /// Ready, and its key is cold: the offline signers are asked for commitments.
    ColdApproved,
    /// Every offline signer's commitment is in; the package is made.
    ColdCommitted,
    /// A signature was made (the last share of a cold one, or the signers online).
    Signed,
    /// A signer's own time lock has not passed (it saw the request later).
    SignerTimeLocked,
    /// A policy change applied on every signer.
    Applied,
    /// Refused for good.
    Refused,
}

impl RequestState {
    /// Its name (the stored form, and what clients see).
    pub fn name(self) -> &'static str {
        match self {
            RequestState::WaitingApprovals => "waiting-approvals",
            RequestState::TimeLocked => "time-locked",
            RequestState::AwaitingColdCommitments => "awaiting-cold-commitments",
            RequestState::AwaitingColdShares => "awaiting-cold-shares",
            RequestState::Signed => "signed",
            RequestState::Refused => "refused",
            RequestState::Applied => "applied",
        }
    }

    /// Whether it is over (signed, refused or applied): nothing moves it again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RequestState::Signed | RequestState::Refused | RequestState::Applied
        )
    }

    /// Whether it waits for offline signers' files.
    pub fn is_cold(self) -> bool {
        matches!(
            self,
            RequestState::AwaitingColdCommitments | RequestState::AwaitingColdShares
        )
    }

    /// The state after `event`: the one transition function. A final state stays; a
    /// cold request already under way stays cold when approved again; its shares are
    /// asked for only after its commitments.
    pub fn next(self, event: RequestEvent) -> RequestState {
        if self.is_final() {
            return self;
        }
        match event {
            RequestEvent::NotReady { enough: true } => RequestState::TimeLocked,
            RequestEvent::NotReady { enough: false } => RequestState::WaitingApprovals,
            RequestEvent::ColdApproved if self.is_cold() => self,
            RequestEvent::ColdApproved => RequestState::AwaitingColdCommitments,
            RequestEvent::ColdCommitted if self == RequestState::AwaitingColdCommitments => {
                RequestState::AwaitingColdShares
            }
            RequestEvent::ColdCommitted => self,
            RequestEvent::Signed => RequestState::Signed,
            RequestEvent::SignerTimeLocked => RequestState::TimeLocked,
            RequestEvent::Applied => RequestState::Applied,
            RequestEvent::Refused => RequestState::Refused,
        }
    }
}

impl WaitingRequest {
    /// Whether it still waits (for approvals, its time lock, offline signers or a
    /// retry), as opposed to signed, refused or applied.
    pub fn is_open(&self) -> bool {
        !self.state.is_final()
    }

    /// Whether this is a policy change (not a signature).
    pub fn is_policy_change(&self) -> bool {
        self.kind == "policy-change"
    }
}

/// A completed signature, kept for idempotency and for `GetSignature`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignRecord {
    /// Request id (client's idempotency key, or one the coordinator chose).
    pub request_id: String,
    /// Key.
    pub key_id: String,
    /// Message (hex in the record).
    pub message: Hex,
    /// Signature (hex in the record).
    pub signature: Hex,
    /// Participant ids of the signers.
    pub signers: Vec<u16>,
    /// Signing session id, hex.
    pub session: String,
    /// Unix milliseconds.
    pub created_at_ms: u64,
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("database: {0}")]
    Db(#[from] sled::Error),
    /// A record could not be (de)serialized.
    #[error("database record: {0}")]
    Record(#[from] serde_json::Error),
    /// A grouped write failed.
    #[error("database write: {0}")]
    Write(String),
    /// A stored record does not decode (damaged): named, so an operator finds it.
    #[error("database record {what} {id:?} is damaged: {error}")]
    Damaged {
        /// Which kind of record.
        what: &'static str,
        /// Its id (key id or request id).
        id: String,
        /// Why it does not decode.
        error: serde_json::Error,
    },
}

/// A stored record of kind `what` under `id`, decoded; a damaged one is named.
fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    id: &[u8],
    v: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|error| StoreError::Damaged {
        what,
        id: String::from_utf8_lossy(id).into_owned(),
        error,
    })
}

/// The records of `items` that decode; each damaged one is logged by name and passed
/// over, so that one damaged record does not stop every other request.
fn decoded_or_logged<T: serde::de::DeserializeOwned>(
    what: &'static str,
    items: impl Iterator<Item = Result<(sled::IVec, sled::IVec), sled::Error>>,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for item in items {
        let (k, v) = item?;
        match decode(what, &k, &v) {
            Ok(t) => out.push(t),
            Err(e) => tracing::error!("{e}; passed over (repair or remove the record)"),
        }
    }
    Ok(out)
}

/// The coordinator's database.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    keys: sled::Tree,
    requests: sled::Tree,
    waiting: sled::Tree,
    /// Ids of the waiting requests that are still open ([`WaitingRequest::is_open`]):
    /// what the ticker, metrics and the console look at, not the whole history.
    open: sled::Tree,
    /// Wakes the flusher thread (signing results are flushed in the background).
    flusher: std::sync::mpsc::Sender<()>,
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &std::path::Path) -> Result<Store, StoreError> {
        let db = sled::open(path)?;
        let requests = db.open_tree("requests")?;
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let fdb = db.clone();
        std::thread::Builder::new()
            .name("store-flusher".into())
            .spawn(move || flush_loop(&fdb, &rx))
            .map_err(sled::Error::Io)?;
        let store = Store {
            keys: db.open_tree("keys")?,
            waiting: db.open_tree("waiting")?,
            open: db.open_tree("waiting-open")?,
            requests,
            db,
            flusher: tx,
        };
        // Databases made before the open-request index get it once.
        if !store.db.contains_key(b"waiting-open-indexed")? {
            for w in decoded_or_logged::<WaitingRequest>("waiting request", store.waiting.iter())? {
                if w.is_open() {
                    store.open.insert(w.request_id.as_bytes(), &[])?;
                }
            }
            store.db.insert(b"waiting-open-indexed", &[1])?;
            store.db.flush()?;
        }
        Ok(store)
    }

    /// Stores a key durably.
    pub fn put_key(&self, k: &KeyMeta) -> Result<(), StoreError> {
        self.keys
            .insert(k.key_id.as_bytes(), serde_json::to_vec(k)?)?;
        self.db.flush()?;
        Ok(())
    }

    /// One key.
    pub fn key(&self, key_id: &str) -> Result<Option<KeyMeta>, StoreError> {
        match self.keys.get(key_id.as_bytes())? {
            Some(v) => Ok(Some(decode("key", key_id.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    /// Every key, by key id. A damaged key record is an error naming it (the
    /// coordinator does not start without knowing every key).
    pub fn keys(&self) -> Result<Vec<KeyMeta>, StoreError> {
        self.keys
            .iter()
            .map(|r| {
                let (k, v) = r?;
                decode("key", &k, &v)
            })
            .collect()
    }

    /// Stores a signing result whose ceremony is already durable in the audit log:
    /// every reader sees it at once; it reaches the disk with the next background
    /// flush, and a crash before that is repaired from the log at the next start.
    pub fn put_request(&self, r: &SignRecord) -> Result<(), StoreError> {
        self.requests
            .insert(r.request_id.as_bytes(), serde_json::to_vec(r)?)?;
        // A stopped flusher (only at exit) leaves it to the log and the next start.
        let _ = self.flusher.send(());
        Ok(())
    }

    /// Whether a signing result is stored for `request_id`.
    pub fn has_request(&self, request_id: &str) -> Result<bool, StoreError> {
        Ok(self.requests.contains_key(request_id.as_bytes())?)
    }

    /// Puts back signing results found in the audit log but not here (the store lost
    /// its last background flush in a crash), and flushes. Those marked `counted`
    /// (keys with a signature limit) are counted again, before being put back as at
    /// signing: sled recovers writes in order, so a result is never back without its
    /// count; a count that survived the crash without its result is counted twice,
    /// and the key retires one signature early, never late.
    pub fn restore_requests(&self, records: &[(SignRecord, bool)]) -> Result<(), StoreError> {
        for (r, counted) in records {
            if !self.has_request(&r.request_id)? {
                if *counted {
                    self.bump_signatures(&r.key_id)?;
                }
                self.requests
                    .insert(r.request_id.as_bytes(), serde_json::to_vec(r)?)?;
            }
        }
        self.db.flush()?;
        Ok(())
    }

    /// How many signatures of `key_id` were counted toward its signature limit.
    pub fn signatures(&self, key_id: &str) -> Result<u64, StoreError> {
        let tree = self.db.open_tree("signature-counts")?;
        Ok(tree
            .get(key_id.as_bytes())?
            .and_then(|b| <[u8; 8]>::try_from(&b[..]).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// Stores a request that waits for approvals (or its latest state) durably.
    pub fn put_waiting(&self, w: &WaitingRequest) -> Result<(), StoreError> {
        self.waiting
            .insert(w.request_id.as_bytes(), serde_json::to_vec(w)?)?;
        if w.is_open() {
            self.open.insert(w.request_id.as_bytes(), &[])?;
        } else {
            self.open.remove(w.request_id.as_bytes())?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// The requests still open (see [`WaitingRequest::is_open`]).
    pub fn open_waiting(&self) -> Result<Vec<WaitingRequest>, StoreError> {
        let mut out = Vec::new();
        for id in self.open.iter().keys() {
            let id = id?;
            if let Some(v) = self.waiting.get(&id)? {
                match decode::<WaitingRequest>("waiting request", &id, &v) {
                    Ok(w) if w.is_open() => out.push(w),
                    Ok(_) => {}
                    // One damaged request does not stop the others.
                    Err(e) => tracing::error!("{e}; passed over (repair or remove the record)"),
                }
            }
        }
        Ok(out)
    }

    /// A request of a key that needs approvals, by request id.
    pub fn waiting(&self, request_id: &str) -> Result<Option<WaitingRequest>, StoreError> {
        match self.waiting.get(request_id.as_bytes())? {
            Some(v) => Ok(Some(decode("waiting request", request_id.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    /// Every request of keys that need approvals (a damaged one logged and passed over).
    pub fn all_waiting(&self) -> Result<Vec<WaitingRequest>, StoreError> {
        decoded_or_logged("waiting request", self.waiting.iter())
    }

    /// Counts one more signature of `key_id`; returns the count.
    pub fn bump_signatures(&self, key_id: &str) -> Result<u64, StoreError> {
        let tree = self.db.open_tree("signature-counts")?;
        let v = tree.update_and_fetch(key_id.as_bytes(), |old| {
            let n = old
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_be_bytes);
            Some((n + 1).to_be_bytes().to_vec())
        })?;
        Ok(v.and_then(|b| <[u8; 8]>::try_from(&b[..]).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// A signing result by request id.
    pub fn request(&self, request_id: &str) -> Result<Option<SignRecord>, StoreError> {
        match self.requests.get(request_id.as_bytes())? {
            Some(v) => Ok(Some(decode("signing result", request_id.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }
}

/// Flushes after every wake-up (one flush for all the wake-ups waiting), until the
/// store is dropped.
fn flush_loop(db: &sled::Db, rx: &std::sync::mpsc::Receiver<()>) {
    while rx.recv().is_ok() {
        while rx.try_recv().is_ok() {}
        if let Err(e) = db.flush() {
            // The audit log holds every result; the next start restores what is lost.
            tracing::error!("database flush of signing results failed: {e}");
        }
    }
}

#[cfg(test)]
mod request_state_tests {
    use super::{RequestEvent as E, RequestState as S};

    const ALL: [S; 7] = [
        S::WaitingApprovals,
        S::TimeLocked,
        S::AwaitingColdCommitments,
        S::AwaitingColdShares,
        S::Signed,
        S::Refused,
        S::Applied,
    ];
    const EVENTS: [E; 8] = [
        E::NotReady { enough: false },
        E::NotReady { enough: true },
        E::ColdApproved,
        E::ColdCommitted,
        E::Signed,
        E::SignerTimeLocked,
        E::Applied,
        E::Refused,
    ];

    #[test]
    fn final_states_stay_and_names_are_the_stored_form() {
        for s in ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.name()));
            for e in EVENTS {
                let n = s.next(e);
                if s.is_final() {
                    assert_eq!(n, s, "{s:?} + {e:?}");
                }
                // Shares are asked for only after the commitments are in.
                if n == S::AwaitingColdShares {
                    assert!(
                        s == S::AwaitingColdShares
                            || (s == S::AwaitingColdCommitments && e == E::ColdCommitted)
                    );
                }
            }
        }
        assert_eq!(
            S::WaitingApprovals.next(E::ColdCommitted),
            S::WaitingApprovals
        );
        assert_eq!(
            S::AwaitingColdShares.next(E::ColdApproved),
            S::AwaitingColdShares
        );
        assert_eq!(
            S::TimeLocked.next(E::ColdApproved),
            S::AwaitingColdCommitments
        );
    }
}

#[cfg(test)]
mod damaged_record_tests {
    use super::*;

    fn waiting(id: &str) -> WaitingRequest {
        WaitingRequest {
            request_id: id.into(),
            key_id: "k".into(),
            message: Hex(vec![1, 2]),
            transfer: None,
            approvals: vec![(Hex(vec![3; 32]), Hex(vec![4; 64]))],
            created_at: 1,
            state: RequestState::WaitingApprovals,
            last_error: String::new(),
            kind: String::new(),
            new_policy: String::new(),
            current_policy: Hex::default(),
            policy_version: 0,
            cold: None,
            settlement: Hex::default(),
        }
    }

    /// Bytes read back as the same hex strings; a record with malformed hex is named
    /// when asked for, and passed over (logged) by the lists, so the other requests go
    /// on.
    #[test]
    fn a_damaged_record_is_named_and_does_not_stop_the_others() {
        let dir =
            std::env::temp_dir().join(format!("custody-coord-damaged-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).expect("store");
        store.put_waiting(&waiting("good")).expect("put");
        store.put_waiting(&waiting("bad")).expect("put");
        let json = serde_json::to_string(&waiting("good")).expect("json");
        assert!(json.contains("\"message\":\"0102\""), "{json}");
        assert!(json.contains("\"0303"), "{json}");
        // Damage one record's hex.
        let bad = serde_json::to_string(&waiting("bad"))
            .expect("json")
            .replace("\"0102\"", "\"01zz\"");
        store
            .waiting
            .insert(b"bad", bad.as_bytes())
            .expect("insert");
        let open: Vec<String> = store
            .open_waiting()
            .expect("open")
            .into_iter()
            .map(|w| w.request_id)
            .collect();
        assert_eq!(open, vec!["good".to_string()]);
        assert_eq!(store.all_waiting().expect("all").len(), 1);
        let err = store.waiting("bad").expect_err("damaged").to_string();
        assert!(err.contains("\"bad\"") && err.contains("not hex"), "{err}");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
