//! The `custody.v1.Signer` gRPC service.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use custody_hsm::Sealer;
use custody_pki::server::SharedIdentity;
use custody_pki::Role;
use custody_protocol::dkg::{self, DkgConfig, DKG_KINDS};
use custody_protocol::proto::signer_server::{Signer, SignerServer};
use custody_protocol::proto::*;
use custody_protocol::sign::{self, SigningPackage, COORDINATOR};
use custody_protocol::wire::{self, Header, Kind};
use custody_protocol::{
    api, identity, with_suite, EngineSuite, KeyShare, ParticipantId, Roster, SessionId, Suite,
};
use rand_core::OsRng;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use custody_audit::export as ax;
use custody_audit::AuditLog;

use crate::config::{Config, Fault};
use crate::store::{self, KeyRecord, KeyState};
use crate::StartError;

/// How long an unfinished DKG session is kept.
const DKG_TTL: Duration = Duration::from_secs(300);
/// Most unused nonces kept per key.
const MAX_NONCES_PER_KEY: usize = 4096;
/// Most commitments drawn per call.
const MAX_COMMIT_BATCH: u32 = 256;

type Erased = Box<dyn Any + Send>;
type SharedShare = Arc<dyn Any + Send + Sync>;

enum Stage {
    Round1(Erased),
    Round2(Erased),
    Confirmed {
        share: SharedShare,
        digest: [u8; 32],
    },
}

struct DkgSession {
    key_id: String,
    /// A refresh of existing key `key_id` rather than a new key.
    refresh: bool,
    policy: hot_warm_cold::Policy,
    suite: Suite,
    participants: Vec<ParticipantId>,
    roster: Roster,
    stage: Option<Stage>,
    started: Instant,
}

/// A repair this signer helps with, between its two steps.
struct RepairSession {
    key_id: String,
    suite: Suite,
    roster: Roster,
    state: Option<Erased>,
    started: Instant,
}

#[derive(Clone)]
struct Loaded {
    suite: Suite,
    share: SharedShare,
    policy: Arc<hot_warm_cold::Policy>,
    created_at: u64,
    /// Lifecycle state (only active and rotating keys sign).
    state: Arc<Mutex<KeyState>>,
    /// Held while a request is decided and its usage recorded, so concurrent requests
    /// cannot both spend the same budget.
    usage: Arc<Mutex<store::Usage>>,
}

struct Inner {
    name: String,
    identity: SharedIdentity,
    cert_der: Vec<u8>,
    ca_der: Vec<u8>,
    sealer: Arc<dyn Sealer>,
    db: sled::Db,
    keys: Mutex<HashMap<String, Loaded>>,
    dkg: Mutex<HashMap<SessionId, DkgSession>>,
    repairs: Mutex<HashMap<SessionId, RepairSession>>,
    nonces: Mutex<HashMap<String, NoncePool>>,
    fault: Option<Fault>,
    /// Fault injection (`replay-shares`): the first share response, answered again.
    replayed: Mutex<Option<SignShareResponse>>,
    /// Our audit log: written before what it records is acknowledged.
    audit: AuditLog,
    /// Signature shares issued, and requests refused by policy (for metrics).
    shares_issued: prometheus_client::metrics::counter::Counter,
    refused: prometheus_client::metrics::counter::Counter,
}

/// The unused nonces of one key, by their encoded commitments, oldest first.
///
/// Bounded: when more than [`MAX_NONCES_PER_KEY`] are outstanding (a coordinator that
/// restarted forgets the commitments it held), the oldest are dropped. Dropping a nonce
/// is always safe; the coordinator then gets "unknown commitment" and draws new ones.
#[derive(Default)]
struct NoncePool {
    by_commitment: HashMap<Vec<u8>, Erased>,
    order: std::collections::VecDeque<Vec<u8>>,
}

impl NoncePool {
    fn extend(&mut self, fresh: Vec<(Vec<u8>, Erased)>) {
        for (tag, nonces) in fresh {
            self.order.push_back(tag.clone());
            self.by_commitment.insert(tag, nonces);
        }
        while self.by_commitment.len() > MAX_NONCES_PER_KEY {
            match self.order.pop_front() {
                Some(old) => {
                    self.by_commitment.remove(&old);
                }
                None => break,
            }
        }
        if self.order.len() > 2 * MAX_NONCES_PER_KEY {
            let live = &self.by_commitment;
            self.order.retain(|t| live.contains_key(t));
        }
    }

    /// Removes and returns the nonces behind `tag`: whatever happens next, they are gone.
    fn take(&mut self, tag: &[u8]) -> Option<Erased> {
        self.by_commitment.remove(tag)
    }
}

#[derive(Clone)]
struct SignerService(Arc<Inner>);

impl SignerService {
    /// Only the coordinator may call a signer; a refusal is recorded in the audit log.
    fn authorize<T>(&self, req: &Request<T>) -> Result<custody_pki::PeerInfo, Status> {
        custody_pki::authorize(req, &[Role::Coordinator]).inspect_err(|st| {
            let rpc = req
                .extensions()
                .get::<tonic::GrpcMethod>()
                .map(|m| m.method().to_string())
                .unwrap_or_default();
            self.0.audit.record(
                ax::AUTH_DENIED,
                &ax::AuthDenied {
                    rpc,
                    reason: st.message().to_string(),
                },
            );
        })
    }
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

/// Opens the signer's state (identity, sealer, database, audit log, keys), without
/// listening anywhere.
fn open_inner(config: &Config) -> Result<Inner, StartError> {
    let cfg_err = |e: String| StartError::Config(e);
    let (identity, sealer) = open_identity(config)?;
    let files = config.tls.clone();
    let (cert_der, ca_der) = custody_pki::server::check_own_certificate(
        &files,
        Role::Signer,
        &config.name,
        &identity.public(),
    )?;
    if let Some(fault) = config.fault_injection {
        warn!(
            "signer {} runs with FAULT INJECTION {fault:?}: it misbehaves on purpose, for tests only",
            config.name
        );
    }
    let db =
        sled::open(config.data_dir.join("db")).map_err(|e| cfg_err(format!("database: {e}")))?;
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
    let inner = Inner {
        audit,
        name: config.name.clone(),
        identity,
        cert_der,
        ca_der,
        sealer,
        db,
        keys: Mutex::new(HashMap::new()),
        dkg: Mutex::new(HashMap::new()),
        repairs: Mutex::new(HashMap::new()),
        nonces: Mutex::new(HashMap::new()),
        fault: config.fault_injection,
        replayed: Mutex::new(None),
        shares_issued: Default::default(),
        refused: Default::default(),
    };
    inner.load_keys().map_err(cfg_err)?;
    Ok(inner)
}

pub(crate) async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(std::net::SocketAddr) + Send,
) -> Result<(), StartError> {
    let cfg_err = |e: String| StartError::Config(e);
    let files = config.tls.clone();
    let inner = open_inner(&config)?;
    let loaded = inner.keys.lock().expect("lock").len();
    let svc = SignerService(Arc::new(inner));
    if let Some(listen) = config.metrics_listen {
        custody_ops::start_metrics(listen, exporter(&svc.0), &config.data_dir)
            .await
            .map_err(cfg_err)?;
    }

    let tls = files.server().map_err(|e| cfg_err(e.to_string()))?;
    let (listener, addr) = custody_pki::server::listen(config.listen, &config.data_dir).await?;
    info!(signer = %config.name, %addr, keys = loaded, sealer = %svc.0.sealer.describe(), "signer listening");
    on_ready(addr);
    custody_pki::server::serve(
        tls,
        listener,
        Duration::from_secs(60),
        <SignerServer<SignerService> as tonic::server::NamedService>::NAME,
        |r| r.add_service(SignerServer::new(svc).max_decoding_message_size(8 << 20)),
        shutdown,
    )
    .await?;
    info!(signer = %config.name, "signer stopped");
    Ok(())
}

/// The signer's metrics: `custody_shares_issued_total`, `custody_sign_refused_total`
/// (by this signer's policy), `custody_nonces_pooled` (unused nonces in memory, all
/// keys), `custody_keys{state}`, and the audit log's counts.
fn exporter(inner: &Arc<Inner>) -> custody_ops::Exporter {
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct StateLabel {
        state: String,
    }
    let mut e = custody_ops::Exporter::new("signer");
    e.register(
        "shares_issued",
        "Signature shares issued (each recorded in the audit log first)",
        inner.shares_issued.clone(),
    );
    e.register(
        "sign_refused",
        "Requests this signer's policy refused",
        inner.refused.clone(),
    );
    let nonces = Gauge::<i64>::default();
    let keys: Family<StateLabel, Gauge> = Family::default();
    e.register(
        "nonces_pooled",
        "Unused signing nonces held in memory (all keys); each is used at most once",
        nonces.clone(),
    );
    e.register("keys", "Key shares held, by lifecycle state", keys.clone());
    let weak = Arc::downgrade(inner);
    e.on_scrape(move || {
        let Some(i) = weak.upgrade() else { return };
        let n: usize = i
            .nonces
            .lock()
            .expect("lock")
            .values()
            .map(|p| p.by_commitment.len())
            .sum();
        nonces.set(n as i64);
        keys.clear();
        for k in i.keys.lock().expect("lock").values() {
            keys.get_or_create(&StateLabel {
                state: k.state.lock().expect("lock").name().to_string(),
            })
            .inc();
        }
    });
    let weak = Arc::downgrade(inner);
    e.audit_log(move || weak.upgrade().map_or((0, 0), |i| i.audit.counts()));
    e
}

/// The action an entry records is refused when the entry cannot be written.
fn unrecorded(e: custody_audit::AuditError) -> Status {
    tracing::error!("{e}");
    Status::unavailable(format!("{e}: refused because it cannot be recorded"))
}

fn engine_status(context: &str, e: custody_protocol::Error) -> Status {
    api::engine_status(context, e)
}

fn internal(context: &str, e: impl std::fmt::Display) -> Status {
    warn!("{context}: {e}");
    Status::internal(format!("{context}: {e}"))
}

fn relayed(list: &[Relayed], field: &str) -> Result<Vec<(ParticipantId, Vec<u8>)>, Status> {
    list.iter()
        .map(|r| Ok((api::participant(field, r.from)?, r.envelope.clone())))
        .collect()
}

impl Inner {
    fn load_keys(&self) -> Result<usize, String> {
        let mut n = 0;
        for item in self.db.iter() {
            let (_, v) = item.map_err(|e| format!("database: {e}"))?;
            let rec: KeyRecord =
                serde_json::from_slice(&v).map_err(|e| format!("database record: {e}"))?;
            if matches!(rec.state, KeyState::Pending | KeyState::Destroyed) {
                continue;
            }
            let loaded = self.unseal(&rec)?;
            self.keys
                .lock()
                .expect("lock")
                .insert(rec.key_id.clone(), loaded);
            n += 1;
        }
        Ok(n)
    }

