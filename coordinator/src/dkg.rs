//! Driving a DKG across the signers. The coordinator relays; it cannot read round-2
//! shares (sealed to their recipients) nor alter any message (signed by its sender). It
//! checks every participant's signed confirmation itself before recording the key, and
//! keeps a transcript of every public message.

use std::collections::BTreeMap;
use std::sync::Arc;

use custody_audit::export::{
    KeyCreated, KeyRepaired, Lifecycle, KEY_CREATED, KEY_REFRESHED, KEY_REPAIRED, LIFECYCLE,
};
use custody_audit::transcript::{
    DkgTranscript, Message, Party, RepairTranscript, DKG_FORMAT, REFRESH_FORMAT, REPAIR_FORMAT,
};
use custody_pki::Role;
use custody_protocol::dkg::{self, DKG_KINDS, REFRESH_KINDS};
use custody_protocol::proto::*;
use custody_protocol::{
    api, with_suite, IdentityPublic, ParticipantId, PublicKeySet, Roster, SessionId, Suite,
};
use rand_core::{OsRng, RngCore};
use tonic::Status;
use tracing::{info, warn};

use crate::core::Core;
use crate::link::{LinkError, SignerLink};
use crate::signers::SignerHandle;
use crate::store::{KeyMeta, PendingRefresh, StoredPolicy};
use hot_warm_cold::State;

/// A validated key-creation request.
#[derive(Debug)]
pub(crate) struct KeySpec {
    pub suite: Suite,
    pub threshold: u16,
    pub signers: Vec<Arc<SignerHandle>>,
    pub name: String,
    pub tier: hot_warm_cold::Tier,
    /// The policy.
    pub policy: hot_warm_cold::Policy,
}

fn msgs(list: &BTreeMap<ParticipantId, Vec<u8>>) -> Vec<Message> {
    list.iter()
        .map(|(p, e)| Message {
            from: p.get(),
            envelope: hex::encode(e),
        })
        .collect()
}

