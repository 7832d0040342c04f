//! The export bundle: every daemon's log in one file, and its verification.
//!
//! Ceremony transcripts travel inside the coordinator's log (`key-created` and
//! `signature` entries), so one verification covers the chain of every log, every
//! signature on every entry, and a replay of every ceremony.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::chain::verify_log;
use crate::entry::Entry;
use crate::transcript::{
    replay_dkg, replay_signing, DkgTranscript, Party, SigningTranscript, Trust,
};

/// `format` of a bundle.
pub const EXPORT_FORMAT: &str = "custody-audit-export/v1";

/// Coordinator entry: a key was created (body [`KeyCreated`]).
pub const KEY_CREATED: &str = "key-created";
/// Coordinator entry: a signature was produced (body [`Signature`]).
pub const SIGNATURE: &str = "signature";
/// Signer entry: it confirmed a DKG and holds a share (body [`DkgConfirmed`]).
pub const DKG_CONFIRMED: &str = "dkg-confirmed";
/// Signer entry: it confirmed a refresh and holds the new share, pending (body
/// [`DkgConfirmed`]).
pub const REFRESH_CONFIRMED: &str = "refresh-confirmed";
/// Coordinator entry: every signer confirmed a refresh of a key (body [`KeyCreated`]
/// with a refresh transcript); it is applied next.
pub const KEY_REFRESHED: &str = "key-refreshed";
/// Signer entry: it released a signature share (body [`ShareIssued`]).
pub const SHARE_ISSUED: &str = "share-issued";
/// Signer entry: it first saw a request of a time-locked key (body [`RequestSeen`]).
pub const REQUEST_SEEN: &str = "request-seen";
/// Coordinator entry: a request waits for approvals or a time lock (body
/// [`RequestCreated`]).
pub const REQUEST_CREATED: &str = "request-created";
/// Coordinator entry: an approver approved a request (body [`Approved`]).
pub const APPROVED: &str = "approval";
/// Coordinator entry: a policy change was proposed (body [`PolicyChangeRequested`]).
pub const POLICY_CHANGE_REQUESTED: &str = "policy-change-requested";
/// Either: a key's policy changed, approved by its admins (body [`PolicyChanged`]).
pub const POLICY_CHANGED: &str = "policy-changed";
/// Signer entry: it helped recover another signer's lost share (body
/// [`RepairHelped`]).
pub const REPAIR_HELPED: &str = "repair-helped";
/// Signer entry: its lost share was recovered and stored (body [`DkgConfirmed`]).
pub const SHARE_REPAIRED: &str = "share-repaired";
/// Coordinator entry: a lost share was repaired (body [`KeyRepaired`]).
pub const KEY_REPAIRED: &str = "key-repaired";
/// Either: a request was refused by policy (body [`Refused`]).
pub const SIGN_REFUSED: &str = "sign-refused";
/// Coordinator: a DKG or refresh that aborted, with the culprits its signers named.
pub const CEREMONY_ABORTED: &str = "ceremony-aborted";
/// Coordinator: a one-time sign-in link to the operator console was issued.
pub const CONSOLE_LINK: &str = "console-link-issued";
/// Either: a key's lifecycle state changed (body [`Lifecycle`]).
pub const LIFECYCLE: &str = "lifecycle";
/// Either: a caller was refused for its certificate or role (body [`AuthDenied`]).
pub const AUTH_DENIED: &str = "auth-denied";
/// Either: the daemon started (body [`Started`]).
pub const DAEMON_STARTED: &str = "daemon-started";

/// Body of [`KEY_CREATED`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyCreated {
    /// Human name.
    pub name: String,
    /// hot, warm or cold.
    pub tier: String,
    /// The policy (canonical JSON) every signer was given.
    pub policy: String,
    /// The ceremony.
    pub transcript: DkgTranscript,
}

/// Body of [`SIGNATURE`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// The ceremony.
    pub transcript: SigningTranscript,
}

