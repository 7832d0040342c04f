//! Repairable threshold scheme: recover a lost share from `t` helpers without ever
//! reconstructing the key (`frost_core::keys::repairable`, after Laing & Stinson, "A
//! survey and refinement of repairable threshold schemes", §4).
//!
//! 1. Each helper calls [`helper_start`] → [`HelperAwaitingDeltas`] and one sealed
//!    delta for every other helper (its own delta stays in the state).
//! 2. Each helper calls [`HelperAwaitingDeltas::finish`] with the deltas addressed to it
//!    → one sealed sigma for the participant being repaired.
//! 3. The participant being repaired calls [`recover`] with every helper's sigma and
//!    the (public) key set; the recovered share is checked against its verifying share,
//!    which frost itself does not do.

use std::collections::BTreeMap;

use frost_core::keys::repairable::{Delta, Sigma};
use frost_core::keys::SigningShare;
use rand_core::{CryptoRng, RngCore};

use crate::error::Error;
use crate::identity::{self, Identity, Roster};
use crate::ids::{ParticipantId, SessionId};
use crate::keys::{frost_err, KeyShare, PublicKeySet};
use crate::suite::EngineSuite;
use crate::wire::{self, Header, Kind, Reader};

/// Parameters of one repair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairConfig {
    /// Session id.
    pub session: SessionId,
    /// The helpers (at least `t`, ascending), each holding a share.
    pub helpers: Vec<ParticipantId>,
    /// The participant whose share is being recovered.
    pub lost: ParticipantId,
}

impl RepairConfig {
    fn validate<C: EngineSuite>(&self, public: &PublicKeySet<C>) -> Result<(), Error> {
        if self.helpers.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::InvalidParameters(
                "helpers must be unique and ascending".into(),
            ));
        }
        if self.helpers.len() < public.threshold as usize {
            return Err(Error::BelowThreshold {
                have: self.helpers.len(),
                threshold: public.threshold,
            });
        }
        if self.helpers.contains(&self.lost) {
            return Err(Error::InvalidParameters(
                "the lost participant cannot help".into(),
            ));
        }
        if let Some(p) = self
            .helpers
            .iter()
            .chain(std::iter::once(&self.lost))
            .find(|p| !public.participants.contains(p))
        {
            return Err(Error::InvalidParameters(format!(
                "{p} holds no share of this key"
            )));
        }
        Ok(())
    }
}

/// Signed, sealed messages to send, by recipient.
pub type Outgoing = BTreeMap<ParticipantId, Vec<u8>>;

/// A helper's state between step 1 and step 2.
pub struct HelperAwaitingDeltas<C: EngineSuite> {
    cfg: RepairConfig,
    me: ParticipantId,
    own_delta: Delta<C>,
}

impl<C: EngineSuite> core::fmt::Debug for HelperAwaitingDeltas<C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HelperAwaitingDeltas")
            .field("cfg", &self.cfg)
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

fn header<C: EngineSuite>(
    kind: Kind,
    cfg: &RepairConfig,
    from: ParticipantId,
    to: ParticipantId,
) -> Header {
    Header {
        suite: C::SUITE,
        kind,
        session: cfg.session,
        from,
        to: Some(to),
    }
}

fn scalar_of<C: EngineSuite>(
    from: ParticipantId,
    pt: &[u8],
) -> Result<frost_core::Scalar<C>, Error> {
    let mut r = Reader::new(pt);
    let s =
        wire::get_scalar::<C>(&mut r, "repair value").map_err(|e| Error::decode(Some(from), e))?;
    r.finish().map_err(|e| Error::decode(Some(from), e))?;
    Ok(s)
}

/// Step 1 for a helper: splits `share`'s contribution into one delta per helper.
pub fn helper_start<C: EngineSuite, R: RngCore + CryptoRng>(
    cfg: RepairConfig,
    share: &KeyShare<C>,
    identity: &dyn Identity,
    roster: &Roster,
    rng: &mut R,
) -> Result<(HelperAwaitingDeltas<C>, Outgoing), Error> {
    cfg.validate(share.public())?;
    let me = share.id();
    if !cfg.helpers.contains(&me) {
        return Err(Error::InvalidParameters(format!("{me} is not a helper")));
    }
    let helpers: Vec<_> = cfg.helpers.iter().map(|p| p.to_frost::<C>()).collect();
    let deltas = frost_core::keys::repairable::repair_share_part1(
        &helpers,
        share.key_package(),
        rng,
        cfg.lost.to_frost(),
    )
    .map_err(frost_err)?;
    let mut out = BTreeMap::new();
    let mut own_delta = None;
    for p in &cfg.helpers {
        let d = deltas
            .get(&p.to_frost::<C>())
            .ok_or_else(|| Error::Frost(format!("no delta for helper {p}")))?;
        if *p == me {
            own_delta = Some(*d);
            continue;
        }
        let recipient = roster.get(*p).ok_or(Error::UnknownSender(*p))?;
        let h = header::<C>(Kind::RepairDelta, &cfg, me, *p);
        let pt = zeroize::Zeroizing::new(d.serialize());
        out.insert(
            *p,
            identity::signed_sealed(identity, rng, &h, recipient, &pt)?,
        );
    }
    let own_delta = own_delta.ok_or_else(|| Error::Frost("no delta for ourselves".into()))?;
    Ok((HelperAwaitingDeltas { cfg, me, own_delta }, out))
}