/// Calls `f` on every participant at once; the first failure aborts the ceremony with a
/// status naming the signer (and culprits, when the signer named any).
async fn on_all<T, F, Fut>(
    core: &Arc<Core>,
    parts: &[(ParticipantId, Arc<SignerHandle>)],
    step: &str,
    f: F,
) -> Result<Vec<(ParticipantId, T)>, Status>
where
    T: Send + 'static,
    F: Fn(ParticipantId, Arc<dyn SignerLink>) -> Fut,
    Fut: std::future::Future<Output = Result<T, LinkError>> + Send + 'static,
{
    let mut tasks = Vec::new();
    for (p, h) in parts {
        let fut = f(*p, h.link());
        let timeout = core.timeouts.dkg();
        let h = h.clone();
        let p = *p;
        tasks.push(tokio::spawn(async move {
            let r = match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r,
                Err(_) => Err(LinkError::timed_out(format!(
                    "no answer within {} ms",
                    timeout.as_millis()
                ))),
            };
            h.observe(&r);
            (p, h, r)
        }));
    }
    let mut out = Vec::new();
    let mut first_err: Option<Status> = None;
    for task in tasks {
        let (p, h, r) = task
            .await
            .map_err(|e| Status::internal(format!("task: {e}")))?;
        match r {
            Ok(v) => out.push((p, v)),
            Err(e) if first_err.is_none() => {
                let mut st = if e.is_transport() {
                    Status::unavailable(format!(
                        "DKG {step}: signer {} (participant {p}) unavailable: {e}",
                        h.name
                    ))
                } else {
                    Status::aborted(format!(
                        "DKG {step}: signer {} (participant {p}) refused: {e}",
                        h.name
                    ))
                };
                api::set_culprits(&mut st, e.culprits());
                first_err = Some(st);
            }
            Err(_) => {}
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

fn relayed(from: ParticipantId, to: ParticipantId, envelope: &[u8]) -> Relayed {
    Relayed {
        from: from.get() as u32,
        to: to.get() as u32,
        envelope: envelope.to_vec(),
    }
}

/// Records an aborted ceremony (with the culprits its signers named, if any) in the
/// audit log, and returns its status. A failure to record is logged, not returned:
/// the abort acknowledges nothing.
async fn aborted(
    core: &Arc<Core>,
    ceremony: &str,
    key_id: &str,
    session: SessionId,
    parts: &[(ParticipantId, Arc<SignerHandle>)],
    st: Status,
) -> Status {
    let culprits: Vec<String> = api::culprits(&st)
        .into_iter()
        .map(|p| {
            parts
                .iter()
                .find(|(q, _)| *q == p)
                .map_or_else(|| format!("participant {p}"), |(_, h)| h.name.clone())
        })
        .collect();
    warn!(%key_id, %ceremony, ?culprits, "ceremony aborted: {}", st.message());
    let st = if culprits.is_empty() {
        st
    } else {
        let mut named = Status::new(
            st.code(),
            format!("{}; culprit: {}", st.message(), culprits.join(", ")),
        );
        api::set_culprits(&mut named, &api::culprits(&st));
        named
    };
    let entry = custody_audit::export::CeremonyAborted {
        ceremony: ceremony.to_string(),
        key_id: key_id.to_string(),
        session: session.to_string(),
        culprits,
        reason: st.message().to_string(),
    };
    if let Err(e) = core
        .audit
        .append(custody_audit::export::CEREMONY_ABORTED, &entry)
        .await
    {
        warn!("the abort could not be recorded: {e}");
    }
    st
}

/// Fetches and checks the certificates of the participants: each must be issued by the
/// cluster CA, say `signer`, carry the signer's name and an identity.
async fn identities(
    core: &Arc<Core>,
    parts: &[(ParticipantId, Arc<SignerHandle>)],
) -> Result<Vec<(Vec<u8>, IdentityPublic)>, Status> {
    let answers = on_all(
        core,
        parts,
        "identity",
        |_, l| async move { l.identity().await },
    )
    .await?;
    let mut out = Vec::new();
    for ((_, h), (_, ans)) in parts.iter().zip(answers) {
        let info = custody_pki::verify_issued_by(&ans.certificate, &core.ca_der).map_err(|e| {
            Status::failed_precondition(format!("signer {}: certificate: {e}", h.name))
        })?;
        if info.role != Role::Signer || info.name != h.name {
            return Err(Status::failed_precondition(format!(
                "signer {}: certificate is for {} {}",
                h.name, info.role, info.name
            )));
        }
        let id = info.identity.ok_or_else(|| {
            Status::failed_precondition(format!("signer {}: certificate has no identity", h.name))
        })?;
        *h.certificate.lock().expect("lock") = Some(ans.certificate.clone());
        out.push((ans.certificate, id));
    }
    Ok(out)
}

/// The public messages of a DKG or refresh whose confirmations checked.
struct Rounds {
    round1: BTreeMap<ParticipantId, Vec<u8>>,
    echoes: BTreeMap<ParticipantId, Vec<u8>>,
    confirmations: BTreeMap<ParticipantId, Vec<u8>>,
    /// The public key set every participant derived.
    pks: Vec<u8>,
    public_key: [u8; 32],
}

/// What a ceremony is about.
struct Ask<'a> {
    key_id: &'a str,
    session: SessionId,
    suite: Suite,
    threshold: u16,
    policy: &'a str,
    refresh: bool,
}

/// Steps 1 to 3 of a DKG or refresh: round 1, echoes and sealed shares, confirmations;
/// then the coordinator checks every confirmation itself (same key set, same round 1).
async fn rounds(
    core: &Arc<Core>,
    parts: &[(ParticipantId, Arc<SignerHandle>)],
    ids: &[(Vec<u8>, IdentityPublic)],
    ask: &Ask<'_>,
) -> Result<Rounds, Status> {
    let mut roster = Roster::new();
    for ((p, _), (_, id)) in parts.iter().zip(ids) {
        roster.insert(*p, *id);
    }
    let participants: Vec<Participant> = parts
        .iter()
        .zip(ids)
        .map(|((p, _), (cert, _))| Participant {
            id: p.get() as u32,
            certificate: cert.clone(),
        })
        .collect();
    let session = ask.session;

    // Step 1: round-1 broadcasts.
    let start = on_all(core, parts, "start", |p, l| {
        let req = DkgStartRequest {
            key_id: ask.key_id.to_string(),
            session: session.0.to_vec(),
            suite: ask.suite.name().to_string(),
            threshold: ask.threshold as u32,
            participants: participants.clone(),
            me: p.get() as u32,
            policy: ask.policy.to_string(),
            refresh: ask.refresh,
        };
        async move { l.dkg_start(req).await }
    })
    .await?;
    let round1: BTreeMap<ParticipantId, Vec<u8>> =
        start.into_iter().map(|(p, r)| (p, r.round1)).collect();

    // Step 2: everyone's round 1 to everyone; echoes and sealed shares back.
    let r1 = on_all(core, parts, "round 1", |p, l| {
        let req = DkgRound1Request {
            session: session.0.to_vec(),
            round1: round1
                .iter()
                .filter(|(q, _)| **q != p)
                .map(|(q, e)| relayed(*q, p, e))
                .collect(),
        };
        async move { l.dkg_round1(req).await }
    })
    .await?;
    let mut echoes: BTreeMap<ParticipantId, Vec<u8>> = BTreeMap::new();
    // Round-2 shares are secret (sealed to their recipients): relayed, never recorded.
    let mut sealed: Vec<(ParticipantId, ParticipantId, Vec<u8>)> = Vec::new();
    for (p, r) in r1 {
        echoes.insert(p, r.echo);
        for s in r.shares {
            let to = api::participant("shares.to", s.to)?;
            sealed.push((p, to, s.envelope));
        }
    }

    // Step 3: echoes and the shares addressed to each; confirmations back.
    let r2 = on_all(core, parts, "round 2", |p, l| {
        let req = DkgRound2Request {
            session: session.0.to_vec(),
            echoes: echoes
                .iter()
                .filter(|(q, _)| **q != p)
                .map(|(q, e)| relayed(*q, p, e))
                .collect(),
            shares: sealed
                .iter()
                .filter(|(_, to, _)| *to == p)
                .map(|(f, t, e)| relayed(*f, *t, e))
                .collect(),
        };
        async move { l.dkg_round2(req).await }
    })
    .await?;
    let mut confirmations = BTreeMap::new();
    let mut key_sets: BTreeMap<Vec<u8>, Vec<ParticipantId>> = BTreeMap::new();
    for (p, r) in r2 {
        confirmations.insert(p, r.confirmation);
        key_sets.entry(r.public_key_set).or_default().push(p);
    }
    if key_sets.len() != 1 {
        let detail: Vec<String> = key_sets.values().map(|ps| format!("{ps:?}")).collect();
        return Err(Status::aborted(format!(
            "DKG: participants derived different keys (groups {})",
            detail.join(" vs ")
        )));
    }
    let pks = key_sets.into_keys().next().expect("one key set");

    // The coordinator checks the confirmations itself: every participant signed the same
    // key and the same round-1 echo.
    let (public_key, digest) = with_suite!(ask.suite, C => {
        let set = PublicKeySet::<C>::from_bytes(&pks)
            .map_err(|e| Status::aborted(format!("DKG: public key set: {e}")))?;
        (set.public_key(), set.digest())
    });
    let ids_list: Vec<ParticipantId> = parts.iter().map(|(p, _)| *p).collect();
    let kinds = if ask.refresh {
        REFRESH_KINDS
    } else {
        DKG_KINDS
    };
    dkg::check_confirmations(
        &roster,
        ask.suite,
        kinds,
        &session,
        &ids_list,
        &digest,
        confirmations.iter().map(|(p, m)| (*p, m.as_slice())),
    )
    .map_err(|e| {
        let mut st = Status::aborted(format!("DKG confirmations: {e}"));
        api::set_culprits(&mut st, &e.culprits());
        st
    })?;
    Ok(Rounds {
        round1,
        echoes,
        confirmations,
        pks,
        public_key,
    })
}

/// Step 4: every signer checks every confirmation and activates the key (or its
/// refreshed share).
async fn finalize(
    core: &Arc<Core>,
    parts: &[(ParticipantId, Arc<SignerHandle>)],
    session: SessionId,
    confirmations: &BTreeMap<ParticipantId, Vec<u8>>,
) -> Result<(), Status> {
    on_all(core, parts, "finalize", |p, l| {
        let req = DkgFinalizeRequest {
            session: session.0.to_vec(),
            confirmations: confirmations
                .iter()
                .map(|(q, e)| relayed(*q, p, e))
                .collect(),
        };
        async move { l.dkg_finalize(req).await }
    })
    .await
    .map(|_| ())
}

fn parties(
    parts: &[(ParticipantId, Arc<SignerHandle>)],
    ids: &[(Vec<u8>, IdentityPublic)],
) -> Vec<Party> {
    parts
        .iter()
        .zip(ids)
        .map(|((p, h), (cert, id))| Party {
            id: p.get(),
            name: h.name.clone(),
            identity: hex::encode(id.to_bytes()),
            certificate: Some(hex::encode(cert)),
        })
        .collect()
}

/// A copy of a transcript for auditors who replay one ceremony (`custody audit replay
/// FILE`); the audit log holds the authoritative one.
async fn write_transcript(core: &Core, file: String, t: &DkgTranscript) -> Result<(), Status> {
    let path = core.transcripts.join(file);
    let json = serde_json::to_vec_pretty(t).unwrap_or_default();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = std::fs::write(&path, json) {
            warn!("transcript {}: {e}", path.display());
        }
    })
    .await
    .map_err(|e| Status::internal(format!("task: {e}")))
}

