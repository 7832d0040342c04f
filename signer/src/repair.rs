//! Repair: t helpers give a signer that lost its database (identity intact) its share
//! back, without reconstructing the key (`custody_protocol::repair`, after FROST's
//! `keys::repairable`).
//!
//! A helper answers [`Core::repair_help`] (its deltas, and an attestation of the key
//! set, policy, roster and state it holds) and [`Core::repair_sigma`]; the lost signer
//! takes the sigmas in [`Core::repair_recover`], and accepts the key set and policy
//! only if every helper attested them, so the coordinator alone cannot give it another.

use std::time::Instant;

use custody_audit::export as ax;
use custody_protocol::repair::{self, RepairConfig};
use custody_protocol::{sim, with_suite, ParticipantId, SessionId, Suite};
use rand_core::OsRng;
use tracing::{info, warn};

use crate::core::Core;
use crate::dkg::{confirmed_entry, Inbox, DKG_TTL};
use crate::error::{Error, Result};
use crate::keys::{by_suite, with_key, Typed};
use crate::sessions::{AnyRepair, RepairSession};
use crate::store::{self, KeyRecord, KeyState};

/// The coordinator's ask to help repair `lost`'s share of `key_id`.
#[derive(Debug)]
pub(crate) struct RepairHelp {
    pub key_id: String,
    pub session: SessionId,
    pub helpers: Vec<ParticipantId>,
    pub lost: ParticipantId,
}

/// A helper's first answer: deltas by recipient, and its attestation.
#[derive(Debug)]
pub(crate) struct HelpOut {
    pub me: ParticipantId,
    pub deltas: Vec<(ParticipantId, Vec<u8>)>,
    pub attestation: Vec<u8>,
}

/// The coordinator's ask to recover this signer's lost share.
#[derive(Debug)]
pub(crate) struct RepairRecover {
    pub key_id: String,
    pub session: SessionId,
    pub suite: Suite,
    pub me: ParticipantId,
    pub helpers: Vec<ParticipantId>,
    /// The state the helpers attest.
    pub state: KeyState,
    pub participants: Vec<(ParticipantId, Vec<u8>)>,
    pub policy: hot_warm_cold::Policy,
    pub policy_version: u64,
    pub public_key_set: Vec<u8>,
    pub sigmas: Inbox,
    pub attestations: Inbox,
}

impl Core {
    /// Step 1 as a helper: our deltas for each helper, and our attestation of what we
    /// hold of the key.
    pub async fn repair_help(&self, ask: RepairHelp) -> Result<HelpOut> {
        let rec = self.record(&ask.key_id)?;
        let k = self
            .key(&ask.key_id)
            .ok_or_else(|| Error::Precondition(format!("key {} has no share here", ask.key_id)))?;
        let roster = rec.roster().map_err(|e| Error::internal("record", e))?;
        let cfg = RepairConfig {
            session: ask.session,
            helpers: ask.helpers.clone(),
            lost: ask.lost,
        };
        let (state, out, set_digest, me) = with_key!(&k, C, l => {
            let (state, out) = repair::helper_start(cfg, &l.share, &*self.identity, &roster, &mut OsRng)
                .map_err(Error::protocol("repair"))?;
            (C::repair(state), out, l.share.public().digest(), l.share.id())
        });
        let digest = repair::attestation_digest(
            &ask.key_id,
            &ask.session,
            &set_digest,
            &k.policy().digest(),
            &repair::roster_digest(&roster),
            k.state().name(),
            rec.policy_version,
        );
        let attestation = self
            .identity
            .sign_raw(&digest)
            .map_err(|e| Error::Unavailable(format!("identity key: {e}")))?;
        self.audit
            .append(
                ax::REPAIR_HELPED,
                &ax::RepairHelped {
                    key_id: ask.key_id.clone(),
                    session: ask.session.to_string(),
                    lost: ask.lost.get(),
                    helpers: ask.helpers.iter().map(|h| h.get()).collect(),
                },
            )
            .await?;
        let mut repairs = self.repairs.lock().expect("lock");
        repairs.retain(|_, s| s.started.elapsed() < DKG_TTL);
        repairs.insert(
            ask.session,
            RepairSession {
                key_id: ask.key_id.clone(),
                roster,
                state,
                started: Instant::now(),
            },
        );
        warn!(key_id = %ask.key_id, lost = %ask.lost, "helping to repair a lost share");
        Ok(HelpOut {
            me,
            deltas: out.into_iter().collect(),
            attestation: attestation.to_vec(),
        })
    }

