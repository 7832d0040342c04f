//! This signer's side of a DKG (Pedersen DKG with proofs of knowledge, echo-checked
//! round 1, round-2 shares sealed end to end; `custody_protocol::dkg`), and the
//! session state it keeps between the coordinator's calls.
//!
//! A session's stage is typed: [`Stage<C>`] holds the protocol's own round types of its
//! suite, taken out by value for each step and put back only when the step did not
//! consume it, so a step at the wrong stage is refused without touching the state.
//! Refreshes run the same rounds (see [`crate::refresh`] for their start and end).

use std::sync::Arc;
use std::time::Instant;

use custody_audit::export as ax;
use custody_protocol::dkg::{self, DkgConfig, DKG_KINDS};
use custody_protocol::sign::COORDINATOR;
use custody_protocol::{
    sim, with_suite, IdentityPublic, KeyShare, ParticipantId, SessionId, Suite,
};
use rand_core::OsRng;
use tracing::{info, warn};

use crate::config::Fault;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::keys::{by_suite, Typed};
pub(crate) use crate::sessions::{AnyStage, DkgSession, Inbox, SessionInfo, Stage, DKG_TTL};
use crate::store::{self, KeyRecord, KeyState};

/// The coordinator's ask to start a DKG (or a refresh) on this signer.
#[derive(Debug)]
pub(crate) struct DkgStart {
    pub key_id: String,
    pub session: SessionId,
    pub suite: Suite,
    pub threshold: u16,
    pub me: ParticipantId,
    pub policy: hot_warm_cold::Policy,
    /// Every participant's id and certificate (a refresh reads only the ids).
    pub participants: Vec<(ParticipantId, Vec<u8>)>,
    pub refresh: bool,
    /// The coordinator's identity, from its certificate.
    pub coordinator: IdentityPublic,
}

/// Our round-1 answer: the echo digest and the sealed shares, by recipient.
#[derive(Debug)]
pub(crate) struct Round1Out {
    pub echo: Vec<u8>,
    pub shares: Vec<(ParticipantId, Vec<u8>)>,
}

/// Our round-2 answer: the signed confirmation and the public key set.
#[derive(Debug)]
pub(crate) struct Round2Out {
    pub confirmation: Vec<u8>,
    pub public_key_set: Vec<u8>,
}

fn wrong_stage() -> Error {
    Error::Precondition("DKG session is at another step".into())
}

impl Core {
    /// Starts a DKG (or a refresh) and returns our round-1 broadcast.
    pub async fn dkg_start(self: &Arc<Self>, ask: DkgStart) -> Result<Vec<u8>> {
        if ask.refresh {
            return self.start_refresh(ask).await;
        }
        if self.store.get(&ask.key_id)?.is_some() {
            return Err(Error::AlreadyExists(format!(
                "key {} already exists on this signer",
                ask.key_id
            )));
        }
        let mut roster = self.roster_from_certificates(&ask.participants)?;
        let participants = roster.ids();
        let me = ask.me;
        if roster.get(me) != Some(&self.identity.public()) {
            return Err(Error::Invalid(format!(
                "participant {me} is not this signer"
            )));
        }
        roster.insert(COORDINATOR, ask.coordinator);
        let cfg = DkgConfig {
            session: ask.session,
            threshold: ask.threshold,
            participants: participants.clone(),
            me,
        };
        let (stage, round1) = with_suite!(ask.suite, C => {
            let (s, m) = dkg::start::<C, _>(cfg, &*self.identity, &mut OsRng)
                .map_err(Error::protocol("dkg start"))?;
            (C::stage(Stage::Round1(s)), m)
        });
        let round1 = if self.faults.is(Fault::BadProofOfKnowledge) {
            // The proof's response scalar is the body's last 32 bytes; its lowest bit
            // is the last byte's (big-endian, secp256k1) or the first's (Ed25519).
            let at = match ask.suite {
                Suite::Ed25519 => 32,
                _ => 1,
            };
            crate::fault::resign_altered(&*self.identity, &round1, at)?
        } else {
            round1
        };
        self.new_session(
            ask.session,
            SessionInfo {
                key_id: ask.key_id.clone(),
                refresh: false,
                policy: ask.policy,
                suite: ask.suite,
                participants,
                roster,
            },
            stage,
        )?;
        info!(key_id = %ask.key_id, suite = %ask.suite, %me, "DKG started");
        Ok(round1)
    }

    /// Registers a new session at its first stage (a session id is used once).
    pub fn new_session(
        &self,
        session: SessionId,
        info: SessionInfo,
        stage: AnyStage,
    ) -> Result<()> {
        let s = DkgSession {
            info,
            stage: Some(stage),
            started: Instant::now(),
        };
        let mut dkg = self.dkg.lock().expect("lock");
        dkg.retain(|_, s| s.started.elapsed() < DKG_TTL);
        if dkg.contains_key(&session) {
            return Err(Error::AlreadyExists("DKG session already started".into()));
        }
        dkg.insert(session, s);
        Ok(())
    }