    fn unseal(&self, rec: &KeyRecord) -> Result<Loaded, String> {
        let suite = rec.suite()?;
        let blob = hex::decode(&rec.sealed_share).map_err(|e| e.to_string())?;
        let secret = self
            .sealer
            .unseal(&store::share_aad(&self.name, &rec.key_id), &blob)
            .map_err(|e| format!("key {}: {e}", rec.key_id))?;
        let share: SharedShare = with_suite!(suite, C => {
            Arc::new(KeyShare::<C>::from_secret_bytes(&secret).map_err(|e| format!("key {}: {e}", rec.key_id))?)
        });
        self.loaded(suite, share, rec)
    }

    /// A key ready for signing: its share, with the policy, state and usage record.
    fn loaded(&self, suite: Suite, share: SharedShare, rec: &KeyRecord) -> Result<Loaded, String> {
        Ok(Loaded {
            suite,
            share,
            policy: Arc::new(rec.policy.clone()),
            created_at: rec.created_at,
            state: Arc::new(Mutex::new(rec.state)),
            usage: Arc::new(Mutex::new(self.usage_of(&rec.key_id)?)),
        })
    }

    fn usage_tree(&self) -> Result<sled::Tree, String> {
        self.db
            .open_tree("usage")
            .map_err(|e| format!("database: {e}"))
    }

    fn usage_of(&self, key_id: &str) -> Result<store::Usage, String> {
        match self
            .usage_tree()?
            .get(key_id.as_bytes())
            .map_err(|e| format!("database: {e}"))?
        {
            Some(v) => {
                serde_json::from_slice(&v).map_err(|e| format!("usage record of {key_id}: {e}"))
            }
            None => Ok(store::Usage::default()),
        }
    }

