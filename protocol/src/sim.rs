//! In-memory simulation of whole ceremonies: every participant runs the real rounds,
//! and a relay (standing in for the coordinator) carries every message through a
//! `tamper` hook that tests use to corrupt, drop, swap or replay messages.
//!
//! Used by the test suites, the baseline benchmarks and `custody demo`. Nothing here is
//! a shortcut: messages are encoded, signed, sealed, relayed, opened and decoded
//! exactly as across a network.

use std::collections::BTreeMap;

use rand_core::{CryptoRng, RngCore};

use crate::dkg::{self, DkgConfig};
use crate::error::Error;
use crate::identity::{self, open_from, Identity, IdentityKey, Roster};
use crate::ids::{ParticipantId, SessionId};
use crate::keys::{KeyShare, PublicKeySet};
use crate::repair::{self, RepairConfig};
use crate::sign::{self, Commitments, ShareMessage, SigningPackage, COORDINATOR};
use crate::suite::EngineSuite;
use crate::wire::{self, Header, Kind};

/// Where a message is in a ceremony, for the tamper hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// DKG or refresh round-1 broadcast.
    Round1,
    /// Echo of round 1.
    Echo,
    /// Sealed round-2 share.
    Round2,
    /// Final confirmation.
    Confirm,
    /// Signer's nonce commitments.
    Commitments,
    /// Coordinator's signing package.
    Package,
    /// Signer's signature share.
    Share,
    /// Repair delta between helpers.
    RepairDelta,
    /// Repair sigma to the participant being repaired.
    RepairSigma,
}

/// A hook that sees every message `(step, from, to, bytes)` in transit and may change it.
/// Returning `false` drops the message.
pub type Tamper<'a> = &'a mut dyn FnMut(Step, ParticipantId, ParticipantId, &mut Vec<u8>) -> bool;

/// A hook that delivers everything unchanged.
pub fn honest(_: Step, _: ParticipantId, _: ParticipantId, _: &mut Vec<u8>) -> bool {
    true
}

/// The participants of a simulation: identities and their roster (the coordinator's
/// identity included, as [`COORDINATOR`]).
#[derive(Debug)]
pub struct Participants {
    /// Each participant's secret identity.
    pub identities: BTreeMap<ParticipantId, IdentityKey>,
    /// The coordinator's identity (signs signing packages).
    pub coordinator: IdentityKey,
    /// Everyone's public identity.
    pub roster: Roster,
}

impl Participants {
    /// `n` participants numbered 1..=n with fresh identities.
    pub fn generate<R: RngCore + CryptoRng>(n: u16, rng: &mut R) -> Self {
        let identities: BTreeMap<_, _> = ParticipantId::range(n)
            .into_iter()
            .map(|p| (p, IdentityKey::generate(rng)))
            .collect();
        let coordinator = IdentityKey::generate(rng);
        let mut roster: Roster = identities.iter().map(|(p, k)| (*p, k.public())).collect();
        roster.insert(COORDINATOR, coordinator.public());
        Participants {
            identities,
            coordinator,
            roster,
        }
    }

    /// Participant ids, ascending.
    pub fn ids(&self) -> Vec<ParticipantId> {
        self.identities.keys().copied().collect()
    }
}

/// Result of a DKG or refresh for every participant.
pub type Outcome<C> = BTreeMap<ParticipantId, Result<KeyShare<C>, Error>>;

/// A finished DKG or refresh: each participant's result and the signed confirmations
/// of those that finished.
#[derive(Debug)]
pub struct Ceremony<C: EngineSuite> {
    /// Each participant's share or error.
    pub results: Outcome<C>,
    /// `(sender, signed confirmation)` of every participant that finished.
    pub confirmations: Vec<(ParticipantId, Vec<u8>)>,
}

impl<C: EngineSuite> Ceremony<C> {
    /// Every share, or the first error.
    pub fn shares(self) -> Result<BTreeMap<ParticipantId, KeyShare<C>>, Error> {
        self.results
            .into_iter()
            .map(|(p, r)| r.map(|s| (p, s)))
            .collect()
    }
}

/// Runs a DKG among all participants with threshold `t`.
pub fn dkg<C: EngineSuite, R: RngCore + CryptoRng>(
    parts: &Participants,
    threshold: u16,
    session: SessionId,
    rng: &mut R,
    tamper: Tamper<'_>,
) -> Ceremony<C> {
    let ids = parts.ids();
    let mut states = BTreeMap::new();
    let mut out: Outcome<C> = BTreeMap::new();
    for (p, identity) in &parts.identities {
        let cfg = DkgConfig {
            session,
            threshold,
            participants: ids.clone(),
            me: *p,
        };
        match dkg::start::<C, _>(cfg, identity, rng) {
            Ok(s) => {
                states.insert(*p, s);
            }
            Err(e) => {
                out.insert(*p, Err(e));
            }
        }
    }
    run_rounds(parts, states, rng, tamper, out)
}