/// Runs a DKG for `spec` and records the key.
pub(crate) async fn create_key(core: &Arc<Core>, spec: KeySpec) -> Result<KeyMeta, Status> {
    // Invariant: `Config::check` allows at most MAX_PARTICIPANTS (1024) signers, so
    // i + 1 fits in a u16 and is non-zero.
    let parts: Vec<(ParticipantId, Arc<SignerHandle>)> = spec
        .signers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            (
                ParticipantId::new(i as u16 + 1).expect("non-zero"),
                h.clone(),
            )
        })
        .collect();
    let ids = identities(core, &parts).await?;
    let mut kid = [0u8; 16];
    OsRng.fill_bytes(&mut kid);
    let key_id = format!("k-{}", hex::encode(kid));
    let session = SessionId::random(&mut OsRng);
    info!(%key_id, suite = %spec.suite, t = spec.threshold, n = parts.len(), "DKG starting");
    let policy_json = spec.policy.to_json();
    let ask = Ask {
        key_id: &key_id,
        session,
        suite: spec.suite,
        threshold: spec.threshold,
        policy: &policy_json,
        refresh: false,
    };
    let r = match rounds(core, &parts, &ids, &ask).await {
        Ok(r) => r,
        Err(st) => return Err(aborted(core, "dkg", &key_id, session, &parts, st).await),
    };
    if let Err(st) = finalize(core, &parts, session, &r.confirmations).await {
        return Err(aborted(core, "dkg", &key_id, session, &parts, st).await);
    }

    let created_at = core.clock.now_secs();
    let meta = KeyMeta {
        key_id: key_id.clone(),
        name: spec.name,
        suite: spec.suite.name().to_string(),
        threshold: spec.threshold,
        signers: parts.iter().map(|(_, h)| h.name.clone()).collect(),
        identities: ids
            .iter()
            .map(|(_, id)| hex::encode(id.to_bytes()))
            .collect(),
        public_key: r.public_key.to_vec().into(),
        public_key_set: r.pks.clone().into(),
        tier: spec.tier,
        policy: StoredPolicy::new(&spec.policy),
        rotated_from: String::new(),
        rotated_to: String::new(),
        state: State::Active,
        created_at,
        dkg_session: session.to_string(),
        state_reason: String::new(),
        policy_version: 0,
        pending_refresh: None,
    };
    let transcript = DkgTranscript {
        format: DKG_FORMAT.into(),
        previous_public_key_set: None,
        key_id: key_id.clone(),
        suite: meta.suite.clone(),
        threshold: meta.threshold,
        session: session.to_string(),
        participants: parties(&parts, &ids),
        round1: msgs(&r.round1),
        echoes: msgs(&r.echoes),
        confirmations: msgs(&r.confirmations),
        public_key_set: hex::encode(&*meta.public_key_set),
        public_key: hex::encode(&*meta.public_key),
    };
    // The ceremony is in the audit log before the key exists for clients.
    let entry = KeyCreated {
        name: meta.name.clone(),
        tier: meta.tier.name().into(),
        policy: meta.policy.stored().into(),
        transcript,
    };
    core.audit
        .append(KEY_CREATED, &entry)
        .await
        .map_err(crate::audit::refused)?;
    write_transcript(core, format!("dkg-{key_id}.json"), &entry.transcript).await?;
    core.record_key(&meta).await?;
    info!(%key_id, public_key = %hex::encode(&*meta.public_key), "key created");
    Ok(meta)
}

