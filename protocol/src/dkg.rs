//! Distributed key generation and share refresh, as typed rounds.
//!
//! Pedersen DKG with proofs of knowledge (RFC 9591 appendix C, `frost_core::keys::dkg`)
//! and refresh-by-DKG (`frost_core::keys::refresh`: every participant deals a
//! zero-constant polynomial; new shares = old shares + deltas, group key unchanged, old
//! and new shares do not combine). Both run the same three steps:
//!
//! 1. [`start`] / [`start_refresh`] → [`AwaitingRound1`] and our signed round-1
//!    broadcast;
//! 2. [`AwaitingRound1::receive`] takes everyone's round-1 broadcasts (consuming the
//!    round-1 secret) → [`AwaitingRound2`], a signed *echo* (hash of every round-1
//!    message we saw) and one sealed round-2 share per peer;
//! 3. [`AwaitingRound2::finish`] takes every peer's echo and the round-2 shares
//!    addressed to us → our [`KeyShare`] and a signed confirmation of the resulting
//!    [`PublicKeySet`].
//!
//! The echo implements the broadcast-consistency check that the coordinator, being a
//! mere relay, cannot be trusted with: DKG completes for us only if every peer saw the
//! exact round-1 messages we saw. Round-2 shares are sealed end to end to the recipient
//! (see [`crate::identity`]). Every error a peer can cause names it.

use std::collections::BTreeMap;

use frost_core::keys::dkg::{round1, round2};
use frost_core::keys::{
    CoefficientCommitment, SecretShare, SigningShare, VerifiableSecretSharingCommitment,
};
use frost_core::{Group, Identifier, Signature};
use rand_core::{CryptoRng, RngCore};

use crate::error::{DecodeError, Error};
use crate::hash::TaggedHash;
use crate::identity::{self, open_from, Identity, Roster};
use crate::ids::{from_frost, ParticipantId, SessionId};
use crate::keys::{frost_err, validate_set, KeyShare, PublicKeySet};
use crate::suite::EngineSuite;
use crate::wire::{self, Body, Header, Kind, Reader, Writer};

/// Parameters of one DKG or refresh ceremony, as seen by one participant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DkgConfig {
    /// The ceremony's session id.
    pub session: SessionId,
    /// Signing threshold t.
    pub threshold: u16,
    /// Every participant, ascending.
    pub participants: Vec<ParticipantId>,
    /// Us.
    pub me: ParticipantId,
}

impl DkgConfig {
    fn others(&self) -> impl Iterator<Item = ParticipantId> + '_ {
        self.participants.iter().copied().filter(|p| *p != self.me)
    }
}

/// Which ceremony runs.
enum Mode<C: EngineSuite> {
    Dkg,
    Refresh(Box<KeyShare<C>>),
}

impl<C: EngineSuite> Mode<C> {
    fn kinds(&self) -> Kinds {
        match self {
            Mode::Dkg => Kinds {
                round1: Kind::DkgRound1,
                round2: Kind::DkgRound2,
                echo: Kind::DkgEcho,
                confirm: Kind::DkgConfirm,
            },
            Mode::Refresh(_) => Kinds {
                round1: Kind::RefreshRound1,
                round2: Kind::RefreshRound2,
                echo: Kind::RefreshEcho,
                confirm: Kind::RefreshConfirm,
            },
        }
    }
}

/// The message kinds of one ceremony type.
#[derive(Clone, Copy, Debug)]
pub struct Kinds {
    /// Round-1 broadcast.
    pub round1: Kind,
    /// Sealed round-2 share.
    pub round2: Kind,
    /// Echo of round 1.
    pub echo: Kind,
    /// Final confirmation.
    pub confirm: Kind,
}

