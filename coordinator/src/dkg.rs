//! Driving a DKG across the signers. The coordinator relays; it cannot read round-2
//! shares (sealed to their recipients) nor alter any message (signed by its sender). It
//! checks every participant's signed confirmation itself before recording the key, and
//! keeps a transcript of every public message.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use custody_audit::export::{KeyCreated, KEY_CREATED};
use custody_audit::transcript::{DkgTranscript, Message, Party, DKG_FORMAT};
use custody_pki::Role;
use custody_protocol::dkg::{self, DKG_KINDS};
use custody_protocol::proto::*;
use custody_protocol::{
    api, with_suite, IdentityPublic, ParticipantId, PublicKeySet, Roster, SessionId, Suite,
};
use rand_core::{OsRng, RngCore};
use tonic::Status;
use tracing::{info, warn};

use crate::core::Core;
use crate::signers::{is_transport, SignerHandle};
use crate::store::KeyMeta;

/// A validated key-creation request.
#[derive(Debug)]
pub(crate) struct KeySpec {
    pub suite: Suite,
    pub threshold: u16,
    pub signers: Vec<Arc<SignerHandle>>,
    pub name: String,
    pub tier: String,
    /// Canonical JSON of the policy.
    pub policy: String,
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
    F: Fn(
        ParticipantId,
        custody_protocol::proto::signer_client::SignerClient<tonic::transport::Channel>,
    ) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>> + Send + 'static,
{
    let mut tasks = Vec::new();
    for (p, h) in parts {
        let client = h.client()?;
        let fut = f(*p, client);
        let timeout = core.timeouts.dkg();
        let h = h.clone();
        let p = *p;
        tasks.push(tokio::spawn(async move {
            let r = match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r.map(tonic::Response::into_inner),
                Err(_) => Err(Status::deadline_exceeded(format!(
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
            Err(st) if first_err.is_none() => {
                let culprits = api::culprits(&st);
                let mut e = if is_transport(&st) {
                    Status::unavailable(format!(
                        "DKG {step}: signer {} (participant {p}) unavailable: {}",
                        h.name,
                        st.message()
                    ))
                } else {
                    Status::aborted(format!(
                        "DKG {step}: signer {} (participant {p}) refused: {}",
                        h.name,
                        st.message()
                    ))
                };
                api::set_culprits(&mut e, &culprits);
                first_err = Some(e);
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

/// Fetches and checks the certificates of the participants: each must be issued by the
/// cluster CA, say `signer`, carry the signer's name and an identity.
async fn identities(
    core: &Arc<Core>,
    parts: &[(ParticipantId, Arc<SignerHandle>)],
) -> Result<Vec<(Vec<u8>, IdentityPublic)>, Status> {
    let answers = on_all(core, parts, "identity", |_, mut c| async move {
        c.identity(IdentityRequest {}).await
    })
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
    let mut roster = Roster::new();
    for ((p, _), (_, id)) in parts.iter().zip(&ids) {
        roster.insert(*p, *id);
    }
    let mut kid = [0u8; 16];
    OsRng.fill_bytes(&mut kid);
    let key_id = format!("k-{}", hex::encode(kid));
    let session = SessionId::random(&mut OsRng);
    let participants: Vec<Participant> = parts
        .iter()
        .zip(&ids)
        .map(|((p, _), (cert, _))| Participant {
            id: p.get() as u32,
            certificate: cert.clone(),
        })
        .collect();
    info!(%key_id, suite = %spec.suite, t = spec.threshold, n = parts.len(), "DKG starting");

    // Step 1: round-1 broadcasts.
    let start = on_all(core, &parts, "start", |p, mut c| {
        let req = DkgStartRequest {
            key_id: key_id.clone(),
            session: session.0.to_vec(),
            suite: spec.suite.name().to_string(),
            threshold: spec.threshold as u32,
            participants: participants.clone(),
            me: p.get() as u32,
            policy: spec.policy.clone(),
        };
        async move { c.dkg_start(req).await }
    })
    .await?;
    let round1: BTreeMap<ParticipantId, Vec<u8>> =
        start.into_iter().map(|(p, r)| (p, r.round1)).collect();

    // Step 2: everyone's round 1 to everyone; echoes and sealed shares back.
    let r1 = on_all(core, &parts, "round 1", |p, mut c| {
        let req = DkgRound1Request {
            session: session.0.to_vec(),
            round1: round1
                .iter()
                .filter(|(q, _)| **q != p)
                .map(|(q, e)| relayed(*q, p, e))
                .collect(),
        };
        async move { c.dkg_round1(req).await }
    })
    .await?;
    let mut echoes: BTreeMap<ParticipantId, Vec<u8>> = BTreeMap::new();
    let mut sealed: Vec<(ParticipantId, ParticipantId, Vec<u8>)> = Vec::new();
    for (p, r) in r1 {
        echoes.insert(p, r.echo);
        for s in r.shares {
            let to = api::participant("shares.to", s.to)?;
            sealed.push((p, to, s.envelope));
        }
    }

    // Step 3: echoes and the shares addressed to each; confirmations back.
    let r2 = on_all(core, &parts, "round 2", |p, mut c| {
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
        async move { c.dkg_round2(req).await }
    })
    .await?;
    let mut confirmations = Vec::new();
    let mut key_sets: BTreeMap<Vec<u8>, Vec<ParticipantId>> = BTreeMap::new();
    for (p, r) in r2 {
        confirmations.push((p, r.confirmation));
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
    let (public_key, digest) = with_suite!(spec.suite, C => {
        let set = PublicKeySet::<C>::from_bytes(&pks)
            .map_err(|e| Status::aborted(format!("DKG: public key set: {e}")))?;
        (set.public_key(), set.digest())
    });
    let ids_list: Vec<ParticipantId> = parts.iter().map(|(p, _)| *p).collect();
    dkg::check_confirmations(
        &roster,
        spec.suite,
        DKG_KINDS,
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

    // Step 4: every signer checks every confirmation and activates the key.
    let all_conf: Vec<(ParticipantId, Vec<u8>)> = confirmations.clone();
    on_all(core, &parts, "finalize", |p, mut c| {
        let req = DkgFinalizeRequest {
            session: session.0.to_vec(),
            confirmations: all_conf.iter().map(|(q, e)| relayed(*q, p, e)).collect(),
        };
        async move { c.dkg_finalize(req).await }
    })
    .await?;

    let created_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
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
        public_key: hex::encode(public_key),
        public_key_set: hex::encode(&pks),
        tier: spec.tier,
        policy: spec.policy,
        rotated_from: String::new(),
        rotated_to: String::new(),
        state: "active".into(),
        created_at,
        dkg_session: session.to_string(),
    };

    // Round-2 shares are secret (sealed to their recipients): not in the transcript.
    let _ = sealed;
    let transcript = DkgTranscript {
        format: DKG_FORMAT.into(),
        previous_public_key_set: None,
        key_id: key_id.clone(),
        suite: meta.suite.clone(),
        threshold: meta.threshold,
        session: session.to_string(),
        participants: parts
            .iter()
            .zip(&ids)
            .map(|((p, h), (cert, id))| Party {
                id: p.get(),
                name: h.name.clone(),
                identity: hex::encode(id.to_bytes()),
                certificate: Some(hex::encode(cert)),
            })
            .collect(),
        round1: msgs(&round1),
        echoes: msgs(&echoes),
        confirmations: msgs(&confirmations.iter().cloned().collect()),
        public_key_set: meta.public_key_set.clone(),
        public_key: meta.public_key.clone(),
    };
    // The ceremony is in the audit log before the key exists for clients.
    let entry = KeyCreated {
        name: meta.name.clone(),
        tier: meta.tier.clone(),
        policy: meta.policy.clone(),
        transcript,
    };
    core.audit
        .append(KEY_CREATED, &entry)
        .await
        .map_err(crate::audit::refused)?;
    // A copy for auditors who replay one ceremony (`custody audit replay FILE`).
    let path = core.transcripts.join(format!("dkg-{key_id}.json"));
    tokio::task::spawn_blocking(move || {
        let json = serde_json::to_vec_pretty(&entry.transcript).unwrap_or_default();
        if let Err(e) = std::fs::write(&path, json) {
            warn!("transcript {}: {e}", path.display());
        }
    })
    .await
    .map_err(|e| Status::internal(format!("task: {e}")))?;
    core.record_key(&meta).await?;
    info!(%key_id, public_key = %meta.public_key, "key created");
    Ok(meta)
}