/// The participants of a stored key, as the DKG numbered them.
fn members(core: &Core, meta: &KeyMeta) -> Result<Vec<(ParticipantId, Arc<SignerHandle>)>, Status> {
    meta.signers
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let h = core
                .signer(name)
                .ok_or_else(|| Status::internal(format!("signer {name} is not configured")))?;
            Ok((
                ParticipantId::new(i as u16 + 1).expect("non-zero"),
                h.clone(),
            ))
        })
        .collect()
}

/// Refreshes every share of an active key (or completes a refresh every signer
/// confirmed but not every signer applied). The key does not sign meanwhile.
pub(crate) async fn refresh_key(
    core: &Arc<Core>,
    key_id: &str,
    by: &str,
) -> Result<KeyMeta, Status> {
    let mut meta = core.key(key_id)?.meta().clone();
    let parts = members(core, &meta)?;
    if let Some(pending) = meta.pending_refresh.clone() {
        return complete_refresh(core, meta, &parts, pending, by).await;
    }
    match meta.state {
        State::Active => {}
        // A refresh that failed half-way on the signers: abandon it there first.
        State::Refreshing => abandon_refresh(core, &parts, key_id).await?,
        s => {
            return Err(Status::failed_precondition(format!(
                "key {key_id} is {}; only an active key can be refreshed",
                s.name()
            )))
        }
    }
    let suite: Suite = meta
        .suite
        .parse()
        .map_err(|e| Status::internal(format!("{e}")))?;
    // The key stops signing here (and on every signer as it starts its refresh).
    let before = hex::encode(&*meta.public_key_set);
    meta.state = State::Refreshing;
    lifecycle(core, &meta, "start-refresh", by).await?;
    core.record_key(&meta).await?;

    let session = SessionId::random(&mut OsRng);
    info!(%key_id, "refresh starting");
    let ask = Ask {
        key_id,
        session,
        suite,
        threshold: meta.threshold,
        policy: "",
        refresh: true,
    };
    let attempt = async {
        let ids = identities(core, &parts).await?;
        let r = match rounds(core, &parts, &ids, &ask).await {
            Ok(r) => r,
            Err(st) => {
                return Err(aborted(core, "refresh", key_id, session, &parts, st).await);
            }
        };
        if r.public_key[..] != meta.public_key[..] {
            return Err(Status::aborted(
                "refresh: the signers derived another group key",
            ));
        }
        Ok((ids, r))
    }
    .await;
    let (ids, r) = match attempt {
        Ok(v) => v,
        Err(st) => {
            // Nothing was applied anywhere: every signer keeps its old share.
            warn!(%key_id, "refresh failed: {}", st.message());
            let _ = abandon_refresh(core, &parts, key_id).await;
            meta.state = State::Active;
            lifecycle(core, &meta, "refresh-failed", by).await?;
            core.record_key(&meta).await?;
            return Err(st);
        }
    };
    let transcript = DkgTranscript {
        format: REFRESH_FORMAT.into(),
        previous_public_key_set: Some(before),
        key_id: key_id.to_string(),
        suite: meta.suite.clone(),
        threshold: meta.threshold,
        session: session.to_string(),
        participants: parties(&parts, &ids),
        round1: msgs(&r.round1),
        echoes: msgs(&r.echoes),
        confirmations: msgs(&r.confirmations),
        public_key_set: hex::encode(&r.pks),
        public_key: hex::encode(&*meta.public_key),
    };
    let entry = KeyCreated {
        name: meta.name.clone(),
        tier: meta.tier.name().into(),
        policy: meta.policy.stored().into(),
        transcript,
    };
    // Recorded, and kept durably, before any signer applies it: from here on the
    // refresh can only be completed, never abandoned.
    core.audit
        .append(KEY_REFRESHED, &entry)
        .await
        .map_err(crate::audit::refused)?;
    write_transcript(
        core,
        format!("refresh-{key_id}-{}.json", &session.to_string()[..16]),
        &entry.transcript,
    )
    .await?;
    let pending = PendingRefresh {
        session: session.to_string(),
        confirmations: r
            .confirmations
            .iter()
            .map(|(p, e)| (p.get(), hex::encode(e)))
            .collect(),
        public_key_set: hex::encode(&r.pks),
    };
    meta.pending_refresh = Some(pending.clone());
    core.record_key(&meta).await?;
    complete_refresh(core, meta, &parts, pending, by).await
}

