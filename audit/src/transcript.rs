//! Ceremony transcripts (JSON) and their offline replay.
//!
//! A transcript holds every public message of one ceremony, each exactly as its sender
//! signed it (an envelope, hex), so replaying it needs no trust in whoever kept it:
//! the coordinator that relayed the messages could drop a transcript, but not forge
//! one without the signers' identity keys.

use std::collections::BTreeMap;

use custody_protocol::identity::{open_from, IdentityPublic, Roster};
use custody_protocol::sign::{self, ShareMessage, SigningPackage, COORDINATOR};
use custody_protocol::wire::{self, Kind};
use custody_protocol::{
    dkg, with_suite, EngineSuite, ParticipantId, PublicKeySet, SessionId, Suite,
};
use serde::{Deserialize, Serialize};

/// `format` of a DKG transcript.
pub const DKG_FORMAT: &str = "custody-dkg-transcript/v1";
/// `format` of a refresh transcript (a [`DkgTranscript`] with
/// `previous_public_key_set`).
pub const REFRESH_FORMAT: &str = "custody-refresh-transcript/v1";
/// `format` of a signing transcript.
pub const SIGNING_FORMAT: &str = "custody-signing-transcript/v1";

/// A participant of a ceremony.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Party {
    /// Participant id in the ceremony (65535 for the coordinator).
    pub id: u16,
    /// Daemon name (`signer-1`, `coordinator`).
    pub name: String,
    /// Public identity, hex of 64 bytes (Ed25519 verifying key ‖ X25519 key).
    pub identity: String,
    /// The party's certificate (DER, hex), when the transcript carries it: it ties the
    /// identity to the name under the cluster CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

/// One signed message: its sender and the envelope, hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// Sender's participant id.
    pub from: u16,
    /// The signed envelope, hex.
    pub envelope: String,
}

/// Every public message of a DKG or a share refresh. Round-2 shares are secret (and
/// sealed); they are not part of a transcript.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkgTranscript {
    /// [`DKG_FORMAT`] or [`REFRESH_FORMAT`].
    pub format: String,
    /// The key.
    pub key_id: String,
    /// For a refresh: the public key set before it, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_public_key_set: Option<String>,
    /// `secp256k1-tr` or `ed25519`.
    pub suite: String,
    /// t.
    pub threshold: u16,
    /// Session id, hex.
    pub session: String,
    /// The participants, ascending by id.
    pub participants: Vec<Party>,
    /// Round-1 broadcasts (commitments and proofs of knowledge; for a refresh,
    /// commitments to zero-constant polynomials).
    pub round1: Vec<Message>,
    /// Echoes: each participant's hash of every round-1 message it saw.
    pub echoes: Vec<Message>,
    /// Confirmations: each participant's signature over the public key set it derived
    /// and the round-1 hash.
    pub confirmations: Vec<Message>,
    /// The public key set the coordinator recorded, hex (canonical encoding).
    pub public_key_set: String,
    /// The group public key, hex (BIP340 x-only or RFC 8032).
    pub public_key: String,
}

/// What was asked to be signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SignedRequest {
    /// Raw bytes, hex.
    Raw {
        /// The message, hex.
        message: String,
    },
    /// A settlement batch header; the signed message is its canonical hash.
    Settlement {
        /// The batch.
        batch_id: String,
        /// Merkle root, hex.
        root: String,
        /// Number of payments.
        count: u64,
        /// Total per currency (decimal strings).
        totals: BTreeMap<String, String>,
        /// Period (Unix ms).
        period_start_ms: u64,
        /// End of the period.
        period_end_ms: u64,
    },
    /// A structured transfer; the signed message is its canonical hash.
    Transfer {
        /// Asset code.
        asset: String,
        /// Amount in minor units (decimal string: it may exceed 2^53).
        amount: String,
        /// Destination.
        destination: String,
        /// Memo.
        memo: String,
    },
}