/// The kinds of a DKG.
pub const DKG_KINDS: Kinds = Kinds {
    round1: Kind::DkgRound1,
    round2: Kind::DkgRound2,
    echo: Kind::DkgEcho,
    confirm: Kind::DkgConfirm,
};
/// The kinds of a refresh.
pub const REFRESH_KINDS: Kinds = Kinds {
    round1: Kind::RefreshRound1,
    round2: Kind::RefreshRound2,
    echo: Kind::RefreshEcho,
    confirm: Kind::RefreshConfirm,
};

/// A round-1 broadcast: the commitment to the sender's polynomial and its proof of
/// knowledge of the constant term.
///
/// Body: `u16 count ‖ count × element ‖ PoK R (element) ‖ PoK z (scalar)`. A DKG
/// commitment has `t` coefficients; a refresh commitment `t − 1` (its constant term is
/// the identity by construction and is not sent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Round1Package<C: EngineSuite>(pub(crate) round1::Package<C>);

impl<C: EngineSuite> Body for Round1Package<C> {
    fn encode_body(&self, w: &mut Writer) -> Result<(), Error> {
        let coeffs = self.0.commitment().coefficients();
        w.u16(coeffs.len() as u16);
        for c in coeffs {
            wire::put_element::<C>(w, &c.value())?;
        }
        let pok = self.0.proof_of_knowledge();
        wire::put_element::<C>(w, pok.R())?;
        wire::put_scalar::<C>(w, pok.z());
        Ok(())
    }
}

impl<C: EngineSuite> Round1Package<C> {
    /// Decodes a body with exactly `expected` coefficients.
    pub fn decode_body(r: &mut Reader<'_>, expected: usize) -> Result<Self, DecodeError> {
        let n = r.u16()? as usize;
        if n != expected {
            return Err(DecodeError::WrongCount {
                what: "commitment",
                len: n,
                expected,
            });
        }
        let mut coeffs = Vec::with_capacity(n);
        for _ in 0..n {
            coeffs.push(CoefficientCommitment::new(wire::get_element::<C>(
                r,
                "commitment",
            )?));
        }
        let r_elem = wire::get_element::<C>(r, "proof of knowledge")?;
        let z = wire::get_scalar::<C>(r, "proof of knowledge")?;
        Ok(Round1Package(round1::Package::new(
            VerifiableSecretSharingCommitment::new(coeffs),
            Signature::new(r_elem, z),
        )))
    }
}

/// Body of an echo or a confirmation: a 32-byte digest (echo), or the public key set
/// digest followed by the echo digest (confirmation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digests(pub Vec<[u8; 32]>);

impl Body for Digests {
    fn encode_body(&self, w: &mut Writer) -> Result<(), Error> {
        for d in &self.0 {
            w.bytes(d);
        }
        Ok(())
    }
}

impl Digests {
    pub(crate) fn decode(r: &mut Reader<'_>, n: usize) -> Result<Self, DecodeError> {
        (0..n)
            .map(|_| r.array::<32>())
            .collect::<Result<_, _>>()
            .map(Digests)
    }
}

/// The secret state after round 1. Consumed by [`AwaitingRound1::receive`].
pub struct AwaitingRound1<C: EngineSuite> {
    cfg: DkgConfig,
    mode: Mode<C>,
    secret: round1::SecretPackage<C>,
    own_round1: Vec<u8>,
}

impl<C: EngineSuite> core::fmt::Debug for AwaitingRound1<C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AwaitingRound1")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// What a participant sends after round 1.
#[derive(Debug, Clone)]
pub struct Round2Messages {
    /// Signed echo, for every peer.
    pub echo: Vec<u8>,
    /// Signed, sealed round-2 share for each peer.
    pub shares: BTreeMap<ParticipantId, Vec<u8>>,
}

/// The secret state after round 2. Consumed by [`AwaitingRound2::finish`].
pub struct AwaitingRound2<C: EngineSuite> {
    cfg: DkgConfig,
    mode: Mode<C>,
    secret: round2::SecretPackage<C>,
    round1: BTreeMap<Identifier<C>, round1::Package<C>>,
    echo: [u8; 32],
    own_echo: Vec<u8>,
}