    /// Decides `request` under the key's policy with this signer's own usage record
    /// and clock and, when allowed and the policy keeps a ledger, records the use
    /// durably before returning: check, then persist, then (the caller) sign.
    fn admit(
        &self,
        key_id: &str,
        k: &Loaded,
        request: &hot_warm_cold::Request,
        approvals: &[hot_warm_cold::Approval],
    ) -> Result<(), Status> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut usage = k.usage.lock().expect("lock");
        // State and age hold for retries too (a retry skips only the ledger).
        let state = *k.state.lock().expect("lock");
        if !state.may_sign() {
            return Err(self.refuse(
                key_id,
                request.request_id(),
                format!(
                    "policy of key {key_id}: key is {}, not active",
                    state.name()
                ),
            ));
        }
        if let Some(max) = k.policy.max_age_secs {
            let age = now.saturating_sub(k.created_at);
            if age > max {
                return Err(self.refuse(
                    key_id,
                    request.request_id(),
                    format!("policy of key {key_id}: key is {age} s old, policy allows {max} s: rotate it"),
                ));
            }
        }
        let digest = custody_protocol::hash::TaggedHash::new("custody/v1/admitted-request")
            .part(&request.message(key_id))
            .finish();
        // A settlement's request id names its batch: kept for good (not only for the
        // policy's window), so a batch id is never signed with other content.
        let settled_key = format!("{key_id}\0{}", request.request_id());
        if matches!(request, hot_warm_cold::Request::Settlement(_)) {
            let settled = self
                .db
                .open_tree("settled")
                .map_err(|e| internal("database", e))?
                .get(settled_key.as_bytes())
                .map_err(|e| internal("database", e))?;
            if let Some(seen) = settled {
                if seen.as_ref() == digest.as_slice() {
                    // A retry of a settlement already admitted and counted.
                    return Ok(());
                }
                return Err(self.refuse(
                    key_id,
                    request.request_id(),
                    format!(
                        "policy of key {key_id}: batch {} was already settled with other content",
                        request.request_id()
                    ),
                ));
            }
        }
        if k.policy.needs_ledger() {
            if let Some((_, seen)) = usage.requests.get(request.request_id()) {
                if *seen == digest {
                    // A retry of a request already admitted and counted.
                    return Ok(());
                }
                return Err(self.refuse(
                    key_id,
                    request.request_id(),
                    format!(
                        "policy of key {key_id}: request id {} was already used for another message",
                        request.request_id()
                    ),
                ));
            }
        }
        let status = hot_warm_cold::KeyStatus {
            key_id: key_id.to_string(),
            state: *k.state.lock().expect("lock"),
            created_at: k.created_at,
            signatures: usage.signatures,
        };
        // A time lock counts from when this signer first saw the request (a proposal
        // before, or now), on its own clock.
        let first_seen = if k.policy.time_lock_secs > 0 {
            self.first_seen(key_id, request, now)?
        } else {
            now
        };
        let decision = hot_warm_cold::decide(
            &status,
            &k.policy,
            &usage.ledger,
            request,
            approvals,
            first_seen,
            now,
        );
        if let hot_warm_cold::Decision::Deny(reason) = decision {
            let mut st = self.refuse(
                key_id,
                request.request_id(),
                format!("policy of key {key_id}: {reason}"),
            );
            st.metadata_mut().insert(
                api::DENY_REASON,
                tonic::metadata::MetadataValue::from_static(reason.tag()),
            );
            return Err(st);
        }
        let settlement = matches!(request, hot_warm_cold::Request::Settlement(_));
        if settlement {
            self.db
                .open_tree("settled")
                .map_err(|e| internal("database", e))?
                .insert(settled_key.as_bytes(), digest.as_slice())
                .map_err(|e| internal("settlement record write", e))?;
        }
        if k.policy.needs_ledger() {
            let mut next = usage.clone();
            next.signatures += 1;
            match request {
                hot_warm_cold::Request::Transfer(t) => next.ledger.record(now, &t.asset, t.amount),
                hot_warm_cold::Request::Settlement(s) => {
                    for (currency, total) in &s.totals {
                        next.ledger.record(now, currency, *total);
                    }
                }
                hot_warm_cold::Request::Raw { .. } => {}
            }
            next.requests
                .insert(request.request_id().to_string(), (now, digest));
            let horizon = now.saturating_sub(k.policy.longest_window());
            next.ledger.prune(horizon);
            next.requests.retain(|_, (t, _)| *t >= horizon);
            let v = serde_json::to_vec(&next).map_err(|e| internal("encode usage", e))?;
            self.usage_tree()
                .map_err(|e| internal("usage", e))?
                .insert(key_id.as_bytes(), v)
                .map_err(|e| internal("usage write", e))?;
            self.db.flush().map_err(|e| internal("usage flush", e))?;
            *usage = next;
        } else if settlement {
            self.db.flush().map_err(|e| internal("usage flush", e))?;
        }
        Ok(())
    }

    /// When this signer first saw `request` (recorded durably the first time; the same
    /// request id for another message is refused).
    fn first_seen(
        &self,
        key_id: &str,
        request: &hot_warm_cold::Request,
        now: u64,
    ) -> Result<u64, Status> {
        let digest = hex::encode(
            custody_protocol::hash::TaggedHash::new("custody/v1/proposed-request")
                .part(&request.message(key_id))
                .finish(),
        );
        let tree = self
            .db
            .open_tree("proposed")
            .map_err(|e| internal("database", e))?;
        let k = format!("{key_id}\0{}", request.request_id());
        if let Some(v) = tree
            .get(k.as_bytes())
            .map_err(|e| internal("database", e))?
        {
            let (t, d): (u64, String) =
                serde_json::from_slice(&v).map_err(|e| internal("database record", e))?;
            if d != digest {
                return Err(self.refuse(
                    key_id,
                    request.request_id(),
                    format!(
                        "request id {} was already proposed for another message",
                        request.request_id()
                    ),
                ));
            }
            return Ok(t);
        }
        let v = serde_json::to_vec(&(now, digest)).map_err(|e| internal("encode", e))?;
        tree.insert(k.as_bytes(), v)
            .map_err(|e| internal("database", e))?;
        self.db.flush().map_err(|e| internal("database flush", e))?;
        Ok(now)
    }

    /// Refuses a request: logged, recorded in the audit log, `PERMISSION_DENIED`.
    fn refuse(&self, key_id: &str, request_id: &str, reason: String) -> Status {
        warn!(%key_id, %request_id, "REFUSED by policy: {reason}");
        self.refused.inc();
        self.audit.record(
            ax::SIGN_REFUSED,
            &ax::Refused {
                key_id: key_id.to_string(),
                request_id: request_id.to_string(),
                reason: reason.clone(),
            },
        );
        Status::permission_denied(reason)
    }

    fn put(&self, rec: &KeyRecord) -> Result<(), Status> {
        let v = serde_json::to_vec(rec).map_err(|e| internal("encode record", e))?;
        self.db
            .insert(rec.key_id.as_bytes(), v)
            .map_err(|e| internal("database write", e))?;
        self.db.flush().map_err(|e| internal("database flush", e))?;
        Ok(())
    }

    fn get(&self, key_id: &str) -> Result<Option<KeyRecord>, Status> {
        match self
            .db
            .get(key_id.as_bytes())
            .map_err(|e| internal("database read", e))?
        {
            None => Ok(None),
            Some(v) => Ok(Some(
                serde_json::from_slice(&v).map_err(|e| internal("database record", e))?,
            )),
        }
    }

    fn take_stage(
        &self,
        session: &SessionId,
    ) -> Result<(Stage, String, Suite, Vec<ParticipantId>, Roster), Status> {
        let mut dkg = self.dkg.lock().expect("lock");
        dkg.retain(|_, s| s.started.elapsed() < DKG_TTL);
        let s = dkg.get_mut(session).ok_or_else(|| {
            Status::not_found("no DKG session with this id (expired or never started)")
        })?;
        let stage = s
            .stage
            .take()
            .ok_or_else(|| Status::failed_precondition("DKG session is busy or failed"))?;
        Ok((
            stage,
            s.key_id.clone(),
            s.suite,
            s.participants.clone(),
            s.roster.clone(),
        ))
    }

    fn session_policy(&self, session: &SessionId) -> Result<hot_warm_cold::Policy, Status> {
        self.dkg
            .lock()
            .expect("lock")
            .get(session)
            .map(|s| s.policy.clone())
            .ok_or_else(|| Status::not_found("no DKG session with this id"))
    }

    fn is_refresh(&self, session: &SessionId) -> bool {
        self.dkg
            .lock()
            .expect("lock")
            .get(session)
            .is_some_and(|s| s.refresh)
    }

    /// The key whose refresh `session` is (pending or already applied), if any.
    fn refresh_record(&self, session: &SessionId) -> Result<Option<KeyRecord>, Status> {
        let hex_session = session.to_string();
        for item in self.db.iter() {
            let (_, v) = item.map_err(|e| internal("database", e))?;
            let rec: KeyRecord =
                serde_json::from_slice(&v).map_err(|e| internal("database record", e))?;
            let pending = rec
                .pending_refresh
                .as_ref()
                .is_some_and(|p| p.session == hex_session);
            if pending || rec.last_refresh == hex_session {
                return Ok(Some(rec));
            }
        }
        Ok(None)
    }

    /// Starts refreshing this signer's share of an existing key.
    async fn start_refresh(
        self: &Arc<Self>,
        r: DkgStartRequest,
        session: SessionId,
        suite: Suite,
        threshold: u16,
        me: ParticipantId,
        coordinator: custody_protocol::IdentityPublic,
    ) -> Result<Response<DkgStartResponse>, Status> {
        let key_id = r.key_id.clone();
        let mut rec = self
            .get(&key_id)?
            .ok_or_else(|| Status::not_found(format!("no key {key_id} on this signer")))?;
        if rec.suite().map_err(|e| internal("record", e))? != suite || rec.me != me.get() {
            return Err(Status::invalid_argument(format!(
                "key {key_id}: suite or participant id is not this signer's"
            )));
        }
        if rec.pending_refresh.is_some() {
            return Err(Status::failed_precondition(format!(
                "key {key_id}: a confirmed refresh is pending; complete it first"
            )));
        }
        {
            let mut dkg = self.dkg.lock().expect("lock");
            dkg.retain(|_, s| s.started.elapsed() < DKG_TTL);
            if dkg.values().any(|s| s.refresh && s.key_id == key_id) {
                return Err(Status::failed_precondition(format!(
                    "key {key_id}: another refresh of it is running; abandon it first"
                )));
            }
        }
        let mut roster = rec.roster().map_err(|e| internal("record", e))?;
        let participants = roster.ids();
        let mut asked: Vec<ParticipantId> = r
            .participants
            .iter()
            .map(|p| api::participant("participants.id", p.id))
            .collect::<Result<_, _>>()?;
        asked.sort();
        if asked != participants {
            return Err(Status::invalid_argument(format!(
                "key {key_id}: a refresh takes exactly the key's participants"
            )));
        }
        let next = match rec.state {
            KeyState::Refreshing => KeyState::Refreshing,
            s => s
                .apply(hot_warm_cold::Event::StartRefresh)
                .map_err(|e| Status::failed_precondition(format!("key {key_id}: {e}")))?,
        };
        let loaded = self
            .keys
            .lock()
            .expect("lock")
            .get(&key_id)
            .cloned()
            .ok_or_else(|| Status::failed_precondition(format!("key {key_id} is not loaded")))?;
        let (stage, round1) = with_suite!(suite, C => {
            let share = loaded
                .share
                .downcast_ref::<KeyShare<C>>()
                .ok_or_else(|| Status::internal("share type"))?
                .clone();
            if share.public().threshold() != threshold {
                return Err(Status::invalid_argument(format!(
                    "key {key_id}: threshold is {}, not {threshold}",
                    share.public().threshold()
                )));
            }
            let (s, m) = dkg::start_refresh::<C, _>(session, share, &*self.identity, &mut OsRng)
                .map_err(|e| engine_status("refresh start", e))?;
            (Box::new(s) as Erased, m)
        });
        if next != rec.state {
            self.audit
                .append(
                    ax::LIFECYCLE,
                    &ax::Lifecycle {
                        key_id: key_id.clone(),
                        event: "start-refresh".into(),
                        state: next.name().into(),
                        by: String::new(),
                        successor: String::new(),
                    },
                )
                .await
                .map_err(unrecorded)?;
            rec.state = next;
            self.put(&rec)?;
            *loaded.state.lock().expect("lock") = next;
        }
        roster.insert(COORDINATOR, coordinator);
        let mut dkg = self.dkg.lock().expect("lock");
        if dkg.contains_key(&session) {
            return Err(Status::already_exists("DKG session already started"));
        }
        dkg.insert(
            session,
            DkgSession {
                key_id: key_id.clone(),
                refresh: true,
                policy: rec.policy.clone(),
                suite,
                participants,
                roster,
                stage: Some(Stage::Round1(stage)),
                started: Instant::now(),
            },
        );
        info!(%key_id, %suite, %me, "refresh started");
        Ok(Response::new(DkgStartResponse { round1 }))
    }

    /// Checks every participant's confirmation of refresh `session` and replaces the
    /// share with the refreshed one. Idempotent.
    async fn apply_refresh(
        &self,
        mut rec: KeyRecord,
        session: &SessionId,
        confirmations: &[(ParticipantId, Vec<u8>)],
    ) -> Result<(), Status> {
        let key_id = rec.key_id.clone();
        let Some(pending) = rec.pending_refresh.clone() else {
            // Already applied (a retry).
            return Ok(());
        };
        let suite = rec.suite().map_err(|e| internal("record", e))?;
        let roster = rec.roster().map_err(|e| internal("record", e))?;
        let pks = hex::decode(&pending.public_key_set).map_err(|e| internal("record", e))?;
        let digest = with_suite!(suite, C => {
            custody_protocol::PublicKeySet::<C>::from_bytes(&pks)
                .map_err(|e| internal("record", e))?
                .digest()
        });
        dkg::check_confirmations(
            &roster,
            suite,
            dkg::REFRESH_KINDS,
            session,
            &roster.ids(),
            &digest,
            custody_protocol::sim::labelled(confirmations),
        )
        .map_err(|e| engine_status("refresh confirmations", e))?;
        let next = match rec.state {
            KeyState::Refreshing => rec
                .state
                .apply(hot_warm_cold::Event::RefreshCompleted)
                .map_err(|e| Status::failed_precondition(format!("key {key_id}: {e}")))?,
            s => s,
        };
        rec.sealed_share = pending.sealed_share;
        rec.public_key_set = pending.public_key_set;
        rec.pending_refresh = None;
        rec.last_refresh = session.to_string();
        rec.state = next;
        let loaded = self
            .unseal(&rec)
            .map_err(|e| internal("refreshed share", e))?;
        self.audit
            .append(
                ax::LIFECYCLE,
                &ax::Lifecycle {
                    key_id: key_id.clone(),
                    event: "refresh".into(),
                    state: next.name().into(),
                    by: String::new(),
                    successor: String::new(),
                },
            )
            .await
            .map_err(unrecorded)?;
        self.put(&rec)?;
        self.keys
            .lock()
            .expect("lock")
            .insert(key_id.clone(), loaded);
        // Commitments drawn for the old share are given up (nonces never outlive a share).
        self.nonces.lock().expect("lock").remove(&key_id);
        self.dkg.lock().expect("lock").remove(session);
        warn!(%key_id, "key refreshed: the old share is gone");
        Ok(())
    }

    /// Abandons an unfinished refresh of `key_id`: the pending share (if any) is
    /// dropped and the old one signs again. Idempotent.
    async fn abandon_refresh(&self, key_id: &str) -> Result<KeyState, Status> {
        let mut rec = self
            .get(key_id)?
            .ok_or_else(|| Status::not_found(format!("no key {key_id} on this signer")))?;
        self.dkg
            .lock()
            .expect("lock")
            .retain(|_, s| !(s.refresh && s.key_id == key_id));
        if rec.state != KeyState::Refreshing {
            // A stale pending share (a race with an abandon) must not block the next
            // refresh.
            if rec.pending_refresh.take().is_some() {
                self.put(&rec)?;
            }
            return Ok(rec.state);
        }
        let next = rec
            .state
            .apply(hot_warm_cold::Event::RefreshFailed)
            .map_err(|e| Status::failed_precondition(format!("key {key_id}: {e}")))?;
        self.audit
            .append(
                ax::LIFECYCLE,
                &ax::Lifecycle {
                    key_id: key_id.to_string(),
                    event: "refresh-failed".into(),
                    state: next.name().into(),
                    by: String::new(),
                    successor: String::new(),
                },
            )
            .await
            .map_err(unrecorded)?;
        rec.state = next;
        rec.pending_refresh = None;
        self.put(&rec)?;
        if let Some(k) = self.keys.lock().expect("lock").get(key_id) {
            *k.state.lock().expect("lock") = next;
        }
        warn!(%key_id, "refresh abandoned: the old share stays");
        Ok(next)
    }

    /// The roster of a ceremony, from CA-signed signer certificates only: each id once,
    /// each identity once.
    fn roster_from_certificates(&self, participants: &[Participant]) -> Result<Roster, Status> {
        let mut roster = Roster::new();
        for p in participants {
            let id = api::participant("participants.id", p.id)?;
            let info =
                custody_pki::verify_issued_by(&p.certificate, &self.ca_der).map_err(|e| {
                    Status::invalid_argument(format!("participant {id} certificate: {e}"))
                })?;
            if info.role != Role::Signer {
                return Err(Status::invalid_argument(format!(
                    "participant {id} certificate is not a signer's"
                )));
            }
            let identity = info.identity.ok_or_else(|| {
                Status::invalid_argument(format!("participant {id} certificate has no identity"))
            })?;
            if roster.get(id).is_some() {
                return Err(Status::invalid_argument(format!(
                    "participant {id} listed twice"
                )));
            }
            if roster.iter().any(|(_, other)| *other == identity) {
                return Err(Status::invalid_argument(format!(
                    "participant {id} has the identity of another participant"
                )));
            }
            roster.insert(id, identity);
        }
        Ok(roster)
    }

    fn put_stage(&self, session: &SessionId, stage: Stage) {
        if let Some(s) = self.dkg.lock().expect("lock").get_mut(session) {
            s.stage = Some(stage);
        }
    }
}

fn wrong_stage() -> Status {
    Status::failed_precondition("DKG session is at another step")
}

#[tonic::async_trait]
impl Signer for SignerService {
    async fn identity(
        &self,
        req: Request<IdentityRequest>,
    ) -> Result<Response<IdentityResponse>, Status> {
        custody_pki::authorize(&req, &[Role::Coordinator, Role::Operator, Role::Auditor])?;
        let i = &self.0;
        Ok(Response::new(IdentityResponse {
            name: i.name.clone(),
            identity: i.identity.public().to_bytes().to_vec(),
            certificate: i.cert_der.clone(),
            sealer: i.sealer.describe(),
        }))
    }