/// One approver's signature over a request's approval digest
/// (`TaggedHash("custody/v1/approval", key id, message)`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRecord {
    /// The approver's Ed25519 public key, hex.
    pub approver: String,
    /// The signature, hex.
    pub signature: String,
}

/// Every public message of one signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningTranscript {
    /// [`SIGNING_FORMAT`].
    pub format: String,
    /// The key.
    pub key_id: String,
    /// Suite name.
    pub suite: String,
    /// The client's request id.
    pub request_id: String,
    /// The request.
    pub request: SignedRequest,
    /// The approvals the signers were given (keys whose policy needs approvals).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<ApprovalRecord>,
    /// Session id, hex.
    pub session: String,
    /// The coordinator (it signs the signing package).
    pub coordinator: Party,
    /// The signers of this signature, ascending by id.
    pub signers: Vec<Party>,
    /// The key's public key set, hex (as recorded at its DKG).
    pub public_key_set: String,
    /// The signing package (message and every signer's commitments), as the
    /// coordinator signed it: an envelope, hex.
    pub package: String,
    /// Each signer's share with its confirmation of the transcript digest.
    pub shares: Vec<Message>,
    /// The final signature, hex (64 bytes).
    pub signature: String,
}

/// How identities are trusted.
#[derive(Clone, Debug)]
pub enum Trust {
    /// Identities by daemon name, obtained out of band (or from certificates the
    /// caller checked against the cluster CA). A party not listed, or listed with
    /// another key, fails.
    Pinned(BTreeMap<String, [u8; 64]>),
    /// Take identities from the transcript itself (checks internal consistency only:
    /// whoever wrote the transcript could have chosen the keys).
    Unpinned,
}

/// Checks one party's identity against `trust`; returns it.
pub fn check_party(trust: &Trust, p: &Party) -> Result<IdentityPublic, String> {
    trust.check(p)
}