impl<C: EngineSuite> core::fmt::Debug for AwaitingRound2<C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AwaitingRound2")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// Starts a DKG: draws our polynomial and returns the signed round-1 broadcast.
pub fn start<C: EngineSuite, R: RngCore + CryptoRng>(
    cfg: DkgConfig,
    identity: &dyn Identity,
    rng: &mut R,
) -> Result<(AwaitingRound1<C>, Vec<u8>), Error> {
    validate_set(cfg.threshold, &cfg.participants, Some(cfg.me))?;
    let n = cfg.participants.len() as u16;
    let (secret, package) =
        frost_core::keys::dkg::part1::<C, _>(cfg.me.to_frost(), n, cfg.threshold, &mut *rng)
            .map_err(frost_err)?;
    begin(cfg, Mode::Dkg, secret, package, identity)
}

/// Starts a refresh of `old`: same participants and threshold, same group key, new
/// shares. The old share is consumed; the new one comes out of
/// [`AwaitingRound2::finish`].
pub fn start_refresh<C: EngineSuite, R: RngCore + CryptoRng>(
    session: SessionId,
    old: KeyShare<C>,
    identity: &dyn Identity,
    rng: &mut R,
) -> Result<(AwaitingRound1<C>, Vec<u8>), Error> {
    let cfg = DkgConfig {
        session,
        threshold: old.public.threshold,
        participants: old.public.participants.clone(),
        me: old.me,
    };
    validate_set(cfg.threshold, &cfg.participants, Some(cfg.me))?;
    let n = cfg.participants.len() as u16;
    let (secret, package) = frost_core::keys::refresh::refresh_dkg_part1::<C, _>(
        cfg.me.to_frost(),
        n,
        cfg.threshold,
        &mut *rng,
    )
    .map_err(frost_err)?;
    begin(cfg, Mode::Refresh(Box::new(old)), secret, package, identity)
}

fn begin<C: EngineSuite>(
    cfg: DkgConfig,
    mode: Mode<C>,
    secret: round1::SecretPackage<C>,
    package: round1::Package<C>,
    identity: &dyn Identity,
) -> Result<(AwaitingRound1<C>, Vec<u8>), Error> {
    let header = Header {
        suite: C::SUITE,
        kind: mode.kinds().round1,
        session: cfg.session,
        from: cfg.me,
        to: None,
    };
    let own_round1 = wire::encode(&header, &Round1Package(package))?;
    let envelope = identity::seal_envelope(identity, &own_round1)?;
    Ok((
        AwaitingRound1 {
            cfg,
            mode,
            secret,
            own_round1,
        },
        envelope,
    ))
}

/// Hash of every round-1 message of a ceremony (bytes as signed, ascending sender).
pub fn echo_digest(
    session: &SessionId,
    kind: Kind,
    round1: &BTreeMap<ParticipantId, Vec<u8>>,
) -> [u8; 32] {
    let mut h = TaggedHash::new("custody/v1/round1-echo")
        .part(session.as_bytes())
        .part(&[kind as u8]);
    for (p, msg) in round1 {
        h = h.part(&p.get().to_be_bytes()).part(msg);
    }
    h.finish()
}

/// Messages as the relay delivers them: `(sender, signed envelope)`.
pub trait Inbox<'a>: IntoIterator<Item = (ParticipantId, &'a [u8])> {}
impl<'a, T: IntoIterator<Item = (ParticipantId, &'a [u8])>> Inbox<'a> for T {}