/// Runs a refresh of every participant's share.
pub fn refresh<C: EngineSuite, R: RngCore + CryptoRng>(
    parts: &Participants,
    shares: BTreeMap<ParticipantId, KeyShare<C>>,
    session: SessionId,
    rng: &mut R,
    tamper: Tamper<'_>,
) -> Ceremony<C> {
    let mut states = BTreeMap::new();
    let mut out: Outcome<C> = BTreeMap::new();
    for (p, share) in shares {
        let identity = &parts.identities[&p];
        match dkg::start_refresh::<C, _>(session, share, identity, rng) {
            Ok(s) => {
                states.insert(p, s);
            }
            Err(e) => {
                out.insert(p, Err(e));
            }
        }
    }
    run_rounds(parts, states, rng, tamper, out)
}

fn run_rounds<C: EngineSuite, R: RngCore + CryptoRng>(
    parts: &Participants,
    states: BTreeMap<ParticipantId, (dkg::AwaitingRound1<C>, Vec<u8>)>,
    rng: &mut R,
    tamper: Tamper<'_>,
    mut out: Outcome<C>,
) -> Ceremony<C> {
    let ids = parts.ids();
    // Round 1: every broadcast goes to every other participant, through the relay.
    let mut inbox: BTreeMap<ParticipantId, Vec<(ParticipantId, Vec<u8>)>> = BTreeMap::new();
    for (from, (_, msg)) in &states {
        for to in ids.iter().filter(|p| *p != from) {
            let mut m = msg.clone();
            if tamper(Step::Round1, *from, *to, &mut m) {
                inbox.entry(*to).or_default().push((*from, m));
            }
        }
    }
    let mut round2 = BTreeMap::new();
    let mut echoes: BTreeMap<ParticipantId, Vec<(ParticipantId, Vec<u8>)>> = BTreeMap::new();
    let mut shares_in: BTreeMap<ParticipantId, Vec<(ParticipantId, Vec<u8>)>> = BTreeMap::new();
    for (p, (state, _)) in states {
        let identity = &parts.identities[&p];
        let msgs = inbox.remove(&p).unwrap_or_default();
        match state.receive(identity, &parts.roster, labelled(&msgs), rng) {
            Ok((next, sent)) => {
                for to in ids.iter().filter(|q| **q != p) {
                    let mut m = sent.echo.clone();
                    if tamper(Step::Echo, p, *to, &mut m) {
                        echoes.entry(*to).or_default().push((p, m));
                    }
                }
                for (to, mut m) in sent.shares {
                    if tamper(Step::Round2, p, to, &mut m) {
                        shares_in.entry(to).or_default().push((p, m));
                    }
                }
                round2.insert(p, next);
            }
            Err(e) => {
                out.insert(p, Err(e));
            }
        }
    }
    let mut confirmations = Vec::new();
    for (p, state) in round2 {
        let identity = &parts.identities[&p];
        let e = echoes.remove(&p).unwrap_or_default();
        let s = shares_in.remove(&p).unwrap_or_default();
        let r = state
            .finish(identity, &parts.roster, labelled(&e), labelled(&s))
            .map(|(share, confirm)| {
                let mut m = confirm;
                if tamper(Step::Confirm, p, COORDINATOR, &mut m) {
                    confirmations.push((p, m));
                }
                share
            });
        out.insert(p, r);
    }
    Ceremony {
        results: out,
        confirmations,
    }
}

/// Borrows `(sender, bytes)` pairs as the engine's inbox type.
pub fn labelled(msgs: &[(ParticipantId, Vec<u8>)]) -> impl Iterator<Item = (ParticipantId, &[u8])> {
    msgs.iter().map(|(p, m)| (*p, m.as_slice()))
}