impl Trust {
    fn check(&self, p: &Party) -> Result<IdentityPublic, String> {
        let bytes =
            hex::decode(&p.identity).map_err(|_| format!("{}: identity is not hex", p.name))?;
        let public =
            IdentityPublic::from_bytes(&bytes).map_err(|e| format!("{}: identity: {e}", p.name))?;
        if let Trust::Pinned(map) = self {
            match map.get(&p.name) {
                None => return Err(format!("{} is not among the trusted identities", p.name)),
                Some(k) if *k != public.to_bytes() => {
                    return Err(format!(
                        "{}: identity in the transcript is not its trusted identity",
                        p.name
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(public)
    }
}

/// What a DKG replay established.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DkgReplay {
    /// The key.
    pub key_id: String,
    /// Suite name.
    pub suite: String,
    /// t.
    pub threshold: u16,
    /// Participants by name.
    pub participants: Vec<String>,
    /// The re-derived group key, hex.
    pub public_key: String,
    /// The re-derived public key set, hex.
    pub public_key_set: String,
    /// Whether this was a refresh (same group key, new shares).
    pub refresh: bool,
}

/// What a signing replay established.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SigningReplay {
    /// The key.
    pub key_id: String,
    /// The request.
    pub request_id: String,
    /// Signers by name.
    pub signers: Vec<String>,
    /// The group key the signature verifies under, hex.
    pub public_key: String,
    /// The signature, hex.
    pub signature: String,
}

fn hex32(what: &str, s: &str) -> Result<[u8; 32], String> {
    hex::decode(s)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("{what}: not 32 bytes of hex"))
}

fn suite(name: &str) -> Result<Suite, String> {
    name.parse::<Suite>().map_err(|e| format!("suite: {e}"))
}

fn participant(id: u16) -> Result<ParticipantId, String> {
    ParticipantId::new(id).ok_or_else(|| format!("participant id {id} is invalid"))
}

/// Decodes a list of messages, which must be strictly ascending by sender (one
/// canonical form per transcript, so reordering is detected like any other change).
fn messages(list: &[Message], what: &str) -> Result<Vec<(ParticipantId, Vec<u8>)>, String> {
    let mut out: Vec<(ParticipantId, Vec<u8>)> = Vec::with_capacity(list.len());
    for m in list {
        let env = hex::decode(&m.envelope)
            .map_err(|_| format!("{what} from {}: envelope is not hex", m.from))?;
        let p = participant(m.from)?;
        if out.last().is_some_and(|(l, _)| *l >= p) {
            return Err(format!(
                "{what} messages are not strictly ascending by sender"
            ));
        }
        out.push((p, env));
    }
    Ok(out)
}

/// Builds the roster of `parties`, checking each against `trust` and that ids ascend.
fn roster(parties: &[Party], trust: &Trust) -> Result<(Roster, Vec<ParticipantId>), String> {
    let mut roster = Roster::new();
    let mut ids = Vec::new();
    for p in parties {
        let id = participant(p.id)?;
        if ids.last().is_some_and(|l| *l >= id) {
            return Err("participants are not strictly ascending by id".into());
        }
        roster.insert(id, trust.check(p)?);
        ids.push(id);
    }
    Ok((roster, ids))
}

/// Replays a DKG: every envelope's signature, every proof of knowledge, the echoes,
/// the group key and every verifying share re-derived from the commitments, and every
/// participant's signed confirmation of exactly that set; then checks that the set and
/// key the transcript claims are the re-derived ones.
pub fn replay_dkg(t: &DkgTranscript, trust: &Trust) -> Result<DkgReplay, String> {
    let previous = match (t.format.as_str(), &t.previous_public_key_set) {
        (DKG_FORMAT, None) => None,
        (REFRESH_FORMAT, Some(p)) => {
            Some(hex::decode(p).map_err(|_| "previous public key set is not hex".to_string())?)
        }
        (DKG_FORMAT | REFRESH_FORMAT, _) => {
            return Err(
                "previous_public_key_set is required in a refresh transcript, and only there"
                    .into(),
            )
        }
        (f, _) => {
            return Err(format!(
                "format {f:?}, expected {DKG_FORMAT:?} or {REFRESH_FORMAT:?}"
            ))
        }
    };
    let suite = suite(&t.suite)?;
    let session = SessionId(hex32("session", &t.session)?);
    let (roster, ids) = roster(&t.participants, trust)?;
    let round1 = messages(&t.round1, "round 1")?;
    let echoes = messages(&t.echoes, "echo")?;
    let confirmations = messages(&t.confirmations, "confirmation")?;
    let (r1, ec, cf) = (&round1, &echoes, &confirmations);
    let (set, key) = with_suite!(suite, C => {
        let public = match &previous {
            None => dkg::replay::<C>(
                &roster,
                &session,
                t.threshold,
                &ids,
                r1.iter().map(|(p, e)| (*p, e.as_slice())),
                ec.iter().map(|(p, e)| (*p, e.as_slice())),
                cf.iter().map(|(p, e)| (*p, e.as_slice())),
            ),
            Some(prev) => {
                let old = PublicKeySet::<C>::from_bytes(prev).map_err(|e| format!("previous public key set: {e}"))?;
                if old.threshold() != t.threshold || old.participants() != ids.as_slice() {
                    return Err("the refresh's threshold or participants are not the key's".into());
                }
                let new = dkg::replay_refresh::<C>(
                    &roster,
                    &session,
                    &old,
                    r1.iter().map(|(p, e)| (*p, e.as_slice())),
                    ec.iter().map(|(p, e)| (*p, e.as_slice())),
                    cf.iter().map(|(p, e)| (*p, e.as_slice())),
                );
                if let Ok(n) = &new {
                    if n.public_key() != old.public_key() {
                        return Err("the refresh changed the group key".into());
                    }
                }
                new
            }
        }
        .map_err(|e| describe(&t.participants, e))?;
        (public.to_bytes(), public.public_key())
    });
    if hex::encode(&set) != t.public_key_set {
        return Err(
            "the public key set the transcript claims is not the one its commitments give".into(),
        );
    }
    if hex::encode(key) != t.public_key {
        return Err(
            "the public key the transcript claims is not the one its commitments give".into(),
        );
    }
    Ok(DkgReplay {
        key_id: t.key_id.clone(),
        suite: t.suite.clone(),
        threshold: t.threshold,
        participants: t.participants.iter().map(|p| p.name.clone()).collect(),
        public_key: hex::encode(key),
        public_key_set: hex::encode(set),
        refresh: previous.is_some(),
    })
}

/// An engine error with participant ids replaced by names.
fn describe(parties: &[Party], e: custody_protocol::Error) -> String {
    let names: Vec<String> = e
        .culprits()
        .iter()
        .map(|c| {
            parties.iter().find(|p| p.id == c.get()).map_or_else(
                || format!("participant {c}"),
                |p| format!("participant {c} ({})", p.name),
            )
        })
        .collect();
    if names.is_empty() {
        e.to_string()
    } else {
        format!("{e} [culprit: {}]", names.join(", "))
    }
}

impl SignedRequest {
    /// The settlement this request is, checked (canonical decimal totals).
    pub fn settlement(&self, request_id: &str) -> Result<hot_warm_cold::Settlement, String> {
        let SignedRequest::Settlement {
            batch_id,
            root,
            count,
            totals,
            period_start_ms,
            period_end_ms,
        } = self
        else {
            return Err("not a settlement".into());
        };
        let root: [u8; 32] = hex::decode(root)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("settlement root: not 32 bytes of hex")?;
        let mut t = BTreeMap::new();
        for (c, a) in totals {
            let v: u128 = a
                .parse()
                .ok()
                .filter(|v: &u128| v.to_string() == *a)
                .ok_or_else(|| {
                    format!("settlement total {a:?} is not a canonical decimal integer")
                })?;
            t.insert(c.clone(), v);
        }
        let s = hot_warm_cold::Settlement {
            batch_id: batch_id.clone(),
            root,
            count: *count,
            totals: t,
            period_start_ms: *period_start_ms,
            period_end_ms: *period_end_ms,
            request_id: request_id.to_string(),
        };
        s.check()?;
        Ok(s)
    }

    /// A settlement as recorded, from the gRPC form.
    pub fn from_settlement(s: &hot_warm_cold::Settlement) -> SignedRequest {
        SignedRequest::Settlement {
            batch_id: s.batch_id.clone(),
            root: hex::encode(s.root),
            count: s.count,
            totals: s
                .totals
                .iter()
                .map(|(c, t)| (c.clone(), t.to_string()))
                .collect(),
            period_start_ms: s.period_start_ms,
            period_end_ms: s.period_end_ms,
        }
    }
}

impl SigningTranscript {
    /// The settlement of this transcript's request (if it is one).
    pub fn settlement(&self) -> Result<hot_warm_cold::Settlement, String> {
        self.request.settlement(&self.request_id)
    }

    /// What approvers sign: `TaggedHash("custody/v1/approval", key id, message)`.
    pub fn approval_digest(&self) -> Result<[u8; 32], String> {
        Ok(hot_warm_cold::approval_digest(
            &self.key_id,
            &self.message()?,
        ))
    }

    /// The approvals, each checked: well formed, a valid signature over
    /// [`SigningTranscript::approval_digest`], no approver twice.
    pub fn checked_approvals(&self) -> Result<Vec<hot_warm_cold::Approval>, String> {
        let digest = self.approval_digest()?;
        let mut out: Vec<hot_warm_cold::Approval> = Vec::new();
        for a in &self.approvals {
            let approver: [u8; 32] = hex::decode(&a.approver)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| format!("approval by {}: not a 32-byte key", a.approver))?;
            let signature = hex::decode(&a.signature)
                .map_err(|_| format!("approval by {}: signature is not hex", a.approver))?;
            let approval = hot_warm_cold::Approval {
                approver,
                signature,
            };
            if !approval.verifies(&digest) {
                return Err(format!("approval by {} does not verify", a.approver));
            }
            if out.iter().any(|o| o.approver == approver) {
                return Err(format!("approval by {} appears twice", a.approver));
            }
            out.push(approval);
        }
        Ok(out)
    }

    /// The message the signers signed, recomputed from the request.
    pub fn message(&self) -> Result<Vec<u8>, String> {
        match &self.request {
            SignedRequest::Raw { message } => {
                hex::decode(message).map_err(|_| "request message is not hex".to_string())
            }
            SignedRequest::Transfer {
                asset,
                amount,
                destination,
                memo,
            } => {
                let amount: u128 = amount
                    .parse()
                    .ok()
                    .filter(|a: &u128| a.to_string() == *amount)
                    .ok_or_else(|| {
                        format!("transfer amount {amount:?} is not a canonical decimal integer")
                    })?;
                let t = hot_warm_cold::Transfer {
                    asset: asset.clone(),
                    amount,
                    destination: destination.clone(),
                    request_id: self.request_id.clone(),
                    memo: memo.clone(),
                };
                Ok(t.message(&self.key_id).to_vec())
            }
            SignedRequest::Settlement { .. } => {
                Ok(self.settlement()?.message(&self.key_id).to_vec())
            }
        }
    }
}

/// Replays a signature: the coordinator's signed package carries the request's message
/// (recomputed here from the request); every share is signed by its signer, confirms
/// the digest of this key, request and package, and verifies against the signer's
/// verifying share; the shares combine to the final signature, which verifies under
/// the group key. `expected_set`, when given (from the key's replayed DKG), must be
/// the transcript's public key set.
pub fn replay_signing(
    t: &SigningTranscript,
    trust: &Trust,
    expected_set: Option<&str>,
) -> Result<SigningReplay, String> {
    if t.format != SIGNING_FORMAT {
        return Err(format!(
            "format {:?}, expected {SIGNING_FORMAT:?}",
            t.format
        ));
    }
    if let Some(set) = expected_set {
        if set != t.public_key_set {
            return Err("the public key set is not the one the key's DKG produced".into());
        }
    }
    let suite = suite(&t.suite)?;
    let session = SessionId(hex32("session", &t.session)?);
    let (mut roster, ids) = roster(&t.signers, trust)?;
    if t.coordinator.id != COORDINATOR.get() {
        return Err(format!(
            "coordinator id {} is not {}",
            t.coordinator.id,
            COORDINATOR.get()
        ));
    }
    roster.insert(COORDINATOR, trust.check(&t.coordinator)?);
    let message = t.message()?;
    t.checked_approvals()?;
    let package_env = hex::decode(&t.package).map_err(|_| "package is not hex".to_string())?;
    let shares = messages(&t.shares, "share")?;
    let set =
        hex::decode(&t.public_key_set).map_err(|_| "public key set is not hex".to_string())?;
    let sig = hex::decode(&t.signature).map_err(|_| "signature is not hex".to_string())?;
    let (public_key, signature) = with_suite!(suite, C => {
        replay_signing_with::<C>(t, &roster, &ids, &session, &message, &package_env, &shares, &set, &sig)?
    });
    Ok(SigningReplay {
        key_id: t.key_id.clone(),
        request_id: t.request_id.clone(),
        signers: t.signers.iter().map(|p| p.name.clone()).collect(),
        public_key: hex::encode(public_key),
        signature: hex::encode(signature),
    })
}

#[allow(clippy::too_many_arguments)]
fn replay_signing_with<C: EngineSuite>(
    t: &SigningTranscript,
    roster: &Roster,
    ids: &[ParticipantId],
    session: &SessionId,
    message: &[u8],
    package_env: &[u8],
    shares: &[(ParticipantId, Vec<u8>)],
    set: &[u8],
    sig: &[u8],
) -> Result<([u8; 32], [u8; 64]), String> {
    let err = |e: custody_protocol::Error| describe(&t.signers, e);
    let public = PublicKeySet::<C>::from_bytes(set).map_err(|e| format!("public key set: {e}"))?;
    let opened =
        open_from(roster, COORDINATOR, package_env).map_err(|e| format!("signing package: {e}"))?;
    let (_, package) = wire::decode_with(
        opened.body,
        C::SUITE,
        Kind::SigningPackage,
        session,
        |_, r| SigningPackage::<C>::decode_body(r),
    )
    .map_err(|e| format!("signing package: {e}"))?;
    if package.message() != message {
        return Err("the signing package's message is not the request's message".into());
    }
    if package.signers() != ids {
        return Err("the transcript's signers are not the signing package's signers".into());
    }
    package.check_against(&public).map_err(err)?;
    let digest = sign::transcript_digest(&t.key_id, &t.request_id, opened.body);
    let mut got = BTreeMap::new();
    for (from, env) in shares {
        let o = open_from(roster, *from, env).map_err(err)?;
        let (h, m) = wire::decode_with(o.body, C::SUITE, Kind::SignatureShare, session, |_, r| {
            ShareMessage::<C>::decode_body(r)
        })
        .map_err(err)?;
        if h.to != Some(COORDINATOR) {
            return Err(format!(
                "the share of participant {} is not addressed to the coordinator",
                h.from
            ));
        }
        if m.transcript != digest {
            return Err(describe(
                &t.signers,
                custody_protocol::Error::InvalidSignatureShare {
                    culprits: vec![h.from],
                },
            ) + ": its share confirms another key, request or signing package");
        }
        sign::verify_share(&public, &package, h.from, &m.share).map_err(err)?;
        if got.insert(h.from, m.share).is_some() {
            return Err(format!("two shares from participant {}", h.from));
        }
    }
    let signature = sign::aggregate(&public, &package, &got).map_err(err)?;
    if signature[..] != sig[..] {
        return Err("the recorded signature is not the one the shares combine to".into());
    }
    if !custody_protocol::verify_signature(C::SUITE, &public.public_key(), message, &signature) {
        return Err("the final signature does not verify under the group key".into());
    }
    Ok((public.public_key(), signature))
}

/// `format` of a repair transcript.
pub const REPAIR_FORMAT: &str = "custody-repair-transcript/v1";

/// A repair of one participant's lost share. Its deltas and sigmas are secret (sealed)
/// and not recorded; what is recorded is what every participant of it signed: the
/// attestation of the key set and policy (`custody_protocol::repair::attestation_digest`),
/// by every helper before, and by the repaired participant once its recovered share
/// matched its verifying share.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepairTranscript {
    /// [`REPAIR_FORMAT`].
    pub format: String,
    /// The key.
    pub key_id: String,
    /// Suite name.
    pub suite: String,
    /// Repair session, hex.
    pub session: String,
    /// Every participant of the key (who is who, as attested), ascending by id.
    pub participants: Vec<Party>,
    /// The key's lifecycle state, as attested.
    pub state: String,
    /// The key's policy version (changes so far), as attested.
    #[serde(default)]
    pub policy_version: u64,
    /// The participant whose share was recovered.
    pub lost: Party,
    /// The helpers, ascending by id.
    pub helpers: Vec<Party>,
    /// The key's public key set, hex.
    pub public_key_set: String,
    /// SHA-256 of the key's policy (canonical JSON), hex.
    pub policy_sha256: String,
    /// Each helper's attestation: `{from, envelope}` where `envelope` is the 64-byte
    /// signature, hex.
    pub attestations: Vec<Message>,
    /// The repaired participant's attestation, hex.
    pub confirmation: String,
}