    async fn dkg_start(
        &self,
        req: Request<DkgStartRequest>,
    ) -> Result<Response<DkgStartResponse>, Status> {
        let caller = self.authorize(&req)?;
        let r = req.into_inner();
        api::check_id("key_id", &r.key_id)?;
        let session = api::session("session", &r.session)?;
        let suite: Suite = api::suite("suite", &r.suite)?;
        let threshold = u16::try_from(r.threshold)
            .map_err(|_| Status::invalid_argument("threshold: too large"))?;
        let me = api::participant("me", r.me)?;
        let policy = hot_warm_cold::Policy::from_json(&r.policy)
            .map_err(|e| Status::invalid_argument(format!("policy: {e}")))?;
        let i = self.0.clone();
        if r.refresh {
            let coord = caller.identity.ok_or_else(|| {
                Status::permission_denied("coordinator certificate carries no identity")
            })?;
            return i
                .start_refresh(r, session, suite, threshold, me, coord)
                .await;
        }
        if i.get(&r.key_id)?.is_some() {
            return Err(Status::already_exists(format!(
                "key {} already exists on this signer",
                r.key_id
            )));
        }
        let mut roster = i.roster_from_certificates(&r.participants)?;
        let participants = roster.ids();
        if roster.get(me) != Some(&i.identity.public()) {
            return Err(Status::invalid_argument(format!(
                "participant {me} is not this signer"
            )));
        }
        let coord = caller.identity.ok_or_else(|| {
            Status::permission_denied("coordinator certificate carries no identity")
        })?;
        roster.insert(COORDINATOR, coord);
        let cfg = DkgConfig {
            session,
            threshold,
            participants: participants.clone(),
            me,
        };
        let (stage, round1) = with_suite!(suite, C => {
            let (s, m) = dkg::start::<C, _>(cfg, &*i.identity, &mut OsRng).map_err(|e| engine_status("dkg start", e))?;
            (Box::new(s) as Erased, m)
        });
        let round1 = if i.fault == Some(Fault::BadProofOfKnowledge) {
            // The proof's response scalar is the body's last 32 bytes; its lowest bit
            // is the last byte's (big-endian, secp256k1) or the first's (Ed25519).
            let at = match suite {
                Suite::Ed25519 => 32,
                _ => 1,
            };
            resign_altered(&*i.identity, &round1, at)?
        } else {
            round1
        };
        let mut dkg = i.dkg.lock().expect("lock");
        if dkg.contains_key(&session) {
            return Err(Status::already_exists("DKG session already started"));
        }
        dkg.insert(
            session,
            DkgSession {
                key_id: r.key_id.clone(),
                refresh: false,
                policy,
                suite,
                participants,
                roster,
                stage: Some(Stage::Round1(stage)),
                started: Instant::now(),
            },
        );
        info!(key_id = %r.key_id, %suite, %me, "DKG started");
        Ok(Response::new(DkgStartResponse { round1 }))
    }