/// Opens one envelope per expected sender, checking header, session and that each peer
/// sends exactly once. Returns the message bytes for every peer.
fn collect<'a>(
    roster: &Roster,
    envelopes: impl Inbox<'a>,
    own: &[u8],
    cfg: &DkgConfig,
    suite: crate::Suite,
    kind: Kind,
    round: &'static str,
) -> Result<BTreeMap<ParticipantId, &'a [u8]>, Error> {
    let mut out = BTreeMap::new();
    for (from, env) in envelopes {
        let opened = open_from(roster, from, env)?;
        let h = opened.header;
        h.expect(suite, kind, &cfg.session)?;
        if h.from == cfg.me && opened.body == own {
            // Our own broadcast, relayed back to us: nothing to learn from it.
            continue;
        }
        if h.from == cfg.me || !cfg.participants.contains(&h.from) {
            return Err(Error::UnknownSender(h.from));
        }
        let expected_to = if kind.is_confidential() {
            Some(cfg.me)
        } else {
            None
        };
        if h.to != expected_to {
            return Err(Error::Misaddressed {
                sender: h.from,
                to: h.to.map_or(0, ParticipantId::get),
            });
        }
        if out.insert(h.from, opened.body).is_some() {
            return Err(Error::Duplicate {
                round,
                culprit: h.from,
            });
        }
    }
    let expected: Vec<_> = cfg.others().collect();
    if out.keys().copied().collect::<Vec<_>>() != expected {
        return Err(Error::WrongParticipants {
            round,
            expected,
            got: out.keys().copied().collect(),
        });
    }
    Ok(out)
}

fn map_culprit<C: EngineSuite>(cfg: &DkgConfig, e: frost_core::Error<C>) -> Error {
    match &e {
        frost_core::Error::InvalidProofOfKnowledge { culprit } => {
            if let Some(p) = from_frost(&cfg.participants, culprit) {
                return Error::InvalidProofOfKnowledge { culprit: p };
            }
        }
        frost_core::Error::InvalidSecretShare { culprit: Some(c) } => {
            if let Some(p) = from_frost(&cfg.participants, c) {
                return Error::InvalidSecretShare { culprit: p };
            }
        }
        _ => {}
    }
    frost_err(e)
}

impl<C: EngineSuite> AwaitingRound1<C> {
    /// The parameters.
    pub fn config(&self) -> &DkgConfig {
        &self.cfg
    }

    /// Takes every peer's signed round-1 broadcast (our own may be included: it is
    /// skipped when identical to what we sent, refused otherwise), verifies them and their proofs of
    /// knowledge, and returns the round-2 state with our echo and sealed shares.
    pub fn receive<'a, R: RngCore + CryptoRng>(
        self,
        identity: &dyn Identity,
        roster: &Roster,
        round1: impl Inbox<'a>,
        rng: &mut R,
    ) -> Result<(AwaitingRound2<C>, Round2Messages), Error> {
        let kinds = self.mode.kinds();
        let cfg = &self.cfg;
        let received = collect(
            roster,
            round1,
            &self.own_round1,
            cfg,
            C::SUITE,
            kinds.round1,
            "round 1",
        )?;
        let expected_coeffs = match self.mode {
            Mode::Dkg => cfg.threshold as usize,
            Mode::Refresh(_) => cfg.threshold as usize - 1,
        };
        let mut packages = BTreeMap::new();
        let mut all: BTreeMap<ParticipantId, Vec<u8>> = BTreeMap::new();
        for (p, msg) in &received {
            let (_, pkg) = wire::decode_with(msg, C::SUITE, kinds.round1, &cfg.session, |_, r| {
                Round1Package::<C>::decode_body(r, expected_coeffs)
            })?;
            packages.insert(p.to_frost::<C>(), pkg.0);
            all.insert(*p, msg.to_vec());
        }
        all.insert(cfg.me, self.own_round1.clone());
        let echo = echo_digest(&cfg.session, kinds.round1, &all);

        let (secret, shares) = match self.mode {
            Mode::Dkg => frost_core::keys::dkg::part2(self.secret, &packages),
            Mode::Refresh(_) => {
                frost_core::keys::refresh::refresh_dkg_part2(self.secret, &packages)
            }
        }
        .map_err(|e| map_culprit(cfg, e))?;

        let echo_header = Header {
            suite: C::SUITE,
            kind: kinds.echo,
            session: cfg.session,
            from: cfg.me,
            to: None,
        };
        let own_echo = wire::encode(&echo_header, &Digests(vec![echo]))?;
        let echo_env = identity::seal_envelope(identity, &own_echo)?;
        let mut sealed = BTreeMap::new();
        for p in cfg.others() {
            let share = shares
                .get(&p.to_frost::<C>())
                .ok_or_else(|| Error::Frost(format!("no round-2 share for {p}")))?;
            let recipient = roster.get(p).ok_or(Error::UnknownSender(p))?;
            let header = Header {
                suite: C::SUITE,
                kind: kinds.round2,
                session: cfg.session,
                from: cfg.me,
                to: Some(p),
            };
            let plaintext = zeroize::Zeroizing::new(share.signing_share().serialize());
            sealed.insert(
                p,
                identity::signed_sealed(identity, rng, &header, recipient, &plaintext)?,
            );
        }
        Ok((
            AwaitingRound2 {
                cfg: self.cfg,
                mode: self.mode,
                secret,
                round1: packages,
                echo,
                own_echo,
            },
            Round2Messages {
                echo: echo_env,
                shares: sealed,
            },
        ))
    }
}