/// Has every signer apply a confirmed refresh, then records the new key set.
async fn complete_refresh(
    core: &Arc<Core>,
    mut meta: KeyMeta,
    parts: &[(ParticipantId, Arc<SignerHandle>)],
    pending: PendingRefresh,
    by: &str,
) -> Result<KeyMeta, Status> {
    let session = SessionId(
        hex::decode(&pending.session)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Status::internal("pending refresh: session"))?,
    );
    let confirmations = pending
        .confirmations
        .iter()
        .map(|(p, e)| {
            let p =
                ParticipantId::new(*p).ok_or_else(|| Status::internal("pending refresh: id"))?;
            let e = hex::decode(e).map_err(|_| Status::internal("pending refresh: hex"))?;
            Ok((p, e))
        })
        .collect::<Result<BTreeMap<_, _>, Status>>()?;
    finalize(core, parts, session, &confirmations)
        .await
        .map_err(|st| {
            Status::unavailable(format!(
                "refresh of {} is confirmed by every signer but not applied by all ({}); run `custody key refresh {}` again to complete it",
                meta.key_id,
                st.message(),
                meta.key_id
            ))
        })?;
    meta.public_key_set = hex::decode(&pending.public_key_set)
        .map_err(|_| Status::internal("pending refresh: key set is not hex"))?
        .into();
    meta.pending_refresh = None;
    meta.state = State::Active;
    lifecycle(core, &meta, "refresh", by).await?;
    core.record_key(&meta).await?;
    warn!(key_id = %meta.key_id, "key refreshed: every share replaced, same public key");
    Ok(meta)
}