/// Body of [`DKG_CONFIRMED`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkgConfirmed {
    /// The key.
    pub key_id: String,
    /// Session id, hex.
    pub session: String,
    /// Group public key, hex.
    pub public_key: String,
    /// SHA-256 of the policy JSON the signer enforces for this key, hex.
    pub policy_sha256: String,
}

/// Body of [`SHARE_ISSUED`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareIssued {
    /// The key.
    pub key_id: String,
    /// The request.
    pub request_id: String,
    /// Session id, hex.
    pub session: String,
    /// The transcript digest the share confirms, hex.
    pub transcript: String,
}

/// Body of [`REQUEST_SEEN`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSeen {
    /// The key.
    pub key_id: String,
    /// The request.
    pub request_id: String,
    /// When this signer first saw it (Unix seconds, its clock).
    pub first_seen: u64,
}

/// Body of [`REQUEST_CREATED`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestCreated {
    /// The key.
    pub key_id: String,
    /// The request.
    pub request_id: String,
    /// What approvers sign, hex.
    pub approval_digest: String,
    /// The request itself.
    pub request: crate::transcript::SignedRequest,
}

/// Body of [`APPROVED`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approved {
    /// The key.
    pub key_id: String,
    /// The request.
    pub request_id: String,
    /// The approval.
    pub approval: crate::transcript::ApprovalRecord,
}

/// Body of [`POLICY_CHANGE_REQUESTED`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyChangeRequested {
    /// The key.
    pub key_id: String,
    /// The change request.
    pub request_id: String,
    /// The proposed policy (canonical JSON).
    pub policy: String,
    /// SHA-256 of the current policy, hex.
    pub current_policy_sha256: String,
}

/// Body of [`POLICY_CHANGED`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyChanged {
    /// The key.
    pub key_id: String,
    /// SHA-256 of the policy before, hex.
    pub previous_policy_sha256: String,
    /// The version replaced (how many changes the policy had before this one).
    pub version: u64,
    /// The new policy (canonical JSON).
    pub policy: String,
    /// The admins' approvals of the change.
    pub approvals: Vec<crate::transcript::ApprovalRecord>,
}

/// Body of [`REPAIR_HELPED`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepairHelped {
    /// The key.
    pub key_id: String,
    /// Repair session, hex.
    pub session: String,
    /// The participant being repaired.
    pub lost: u16,
    /// The helpers.
    pub helpers: Vec<u16>,
}

/// Body of [`KEY_REPAIRED`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRepaired {
    /// The ceremony.
    pub transcript: crate::transcript::RepairTranscript,
}

/// Body of [`CONSOLE_LINK`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleLink {
    /// Who asked (the name in their certificate).
    pub caller: String,
    /// Their role (`operator` or `auditor`).
    pub role: String,
    /// Until when the link works (Unix seconds).
    pub expires_at: u64,
}

/// Body of [`CEREMONY_ABORTED`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CeremonyAborted {
    /// `dkg` or `refresh`.
    pub ceremony: String,
    /// The key (to be) made or refreshed.
    pub key_id: String,
    /// The session, hex.
    pub session: String,
    /// Signers named as culprits (by the signers that checked their messages), by name.
    pub culprits: Vec<String>,
    /// The abort's status message.
    pub reason: String,
}

/// Body of [`SIGN_REFUSED`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refused {
    /// The key.
    pub key_id: String,
    /// The request.
    pub request_id: String,
    /// Why.
    pub reason: String,
}

/// Body of [`LIFECYCLE`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lifecycle {
    /// The key.
    pub key_id: String,
    /// suspend, resume, retire, destroy, rotate.
    pub event: String,
    /// The state after it.
    pub state: String,
    /// Who asked (certificate name), when known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub by: String,
    /// For a rotation: the key that replaces this one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub successor: String,
}

/// Body of [`AUTH_DENIED`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthDenied {
    /// The RPC.
    pub rpc: String,
    /// The status returned.
    pub reason: String,
}

/// Body of [`DAEMON_STARTED`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Started {
    /// Software version.
    pub version: String,
}