    async fn dkg_round1(
        &self,
        req: Request<DkgRound1Request>,
    ) -> Result<Response<DkgRound1Response>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let session = api::session("session", &r.session)?;
        let msgs = relayed(&r.round1, "round1.from")?;
        let i = self.0.clone();
        let (stage, key_id, suite, _, roster) = i.take_stage(&session)?;
        let Stage::Round1(state) = stage else {
            i.put_stage(&session, stage);
            return Err(wrong_stage());
        };
        let i2 = i.clone();
        let res = tokio::task::spawn_blocking(move || {
            with_suite!(suite, C => {
                let state = state.downcast::<dkg::AwaitingRound1<C>>().map_err(|_| Status::internal("state type"))?;
                let (next, out) = state
                    .receive(&*i2.identity, &roster, custody_protocol::sim::labelled(&msgs), &mut OsRng)
                    .map_err(|e| engine_status("dkg round 1", e))?;
                Ok::<_, Status>((Box::new(next) as Erased, out))
            })
        })
        .await
        .map_err(|e| internal("dkg task", e))?;
        let (next, out) = match res {
            Ok(v) => v,
            Err(st) => {
                warn!(%key_id, "DKG round 1 failed: {}", st.message());
                return Err(st);
            }
        };
        i.put_stage(&session, Stage::Round2(next));
        let mut shares = Vec::with_capacity(out.shares.len());
        for (to, envelope) in out.shares {
            let envelope = if i.fault == Some(Fault::GarbageRound2) {
                // A byte of the sealed share (the AEAD tag, at the end) altered.
                resign_altered(&*i.identity, &envelope, 1)?
            } else {
                envelope
            };
            shares.push(Relayed {
                from: 0,
                to: to.get() as u32,
                envelope,
            });
        }
        Ok(Response::new(DkgRound1Response {
            echo: out.echo,
            shares,
        }))
    }

    async fn dkg_round2(
        &self,
        req: Request<DkgRound2Request>,
    ) -> Result<Response<DkgRound2Response>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let session = api::session("session", &r.session)?;
        let echoes = relayed(&r.echoes, "echoes.from")?;
        let shares = relayed(&r.shares, "shares.from")?;
        let i = self.0.clone();
        let (stage, key_id, suite, _, roster) = i.take_stage(&session)?;
        let Stage::Round2(state) = stage else {
            i.put_stage(&session, stage);
            return Err(wrong_stage());
        };
        let i2 = i.clone();
        let roster2 = roster.clone();
        let key_id2 = key_id.clone();
        let res = tokio::task::spawn_blocking(move || {
            let key_id = key_id2;
            with_suite!(suite, C => {
                let state = state.downcast::<dkg::AwaitingRound2<C>>().map_err(|_| Status::internal("state type"))?;
                let (share, confirm) = state
                    .finish(
                        &*i2.identity,
                        &roster2,
                        custody_protocol::sim::labelled(&echoes),
                        custody_protocol::sim::labelled(&shares),
                    )
                    .map_err(|e| engine_status("dkg round 2", e))?;
                let secret = share.to_secret_bytes();
                let sealed = i2
                    .sealer
                    .seal(&store::share_aad(&i2.name, &key_id), &secret)
                    .map_err(|e| internal("seal share", e))?;
                let pks = share.public().to_bytes();
                let digest = share.public().digest();
                let me = share.id();
                let pk = share.public().public_key();
                Ok::<_, Status>((Arc::new(share) as SharedShare, confirm, sealed, pks, digest, me, pk))
            })
        })
        .await
        .map_err(|e| internal("dkg task", e))?;
        let (share, confirmation, sealed, pks, digest, me, pk) = match res {
            Ok(v) => v,
            Err(st) => {
                warn!(%key_id, "DKG round 2 failed: {}", st.message());
                return Err(st);
            }
        };
        if i.is_refresh(&session) {
            // The new share waits beside the old one until every confirmation is in.
            let mut rec = i
                .get(&key_id)?
                .ok_or_else(|| Status::not_found(format!("no key {key_id} on this signer")))?;
            rec.pending_refresh = Some(store::PendingRefresh {
                session: session.to_string(),
                sealed_share: hex::encode(sealed),
                public_key_set: hex::encode(&pks),
            });
            i.put(&rec)?;
            i.audit
                .append(
                    ax::REFRESH_CONFIRMED,
                    &ax::DkgConfirmed {
                        key_id: key_id.clone(),
                        session: session.to_string(),
                        public_key: hex::encode(pk),
                        policy_sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                            rec.policy.to_json().as_bytes(),
                        )),
                    },
                )
                .await
                .map_err(unrecorded)?;
            i.put_stage(&session, Stage::Confirmed { share, digest });
            info!(%key_id, "refreshed share stored (pending confirmation)");
            return Ok(Response::new(DkgRound2Response {
                confirmation,
                public_key_set: pks,
            }));
        }
        // Durable before we confirm.
        let rec = KeyRecord {
            key_id: key_id.clone(),
            suite: suite.name().to_string(),
            me: me.get(),
            state: KeyState::Pending,
            session: session.to_string(),
            roster: roster
                .iter()
                .filter(|(p, _)| **p != COORDINATOR)
                .map(|(p, id)| (p.get(), hex::encode(id.to_bytes())))
                .collect(),
            sealed_share: hex::encode(sealed),
            public_key_set: hex::encode(&pks),
            policy: i.session_policy(&session)?,
            created_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            pending_refresh: None,
            last_refresh: String::new(),
            policy_version: 0,
        };
        i.put(&rec)?;
        // Recorded before the confirmation leaves.
        i.audit
            .append(
                ax::DKG_CONFIRMED,
                &ax::DkgConfirmed {
                    key_id: key_id.clone(),
                    session: session.to_string(),
                    public_key: hex::encode(pk),
                    policy_sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                        rec.policy.to_json().as_bytes(),
                    )),
                },
            )
            .await
            .map_err(unrecorded)?;
        i.put_stage(&session, Stage::Confirmed { share, digest });
        info!(%key_id, "DKG share stored (pending confirmation)");
        Ok(Response::new(DkgRound2Response {
            confirmation,
            public_key_set: pks,
        }))
    }

    async fn dkg_finalize(
        &self,
        req: Request<DkgFinalizeRequest>,
    ) -> Result<Response<DkgFinalizeResponse>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let session = api::session("session", &r.session)?;
        let confirmations = relayed(&r.confirmations, "confirmations.from")?;
        let i = self.0.clone();
        // A refresh completes from its durable record (also after a restart).
        if let Some(rec) = i.refresh_record(&session)? {
            i.apply_refresh(rec, &session, &confirmations).await?;
            return Ok(Response::new(DkgFinalizeResponse {}));
        }
        let (stage, key_id, suite, participants, roster) = i.take_stage(&session)?;
        let Stage::Confirmed { share, digest } = stage else {
            i.put_stage(&session, stage);
            return Err(wrong_stage());
        };
        if let Err(e) = dkg::check_confirmations(
            &roster,
            suite,
            DKG_KINDS,
            &session,
            &participants,
            &digest,
            custody_protocol::sim::labelled(&confirmations),
        ) {
            i.put_stage(&session, Stage::Confirmed { share, digest });
            return Err(engine_status("dkg confirmations", e));
        }
        let mut rec = i
            .get(&key_id)?
            .ok_or_else(|| Status::internal("pending key record missing"))?;
        rec.state = KeyState::Active;
        i.put(&rec)?;
        let loaded = i
            .loaded(suite, share, &rec)
            .map_err(|e| internal("usage", e))?;
        i.keys.lock().expect("lock").insert(key_id.clone(), loaded);
        i.dkg.lock().expect("lock").remove(&session);
        info!(%key_id, %suite, "key active");
        Ok(Response::new(DkgFinalizeResponse {}))
    }

    async fn commit(
        &self,
        req: Request<CommitRequest>,
    ) -> Result<Response<CommitResponse>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        if r.count == 0 || r.count > MAX_COMMIT_BATCH {
            return Err(Status::invalid_argument(format!(
                "count: must be 1..={MAX_COMMIT_BATCH}"
            )));
        }
        let i = &self.0;
        let (suite, share) = {
            let keys = i.keys.lock().expect("lock");
            let k = keys
                .get(&r.key_id)
                .ok_or_else(|| Status::not_found(format!("no active key {}", r.key_id)))?;
            (k.suite, k.share.clone())
        };
        let count = r.count as usize;
        let i2 = i.clone();
        let (batch, fresh) =
            tokio::task::spawn_blocking(move || draw_commitments(&i2, suite, share, count))
                .await
                .map_err(|e| internal("commit task", e))??;
        i.nonces
            .lock()
            .expect("lock")
            .entry(r.key_id.clone())
            .or_default()
            .extend(fresh);
        Ok(Response::new(CommitResponse { batch }))
    }

    async fn key_lifecycle(
        &self,
        req: Request<KeyLifecycleRequest>,
    ) -> Result<Response<KeyLifecycleResponse>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        api::check_id("key_id", &r.key_id)?;
        if r.event == "refresh-failed" {
            let state = self.0.abandon_refresh(&r.key_id).await?;
            return Ok(Response::new(KeyLifecycleResponse {
                state: state.name().into(),
            }));
        }
        let event = hot_warm_cold::Event::operator_event(&r.event).ok_or_else(|| {
            Status::invalid_argument(format!(
                "event: {:?} is not one of suspend, resume, retire, destroy",
                r.event
            ))
        })?;
        let i = &self.0;
        let mut rec = i
            .get(&r.key_id)?
            .ok_or_else(|| Status::not_found(format!("no key {} on this signer", r.key_id)))?;
        let target = match event {
            hot_warm_cold::Event::Suspend => KeyState::Suspended,
            hot_warm_cold::Event::Resume => KeyState::Active,
            hot_warm_cold::Event::Retire => KeyState::Retired,
            _ => KeyState::Destroyed,
        };
        if rec.state == target {
            // Idempotent: a retry after a partial failure.
            return Ok(Response::new(KeyLifecycleResponse {
                state: rec.state.name().into(),
            }));
        }
        let next = rec
            .state
            .apply(event)
            .map_err(|e| Status::failed_precondition(format!("key {}: {e}", r.key_id)))?;
        // In the audit log before it takes effect.
        i.audit
            .append(
                ax::LIFECYCLE,
                &ax::Lifecycle {
                    key_id: r.key_id.clone(),
                    event: r.event.clone(),
                    state: next.name().to_string(),
                    by: String::new(),
                    successor: String::new(),
                },
            )
            .await
            .map_err(unrecorded)?;
        rec.state = next;
        if next == KeyState::Destroyed {
            // Erase the share; the record stays as a tombstone.
            rec.sealed_share.clear();
        }
        // Durable first; then the in-memory state follows.
        i.put(&rec)?;
        let mut keys = i.keys.lock().expect("lock");
        if next == KeyState::Destroyed {
            keys.remove(&r.key_id);
            i.nonces.lock().expect("lock").remove(&r.key_id);
        } else if let Some(k) = keys.get(&r.key_id) {
            *k.state.lock().expect("lock") = next;
        }
        warn!(key_id = %r.key_id, state = next.name(), "key lifecycle: {}", r.event);
        Ok(Response::new(KeyLifecycleResponse {
            state: next.name().into(),
        }))
    }

    async fn sign_share(
        &self,
        req: Request<SignShareRequest>,
    ) -> Result<Response<SignShareResponse>, Status> {
        let t0 = Instant::now();
        let caller = self.authorize(&req)?;
        let t_auth = t0.elapsed();
        let r = req.into_inner();
        let i = &self.0;
        let coord = caller.identity.ok_or_else(|| {
            Status::permission_denied("coordinator certificate carries no identity")
        })?;
        let k = {
            let keys = i.keys.lock().expect("lock");
            keys.get(&r.key_id)
                .cloned()
                .ok_or_else(|| Status::not_found(format!("no active key {}", r.key_id)))?
        };
        api::check_id("request_id", &r.request_id)?;
        let transfer = r
            .transfer
            .as_ref()
            .map(|t| hot_warm_cold::Transfer::from_proto(t, &r.request_id))
            .transpose()
            .map_err(Status::invalid_argument)?;
        let settlement = r
            .settlement
            .as_ref()
            .map(|s| hot_warm_cold::Settlement::from_proto(s, &r.request_id))
            .transpose()
            .map_err(Status::invalid_argument)?;
        if transfer.is_some() && settlement.is_some() {
            return Err(Status::invalid_argument(
                "transfer and settlement: at most one",
            ));
        }
        let mut roster = Roster::new();
        roster.insert(COORDINATOR, coord);
        let opened = identity::open_from(&roster, COORDINATOR, &r.package)
            .map_err(|e| engine_status("signing package", e))?;
        let session = opened.header.session;
        let t_open = t0.elapsed();
        let approvals = approvals_of(&r.approvals)?;
        let ask = Ask {
            key_id: &r.key_id,
            request_id: &r.request_id,
            transfer,
            settlement,
            approvals,
        };
        if i.fault == Some(Fault::StallSigning) {
            // Never answer (until the coordinator gives up on us).
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        let (resp, logged) =
            with_suite!(k.suite, C => sign_with::<C>(i, &k, ask, opened.body, session))?;
        // The share leaves only once its issue is on disk in our audit log (the entry
        // was handed to the log before the share was computed, and synced meanwhile).
        let t_signed = t0.elapsed();
        logged.await.map_err(unrecorded)?;
        if i.fault == Some(Fault::ReplayShares) {
            let mut first = i.replayed.lock().expect("lock");
            match first.as_ref() {
                Some(old) => return Ok(Response::new(old.clone())),
                None => *first = Some(resp.clone()),
            }
        }
        i.shares_issued.inc();
        tracing::debug!(
            auth_us = t_auth.as_micros() as u64,
            open_us = (t_open - t_auth).as_micros() as u64,
            sign_us = (t_signed - t_open).as_micros() as u64,
            audit_wait_us = (t0.elapsed() - t_signed).as_micros() as u64,
            "signature share"
        );
        Ok(Response::new(resp))
    }

    async fn repair_help(
        &self,
        req: Request<RepairHelpRequest>,
    ) -> Result<Response<RepairHelpResponse>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        api::check_id("key_id", &r.key_id)?;
        let session = api::session("session", &r.session)?;
        let helpers: Vec<ParticipantId> = r
            .helpers
            .iter()
            .map(|h| api::participant("helpers", *h))
            .collect::<Result<_, _>>()?;
        let lost = api::participant("lost", r.lost)?;
        let i = &self.0;
        let rec = i
            .get(&r.key_id)?
            .ok_or_else(|| Status::not_found(format!("no key {} on this signer", r.key_id)))?;
        let k = i
            .keys
            .lock()
            .expect("lock")
            .get(&r.key_id)
            .cloned()
            .ok_or_else(|| {
                Status::failed_precondition(format!("key {} has no share here", r.key_id))
            })?;
        let roster = rec.roster().map_err(|e| internal("record", e))?;
        let cfg = custody_protocol::repair::RepairConfig {
            session,
            helpers: helpers.clone(),
            lost,
        };
        let (state, out, set_digest, me) = with_suite!(k.suite, C => {
            let share = k.share.downcast_ref::<KeyShare<C>>().ok_or_else(|| Status::internal("share type"))?;
            let (state, out) = custody_protocol::repair::helper_start(cfg, share, &*i.identity, &roster, &mut OsRng)
                .map_err(|e| engine_status("repair", e))?;
            (Box::new(state) as Erased, out, share.public().digest(), share.id())
        });
        let key_state = *k.state.lock().expect("lock");
        let digest = custody_protocol::repair::attestation_digest(
            &r.key_id,
            &session,
            &set_digest,
            &k.policy.digest(),
            &custody_protocol::repair::roster_digest(&roster),
            key_state.name(),
            rec.policy_version,
        );
        let attestation = i
            .identity
            .sign_raw(&digest)
            .map_err(|e| Status::unavailable(format!("identity key: {e}")))?;
        i.audit
            .append(
                ax::REPAIR_HELPED,
                &ax::RepairHelped {
                    key_id: r.key_id.clone(),
                    session: session.to_string(),
                    lost: lost.get(),
                    helpers: helpers.iter().map(|h| h.get()).collect(),
                },
            )
            .await
            .map_err(unrecorded)?;
        let mut repairs = i.repairs.lock().expect("lock");
        repairs.retain(|_, s| s.started.elapsed() < DKG_TTL);
        repairs.insert(
            session,
            RepairSession {
                key_id: r.key_id.clone(),
                suite: k.suite,
                roster,
                state: Some(state),
                started: Instant::now(),
            },
        );
        warn!(key_id = %r.key_id, %lost, "helping to repair a lost share");
        Ok(Response::new(RepairHelpResponse {
            deltas: out
                .into_iter()
                .map(|(to, envelope)| Relayed {
                    from: me.get() as u32,
                    to: to.get() as u32,
                    envelope,
                })
                .collect(),
            attestation: attestation.to_vec(),
        }))
    }

    async fn repair_sigma(
        &self,
        req: Request<RepairSigmaRequest>,
    ) -> Result<Response<RepairSigmaResponse>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let session = api::session("session", &r.session)?;
        let deltas = relayed(&r.deltas, "deltas.from")?;
        let i = &self.0;
        let s = i
            .repairs
            .lock()
            .expect("lock")
            .remove(&session)
            .ok_or_else(|| {
                Status::not_found("no repair session with this id (expired or never started)")
            })?;
        let state = s
            .state
            .ok_or_else(|| Status::failed_precondition("repair session is at another step"))?;
        let sigma = with_suite!(s.suite, C => {
            let state = state
                .downcast::<custody_protocol::repair::HelperAwaitingDeltas<C>>()
                .map_err(|_| Status::internal("state type"))?;
            state
                .finish(&*i.identity, &s.roster, custody_protocol::sim::labelled(&deltas), &mut OsRng)
                .map_err(|e| engine_status("repair", e))?
        });
        info!(key_id = %s.key_id, "repair sigma sent");
        Ok(Response::new(RepairSigmaResponse { sigma }))
    }

    async fn repair_recover(
        &self,
        req: Request<RepairRecoverRequest>,
    ) -> Result<Response<RepairRecoverResponse>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        api::check_id("key_id", &r.key_id)?;
        let session = api::session("session", &r.session)?;
        let suite: Suite = api::suite("suite", &r.suite)?;
        let me = api::participant("me", r.me)?;
        let helpers: Vec<ParticipantId> = r
            .helpers
            .iter()
            .map(|h| api::participant("helpers", *h))
            .collect::<Result<_, _>>()?;
        let i = &self.0;
        if let Some(rec) = i.get(&r.key_id)? {
            // A share here, or a tombstone: a destroyed key stays destroyed.
            return Err(Status::already_exists(format!(
                "this signer has a record of key {} ({}); it is not repaired over it",
                r.key_id,
                rec.state.name()
            )));
        }
        let state = KeyState::ALL
            .into_iter()
            .find(|s| s.name() == r.state && *s != KeyState::Pending && *s != KeyState::Destroyed)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "state: {:?} is not a state a repaired key can have",
                    r.state
                ))
            })?;
        let roster = i.roster_from_certificates(&r.participants)?;
        if roster.get(me) != Some(&i.identity.public()) {
            return Err(Status::invalid_argument(format!(
                "participant {me} is not this signer"
            )));
        }
        let policy = hot_warm_cold::Policy::from_json(&r.policy)
            .map_err(|e| Status::invalid_argument(format!("policy: {e}")))?;
        let sigmas = relayed(&r.sigmas, "sigmas.from")?;
        let attestations = relayed(&r.attestations, "attestations.from")?;
        let cfg = custody_protocol::repair::RepairConfig {
            session,
            helpers: helpers.clone(),
            lost: me,
        };
        let (secret, pks, set_digest, pk) = with_suite!(suite, C => {
            let public = custody_protocol::PublicKeySet::<C>::from_bytes(&r.public_key_set)
                .map_err(|e| Status::invalid_argument(format!("public_key_set: {e}")))?;
            // Every helper must attest this key set and policy: the coordinator alone
            // cannot give us another.
            let digest = custody_protocol::repair::attestation_digest(
                &r.key_id,
                &session,
                &public.digest(),
                &policy.digest(),
                &custody_protocol::repair::roster_digest(&roster),
                state.name(),
                r.policy_version,
            );
            for h in &helpers {
                let id = roster.get(*h).ok_or_else(|| Status::invalid_argument(format!("helper {h} is not a participant")))?;
                let ok = attestations
                    .iter()
                    .any(|(f, sig)| f == h && custody_protocol::repair::verify_attestation(id, &digest, sig));
                if !ok {
                    return Err(Status::permission_denied(format!(
                        "helper {h} did not attest this key set and policy"
                    )));
                }
            }
            let set_digest = public.digest();
            let pks = public.to_bytes();
            let pk = public.public_key();
            let share = custody_protocol::repair::recover(&cfg, public, &*i.identity, &roster, custody_protocol::sim::labelled(&sigmas))
                .map_err(|e| engine_status("repair", e))?;
            (share.to_secret_bytes(), pks, set_digest, pk)
        });
        let sealed = i
            .sealer
            .seal(&store::share_aad(&i.name, &r.key_id), &secret)
            .map_err(|e| internal("seal share", e))?;
        let rec = KeyRecord {
            key_id: r.key_id.clone(),
            suite: suite.name().to_string(),
            me: me.get(),
            state,
            session: session.to_string(),
            roster: roster
                .iter()
                .map(|(p, id)| (p.get(), hex::encode(id.to_bytes())))
                .collect(),
            sealed_share: hex::encode(sealed),
            public_key_set: hex::encode(&pks),
            policy: policy.clone(),
            created_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            pending_refresh: None,
            last_refresh: String::new(),
            policy_version: r.policy_version,
        };
        i.audit
            .append(
                ax::SHARE_REPAIRED,
                &ax::DkgConfirmed {
                    key_id: r.key_id.clone(),
                    session: session.to_string(),
                    public_key: hex::encode(pk),
                    policy_sha256: hex::encode(policy.digest()),
                },
            )
            .await
            .map_err(unrecorded)?;
        i.put(&rec)?;
        let loaded = i.unseal(&rec).map_err(|e| internal("repaired share", e))?;
        i.keys
            .lock()
            .expect("lock")
            .insert(r.key_id.clone(), loaded);
        let digest = custody_protocol::repair::attestation_digest(
            &r.key_id,
            &session,
            &set_digest,
            &policy.digest(),
            &custody_protocol::repair::roster_digest(&roster),
            state.name(),
            r.policy_version,
        );
        let attestation = i
            .identity
            .sign_raw(&digest)
            .map_err(|e| Status::unavailable(format!("identity key: {e}")))?;
        warn!(key_id = %r.key_id, "share repaired from {} helpers", helpers.len());
        Ok(Response::new(RepairRecoverResponse {
            attestation: attestation.to_vec(),
        }))
    }

    async fn set_policy(
        &self,
        req: Request<SetPolicyRequest>,
    ) -> Result<Response<SetPolicyResponse>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        api::check_id("key_id", &r.key_id)?;
        if r.policy.trim().is_empty() {
            return Err(Status::invalid_argument("policy: empty"));
        }
        let new = hot_warm_cold::Policy::from_json(&r.policy)
            .map_err(|e| Status::invalid_argument(format!("policy: {e}")))?;
        let approvals = approvals_of(&r.approvals)?;
        let i = &self.0;
        let mut rec = i
            .get(&r.key_id)?
            .ok_or_else(|| Status::not_found(format!("no key {} on this signer", r.key_id)))?;
        if rec.policy == new {
            // Already applied (a retry).
            return Ok(Response::new(SetPolicyResponse {
                policy_digest: new.digest().to_vec(),
            }));
        }
        if rec.state == KeyState::Destroyed {
            return Err(Status::failed_precondition(format!(
                "key {} is destroyed",
                r.key_id
            )));
        }
        // The admins named in the policy this signer enforces now must approve.
        new.change_approved(&rec.policy, &r.key_id, rec.policy_version, &approvals)
            .map_err(|why| {
                i.refuse(
                    &r.key_id,
                    "policy-change",
                    format!("policy change of key {}: {why}", r.key_id),
                )
            })?;
        i.audit
            .append(
                ax::POLICY_CHANGED,
                &ax::PolicyChanged {
                    key_id: r.key_id.clone(),
                    previous_policy_sha256: hex::encode(rec.policy.digest()),
                    version: rec.policy_version,
                    policy: new.to_json(),
                    approvals: r
                        .approvals
                        .iter()
                        .map(|a| custody_audit::transcript::ApprovalRecord {
                            approver: hex::encode(&a.approver),
                            signature: hex::encode(&a.signature),
                        })
                        .collect(),
                },
            )
            .await
            .map_err(unrecorded)?;
        rec.policy = new.clone();
        rec.policy_version += 1;
        i.put(&rec)?;
        let mut keys = i.keys.lock().expect("lock");
        if let Some(k) = keys.get(&r.key_id).cloned() {
            keys.insert(
                r.key_id.clone(),
                Loaded {
                    policy: Arc::new(new.clone()),
                    ..k
                },
            );
        }
        warn!(key_id = %r.key_id, "policy changed (approved by its admins)");
        Ok(Response::new(SetPolicyResponse {
            policy_digest: new.digest().to_vec(),
        }))
    }

    async fn propose(
        &self,
        req: Request<ProposeRequest>,
    ) -> Result<Response<ProposeResponse>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        api::check_id("key_id", &r.key_id)?;
        api::check_id("request_id", &r.request_id)?;
        let i = &self.0;
        if !i.keys.lock().expect("lock").contains_key(&r.key_id) {
            return Err(Status::not_found(format!("no active key {}", r.key_id)));
        }
        let request = match (&r.transfer, &r.settlement) {
            (Some(_), Some(_)) => {
                return Err(Status::invalid_argument(
                    "transfer and settlement: a proposal is one or the other",
                ))
            }
            (Some(t), None) => hot_warm_cold::Request::Transfer(
                hot_warm_cold::Transfer::from_proto(t, &r.request_id)
                    .map_err(Status::invalid_argument)?,
            ),
            (None, Some(st)) => hot_warm_cold::Request::Settlement(
                hot_warm_cold::Settlement::from_proto(st, &r.request_id)
                    .map_err(Status::invalid_argument)?,
            ),
            (None, None) => hot_warm_cold::Request::Raw {
                request_id: r.request_id.clone(),
                message: r.message.clone(),
            },
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let first_seen = i.first_seen(&r.key_id, &request, now)?;
        if first_seen == now {
            i.audit
                .append(
                    ax::REQUEST_SEEN,
                    &ax::RequestSeen {
                        key_id: r.key_id.clone(),
                        request_id: r.request_id.clone(),
                        first_seen,
                    },
                )
                .await
                .map_err(unrecorded)?;
        }
        Ok(Response::new(ProposeResponse { first_seen }))
    }

    type ExportAuditStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<AuditChunk, Status>> + Send + 'static>,
    >;

    async fn export_audit(
        &self,
        req: Request<ExportAuditRequest>,
    ) -> Result<Response<Self::ExportAuditStream>, Status> {
        self.authorize(&req)?;
        let nonce = req.into_inner().nonce;
        api::check_nonce(&nonce)?;
        let log = self.0.audit.export(&nonce).await.map_err(unrecorded)?;
        info!(bytes = log.len(), "audit log exported");
        let chunks: Vec<Result<AuditChunk, Status>> = log
            .chunks(1 << 20)
            .map(|c| Ok(AuditChunk { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }
}

/// Approvals as the engine takes them; malformed ones are refused.
fn approvals_of(
    list: &[custody_protocol::proto::Approval],
) -> Result<Vec<hot_warm_cold::Approval>, Status> {
    if list.len() > 256 {
        return Err(Status::invalid_argument("approvals: at most 256"));
    }
    list.iter()
        .map(|a| {
            let approver: [u8; 32] =
                a.approver.as_slice().try_into().map_err(|_| {
                    Status::invalid_argument("approvals.approver: must be 32 bytes")
                })?;
            if a.signature.len() != 64 {
                return Err(Status::invalid_argument(
                    "approvals.signature: must be 64 bytes",
                ));
            }
            Ok(hot_warm_cold::Approval {
                approver,
                signature: a.signature.clone(),
            })
        })
        .collect()
}

/// What the coordinator asks this signer to sign.
struct Ask<'a> {
    key_id: &'a str,
    request_id: &'a str,
    transfer: Option<hot_warm_cold::Transfer>,
    settlement: Option<hot_warm_cold::Settlement>,
    approvals: Vec<hot_warm_cold::Approval>,
}

/// Checks `ask` against the key's policy, records the use, and computes this signer's
/// share. The `share-issued` audit entry is handed to the log once the policy admitted
/// the request and the nonces are taken, before the share is computed (so its sync and
/// the arithmetic overlap): the second value waits for it, and the share must not
/// leave before. What could make computing the share fail is checked before the entry
/// (the package holds only signers of this key, at least t, and this signer's own
/// unused commitment); were it ever to fail anyway, the entry would name a share that
/// never left, never the reverse.
fn sign_with<C: EngineSuite>(
    i: &Inner,
    k: &Loaded,
    ask: Ask<'_>,
    body: &[u8],
    session: SessionId,
) -> Result<(SignShareResponse, custody_audit::writer::PendingAppend), Status> {
    let key_id = ask.key_id;
    let share = k
        .share
        .downcast_ref::<KeyShare<C>>()
        .ok_or_else(|| Status::internal("share type"))?;
    let (_, package) = wire::decode_with(body, C::SUITE, Kind::SigningPackage, &session, |_, r| {
        SigningPackage::<C>::decode_body(r)
    })
    .map_err(|e| engine_status("signing package", e))?;
    // Signers of this key only, at least t of them: what computing the share needs
    // besides our own commitment (checked below), so that once the request is admitted
    // the share cannot fail, and a malformed package takes no nonce and no allowance.
    package
        .check_against(share.public())
        .map_err(|e| engine_status("signing package", e))?;
    // The request, as this signer sees it: a transfer's message is computed here, and
    // the package must carry exactly it.
    let request = match ask.transfer {
        None if ask.settlement.is_some() => {
            let s = ask.settlement.expect("checked");
            if package.message() != s.message(key_id) {
                return Err(i.refuse(
                    key_id,
                    ask.request_id,
                    "signing package message is not the message of the settlement it claims to be"
                        .into(),
                ));
            }
            hot_warm_cold::Request::Settlement(s)
        }
        Some(t) => {
            if package.message() != t.message(key_id) {
                return Err(i.refuse(
                    key_id,
                    ask.request_id,
                    "signing package message is not the message of the transfer it claims to be"
                        .into(),
                ));
            }
            hot_warm_cold::Request::Transfer(t)
        }
        None => hot_warm_cold::Request::Raw {
            request_id: ask.request_id.to_string(),
            message: package.message().to_vec(),
        },
    };
    let mine = package
        .commitments_of(share.id())
        .ok_or_else(|| Status::invalid_argument("signing package does not include this signer"))?;
    let mut w = wire::Writer::default();
    wire::Body::encode_body(&mine, &mut w).map_err(|e| internal("encode", e))?;
    let tag = w.into_vec();
    // Remove the nonces before using them: whatever happens next, they are gone.
    let nonces = {
        let mut pools = i.nonces.lock().expect("lock");
        pools.get_mut(key_id).and_then(|p| p.take(&tag))
    };
    let nonces = nonces
        .ok_or_else(|| {
            Status::failed_precondition("unknown or already used commitment for this signer")
        })?
        .downcast::<sign::Nonces<C>>()
        .map_err(|_| Status::internal("nonce type"))?;
    // Check, then persist, then sign: the nonces are already gone whatever the policy
    // says, and the use is durable before the share exists.
    i.admit(key_id, k, &request, &ask.approvals)?;
    let transcript = sign::transcript_digest(key_id, ask.request_id, body);
    let logged = i
        .audit
        .append_started(
            ax::SHARE_ISSUED,
            &ax::ShareIssued {
                key_id: key_id.to_string(),
                request_id: ask.request_id.to_string(),
                session: session.to_string(),
                transcript: hex::encode(transcript),
            },
        )
        .map_err(unrecorded)?;
    let mut sig_share = nonces
        .sign(share, &package)
        .map_err(|e| engine_status("sign", e))?;
    if i.fault == Some(Fault::CorruptSignatureShares) {
        sig_share = corrupt::<C>(&sig_share);
    }
    let header = Header {
        suite: C::SUITE,
        kind: Kind::SignatureShare,
        session,
        from: share.id(),
        to: Some(COORDINATOR),
    };
    let msg = sign::ShareMessage {
        transcript,
        share: sig_share,
    };
    let env = identity::signed(&*i.identity, &header, &msg).map_err(|e| internal("encode", e))?;
    Ok((SignShareResponse { share: env }, logged))
}

type Drawn = (Vec<u8>, Vec<(Vec<u8>, Erased)>);

/// Draws `count` nonce pairs for `share`; returns the signed batch of commitments
/// (session all zero: bound to a session only by the signing package) and the nonces
/// keyed by each encoded commitment.
fn draw_commitments(
    i: &Inner,
    suite: Suite,
    share: SharedShare,
    count: usize,
) -> Result<Drawn, Status> {
    with_suite!(suite, C => {
        let share = share.downcast_ref::<KeyShare<C>>().ok_or_else(|| Status::internal("share type"))?;
        let mut batch = Vec::with_capacity(count);
        let mut fresh: Vec<(Vec<u8>, Erased)> = Vec::with_capacity(count);
        for _ in 0..count {
            let (nonces, commitments) = sign::commit(share, &mut OsRng);
            let mut w = wire::Writer::default();
            wire::Body::encode_body(&commitments, &mut w).map_err(|e| internal("encode", e))?;
            fresh.push((w.into_vec(), Box::new(nonces) as Erased));
            batch.push(commitments);
        }
        let header = Header {
            suite,
            kind: Kind::CommitmentBatch,
            session: SessionId([0; 32]),
            from: share.id(),
            to: Some(COORDINATOR),
        };
        let env = identity::signed(&*i.identity, &header, &sign::CommitmentBatch(batch))
            .map_err(|e| internal("encode", e))?;
        Ok((env, fresh))
    })
}

/// Fault injection: `envelope` again, signed by us, with one bit of its body flipped
/// at `from_end` bytes before the body's end.
fn resign_altered(
    identity: &dyn custody_protocol::Identity,
    envelope: &[u8],
    from_end: usize,
) -> Result<Vec<u8>, Status> {
    let mut body = identity::envelope_body(envelope)
        .map_err(|e| internal("fault injection", e))?
        .to_vec();
    let at = body
        .len()
        .checked_sub(from_end)
        .ok_or_else(|| Status::internal("fault injection: short body"))?;
    body[at] ^= 1;
    identity::seal_envelope(identity, &body).map_err(|e| internal("fault injection", e))
}

/// A wrong but well-formed share (fault injection): one bit in the middle of the
/// scalar flipped, re-decoded so it stays a canonical scalar.
fn corrupt<C: EngineSuite>(share: &sign::SignatureShare<C>) -> sign::SignatureShare<C> {
    let mut w = wire::Writer::default();
    if wire::Body::encode_body(share, &mut w).is_err() {
        return *share;
    }
    let mut bytes = w.into_vec();
    bytes[C::SCALAR_LEN / 2] ^= 1;
    let mut r = wire::Reader::new(&bytes);
    sign::SignatureShare::<C>::decode_body(&mut r).unwrap_or(*share)
}

/// What an offline signer keeps about one cold request between its two trips.
#[derive(serde::Serialize, serde::Deserialize)]
struct ColdNonces {
    /// The nonces, sealed (hex); emptied once used.
    sealed: String,
    /// Our commitment (encoded body, hex).
    commitment: String,
    /// The commitment envelope we answered with (hex).
    envelope: String,
    /// Whether the nonces were used (durably, before the share left).
    used: bool,
    /// The package they were used for, and the share envelope made (hex).
    package: String,
    share: String,
    /// The share's session and transcript digest (hex), and whether its share-issued
    /// entry is in the audit log.
    #[serde(default)]
    session: String,
    #[serde(default)]
    transcript: String,
    #[serde(default)]
    logged: bool,
}

fn cold_aad(signer: &str, key_id: &str, request_id: &str) -> Vec<u8> {
    format!("custody/v1/cold-nonces\0{signer}\0{key_id}\0{request_id}").into_bytes()
}

/// Answers one request file of an air-gapped signature (`custody signer offline`),
/// without listening anywhere. The daemon must not run meanwhile (it holds the
/// database).
pub(crate) async fn offline(config: &Config, request: &[u8]) -> Result<Vec<u8>, String> {
    use custody_audit::cold::{
        ColdRequest, ColdResponse, COLD_REQUEST_FORMAT, COLD_RESPONSE_FORMAT,
    };
    use custody_audit::transcript::SignedRequest;
    let req: ColdRequest =
        serde_json::from_slice(request).map_err(|e| format!("request file: {e}"))?;
    if req.format != COLD_REQUEST_FORMAT {
        return Err(format!(
            "request file: format {:?}, expected {COLD_REQUEST_FORMAT:?}",
            req.format
        ));
    }
    if req.signer != config.name {
        return Err(format!(
            "this request is for {}, not for {}",
            req.signer, config.name
        ));
    }
    let i = open_inner(config).map_err(|e| e.to_string())?;
    // The coordinator's certificate (our CA, role coordinator) and its signature.
    let cert = hex::decode(&req.coordinator_certificate)
        .map_err(|_| "coordinator_certificate: not hex".to_string())?;
    let info = custody_pki::verify_issued_by(&cert, &i.ca_der)
        .map_err(|e| format!("coordinator certificate: {e}"))?;
    if info.role != Role::Coordinator {
        return Err(format!(
            "the request is signed by a {} certificate, not a coordinator's",
            info.role
        ));
    }
    let coord = info
        .identity
        .ok_or("coordinator certificate carries no identity")?;
    let sig: [u8; 64] = hex::decode(&req.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("signature: not 64 bytes of hex")?;
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&coord.verify)
        .map_err(|_| "coordinator identity key is invalid")?;
    vk.verify_strict(
        &req.signed_bytes()?,
        &ed25519_dalek::Signature::from_bytes(&sig),
    )
    .map_err(|_| "the coordinator's signature over the request does not verify".to_string())?;
    api::check_id("key_id", &req.key_id).map_err(|s| s.message().to_string())?;
    api::check_id("request_id", &req.request_id).map_err(|s| s.message().to_string())?;
    let k = i
        .keys
        .lock()
        .expect("lock")
        .get(&req.key_id)
        .cloned()
        .ok_or_else(|| format!("no active key {} on this signer", req.key_id))?;
    let request = match &req.request {
        SignedRequest::Settlement { .. } => {
            hot_warm_cold::Request::Settlement(req.request.settlement(&req.request_id)?)
        }
        SignedRequest::Transfer {
            asset,
            amount,
            destination,
            memo,
        } => hot_warm_cold::Request::Transfer(hot_warm_cold::Transfer {
            asset: asset.clone(),
            amount: amount
                .parse()
                .map_err(|_| format!("transfer amount {amount:?} is not a number"))?,
            destination: destination.clone(),
            request_id: req.request_id.clone(),
            memo: memo.clone(),
        }),
        SignedRequest::Raw { message } => hot_warm_cold::Request::Raw {
            request_id: req.request_id.clone(),
            message: hex::decode(message).map_err(|_| "request message: not hex")?,
        },
    };
    let approvals: Vec<custody_protocol::proto::Approval> = req
        .approvals
        .iter()
        .map(|a| custody_protocol::proto::Approval {
            approver: hex::decode(&a.approver).unwrap_or_default(),
            signature: hex::decode(&a.signature).unwrap_or_default(),
        })
        .collect();
    let approvals = approvals_of(&approvals).map_err(|s| s.message().to_string())?;
    let envelope = match req.kind.as_str() {
        "commit" => cold_commit(&i, &k, &req.key_id, &request).await?,
        "sign" => {
            cold_sign(
                &i,
                &k,
                &req.key_id,
                &request,
                &approvals,
                coord,
                &req.package,
            )
            .await?
        }
        other => return Err(format!("kind {other:?} is neither commit nor sign")),
    };
    let resp = ColdResponse {
        format: COLD_RESPONSE_FORMAT.into(),
        kind: req.kind.clone(),
        signer: config.name.clone(),
        key_id: req.key_id.clone(),
        request_id: req.request_id.clone(),
        envelope: hex::encode(envelope),
    };
    serde_json::to_vec_pretty(&resp).map_err(|e| e.to_string())
}

fn cold_tree(i: &Inner) -> Result<sled::Tree, String> {
    i.db.open_tree("cold").map_err(|e| format!("database: {e}"))
}

fn put_cold(i: &Inner, id: &str, rec: &ColdNonces) -> Result<(), String> {
    let v = serde_json::to_vec(rec).map_err(|e| e.to_string())?;
    cold_tree(i)?
        .insert(id.as_bytes(), v)
        .map_err(|e| format!("database: {e}"))?;
    i.db.flush().map_err(|e| format!("database flush: {e}"))?;
    Ok(())
}

fn get_cold(i: &Inner, id: &str) -> Result<Option<ColdNonces>, String> {
    match cold_tree(i)?
        .get(id.as_bytes())
        .map_err(|e| format!("database: {e}"))?
    {
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| format!("database record: {e}")),
        None => Ok(None),
    }
}