    /// Takes a session's stage out (the session is busy until it is put back) if it
    /// is at `step`.
    fn take_stage(&self, session: &SessionId, step: u8) -> Result<(AnyStage, SessionInfo)> {
        let mut dkg = self.dkg.lock().expect("lock");
        dkg.retain(|_, s| s.started.elapsed() < DKG_TTL);
        let s = dkg.get_mut(session).ok_or_else(|| {
            Error::NotFound("no DKG session with this id (expired or never started)".into())
        })?;
        match &s.stage {
            None => return Err(Error::Precondition("DKG session is busy or failed".into())),
            Some(stage) if stage.step() != step => return Err(wrong_stage()),
            Some(_) => {}
        }
        let stage = s.stage.take().expect("checked");
        Ok((stage, s.info.clone()))
    }

    fn put_stage(&self, session: &SessionId, stage: AnyStage) {
        if let Some(s) = self.dkg.lock().expect("lock").get_mut(session) {
            s.stage = Some(stage);
        }
    }

    /// Ends a session.
    pub fn end_session(&self, session: &SessionId) {
        self.dkg.lock().expect("lock").remove(session);
    }

    /// Round 1: every peer's broadcast in; our echo and sealed shares out.
    pub async fn dkg_round1(
        self: &Arc<Self>,
        session: SessionId,
        msgs: Inbox,
    ) -> Result<Round1Out> {
        let (stage, info) = self.take_stage(&session, 1)?;
        let core = self.clone();
        let roster = info.roster.clone();
        let res = tokio::task::spawn_blocking(move || {
            by_suite!(stage, AnyStage, C, s => match s {
                Stage::Round1(state) => {
                    let (next, out) = state
                        .receive(&*core.identity, &roster, sim::labelled(&msgs), &mut OsRng)
                        .map_err(Error::protocol("dkg round 1"))?;
                    Ok((C::stage(Stage::Round2(next)), out))
                }
                _ => Err(wrong_stage()),
            })
        })
        .await
        .map_err(|e| Error::internal("dkg task", e))?;
        let (next, out) =
            res.inspect_err(|e| warn!(key_id = %info.key_id, "DKG round 1 failed: {e}"))?;
        self.put_stage(&session, next);
        let mut shares = Vec::with_capacity(out.shares.len());
        for (to, envelope) in out.shares {
            let envelope = if self.faults.is(Fault::GarbageRound2) {
                // A byte of the sealed share (the AEAD tag, at the end) altered.
                crate::fault::resign_altered(&*self.identity, &envelope, 1)?
            } else {
                envelope
            };
            shares.push((to, envelope));
        }
        Ok(Round1Out {
            echo: out.echo,
            shares,
        })
    }

    /// Round 2: every echo and our sealed shares in; our share stored (pending) and
    /// recorded, then our confirmation out.
    pub async fn dkg_round2(
        self: &Arc<Self>,
        session: SessionId,
        echoes: Inbox,
        shares: Inbox,
    ) -> Result<Round2Out> {
        let (stage, info) = self.take_stage(&session, 2)?;
        let core = self.clone();
        let roster = info.roster.clone();
        let key_id = info.key_id.clone();
        let res = tokio::task::spawn_blocking(move || {
            by_suite!(stage, AnyStage, C, s => match s {
                Stage::Round2(state) => {
                    let (share, confirmation) = state
                        .finish(&*core.identity, &roster, sim::labelled(&echoes), sim::labelled(&shares))
                        .map_err(Error::protocol("dkg round 2"))?;
                    let sealed = core
                        .sealer
                        .seal(&store::share_aad(&core.name, &key_id), &share.to_secret_bytes())
                        .map_err(|e| Error::internal("seal share", e))?;
                    let public = share.public();
                    let out = Round2Done {
                        sealed,
                        public_key_set: public.to_bytes(),
                        public_key: public.public_key().to_vec(),
                        me: share.id(),
                        confirmation,
                    };
                    let digest = public.digest();
                    Ok((C::stage(Stage::Confirmed { share, digest }), out))
                }
                _ => Err(wrong_stage()),
            })
        })
        .await
        .map_err(|e| Error::internal("dkg task", e))?;
        let (confirmed, done) =
            res.inspect_err(|e| warn!(key_id = %info.key_id, "DKG round 2 failed: {e}"))?;
        // Abandoned meanwhile (a refresh given up on): nothing is stored or confirmed.
        if !self.dkg.lock().expect("lock").contains_key(&session) {
            return Err(Error::NotFound(
                "no DKG session with this id (abandoned while round 2 ran)".into(),
            ));
        }
        if info.refresh {
            self.store_refreshed(&info, &session, &done).await?;
        } else {
            self.store_pending(&info, &session, &done).await?;
        }
        self.put_stage(&session, confirmed);
        Ok(Round2Out {
            confirmation: done.confirmation,
            public_key_set: done.public_key_set,
        })
    }