impl<C: EngineSuite> AwaitingRound2<C> {
    /// The digest of the round-1 messages we saw.
    pub fn echo(&self) -> [u8; 32] {
        self.echo
    }

    /// Takes every peer's echo and the sealed round-2 shares addressed to us; checks
    /// that every peer saw the same round 1, decrypts and verifies each share against
    /// its sender's commitment, and derives our key share. Returns the share and our
    /// signed confirmation (public key set digest ‖ echo digest).
    pub fn finish<'a, 'b>(
        self,
        identity: &dyn Identity,
        roster: &Roster,
        echoes: impl Inbox<'a>,
        round2: impl Inbox<'b>,
    ) -> Result<(KeyShare<C>, Vec<u8>), Error> {
        let kinds = self.mode.kinds();
        let cfg = &self.cfg;
        for (p, msg) in collect(
            roster,
            echoes,
            &self.own_echo,
            cfg,
            C::SUITE,
            kinds.echo,
            "echo",
        )? {
            let (_, d) = wire::decode_with(msg, C::SUITE, kinds.echo, &cfg.session, |_, r| {
                Digests::decode(r, 1)
            })?;
            if d.0[0] != self.echo {
                return Err(Error::EchoMismatch { culprit: p });
            }
        }

        let mut shares = BTreeMap::new();
        let mut seen = Vec::new();
        for (from, env) in round2 {
            let pt = identity::open_sealed(
                identity,
                roster,
                from,
                env,
                C::SUITE,
                kinds.round2,
                &cfg.session,
                cfg.me,
            )?;
            if from == cfg.me || !cfg.participants.contains(&from) {
                return Err(Error::UnknownSender(from));
            }
            if seen.contains(&from) {
                return Err(Error::Duplicate {
                    round: "round 2",
                    culprit: from,
                });
            }
            seen.push(from);
            let mut r = Reader::new(&pt);
            let scalar = wire::get_scalar::<C>(&mut r, "round-2 share")
                .and_then(|s| r.finish().map(|_| s))
                .map_err(|e| Error::decode(Some(from), e))?;
            let share = SigningShare::<C>::new(scalar);
            if let Mode::Refresh(_) = self.mode {
                // frost's DKG part 3 verifies and attributes each share itself; its
                // refresh does not attribute, so we check refresh shares one by one.
                self.verify_share(from, &share)?;
            }
            shares.insert(from.to_frost::<C>(), round2::Package::new(share));
        }
        seen.sort();
        let expected: Vec<_> = cfg.others().collect();
        if seen != expected {
            return Err(Error::WrongParticipants {
                round: "round 2",
                expected,
                got: seen,
            });
        }

        let (key_package, public_package) = match &self.mode {
            Mode::Dkg => frost_core::keys::dkg::part3(&self.secret, &self.round1, &shares),
            Mode::Refresh(old) => frost_core::keys::refresh::refresh_dkg_shares(
                &self.secret,
                &self.round1,
                &shares,
                old.public.package.clone(),
                old.key_package.clone(),
            ),
        }
        .map_err(|e| map_culprit(cfg, e))?;
        let public =
            PublicKeySet::from_frost(cfg.threshold, cfg.participants.clone(), public_package);
        if let Mode::Refresh(old) = &self.mode {
            if public.verifying_key() != old.public.verifying_key() {
                return Err(Error::Frost("refresh changed the group key".into()));
            }
        }
        let share = KeyShare::new(cfg.me, *key_package.signing_share(), public)?;
        let header = Header {
            suite: C::SUITE,
            kind: kinds.confirm,
            session: cfg.session,
            from: cfg.me,
            to: None,
        };
        let confirm = identity::signed(
            identity,
            &header,
            &Digests(vec![share.public.digest(), self.echo]),
        )?;
        Ok((share, confirm))
    }