/// Tells every signer to abandon an unfinished refresh of `key_id` (each keeps its
/// old share). Fails if a signer cannot be told.
async fn abandon_refresh(
    core: &Arc<Core>,
    parts: &[(ParticipantId, Arc<SignerHandle>)],
    key_id: &str,
) -> Result<(), Status> {
    on_all(core, parts, "abandon refresh", |_, l| {
        let req = KeyLifecycleRequest {
            key_id: key_id.to_string(),
            event: "refresh-failed".into(),
        };
        async move { l.key_lifecycle(req).await }
    })
    .await
    .map(|_| ())
}

async fn lifecycle(core: &Core, meta: &KeyMeta, event: &str, by: &str) -> Result<(), Status> {
    core.audit
        .append(
            LIFECYCLE,
            &Lifecycle {
                key_id: meta.key_id.clone(),
                event: event.to_string(),
                state: meta.state.name().into(),
                by: by.to_string(),
                successor: String::new(),
            },
        )
        .await
        .map(|_| ())
        .map_err(crate::audit::refused)
}

/// Recovers `signer`'s lost share of `key_id` from t other signers (each attests the
/// key set and policy; the repaired signer checks its share and attests too), and
/// records the repair.
pub(crate) async fn repair_key(
    core: &Arc<Core>,
    key_id: &str,
    signer: &str,
    by: &str,
) -> Result<KeyMeta, Status> {
    let meta = core.key(key_id)?.meta().clone();
    if matches!(meta.state, State::Destroyed | State::Refreshing) || meta.pending_refresh.is_some()
    {
        return Err(Status::failed_precondition(format!(
            "key {key_id} is {}{}; repair it when it is not",
            meta.state.name(),
            if meta.pending_refresh.is_some() {
                " with a refresh pending"
            } else {
                ""
            }
        )));
    }
    let parts = members(core, &meta)?;
    let lost = parts
        .iter()
        .find(|(_, h)| h.name == signer)
        .cloned()
        .ok_or_else(|| {
            Status::invalid_argument(format!("signer: {signer} holds no share of key {key_id}"))
        })?;
    // Helpers: t of the others, those not failing first, ascending by id.
    let t = meta.threshold as usize;
    let mut others: Vec<_> = parts
        .iter()
        .filter(|(p, _)| *p != lost.0)
        .cloned()
        .collect();
    others.sort_by_key(|(p, h)| (h.backing_off(), *p));
    others.truncate(t);
    others.sort_by_key(|(p, _)| *p);
    if others.len() < t {
        return Err(Status::failed_precondition(format!(
            "key {key_id} needs {t} helpers, it has {} other signers",
            others.len()
        )));
    }
    let helper_ids: Vec<u32> = others.iter().map(|(p, _)| p.get() as u32).collect();
    let ids = identities(core, &parts).await?;
    let suite: Suite = meta
        .suite
        .parse()
        .map_err(|e| Status::internal(format!("{e}")))?;
    let session = SessionId::random(&mut OsRng);
    info!(%key_id, %signer, caller = %by, "repair starting");

    let help = on_all(core, &others, "repair help", |_, l| {
        let req = RepairHelpRequest {
            key_id: key_id.to_string(),
            session: session.0.to_vec(),
            helpers: helper_ids.clone(),
            lost: lost.0.get() as u32,
        };
        async move { l.repair_help(req).await }
    })
    .await?;
    let mut deltas: Vec<Relayed> = Vec::new();
    let mut attestations: Vec<Relayed> = Vec::new();
    for (p, r) in &help {
        deltas.extend(r.deltas.iter().cloned());
        attestations.push(relayed(*p, lost.0, &r.attestation));
    }
    let sigmas = on_all(core, &others, "repair sigma", |p, l| {
        let req = RepairSigmaRequest {
            session: session.0.to_vec(),
            deltas: deltas
                .iter()
                .filter(|d| d.to == p.get() as u32)
                .cloned()
                .collect(),
        };
        async move { l.repair_sigma(req).await }
    })
    .await?;
    let participants: Vec<Participant> = parts
        .iter()
        .zip(&ids)
        .map(|((p, _), (cert, _))| Participant {
            id: p.get() as u32,
            certificate: cert.clone(),
        })
        .collect();
    let pks = meta.public_key_set.to_vec();
    let recovered = on_all(
        core,
        std::slice::from_ref(&lost),
        "repair recover",
        |p, l| {
            let req = RepairRecoverRequest {
                key_id: key_id.to_string(),
                session: session.0.to_vec(),
                suite: suite.name().to_string(),
                helpers: helper_ids.clone(),
                me: p.get() as u32,
                participants: participants.clone(),
                public_key_set: pks.clone(),
                policy: meta.policy.stored().into(),
                sigmas: sigmas
                    .iter()
                    .map(|(h, r)| relayed(*h, p, &r.sigma))
                    .collect(),
                attestations: attestations.clone(),
                state: meta.state.name().into(),
                policy_version: meta.policy_version,
            };
            async move { l.repair_recover(req).await }
        },
    )
    .await?;
    let confirmation = recovered
        .first()
        .map(|(_, r)| r.attestation.clone())
        .unwrap_or_default();
    let party = |p: &(ParticipantId, Arc<SignerHandle>)| {
        let i = parts
            .iter()
            .position(|q| q.0 == p.0)
            .expect("a participant");
        Party {
            id: p.0.get(),
            name: p.1.name.clone(),
            identity: hex::encode(ids[i].1.to_bytes()),
            certificate: Some(hex::encode(&ids[i].0)),
        }
    };
    let transcript = RepairTranscript {
        format: REPAIR_FORMAT.into(),
        key_id: key_id.to_string(),
        suite: meta.suite.clone(),
        session: session.to_string(),
        participants: parts.iter().map(party).collect(),
        state: meta.state.name().into(),
        policy_version: meta.policy_version,
        lost: party(&lost),
        helpers: others.iter().map(party).collect(),
        public_key_set: hex::encode(&*meta.public_key_set),
        policy_sha256: hex::encode(meta.policy.get().digest()),
        attestations: help
            .iter()
            .map(|(p, r)| Message {
                from: p.get(),
                envelope: hex::encode(&r.attestation),
            })
            .collect(),
        confirmation: hex::encode(confirmation),
    };
    core.audit
        .append(KEY_REPAIRED, &KeyRepaired { transcript })
        .await
        .map_err(crate::audit::refused)?;
    warn!(%key_id, %signer, "lost share repaired");
    Ok(meta)
}