/// Trip 1: draw nonces, seal them at rest, answer with the commitment (the same one
/// again if asked twice).
async fn cold_commit(
    i: &Inner,
    k: &Loaded,
    key_id: &str,
    request: &hot_warm_cold::Request,
) -> Result<Vec<u8>, String> {
    let id = format!("{key_id}\0{}", request.request_id());
    if let Some(rec) = get_cold(i, &id)? {
        return hex::decode(&rec.envelope).map_err(|e| e.to_string());
    }
    // The time lock counts from now on this signer, if the request is new to it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let first_seen = i
        .first_seen(key_id, request, now)
        .map_err(|s| s.message().to_string())?;
    if first_seen == now {
        i.audit
            .append(
                ax::REQUEST_SEEN,
                &ax::RequestSeen {
                    key_id: key_id.to_string(),
                    request_id: request.request_id().to_string(),
                    first_seen,
                },
            )
            .await
            .map_err(|e| e.to_string())?;
    }
    let (sealed, tag, env) = with_suite!(k.suite, C => {
        let share = k.share.downcast_ref::<KeyShare<C>>().ok_or("share type")?;
        let (nonces, commitments) = sign::commit(share, &mut OsRng);
        let secret = nonces.to_secret_bytes().map_err(|e| e.to_string())?;
        let sealed = i
            .sealer
            .seal(&cold_aad(&i.name, key_id, request.request_id()), &secret)
            .map_err(|e| format!("seal nonces: {e}"))?;
        let mut w = wire::Writer::default();
        wire::Body::encode_body(&commitments, &mut w).map_err(|e| e.to_string())?;
        let header = Header {
            suite: C::SUITE,
            kind: Kind::CommitmentBatch,
            // Bound to this key and request: it cannot stand in for another's.
            session: custody_audit::cold::commit_session(key_id, request.request_id()),
            from: share.id(),
            to: Some(COORDINATOR),
        };
        let env = identity::signed(&*i.identity, &header, &sign::CommitmentBatch(vec![commitments]))
            .map_err(|e| e.to_string())?;
        (sealed, w.into_vec(), env)
    });
    // Sealed and durable before the commitment leaves.
    put_cold(
        i,
        &id,
        &ColdNonces {
            sealed: hex::encode(sealed),
            commitment: hex::encode(tag),
            envelope: hex::encode(&env),
            used: false,
            package: String::new(),
            share: String::new(),
            session: String::new(),
            transcript: String::new(),
            logged: false,
        },
    )?;
    info!(%key_id, request_id = %request.request_id(), "cold commitment drawn (nonces sealed at rest)");
    Ok(env)
}