impl<C: EngineSuite> HelperAwaitingDeltas<C> {
    /// Step 2 for a helper: sums the deltas addressed to it (one from each other
    /// helper) into a sigma sealed to the participant being repaired.
    pub fn finish<'a, R: RngCore + CryptoRng>(
        self,
        identity: &dyn Identity,
        roster: &Roster,
        deltas: impl crate::dkg::Inbox<'a>,
        rng: &mut R,
    ) -> Result<Vec<u8>, Error> {
        let mut got = BTreeMap::new();
        for (from, env) in deltas {
            let pt = identity::open_sealed(
                identity,
                roster,
                from,
                env,
                C::SUITE,
                Kind::RepairDelta,
                &self.cfg.session,
                self.me,
            )?;
            if !self.cfg.helpers.contains(&from) || from == self.me {
                return Err(Error::UnknownSender(from));
            }
            let d = Delta::<C>::new(scalar_of::<C>(from, &pt)?);
            if got.insert(from, d).is_some() {
                return Err(Error::Duplicate {
                    round: "repair delta",
                    culprit: from,
                });
            }
        }
        let expected: Vec<_> = self
            .cfg
            .helpers
            .iter()
            .copied()
            .filter(|p| *p != self.me)
            .collect();
        if !got.keys().eq(expected.iter()) {
            return Err(Error::WrongParticipants {
                round: "repair delta",
                expected,
                got: got.keys().copied().collect(),
            });
        }
        let mut all: Vec<Delta<C>> = got.into_values().collect();
        all.push(self.own_delta);
        let sigma = frost_core::keys::repairable::repair_share_part2(&all);
        let recipient = roster
            .get(self.cfg.lost)
            .ok_or(Error::UnknownSender(self.cfg.lost))?;
        let h = header::<C>(Kind::RepairSigma, &self.cfg, self.me, self.cfg.lost);
        let pt = zeroize::Zeroizing::new(sigma.serialize());
        identity::signed_sealed(identity, rng, &h, recipient, &pt)
    }
}

/// Step 3 for the participant being repaired: combines one sigma from every helper into
/// its share, and checks the share against its verifying share in `public`.
pub fn recover<'a, C: EngineSuite>(
    cfg: &RepairConfig,
    public: PublicKeySet<C>,
    identity: &dyn Identity,
    roster: &Roster,
    sigmas: impl crate::dkg::Inbox<'a>,
) -> Result<KeyShare<C>, Error> {
    cfg.validate(&public)?;
    let mut got = BTreeMap::new();
    for (from, env) in sigmas {
        let pt = identity::open_sealed(
            identity,
            roster,
            from,
            env,
            C::SUITE,
            Kind::RepairSigma,
            &cfg.session,
            cfg.lost,
        )?;
        if !cfg.helpers.contains(&from) {
            return Err(Error::UnknownSender(from));
        }
        let s = Sigma::<C>::new(scalar_of::<C>(from, &pt)?);
        if got.insert(from, s).is_some() {
            return Err(Error::Duplicate {
                round: "repair sigma",
                culprit: from,
            });
        }
    }
    if !got.keys().eq(cfg.helpers.iter()) {
        return Err(Error::WrongParticipants {
            round: "repair sigma",
            expected: cfg.helpers.clone(),
            got: got.keys().copied().collect(),
        });
    }
    let sigmas: Vec<_> = got.into_values().collect();
    let kp = frost_core::keys::repairable::repair_share_part3(
        &sigmas,
        cfg.lost.to_frost(),
        public.frost_package(),
    )
    .map_err(frost_err)?;
    let share: SigningShare<C> = *kp.signing_share();
    KeyShare::new(cfg.lost, share, public)
}

/// What every helper and, once repaired, the participant being repaired sign about a
/// repair: `TaggedHash("custody/v1/repair-attest", key id, session, public key set
/// digest, policy digest)`. The participant being repaired lost everything but its
/// identity, so it takes the key set and policy only with every helper's attestation.
pub fn attestation_digest(
    key_id: &str,
    session: &SessionId,
    public_key_set_digest: &[u8; 32],
    policy_digest: &[u8; 32],
    roster_digest: &[u8; 32],
    state: &str,
    policy_version: u64,
) -> [u8; 32] {
    crate::hash::TaggedHash::new("custody/v1/repair-attest")
        .part(key_id.as_bytes())
        .part(session.as_bytes())
        .part(public_key_set_digest)
        .part(policy_digest)
        .part(roster_digest)
        .part(state.as_bytes())
        .part(&policy_version.to_be_bytes())
        .finish()
}

/// A digest of who is who in a key: `TaggedHash("custody/v1/roster", (u16 id ‖ 64-byte
/// identity)*)` ascending by id. Attested in a repair, so the participant being
/// repaired stores exactly the identities its helpers hold.
pub fn roster_digest(roster: &Roster) -> [u8; 32] {
    let mut h = crate::hash::TaggedHash::new("custody/v1/roster");
    for (p, id) in roster.iter() {
        h = h.part(&p.get().to_be_bytes()).part(&id.to_bytes());
    }
    h.finish()
}

/// Whether `signature` is `signer`'s (strict Ed25519) over an attestation `digest`.
pub fn verify_attestation(
    signer: &crate::IdentityPublic,
    digest: &[u8; 32],
    signature: &[u8],
) -> bool {
    let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&signer.verify) else {
        return false;
    };
    let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else {
        return false;
    };
    vk.verify_strict(digest, &sig).is_ok()
}