    /// Checks `share·G = Σ C_k·x^k` for the sender's refresh commitment (the identity
    /// prepended as constant term), so a bad refresh share names its sender.
    fn verify_share(&self, from: ParticipantId, share: &SigningShare<C>) -> Result<(), Error> {
        let pkg = self
            .round1
            .get(&from.to_frost::<C>())
            .ok_or(Error::UnknownSender(from))?;
        let mut coeffs = vec![CoefficientCommitment::new(C::Group::identity())];
        coeffs.extend(pkg.commitment().coefficients().iter().copied());
        let commitment = VerifiableSecretSharingCommitment::new(coeffs);
        SecretShare::new(self.cfg.me.to_frost(), *share, commitment)
            .verify()
            .map(|_| ())
            .map_err(|_| Error::InvalidSecretShare { culprit: from })
    }
}

/// Checks the confirmations of a finished ceremony (as the coordinator or an auditor
/// does): one valid, signed confirmation from every participant, each carrying
/// `expected_public` and the same echo digest. Returns the echo digest.
pub fn check_confirmations<'a>(
    roster: &Roster,
    suite: crate::Suite,
    kinds: Kinds,
    session: &SessionId,
    participants: &[ParticipantId],
    expected_public: &[u8; 32],
    confirmations: impl Inbox<'a>,
) -> Result<[u8; 32], Error> {
    let mut echo = None;
    let mut seen = Vec::new();
    for (from, env) in confirmations {
        let opened = open_from(roster, from, env)?;
        let (h, d) = wire::decode_with(opened.body, suite, kinds.confirm, session, |_, r| {
            Digests::decode(r, 2)
        })?;
        if !participants.contains(&h.from) {
            return Err(Error::UnknownSender(h.from));
        }
        if seen.contains(&h.from) {
            return Err(Error::Duplicate {
                round: "confirmation",
                culprit: h.from,
            });
        }
        seen.push(h.from);
        if d.0[0] != *expected_public {
            return Err(Error::EchoMismatch { culprit: h.from });
        }
        match echo {
            None => echo = Some(d.0[1]),
            Some(e) if e != d.0[1] => return Err(Error::EchoMismatch { culprit: h.from }),
            Some(_) => {}
        }
    }
    seen.sort();
    if seen != participants {
        return Err(Error::WrongParticipants {
            round: "confirmation",
            expected: participants.to_vec(),
            got: seen,
        });
    }
    echo.ok_or_else(|| Error::InvalidParameters("no confirmations".into()))
}

/// Every sender's commitment in a ceremony.
type Commitments<C> = BTreeMap<Identifier<C>, VerifiableSecretSharingCommitment<C>>;