/// Trip 2: check the package, decide under the policy, mark the nonces used durably,
/// then make the share.
async fn cold_sign(
    i: &Inner,
    k: &Loaded,
    key_id: &str,
    request: &hot_warm_cold::Request,
    approvals: &[hot_warm_cold::Approval],
    coordinator: custody_protocol::IdentityPublic,
    package_hex: &str,
) -> Result<Vec<u8>, String> {
    let id = format!("{key_id}\0{}", request.request_id());
    let mut rec = get_cold(i, &id)?
        .ok_or("no commitment of this signer for this request: answer its commit request first")?;
    if rec.used {
        if rec.package == package_hex && !rec.share.is_empty() {
            // The same package again: the same share (nothing new is revealed), once
            // its issue is in the audit log.
            if !rec.logged {
                log_cold_share(i, key_id, request, &rec).await?;
                rec.logged = true;
                put_cold(i, &id, &rec)?;
            }
            return hex::decode(&rec.share).map_err(|e| e.to_string());
        }
        return Err(i
            .refuse(
                key_id,
                request.request_id(),
                "the nonces of this request are already used for another signing package".into(),
            )
            .message()
            .to_string());
    }
    let env = hex::decode(package_hex).map_err(|_| "package: not hex")?;
    let mut roster = Roster::new();
    roster.insert(COORDINATOR, coordinator);
    let opened = identity::open_from(&roster, COORDINATOR, &env)
        .map_err(|e| format!("signing package: {e}"))?;
    let session = opened.header.session;
    let body = opened.body.to_vec();
    let (share_env, transcript) = with_suite!(k.suite, C => {
        let share = k.share.downcast_ref::<KeyShare<C>>().ok_or("share type")?;
        let (_, package) = wire::decode_with(&body, C::SUITE, Kind::SigningPackage, &session, |_, r| {
            SigningPackage::<C>::decode_body(r)
        })
        .map_err(|e| format!("signing package: {e}"))?;
        let mine = package
            .commitments_of(share.id())
            .ok_or("the signing package does not include this signer")?;
        let mut w = wire::Writer::default();
        wire::Body::encode_body(&mine, &mut w).map_err(|e| e.to_string())?;
        if hex::encode(w.into_vec()) != rec.commitment {
            return Err("the signing package does not carry this signer's commitment for this request".into());
        }
        if package.message() != request.message(key_id).as_slice() {
            return Err(i
                .refuse(key_id, request.request_id(), "signing package message is not the request's message".into())
                .message()
                .to_string());
        }
        // The policy, with this signer's own ledger, approvals check and time lock.
        i.admit(key_id, k, request, approvals).map_err(|s| s.message().to_string())?;
        let secret = i
            .sealer
            .unseal(&cold_aad(&i.name, key_id, request.request_id()), &hex::decode(&rec.sealed).map_err(|e| e.to_string())?)
            .map_err(|e| format!("unseal nonces: {e}"))?;
        let nonces = sign::Nonces::<C>::from_secret_bytes(&secret).map_err(|e| e.to_string())?;
        // The share is made in memory; nothing leaves before the nonces are marked used.
        let sig_share = nonces.sign(share, &package).map_err(|e| e.to_string())?;
        let msg = sign::ShareMessage {
            transcript: sign::transcript_digest(key_id, request.request_id(), &body),
            share: sig_share,
        };
        let header = Header {
            suite: C::SUITE,
            kind: Kind::SignatureShare,
            session,
            from: share.id(),
            to: Some(COORDINATOR),
        };
        let env = identity::signed(&*i.identity, &header, &msg).map_err(|e| e.to_string())?;
        (env, msg.transcript)
    });
    // Used (nonces erased), with the share and the package, in one durable write.
    rec.used = true;
    rec.sealed.clear();
    rec.package = package_hex.to_string();
    rec.share = hex::encode(&share_env);
    rec.session = session.to_string();
    rec.transcript = hex::encode(transcript);
    put_cold(i, &id, &rec)?;
    log_cold_share(i, key_id, request, &rec).await?;
    rec.logged = true;
    put_cold(i, &id, &rec)?;
    info!(%key_id, request_id = %request.request_id(), "cold signature share made");
    Ok(share_env)
}