/// An export: every daemon's log, sealed with the export's nonce.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// [`EXPORT_FORMAT`].
    pub format: String,
    /// When the export was made (exporter's clock, ms since the epoch).
    pub exported_at_ms: u64,
    /// The nonce every log's last entry must carry, hex.
    pub nonce: String,
    /// The coordinator and every signer.
    pub parties: Vec<PartyLog>,
}

/// One daemon and its log.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartyLog {
    /// Daemon name.
    pub name: String,
    /// `coordinator` or `signer`.
    pub role: String,
    /// Public identity, hex (64 bytes).
    pub identity: String,
    /// Certificate (DER, hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// The log's records, concatenated, hex. Empty when unavailable.
    #[serde(default)]
    pub log: String,
    /// Why the log could not be exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

/// What a verification established.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// Entries checked per daemon.
    pub entries: BTreeMap<String, usize>,
    /// Keys whose DKG replayed.
    pub keys: Vec<crate::transcript::DkgReplay>,
    /// Signatures replayed.
    pub signatures: usize,
    /// Shares matched to the issuing signer's own log entry.
    pub shares_matched: usize,
    /// DKG participations matched to the participant's own log entry.
    pub dkg_confirmations_matched: usize,
    /// Shares a signer recorded issuing that no signature in the coordinator's log
    /// used: `signer: key/request`. Normal for an attempt that failed and was retried
    /// with another quorum; otherwise a signature the coordinator did not record.
    pub unaccounted_shares: Vec<String>,
    /// Requests refused by policy, by writer.
    pub refusals: usize,
    /// Lifecycle transitions recorded.
    pub lifecycle: usize,
    /// Policy changes, each checked against the admins of the policy it replaced.
    pub policy_changes: usize,
    /// Share repairs, each attested by its helpers and the repaired signer.
    pub repairs: usize,
    /// Authentication failures recorded.
    pub auth_denied: usize,
    /// Whether identities were pinned.
    pub pinned: bool,
}

/// The first thing wrong.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    /// Which log and entry (or which part of the bundle).
    pub at: String,
    /// What is wrong.
    pub why: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.why)
    }
}

fn fail(at: impl Into<String>, why: impl Into<String>) -> Failure {
    Failure {
        at: at.into(),
        why: why.into(),
    }
}

fn body<T: serde::de::DeserializeOwned>(e: &Entry) -> Result<T, String> {
    serde_json::from_slice(&e.body).map_err(|err| format!("{} body: {err}", e.kind))
}