/// Runs one signature by `signers` over `message` and returns it. The coordinator
/// (relay) builds the package, signs it into an envelope and aggregates against
/// `public` (the key set it has on record).
#[allow(clippy::too_many_arguments)]
pub fn sign<C: EngineSuite, R: RngCore + CryptoRng>(
    parts: &Participants,
    public: &PublicKeySet<C>,
    shares: &BTreeMap<ParticipantId, KeyShare<C>>,
    signers: &[ParticipantId],
    message: &[u8],
    session: SessionId,
    rng: &mut R,
    tamper: Tamper<'_>,
) -> Result<[u8; 64], Error> {
    // Round 1: commitments, signed by each signer.
    let mut nonces = BTreeMap::new();
    let mut commitments = BTreeMap::new();
    for p in signers {
        let share = shares
            .get(p)
            .ok_or_else(|| Error::InvalidParameters(format!("{p} has no share")))?;
        let (n, c) = sign::commit(share, rng);
        let h = header::<C>(Kind::SigningCommitments, session, *p, Some(COORDINATOR));
        let mut env = identity::signed(&parts.identities[p], &h, &c)?;
        if !tamper(Step::Commitments, *p, COORDINATOR, &mut env) {
            continue;
        }
        let opened = open_from(&parts.roster, *p, &env)?;
        let (h, c) = wire::decode_with(
            opened.body,
            C::SUITE,
            Kind::SigningCommitments,
            &session,
            |_, r| Commitments::<C>::decode_body(r),
        )?;
        nonces.insert(h.from, n);
        commitments.insert(h.from, c);
    }
    let package = SigningPackage::new(commitments, message.to_vec())?;
    let h = header::<C>(Kind::SigningPackage, session, COORDINATOR, None);
    let package_msg = wire::encode(&h, &package)?;
    let expected_transcript = sign::transcript_digest(SIM_KEY_ID, SIM_REQUEST_ID, &package_msg);
    let package_env = identity::seal_envelope(&parts.coordinator, &package_msg)?;
    // Round 2: each signer checks the coordinator's envelope, signs, returns its share.
    let mut sig_shares = BTreeMap::new();
    for (p, n) in nonces {
        let mut env = package_env.clone();
        if !tamper(Step::Package, COORDINATOR, p, &mut env) {
            continue;
        }
        let opened = open_from(&parts.roster, COORDINATOR, &env)?;
        let (_, pkg) = wire::decode_with(
            opened.body,
            C::SUITE,
            Kind::SigningPackage,
            &session,
            |_, r| SigningPackage::<C>::decode_body(r),
        )?;
        let share = ShareMessage {
            transcript: sign::transcript_digest(SIM_KEY_ID, SIM_REQUEST_ID, opened.body),
            share: n.sign(&shares[&p], &pkg)?,
        };
        let h = header::<C>(Kind::SignatureShare, session, p, Some(COORDINATOR));
        let mut env = identity::signed(&parts.identities[&p], &h, &share)?;
        if !tamper(Step::Share, p, COORDINATOR, &mut env) {
            continue;
        }
        let opened = open_from(&parts.roster, p, &env)?;
        let (h, s) = wire::decode_with(
            opened.body,
            C::SUITE,
            Kind::SignatureShare,
            &session,
            |_, r| ShareMessage::<C>::decode_body(r),
        )?;
        if s.transcript != expected_transcript {
            // The share confirms another request or package than ours.
            return Err(Error::InvalidSignatureShare {
                culprits: vec![h.from],
            });
        }
        if sig_shares.insert(h.from, s.share).is_some() {
            return Err(Error::Duplicate {
                round: "signature share",
                culprit: h.from,
            });
        }
    }
    sign::aggregate(public, &package, &sig_shares)
}

/// The key id simulated signing binds into each share's transcript digest.
pub const SIM_KEY_ID: &str = "sim";
/// The request id simulated signing binds into each share's transcript digest.
pub const SIM_REQUEST_ID: &str = "sim";

/// Recovers `lost`'s share with the help of `helpers`.
#[allow(clippy::too_many_arguments)]
pub fn repair<C: EngineSuite, R: RngCore + CryptoRng>(
    parts: &Participants,
    shares: &BTreeMap<ParticipantId, KeyShare<C>>,
    helpers: &[ParticipantId],
    lost: ParticipantId,
    public: PublicKeySet<C>,
    session: SessionId,
    rng: &mut R,
    tamper: Tamper<'_>,
) -> Result<KeyShare<C>, Error> {
    let cfg = RepairConfig {
        session,
        helpers: helpers.to_vec(),
        lost,
    };
    let mut states = BTreeMap::new();
    let mut inbox: BTreeMap<ParticipantId, Vec<(ParticipantId, Vec<u8>)>> = BTreeMap::new();
    for h in helpers {
        let share = shares
            .get(h)
            .ok_or_else(|| Error::InvalidParameters(format!("helper {h} has no share")))?;
        let (state, deltas) =
            repair::helper_start(cfg.clone(), share, &parts.identities[h], &parts.roster, rng)?;
        for (to, mut m) in deltas {
            if tamper(Step::RepairDelta, *h, to, &mut m) {
                inbox.entry(to).or_default().push((*h, m));
            }
        }
        states.insert(*h, state);
    }
    let mut sigmas = Vec::new();
    for (h, state) in states {
        let msgs = inbox.remove(&h).unwrap_or_default();
        let mut sigma = state.finish(&parts.identities[&h], &parts.roster, labelled(&msgs), rng)?;
        if tamper(Step::RepairSigma, h, lost, &mut sigma) {
            sigmas.push((h, sigma));
        }
    }
    repair::recover(
        &cfg,
        public,
        &parts.identities[&lost],
        &parts.roster,
        labelled(&sigmas),
    )
}

fn header<C: EngineSuite>(
    kind: Kind,
    session: SessionId,
    from: ParticipantId,
    to: Option<ParticipantId>,
) -> Header {
    Header {
        suite: C::SUITE,
        kind,
        session,
        from,
        to,
    }
}