    /// A new key's share, durable (pending) and recorded before we confirm.
    async fn store_pending(
        &self,
        info: &SessionInfo,
        session: &SessionId,
        done: &Round2Done,
    ) -> Result<()> {
        let _held = self.lock_record(&info.key_id).await;
        let rec = KeyRecord {
            key_id: info.key_id.clone(),
            suite: info.suite.name().to_string(),
            me: done.me.get(),
            state: KeyState::Pending,
            session: session.to_string(),
            roster: info
                .roster
                .iter()
                .filter(|(p, _)| **p != COORDINATOR)
                .map(|(p, id)| (p.get(), hex::encode(id.to_bytes())))
                .collect(),
            sealed_share: hex::encode(&done.sealed),
            public_key_set: hex::encode(&done.public_key_set),
            policy: info.policy.clone(),
            created_at: self.now(),
            pending_refresh: None,
            last_refresh: String::new(),
            policy_version: 0,
        };
        self.store.put(&rec)?;
        // Recorded before the confirmation leaves.
        self.audit
            .append(
                ax::DKG_CONFIRMED,
                &confirmed_entry(&info.key_id, session, &done.public_key, &rec.policy),
            )
            .await?;
        info!(key_id = %info.key_id, "DKG share stored (pending confirmation)");
        Ok(())
    }

    /// The pending record made active, and its share loaded.
    fn activate<C: Typed>(&self, key_id: &str, share: KeyShare<C>) -> Result<crate::keys::AnyKey> {
        let mut rec = self
            .store
            .get(key_id)?
            .ok_or_else(|| Error::internal("dkg finalize", "pending key record missing"))?;
        rec.state = KeyState::Active;
        self.store.put(&rec)?;
        self.loaded::<C>(share, &rec)
    }

    /// Every participant's confirmation in: the key becomes active here (or, for a
    /// refresh, the refreshed share replaces the old one). Idempotent for refreshes.
    pub async fn dkg_finalize(&self, session: SessionId, confirmations: Inbox) -> Result<()> {
        // A refresh completes from its durable record (also after a restart).
        if let Some(rec) = self.store.refresh_record(&session.to_string())? {
            return self.apply_refresh(rec, &session, &confirmations).await;
        }
        let (stage, info) = self.take_stage(&session, 3)?;
        let _held = self.lock_record(&info.key_id).await;
        // Checked, then the record made active, then the key loaded; a failed check
        // puts the stage back (another set of confirmations may still come).
        let finished: std::result::Result<Result<_>, (AnyStage, custody_protocol::Error)> = by_suite!(stage, AnyStage, C, s => match s {
            Stage::Confirmed { share, digest } => match dkg::check_confirmations(
                &info.roster,
                info.suite,
                DKG_KINDS,
                &session,
                &info.participants,
                &digest,
                sim::labelled(&confirmations),
            ) {
                Err(e) => Err((C::stage(Stage::Confirmed { share, digest }), e)),
                Ok(_) => Ok(self.activate::<C>(&info.key_id, share)),
            },
            other => Ok(Err({
                self.put_stage(&session, C::stage(other));
                wrong_stage()
            })),
        });
        let loaded = match finished {
            Ok(done) => done?,
            Err((stage, e)) => {
                self.put_stage(&session, stage);
                return Err(Error::protocol("dkg confirmations")(e));
            }
        };
        self.insert_key(&info.key_id, loaded);
        self.end_session(&session);
        info!(key_id = %info.key_id, suite = %info.suite, "key active");
        Ok(())
    }
}

/// What round 2 produced, besides the share.
#[derive(Debug)]
pub(crate) struct Round2Done {
    pub sealed: Vec<u8>,
    pub public_key_set: Vec<u8>,
    pub public_key: Vec<u8>,
    pub me: ParticipantId,
    pub confirmation: Vec<u8>,
}

/// The audit entry of a confirmed (or refreshed, or repaired) share.
pub(crate) fn confirmed_entry(
    key_id: &str,
    session: &SessionId,
    public_key: &[u8],
    policy: &hot_warm_cold::Policy,
) -> ax::DkgConfirmed {
    ax::DkgConfirmed {
        key_id: key_id.to_string(),
        session: session.to_string(),
        public_key: hex::encode(public_key),
        policy_sha256: hex::encode(policy.digest()),
    }
}