/// Verifies a bundle: identities against `trust`, every log (records, chain,
/// signatures, genesis, export seal with the bundle's nonce), a replay of every DKG
/// and signature in the coordinator's log, and that every share in those signatures
/// is recorded in the log of the signer that issued it. Stops at the first failure.
pub fn verify_bundle(b: &Bundle, trust: &Trust) -> Result<Summary, Failure> {
    let pinned = matches!(trust, Trust::Pinned(_));
    // Unpinned, the identities are the bundle's own party list, and every transcript
    // must agree with it.
    let own;
    let trust = match trust {
        Trust::Pinned(_) => trust,
        Trust::Unpinned => {
            let mut map = BTreeMap::new();
            for p in &b.parties {
                let id: [u8; 64] = hex::decode(&p.identity)
                    .ok()
                    .and_then(|v| v.try_into().ok())
                    .ok_or_else(|| {
                        fail(
                            format!("party {}", p.name),
                            "identity is not 64 bytes of hex",
                        )
                    })?;
                map.insert(p.name.clone(), id);
            }
            own = Trust::Pinned(map);
            &own
        }
    };
    if b.format != EXPORT_FORMAT {
        return Err(fail(
            "bundle",
            format!("format {:?}, expected {EXPORT_FORMAT:?}", b.format),
        ));
    }
    let nonce = hex::decode(&b.nonce).map_err(|_| fail("bundle", "nonce is not hex"))?;
    let mut summary = Summary {
        pinned,
        ..Summary::default()
    };
    let mut names = BTreeSet::new();
    let mut logs: BTreeMap<String, (String, Vec<Entry>)> = BTreeMap::new();
    for p in &b.parties {
        if !names.insert(p.name.clone()) {
            return Err(fail(format!("party {}", p.name), "appears twice"));
        }
        let at = format!("log of {}", p.name);
        if let Some(why) = &p.unavailable {
            return Err(fail(at, format!("missing from the export: {why}")));
        }
        let party = Party {
            id: 1,
            name: p.name.clone(),
            identity: p.identity.clone(),
            certificate: None,
        };
        let public = trust_check(trust, &party).map_err(|why| fail(&at, why))?;
        let bytes = hex::decode(&p.log).map_err(|_| fail(&at, "log is not hex"))?;
        let entries = verify_log(&bytes, &public, Some(&nonce))
            .map_err(|pr| fail(format!("{at}, entry {}", pr.index), pr.reason))?;
        let genesis: crate::chain::Genesis =
            body(&entries[0]).map_err(|why| fail(format!("{at}, entry 0"), why))?;
        if genesis.writer != p.name || genesis.role != p.role {
            return Err(fail(
                format!("{at}, entry 0"),
                format!(
                    "the log was opened by {} {}, not by {} {}",
                    genesis.role, genesis.writer, p.role, p.name
                ),
            ));
        }
        summary.entries.insert(p.name.clone(), entries.len());
        logs.insert(p.name.clone(), (p.role.clone(), entries));
    }
    let coordinators: Vec<_> = logs
        .iter()
        .filter(|(_, (r, _))| r == "coordinator")
        .collect();
    if coordinators.len() != 1 {
        return Err(fail(
            "bundle",
            format!("{} coordinator logs, expected 1", coordinators.len()),
        ));
    }
    // What each signer says it issued: (key, request, transcript digest), and which
    // DKGs it confirmed: (key, session, public key).
    let mut issued: BTreeMap<String, BTreeSet<(String, String, String)>> = BTreeMap::new();
    let mut confirmed: BTreeMap<String, BTreeSet<Confirmed>> = BTreeMap::new();
    for (name, (role, entries)) in &logs {
        if role != "signer" {
            continue;
        }
        let set = issued.entry(name.clone()).or_default();
        let dkgs = confirmed.entry(name.clone()).or_default();
        for (i, e) in entries.iter().enumerate() {
            let at = || format!("log of {name}, entry {i}");
            match e.kind.as_str() {
                DKG_CONFIRMED | REFRESH_CONFIRMED => {
                    let d: DkgConfirmed = body(e).map_err(|why| fail(at(), why))?;
                    dkgs.insert((d.key_id, d.session, d.public_key, d.policy_sha256));
                }
                SHARE_ISSUED => {
                    let s: ShareIssued = body(e).map_err(|why| fail(at(), why))?;
                    set.insert((s.key_id, s.request_id, s.transcript));
                }
                SIGN_REFUSED => summary.refusals += 1,
                LIFECYCLE => summary.lifecycle += 1,
                AUTH_DENIED => summary.auth_denied += 1,
                _ => {}
            }
        }
    }
    let (coord_name, (_, entries)) = coordinators[0];
    let mut used: BTreeSet<(String, String, String, String)> = BTreeSet::new();
    let mut policies: BTreeMap<String, hot_warm_cold::Policy> = BTreeMap::new();
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    let mut keys: BTreeMap<String, String> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        let at = || format!("log of {coord_name}, entry {i} ({})", e.kind);
        match e.kind.as_str() {
            KEY_CREATED | KEY_REFRESHED => {
                let k: KeyCreated = body(e).map_err(|why| fail(at(), why))?;
                let refresh = e.kind == KEY_REFRESHED;
                if refresh != k.transcript.previous_public_key_set.is_some() {
                    return Err(fail(at(), "entry kind and transcript format disagree"));
                }
                let r = replay_dkg(&k.transcript, trust)
                    .map_err(|why| fail(at(), format!("replay: {why}")))?;
                let before = keys.insert(r.key_id.clone(), r.public_key_set.clone());
                match (refresh, before) {
                    (false, Some(_)) => {
                        return Err(fail(at(), format!("key {} created twice", r.key_id)))
                    }
                    (true, None) => {
                        return Err(fail(
                            at(),
                            format!(
                                "refresh of key {} whose creation is not in the log",
                                r.key_id
                            ),
                        ))
                    }
                    (true, Some(prev))
                        if Some(&prev) != k.transcript.previous_public_key_set.as_ref() =>
                    {
                        return Err(fail(
                            at(),
                            format!(
                                "refresh of key {} from another key set than its current one",
                                r.key_id
                            ),
                        ))
                    }
                    _ => {}
                }
                // Every participant recorded, itself, that it took part in exactly this
                // ceremony for exactly this key (the key id is a label the coordinator
                // chose; the signers' entries bind it to the session and the key).
                let t = &k.transcript;
                let policy = policy_digest(&k.policy).map_err(|why| fail(at(), why))?;
                // A refresh keeps the policy: it must be the key's current one (only an
                // approved policy change moves it).
                if refresh
                    && policies.get(&t.key_id).map(|p| hex::encode(p.digest()))
                        != Some(policy.clone())
                {
                    return Err(fail(
                        at(),
                        "the refresh carries another policy than the key's current one",
                    ));
                }
                policies.insert(
                    t.key_id.clone(),
                    hot_warm_cold::Policy::from_json(&k.policy).map_err(|why| fail(at(), why))?,
                );
                for p in &t.participants {
                    let want = (
                        t.key_id.clone(),
                        t.session.clone(),
                        r.public_key.clone(),
                        policy.clone(),
                    );
                    let ok = confirmed
                        .get(&p.name)
                        .is_some_and(|set| set.contains(&want));
                    if !ok {
                        return Err(fail(
                            at(),
                            format!(
                                "{} took part in the ceremony of {} but its own log does not record it (with this key and policy)",
                                p.name, t.key_id
                            ),
                        ));
                    }
                    summary.dkg_confirmations_matched += 1;
                }
                summary.keys.push(r);
            }
            SIGNATURE => {
                let s: Signature = body(e).map_err(|why| fail(at(), why))?;
                let t = &s.transcript;
                // Approvals: enough valid ones from the key's approver set.
                if let Some(policy) = policies.get(&t.key_id) {
                    if let Some(rule) = &policy.approvals {
                        let approvals = t.checked_approvals().map_err(|why| fail(at(), why))?;
                        let digest = t.approval_digest().map_err(|why| fail(at(), why))?;
                        let valid =
                            hot_warm_cold::decide::valid_approvals(policy, &digest, &approvals);
                        if valid < rule.required as usize {
                            return Err(fail(
                                at(),
                                format!(
                                    "{valid} valid approvals from the key's approvers, its policy requires {}",
                                    rule.required
                                ),
                            ));
                        }
                    }
                }
                let set = keys.get(&t.key_id).ok_or_else(|| {
                    fail(
                        at(),
                        format!(
                            "signature by key {} whose creation is not in the log",
                            t.key_id
                        ),
                    )
                })?;
                replay_signing(t, trust, Some(set))
                    .map_err(|why| fail(at(), format!("signing replay: {why}")))?;
                summary.signatures += 1;
                let digest = signing_digest(t).map_err(|why| fail(at(), why))?;
                for signer in &t.signers {
                    let found = issued.get(&signer.name).is_some_and(|set| {
                        set.contains(&(t.key_id.clone(), t.request_id.clone(), digest.clone()))
                    });
                    if !found {
                        return Err(fail(
                            at(),
                            format!(
                                "{} signed a share of request {} but its own log does not record it",
                                signer.name, t.request_id
                            ),
                        ));
                    }
                    summary.shares_matched += 1;
                    used.insert((
                        signer.name.clone(),
                        t.key_id.clone(),
                        t.request_id.clone(),
                        digest.clone(),
                    ));
                }
            }
            KEY_REPAIRED => {
                let k: KeyRepaired = body(e).map_err(|why| fail(at(), why))?;
                let t = &k.transcript;
                let set = keys.get(&t.key_id).cloned();
                let policy = policies.get(&t.key_id).map(|p| hex::encode(p.digest()));
                if set.is_none() {
                    return Err(fail(
                        at(),
                        format!(
                            "repair of key {} whose creation is not in the log",
                            t.key_id
                        ),
                    ));
                }
                if t.policy_version != versions.get(&t.key_id).copied().unwrap_or(0) {
                    return Err(fail(
                        at(),
                        "the repair attests another policy version than the key's",
                    ));
                }
                crate::transcript::replay_repair(t, trust, set.as_deref(), policy.as_deref())
                    .map_err(|why| fail(at(), format!("repair replay: {why}")))?;
                summary.repairs += 1;
            }
            POLICY_CHANGED => {
                let c: PolicyChanged = body(e).map_err(|why| fail(at(), why))?;
                let current = policies.get(&c.key_id).ok_or_else(|| {
                    fail(
                        at(),
                        format!(
                            "policy change of key {} whose creation is not in the log",
                            c.key_id
                        ),
                    )
                })?;
                if hex::encode(current.digest()) != c.previous_policy_sha256 {
                    return Err(fail(
                        at(),
                        "the change does not start from the key's current policy",
                    ));
                }
                let new =
                    hot_warm_cold::Policy::from_json(&c.policy).map_err(|why| fail(at(), why))?;
                let approvals = c
                    .approvals
                    .iter()
                    .map(|a| {
                        Some(hot_warm_cold::Approval {
                            approver: hex::decode(&a.approver).ok()?.try_into().ok()?,
                            signature: hex::decode(&a.signature).ok()?,
                        })
                    })
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| fail(at(), "an approval is not hex"))?;
                let version = versions.get(&c.key_id).copied().unwrap_or(0);
                if c.version != version {
                    return Err(fail(
                        at(),
                        format!(
                            "change of policy version {}, the key's is {version}",
                            c.version
                        ),
                    ));
                }
                new.change_approved(current, &c.key_id, version, &approvals)
                    .map_err(|why| fail(at(), why))?;
                policies.insert(c.key_id.clone(), new);
                versions.insert(c.key_id.clone(), version + 1);
                summary.policy_changes += 1;
            }
            SIGN_REFUSED => summary.refusals += 1,
            LIFECYCLE => summary.lifecycle += 1,
            AUTH_DENIED => summary.auth_denied += 1,
            _ => {}
        }
    }
    for (signer, set) in &issued {
        for (key, request, digest) in set {
            if !used.contains(&(signer.clone(), key.clone(), request.clone(), digest.clone())) {
                summary
                    .unaccounted_shares
                    .push(format!("{signer}: {key}/{request}"));
            }
        }
    }
    Ok(summary)
}

/// A DKG or refresh a signer recorded: key, session, public key, SHA-256 of the policy.
type Confirmed = (String, String, String, String);

/// SHA-256 (hex) of a policy in the canonical form signers store it.
fn policy_digest(policy: &str) -> Result<String, String> {
    use sha2::Digest;
    let p = hot_warm_cold::Policy::from_json(policy).map_err(|e| format!("policy: {e}"))?;
    Ok(hex::encode(sha2::Sha256::digest(p.to_json().as_bytes())))
}

fn trust_check(trust: &Trust, p: &Party) -> Result<[u8; 32], String> {
    crate::transcript::check_party(trust, p).map(|id| id.verify)
}

/// The transcript digest every share of `t` confirms, hex.
fn signing_digest(t: &SigningTranscript) -> Result<String, String> {
    let env = hex::decode(&t.package).map_err(|_| "package is not hex".to_string())?;
    let body = custody_protocol::identity::envelope_body(&env)
        .map_err(|e| format!("signing package: {e}"))?;
    Ok(hex::encode(custody_protocol::sign::transcript_digest(
        &t.key_id,
        &t.request_id,
        body,
    )))
}