/// What a repair replay established.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RepairReplay {
    /// The key.
    pub key_id: String,
    /// Who was repaired.
    pub lost: String,
    /// By whom.
    pub helpers: Vec<String>,
}

/// Replays a repair: at least t helpers (per the key set), all participants of the key,
/// each attested the key set and policy; the repaired participant attested the same
/// once it held its share again. `expected_set` / `expected_policy` (from the key's
/// history in an export) must be the transcript's.
pub fn replay_repair(
    t: &RepairTranscript,
    trust: &Trust,
    expected_set: Option<&str>,
    expected_policy: Option<&str>,
) -> Result<RepairReplay, String> {
    if t.format != REPAIR_FORMAT {
        return Err(format!("format {:?}, expected {REPAIR_FORMAT:?}", t.format));
    }
    if expected_set.is_some_and(|s| s != t.public_key_set) {
        return Err("the key set is not the key's current one".into());
    }
    if expected_policy.is_some_and(|p| p != t.policy_sha256) {
        return Err("the policy is not the key's current one".into());
    }
    let suite = suite(&t.suite)?;
    let session = SessionId(hex32("session", &t.session)?);
    let set =
        hex::decode(&t.public_key_set).map_err(|_| "public key set is not hex".to_string())?;
    let policy = hex32("policy_sha256", &t.policy_sha256)?;
    let (set_digest, threshold, participants) = with_suite!(suite, C => {
        let public = PublicKeySet::<C>::from_bytes(&set).map_err(|e| format!("public key set: {e}"))?;
        (public.digest(), public.threshold(), public.participants().to_vec())
    });
    let (everyone, all_ids) = roster(&t.participants, trust)?;
    if all_ids != participants {
        return Err("the transcript's participants are not the key's".into());
    }
    let digest = custody_protocol::repair::attestation_digest(
        &t.key_id,
        &session,
        &set_digest,
        &policy,
        &custody_protocol::repair::roster_digest(&everyone),
        &t.state,
        t.policy_version,
    );
    let (roster, ids) = roster(&t.helpers, trust)?;
    for p in t.helpers.iter().chain(std::iter::once(&t.lost)) {
        let id = participant(p.id)?;
        if everyone.get(id).map(|i| hex::encode(i.to_bytes())) != Some(p.identity.clone()) {
            return Err(format!("{} is not participant {id} of the key", p.name));
        }
    }
    if ids.len() < threshold as usize {
        return Err(format!("{} helpers, the key needs {threshold}", ids.len()));
    }
    let lost_id = participant(t.lost.id)?;
    if ids.contains(&lost_id)
        || !participants.contains(&lost_id)
        || ids.iter().any(|h| !participants.contains(h))
    {
        return Err(
            "helpers and the repaired participant must be distinct participants of the key".into(),
        );
    }
    let attestations = messages(&t.attestations, "attestation")?;
    if attestations.iter().map(|(p, _)| *p).collect::<Vec<_>>() != ids {
        return Err("not exactly one attestation per helper".into());
    }
    for (p, sig) in &attestations {
        let id = roster.get(*p).expect("helper in roster");
        if !custody_protocol::repair::verify_attestation(id, &digest, sig) {
            return Err(format!("the attestation of helper {p} does not verify"));
        }
    }
    let lost = trust.check(&t.lost)?;
    let confirmation =
        hex::decode(&t.confirmation).map_err(|_| "confirmation is not hex".to_string())?;
    if !custody_protocol::repair::verify_attestation(&lost, &digest, &confirmation) {
        return Err(format!(
            "the repaired participant's ({}) confirmation does not verify",
            t.lost.name
        ));
    }
    Ok(RepairReplay {
        key_id: t.key_id.clone(),
        lost: t.lost.name.clone(),
        helpers: t.helpers.iter().map(|p| p.name.clone()).collect(),
    })
}