/// Opens and checks the round-1 broadcasts and echoes of a finished ceremony (as an
/// auditor does). Returns every sender's commitment (the identity constant term
/// prepended for a refresh) and the round-1 digest every participant echoed.
#[allow(clippy::too_many_arguments)]
fn replay_rounds<'a, 'b, C: EngineSuite>(
    roster: &Roster,
    session: &SessionId,
    kinds: Kinds,
    threshold: u16,
    participants: &[ParticipantId],
    round1: impl Inbox<'a>,
    echoes: impl Inbox<'b>,
) -> Result<(Commitments<C>, [u8; 32]), Error> {
    validate_set(threshold, participants, None)?;
    let refresh = kinds.round1 == Kind::RefreshRound1;
    let coeffs = if refresh { threshold - 1 } else { threshold } as usize;
    let mut all: BTreeMap<ParticipantId, Vec<u8>> = BTreeMap::new();
    let mut commitments = BTreeMap::new();
    for (from, env) in round1 {
        let opened = open_from(roster, from, env)?;
        let (h, pkg) = wire::decode_with(opened.body, C::SUITE, kinds.round1, session, |_, r| {
            Round1Package::<C>::decode_body(r, coeffs)
        })?;
        if !participants.contains(&h.from) {
            return Err(Error::UnknownSender(h.from));
        }
        if h.to.is_some() {
            return Err(Error::Misaddressed {
                sender: h.from,
                to: h.to.map_or(0, ParticipantId::get),
            });
        }
        let id = h.from.to_frost::<C>();
        let commitment = if refresh {
            // As frost's refresh: the constant term is the identity (the group key
            // cannot move), and there is no proof of knowledge to check.
            let mut c = vec![CoefficientCommitment::new(C::Group::identity())];
            c.extend(pkg.0.commitment().coefficients().iter().copied());
            VerifiableSecretSharingCommitment::new(c)
        } else {
            frost_core::keys::dkg::verify_proof_of_knowledge(
                id,
                pkg.0.commitment(),
                pkg.0.proof_of_knowledge(),
            )
            .map_err(|_| Error::InvalidProofOfKnowledge { culprit: h.from })?;
            pkg.0.commitment().clone()
        };
        if all.insert(h.from, opened.body.to_vec()).is_some() {
            return Err(Error::Duplicate {
                round: "round 1",
                culprit: h.from,
            });
        }
        commitments.insert(id, commitment);
    }
    if !all.keys().eq(participants.iter()) {
        return Err(Error::WrongParticipants {
            round: "round 1",
            expected: participants.to_vec(),
            got: all.keys().copied().collect(),
        });
    }
    let echo = echo_digest(session, kinds.round1, &all);
    let mut echoed = Vec::new();
    for (from, env) in echoes {
        let opened = open_from(roster, from, env)?;
        let (h, d) = wire::decode_with(opened.body, C::SUITE, kinds.echo, session, |_, r| {
            Digests::decode(r, 1)
        })?;
        if !participants.contains(&h.from) {
            return Err(Error::UnknownSender(h.from));
        }
        if h.to.is_some() {
            return Err(Error::Misaddressed {
                sender: h.from,
                to: h.to.map_or(0, ParticipantId::get),
            });
        }
        if echoed.contains(&h.from) {
            return Err(Error::Duplicate {
                round: "echo",
                culprit: h.from,
            });
        }
        if d.0[0] != echo {
            return Err(Error::EchoMismatch { culprit: h.from });
        }
        echoed.push(h.from);
    }
    echoed.sort();
    if echoed != participants {
        return Err(Error::WrongParticipants {
            round: "echo",
            expected: participants.to_vec(),
            got: echoed,
        });
    }
    Ok((commitments, echo))
}