/// The share-issued entry of a cold share (before its response file is written).
async fn log_cold_share(
    i: &Inner,
    key_id: &str,
    request: &hot_warm_cold::Request,
    rec: &ColdNonces,
) -> Result<(), String> {
    i.audit
        .append(
            ax::SHARE_ISSUED,
            &ax::ShareIssued {
                key_id: key_id.to_string(),
                request_id: request.request_id().to_string(),
                session: rec.session.clone(),
                transcript: rec.transcript.clone(),
            },
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod nonce_pool_tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        /// The coordinator draws this many commitments.
        Draw(usize),
        /// It asks for a share over the commitment drawn `n`-th (wrapping): any tag,
        /// fresh, used, evicted or from before a restart.
        Sign(usize),
        /// The signer process restarts: nonces live in memory only.
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1usize..1500).prop_map(Op::Draw),
            6 => any::<usize>().prop_map(Op::Sign),
            1 => Just(Op::Restart),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Over any interleaving of draws, signing requests (including repeats and
        /// stale commitments) and restarts, the nonces behind a commitment are handed
        /// out at most once, only if drawn since the last restart and not evicted.
        #[test]
        fn nonces_are_used_at_most_once(ops in proptest::collection::vec(op(), 1..60)) {
            let mut pool = NoncePool::default();
            let mut drawn: Vec<Vec<u8>> = Vec::new();
            // The model: live tags in drawing order (the oldest are evicted first).
            let mut live: std::collections::VecDeque<Vec<u8>> = Default::default();
            let mut used = std::collections::HashSet::new();
            let mut next = 0u64;
            for op in ops {
                match op {
                    Op::Draw(k) => {
                        let mut fresh = Vec::new();
                        for _ in 0..k {
                            let tag = next.to_be_bytes().to_vec();
                            next += 1;
                            drawn.push(tag.clone());
                            live.push_back(tag.clone());
                            fresh.push((tag, Box::new(()) as Erased));
                        }
                        pool.extend(fresh);
                        while live.len() > MAX_NONCES_PER_KEY {
                            live.pop_front();
                        }
                    }
                    Op::Sign(i) => {
                        if drawn.is_empty() {
                            continue;
                        }
                        let tag = &drawn[i % drawn.len()];
                        let got = pool.take(tag).is_some();
                        let expected = live.iter().position(|t| t == tag);
                        prop_assert_eq!(got, expected.is_some());
                        if let Some(at) = expected {
                            live.remove(at);
                        }
                        if got {
                            prop_assert!(used.insert(tag.clone()), "a nonce handed out twice");
                        }
                    }
                    Op::Restart => {
                        pool = NoncePool::default();
                        live.clear();
                    }
                }
            }
        }
    }
}