    /// Step 2 as a helper: every helper's delta for us in, our sigma out.
    pub fn repair_sigma(&self, session: SessionId, deltas: Inbox) -> Result<Vec<u8>> {
        let s = self
            .repairs
            .lock()
            .expect("lock")
            .remove(&session)
            .ok_or_else(|| {
                Error::NotFound("no repair session with this id (expired or never started)".into())
            })?;
        let sigma = by_suite!(s.state, AnyRepair, C, state => state
            .finish(&*self.identity, &s.roster, sim::labelled(&deltas), &mut OsRng)
            .map_err(Error::protocol("repair"))?);
        info!(key_id = %s.key_id, "repair sigma sent");
        Ok(sigma)
    }

    /// As the lost signer: the share recovered from the sigmas, under the key set and
    /// policy every helper attested; stored, recorded, and attested back.
    pub async fn repair_recover(&self, ask: RepairRecover) -> Result<Vec<u8>> {
        let _held = self.lock_record(&ask.key_id).await;
        if let Some(rec) = self.store.get(&ask.key_id)? {
            // A share here, or a tombstone: a destroyed key stays destroyed.
            return Err(Error::AlreadyExists(format!(
                "this signer has a record of key {} ({}); it is not repaired over it",
                ask.key_id,
                rec.state.name()
            )));
        }
        let roster = self.roster_from_certificates(&ask.participants)?;
        if roster.get(ask.me) != Some(&self.identity.public()) {
            return Err(Error::Invalid(format!(
                "participant {} is not this signer",
                ask.me
            )));
        }
        let cfg = RepairConfig {
            session: ask.session,
            helpers: ask.helpers.clone(),
            lost: ask.me,
        };
        let attested = |set_digest: &[u8; 32]| {
            repair::attestation_digest(
                &ask.key_id,
                &ask.session,
                set_digest,
                &ask.policy.digest(),
                &repair::roster_digest(&roster),
                ask.state.name(),
                ask.policy_version,
            )
        };
        let (secret, pks, set_digest, pk) = with_suite!(ask.suite, C => {
            let public = custody_protocol::PublicKeySet::<C>::from_bytes(&ask.public_key_set)
                .map_err(|e| Error::Invalid(format!("public_key_set: {e}")))?;
            // Every helper must attest this key set and policy: the coordinator alone
            // cannot give us another.
            let digest = attested(&public.digest());
            for h in &ask.helpers {
                let id = roster
                    .get(*h)
                    .ok_or_else(|| Error::Invalid(format!("helper {h} is not a participant")))?;
                let ok = ask
                    .attestations
                    .iter()
                    .any(|(f, sig)| f == h && repair::verify_attestation(id, &digest, sig));
                if !ok {
                    return Err(Error::Forbidden(format!(
                        "helper {h} did not attest this key set and policy"
                    )));
                }
            }
            let set_digest = public.digest();
            let pks = public.to_bytes();
            let pk = public.public_key();
            let share = repair::recover(&cfg, public, &*self.identity, &roster, sim::labelled(&ask.sigmas))
                .map_err(Error::protocol("repair"))?;
            (share.to_secret_bytes(), pks, set_digest, pk)
        });
        let sealed = self
            .sealer
            .seal(&store::share_aad(&self.name, &ask.key_id), &secret)
            .map_err(|e| Error::internal("seal share", e))?;
        let rec = KeyRecord {
            key_id: ask.key_id.clone(),
            suite: ask.suite.name().to_string(),
            me: ask.me.get(),
            state: ask.state,
            session: ask.session.to_string(),
            roster: roster
                .iter()
                .map(|(p, id)| (p.get(), hex::encode(id.to_bytes())))
                .collect(),
            sealed_share: hex::encode(sealed),
            public_key_set: hex::encode(&pks),
            policy: ask.policy.clone(),
            created_at: self.now(),
            pending_refresh: None,
            last_refresh: String::new(),
            policy_version: ask.policy_version,
        };
        self.audit
            .append(
                ax::SHARE_REPAIRED,
                &confirmed_entry(&ask.key_id, &ask.session, &pk, &ask.policy),
            )
            .await?;
        self.store.put(&rec)?;
        let loaded = self.unseal(&rec)?;
        self.insert_key(&ask.key_id, loaded);
        let attestation = self
            .identity
            .sign_raw(&attested(&set_digest))
            .map_err(|e| Error::Unavailable(format!("identity key: {e}")))?;
        warn!(key_id = %ask.key_id, "share repaired from {} helpers", ask.helpers.len());
        Ok(attestation.to_vec())
    }
}