/// Checks that every participant confirmed `public` and the round-1 digest `echo`.
fn replay_confirmations<'c, C: EngineSuite>(
    roster: &Roster,
    session: &SessionId,
    kinds: Kinds,
    participants: &[ParticipantId],
    public: &PublicKeySet<C>,
    echo: [u8; 32],
    confirmations: impl Inbox<'c>,
) -> Result<(), Error> {
    let confirmed = check_confirmations(
        roster,
        C::SUITE,
        kinds,
        session,
        participants,
        &public.digest(),
        confirmations,
    )?;
    if confirmed != echo {
        return Err(Error::InvalidParameters(
            "confirmations carry another round-1 digest than the transcript's".into(),
        ));
    }
    Ok(())
}

/// Replays a finished DKG from its public messages, as an auditor does: opens every
/// signed round-1 broadcast, checks its proof of knowledge, re-derives the group key
/// and every verifying share from the commitments, checks that every participant
/// echoed the same round 1 and confirmed exactly the re-derived public key set.
/// Returns the re-derived set; any failure names the participant at fault.
#[allow(clippy::too_many_arguments)]
pub fn replay<'a, 'b, 'c, C: EngineSuite>(
    roster: &Roster,
    session: &SessionId,
    threshold: u16,
    participants: &[ParticipantId],
    round1: impl Inbox<'a>,
    echoes: impl Inbox<'b>,
    confirmations: impl Inbox<'c>,
) -> Result<PublicKeySet<C>, Error> {
    let (commitments, echo) = replay_rounds::<C>(
        roster,
        session,
        DKG_KINDS,
        threshold,
        participants,
        round1,
        echoes,
    )?;
    let refs = commitments.iter().map(|(k, v)| (*k, v)).collect();
    let package = C::post_dkg_public(
        frost_core::keys::PublicKeyPackage::<C>::from_dkg_commitments(&refs).map_err(frost_err)?,
    );
    let public = PublicKeySet::from_frost(threshold, participants.to_vec(), package);
    replay_confirmations(
        roster,
        session,
        DKG_KINDS,
        participants,
        &public,
        echo,
        confirmations,
    )?;
    Ok(public)
}

/// Replays a finished refresh of `old` (the key set before it): like [`replay`], with
/// the new verifying shares re-derived as the old ones plus the zero-constant
/// refresh polynomials' evaluations, and the group key unchanged by construction.
/// Returns the new set.
pub fn replay_refresh<'a, 'b, 'c, C: EngineSuite>(
    roster: &Roster,
    session: &SessionId,
    old: &PublicKeySet<C>,
    round1: impl Inbox<'a>,
    echoes: impl Inbox<'b>,
    confirmations: impl Inbox<'c>,
) -> Result<PublicKeySet<C>, Error> {
    let participants = old.participants();
    let (commitments, echo) = replay_rounds::<C>(
        roster,
        session,
        REFRESH_KINDS,
        old.threshold(),
        participants,
        round1,
        echoes,
    )?;
    let refs = commitments.iter().map(|(k, v)| (*k, v)).collect();
    let zero =
        frost_core::keys::PublicKeyPackage::<C>::from_dkg_commitments(&refs).map_err(frost_err)?;
    let mut shares = BTreeMap::new();
    for (id, delta) in zero.verifying_shares() {
        let before = old
            .frost_package()
            .verifying_shares()
            .get(id)
            .ok_or_else(|| Error::InvalidParameters("refresh of another participant set".into()))?;
        shares.insert(
            *id,
            frost_core::keys::VerifyingShare::new(delta.to_element() + before.to_element()),
        );
    }
    let package = frost_core::keys::PublicKeyPackage::new(
        shares,
        *old.verifying_key(),
        Some(old.threshold()),
    );
    let public = PublicKeySet::from_frost(old.threshold(), participants.to_vec(), package);
    replay_confirmations(
        roster,
        session,
        REFRESH_KINDS,
        participants,
        &public,
        echo,
        confirmations,
    )?;
    Ok(public)
}
