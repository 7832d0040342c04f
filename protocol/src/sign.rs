//! Threshold signing (RFC 9591 §5), with nonces that cannot be used twice.
//!
//! 1. Each signer calls [`commit`] → secret [`Nonces`] (kept in memory only) and public
//!    [`Commitments`].
//! 2. The coordinator builds a [`SigningPackage`]: the message and the commitments of
//!    the chosen signers, bound to a session id.
//! 3. Each signer calls [`Nonces::sign`], which **consumes** the nonces: using a nonce
//!    pair twice does not compile (frost's own `round2::sign` only borrows them).
//! 4. The coordinator calls [`aggregate`]; a bad share makes it name every signer whose
//!    share fails (shares are only checked one by one when the final signature fails).
//!
//! Signing twice with the same nonces is a compile error:
//!
//! ```compile_fail,E0382
//! use custody_protocol::{sign, EngineSuite, KeyShare};
//! fn twice<C: EngineSuite>(
//!     share: &KeyShare<C>,
//!     a: &sign::SigningPackage<C>,
//!     b: &sign::SigningPackage<C>,
//!     rng: &mut rand_chacha::ChaCha20Rng,
//! ) {
//!     let (nonces, _commitments) = sign::commit(share, rng);
//!     let _ = nonces.sign(share, a);
//!     let _ = nonces.sign(share, b); // use of moved value: `nonces`
//! }
//! ```
//!
//! while using them once is fine:
//!
//! ```
//! use custody_protocol::{sign, EngineSuite, KeyShare};
//! fn once<C: EngineSuite>(
//!     share: &KeyShare<C>,
//!     a: &sign::SigningPackage<C>,
//!     rng: &mut rand_chacha::ChaCha20Rng,
//! ) {
//!     let (nonces, _commitments) = sign::commit(share, rng);
//!     let _ = nonces.sign(share, a);
//! }
//! ```

use std::collections::BTreeMap;

use frost_core::round1::{NonceCommitment, SigningCommitments, SigningNonces};
use frost_core::round2::SignatureShare as FrostShare;
use rand_core::{CryptoRng, RngCore};

use crate::error::{DecodeError, Error};
use crate::ids::{from_frost, ParticipantId};
use crate::keys::{frost_err, KeyShare, PublicKeySet};
use crate::suite::EngineSuite;
use crate::wire::{self, Body, Reader, Writer};

/// The participant id the coordinator uses in message headers (it holds no share).
pub const COORDINATOR: ParticipantId = match ParticipantId::new(u16::MAX) {
    Some(p) => p,
    None => unreachable!(),
};

/// A signer's public nonce commitments. Body: `hiding (element) ‖ binding (element)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Commitments<C: EngineSuite>(pub(crate) SigningCommitments<C>);

impl<C: EngineSuite> Body for Commitments<C> {
    fn encode_body(&self, w: &mut Writer) -> Result<(), Error> {
        wire::put_element::<C>(w, &self.0.hiding().value())?;
        wire::put_element::<C>(w, &self.0.binding().value())?;
        Ok(())
    }
}

impl<C: EngineSuite> Commitments<C> {
    /// Decodes a body.
    pub fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let hiding = NonceCommitment::new(wire::get_element::<C>(r, "hiding commitment")?);
        let binding = NonceCommitment::new(wire::get_element::<C>(r, "binding commitment")?);
        Ok(Commitments(SigningCommitments::new(hiding, binding)))
    }
}

/// Largest number of commitments in one [`CommitmentBatch`].
pub const MAX_COMMITMENT_BATCH: usize = 1024;

/// Commitments drawn ahead by one signer, sent in one signed envelope.
///
/// Body: `u16 count ‖ count × (hiding ‖ binding)`, count in `1..=1024`, no two equal.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CommitmentBatch<C: EngineSuite>(pub Vec<Commitments<C>>);

impl<C: EngineSuite> Body for CommitmentBatch<C> {
    fn encode_body(&self, w: &mut Writer) -> Result<(), Error> {
        if self.0.is_empty() || self.0.len() > MAX_COMMITMENT_BATCH {
            return Err(Error::InvalidParameters(format!(
                "{} commitments in a batch",
                self.0.len()
            )));
        }
        w.u16(self.0.len() as u16);
        for c in &self.0 {
            c.encode_body(w)?;
        }
        Ok(())
    }
}

impl<C: EngineSuite> CommitmentBatch<C> {
    /// Decodes a body of at most `max` commitments.
    pub fn decode_body(r: &mut Reader<'_>, max: usize) -> Result<Self, DecodeError> {
        let n = r.u16()? as usize;
        let max = max.min(MAX_COMMITMENT_BATCH);
        if n == 0 || n > max {
            return Err(DecodeError::TooLong {
                what: "commitment batch",
                len: n,
                max,
            });
        }
        let mut out: Vec<Commitments<C>> = Vec::with_capacity(n);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..n {
            let raw = r.take(2 * C::ELEMENT_LEN)?;
            if !seen.insert(raw) {
                return Err(DecodeError::NotCanonical(
                    "commitment batch (repeated commitment)",
                ));
            }
            let mut one = Reader::new(raw);
            out.push(Commitments::<C>::decode_body(&mut one)?);
        }
        Ok(CommitmentBatch(out))
    }
}

/// A signer's secret nonces for one signature.
///
/// # Security
/// Using a nonce pair for two signatures reveals the signing share. This type is not
/// `Clone`, has no serialization, is zeroized on drop, and [`Nonces::sign`] takes it by
/// value, so a pair is used at most once. Keep it in memory only (it dies with the
/// process); never persist it except sealed and durably marked used (cold tier).
pub struct Nonces<C: EngineSuite> {
    inner: SigningNonces<C>,
    commitments: SigningCommitments<C>,
}

impl<C: EngineSuite> core::fmt::Debug for Nonces<C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Nonces(<redacted>)")
    }
}

/// Draws fresh nonces for `share`.
pub fn commit<C: EngineSuite, R: RngCore + CryptoRng>(
    share: &KeyShare<C>,
    rng: &mut R,
) -> (Nonces<C>, Commitments<C>) {
    let (inner, commitments) = frost_core::round1::commit(share.key_package().signing_share(), rng);
    (Nonces { inner, commitments }, Commitments(commitments))
}

impl<C: EngineSuite> Nonces<C> {
    /// The nonces as bytes, **only** to seal them at rest between the two trips of an
    /// air-gapped (cold) signature; the caller must mark them used durably before it
    /// releases the share they make.
    pub fn to_secret_bytes(&self) -> Result<zeroize::Zeroizing<Vec<u8>>, Error> {
        self.inner
            .serialize()
            .map(zeroize::Zeroizing::new)
            .map_err(frost_err)
    }

    /// Inverse of [`Nonces::to_secret_bytes`].
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let inner = SigningNonces::<C>::deserialize(bytes).map_err(frost_err)?;
        let commitments = SigningCommitments::from(&inner);
        Ok(Nonces { inner, commitments })
    }

    /// The commitments these nonces answer to.
    pub fn commitments(&self) -> Commitments<C> {
        Commitments(self.commitments)
    }

    /// Produces our signature share for `package`, consuming the nonces.
    ///
    /// Refuses a package that does not carry our commitments, names signers outside the
    /// key, or has fewer than `t` signers.
    pub fn sign(
        self,
        share: &KeyShare<C>,
        package: &SigningPackage<C>,
    ) -> Result<SignatureShare<C>, Error> {
        match package.commitments.get(&share.me) {
            Some(c) if *c == self.commitments => {}
            _ => return Err(Error::CommitmentMismatch),
        }
        package.check_against(share.public())?;
        let frost_pkg = package.to_frost();
        let s = frost_core::round2::sign(&frost_pkg, &self.inner, share.key_package())
            .map_err(frost_err)?;
        Ok(SignatureShare(s))
        // `self` (the nonces) is dropped and zeroized here.
    }
}

/// What the signers sign: a message and the commitments of each chosen signer.
///
/// Body: `u16 count ‖ (u16 id ‖ hiding ‖ binding)*` ascending by id `‖ u32 len ‖
/// message` (at most 1 MiB).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SigningPackage<C: EngineSuite> {
    commitments: BTreeMap<ParticipantId, SigningCommitments<C>>,
    message: Vec<u8>,
}

impl<C: EngineSuite> SigningPackage<C> {
    /// A package for `message` signed by the owners of `commitments`.
    pub fn new(
        commitments: BTreeMap<ParticipantId, Commitments<C>>,
        message: Vec<u8>,
    ) -> Result<Self, Error> {
        if commitments.is_empty() || commitments.len() > wire::MAX_PARTICIPANTS {
            return Err(Error::InvalidParameters(format!(
                "{} signers in a signing package",
                commitments.len()
            )));
        }
        if message.len() > wire::MAX_SIGNING_MESSAGE {
            return Err(Error::InvalidParameters(format!(
                "message of {} bytes exceeds {}",
                message.len(),
                wire::MAX_SIGNING_MESSAGE
            )));
        }
        Ok(SigningPackage {
            commitments: commitments.into_iter().map(|(p, c)| (p, c.0)).collect(),
            message,
        })
    }

    /// The message.
    pub fn message(&self) -> &[u8] {
        &self.message
    }

    /// The commitments of one signer, if it is in the package.
    pub fn commitments_of(&self, p: ParticipantId) -> Option<Commitments<C>> {
        self.commitments.get(&p).copied().map(Commitments)
    }

    /// The signers.
    pub fn signers(&self) -> Vec<ParticipantId> {
        self.commitments.keys().copied().collect()
    }

    /// Checks that every signer holds a share of `public` and that there are at least
    /// `t` of them.
    pub fn check_against(&self, public: &PublicKeySet<C>) -> Result<(), Error> {
        if let Some(p) = self
            .commitments
            .keys()
            .find(|p| !public.participants.contains(p))
        {
            return Err(Error::UnknownSender(*p));
        }
        if self.commitments.len() < public.threshold as usize {
            return Err(Error::BelowThreshold {
                have: self.commitments.len(),
                threshold: public.threshold,
            });
        }
        Ok(())
    }

    /// Checks that `shares` come from exactly the signers of this package.
    fn check_share_set(
        &self,
        shares: &BTreeMap<ParticipantId, SignatureShare<C>>,
    ) -> Result<(), Error> {
        if !shares.keys().eq(self.commitments.keys()) {
            return Err(Error::WrongParticipants {
                round: "signature shares",
                expected: self.signers(),
                got: shares.keys().copied().collect(),
            });
        }
        Ok(())
    }

    fn to_frost(&self) -> frost_core::SigningPackage<C> {
        frost_core::SigningPackage::new(
            self.commitments
                .iter()
                .map(|(p, c)| (p.to_frost::<C>(), *c))
                .collect(),
            &self.message,
        )
    }

    /// Decodes a body.
    pub fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = r.u16()? as usize;
        if n == 0 || n > wire::MAX_PARTICIPANTS {
            return Err(DecodeError::TooLong {
                what: "signers",
                len: n,
                max: wire::MAX_PARTICIPANTS,
            });
        }
        let mut commitments = BTreeMap::new();
        let mut last = None;
        for _ in 0..n {
            let p = wire::get_participant(r)?;
            if last.is_some_and(|l| l >= p) {
                return Err(DecodeError::NotCanonical("signers"));
            }
            last = Some(p);
            commitments.insert(p, Commitments::<C>::decode_body(r)?.0);
        }
        let message = r.var_bytes("message", wire::MAX_SIGNING_MESSAGE)?.to_vec();
        Ok(SigningPackage {
            commitments,
            message,
        })
    }
}

impl<C: EngineSuite> Body for SigningPackage<C> {
    fn encode_body(&self, w: &mut Writer) -> Result<(), Error> {
        w.u16(self.commitments.len() as u16);
        for (p, c) in &self.commitments {
            w.u16(p.get());
            Commitments(*c).encode_body(w)?;
        }
        w.var_bytes(&self.message);
        Ok(())
    }
}

/// A signer's signature share (one scalar).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SignatureShare<C: EngineSuite>(pub(crate) FrostShare<C>);

/// The digest a signer confirms with its share: what it was asked to sign, as it saw
/// it. `TaggedHash("custody/v1/signing-transcript", key id, request id, signing
/// package message)`, where the package message is the complete wire message (header
/// with suite and session, every signer's commitments, the message) the coordinator
/// signed. An auditor recomputes it from the transcript; a relay cannot move a share
/// to another request, key or package.
pub fn transcript_digest(key_id: &str, request_id: &str, package_message: &[u8]) -> [u8; 32] {
    crate::hash::TaggedHash::new("custody/v1/signing-transcript")
        .part(key_id.as_bytes())
        .part(request_id.as_bytes())
        .part(package_message)
        .finish()
}

/// A signature share as its signer sends it (kind `SignatureShare`): the
/// [`transcript_digest`] the signer computed, then the share.
///
/// Body: `transcript digest (32 bytes) ‖ share (scalar)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ShareMessage<C: EngineSuite> {
    /// The signer's [`transcript_digest`].
    pub transcript: [u8; 32],
    /// The share.
    pub share: SignatureShare<C>,
}

impl<C: EngineSuite> Body for ShareMessage<C> {
    fn encode_body(&self, w: &mut Writer) -> Result<(), Error> {
        w.bytes(&self.transcript);
        self.share.encode_body(w)
    }
}

impl<C: EngineSuite> ShareMessage<C> {
    /// Decodes a body.
    pub fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let transcript = r.array::<32>()?;
        let share = SignatureShare::decode_body(r)?;
        Ok(ShareMessage { transcript, share })
    }
}

/// Checks one signer's share of `package` against its verifying share in `public`
/// (what an auditor does for every share of a transcript).
pub fn verify_share<C: EngineSuite>(
    public: &PublicKeySet<C>,
    package: &SigningPackage<C>,
    p: ParticipantId,
    share: &SignatureShare<C>,
) -> Result<(), Error> {
    package.check_against(public)?;
    if !package.commitments.contains_key(&p) {
        return Err(Error::UnknownSender(p));
    }
    let vs = public.verifying_share(p).ok_or(Error::UnknownSender(p))?;
    frost_core::verify_signature_share(
        p.to_frost::<C>(),
        vs,
        &share.0,
        &package.to_frost(),
        public.verifying_key(),
    )
    .map_err(|_| Error::InvalidSignatureShare { culprits: vec![p] })
}

impl<C: EngineSuite> Body for SignatureShare<C> {
    fn encode_body(&self, w: &mut Writer) -> Result<(), Error> {
        w.bytes(&self.0.serialize());
        Ok(())
    }
}

impl<C: EngineSuite> SignatureShare<C> {
    /// Decodes a body.
    pub fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let bytes = r.take(C::SCALAR_LEN)?;
        let share = FrostShare::<C>::deserialize(bytes)
            .map_err(|_| DecodeError::InvalidScalar("signature share"))?;
        if share.serialize() != bytes {
            return Err(DecodeError::InvalidScalar("signature share"));
        }
        Ok(SignatureShare(share))
    }
}

/// Aggregation in two steps, so that most of its work runs while the signers compute
/// their shares: [`prepare_aggregate`] needs only the package (binding factors and the
/// group commitment); [`PreparedAggregate::finish`] sums the shares and verifies the
/// signature. The result is exactly [`aggregate`]'s, culprits included.
pub struct PreparedAggregate<C: EngineSuite> {
    /// The public keys as the ciphersuite aggregates them (BIP340: even Y).
    pubkeys: frost_core::keys::PublicKeyPackage<C>,
    group_commitment: frost_core::GroupCommitment<C>,
}

impl<C: EngineSuite> core::fmt::Debug for PreparedAggregate<C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PreparedAggregate").finish_non_exhaustive()
    }
}

/// The share-independent part of [`aggregate`] for `package` under `public`.
pub fn prepare_aggregate<C: EngineSuite>(
    public: &PublicKeySet<C>,
    package: &SigningPackage<C>,
) -> Result<PreparedAggregate<C>, Error> {
    package.check_against(public)?;
    let frost_pkg = package.to_frost();
    let none = BTreeMap::new();
    let (pkg, _, pubkeys) =
        C::pre_aggregate(&frost_pkg, &none, public.frost_package()).map_err(frost_err)?;
    let factors = frost_core::compute_binding_factor_list(&pkg, pubkeys.verifying_key(), &[])
        .map_err(frost_err)?;
    let pkg = C::pre_commitment_aggregate(&pkg, &factors).map_err(frost_err)?;
    let group_commitment =
        frost_core::compute_group_commitment(&pkg, &factors).map_err(frost_err)?;
    Ok(PreparedAggregate {
        pubkeys: pubkeys.into_owned(),
        group_commitment,
    })
}

impl<C: EngineSuite> PreparedAggregate<C> {
    /// Sums `shares` (one per signer of `package`, the package this was prepared
    /// from) and verifies the signature; when it does not verify, falls back to
    /// [`aggregate`], which checks every share and names the culprits.
    pub fn finish(
        &self,
        public: &PublicKeySet<C>,
        package: &SigningPackage<C>,
        shares: &BTreeMap<ParticipantId, SignatureShare<C>>,
    ) -> Result<[u8; 64], Error> {
        package.check_share_set(shares)?;
        type F<C> = <<C as frost_core::Ciphersuite>::Group as frost_core::Group>::Field;
        let mut z = <F<C> as frost_core::Field>::zero();
        for s in shares.values() {
            // frost keeps a share's scalar to itself: through its canonical bytes.
            let bytes = s.0.serialize();
            let mut r = Reader::new(&bytes);
            z = z + wire::get_scalar::<C>(&mut r, "signature share")
                .map_err(|e| Error::Frost(e.to_string()))?;
        }
        let sig = frost_core::Signature::new(self.group_commitment.clone().to_element(), z);
        // Neither suite's pre-aggregation changes the message (the equivalence test
        // with `aggregate` holds them to it).
        if self
            .pubkeys
            .verifying_key()
            .verify(package.message(), &sig)
            .is_err()
        {
            return aggregate(public, package, shares);
        }
        signature_bytes(&sig)
    }
}

fn signature_bytes<C: EngineSuite>(sig: &frost_core::Signature<C>) -> Result<[u8; 64], Error> {
    let bytes = sig.serialize().map_err(frost_err)?;
    let mut out = [0u8; 64];
    if bytes.len() != 64 {
        return Err(Error::Frost(format!("signature of {} bytes", bytes.len())));
    }
    out.copy_from_slice(&bytes);
    Ok(out)
}

/// Aggregates the shares of every signer of `package` into a 64-byte signature (BIP340
/// or RFC 8032) valid under `public`. When the result does not verify, every share is
/// checked and the error names all signers whose share is bad.
pub fn aggregate<C: EngineSuite>(
    public: &PublicKeySet<C>,
    package: &SigningPackage<C>,
    shares: &BTreeMap<ParticipantId, SignatureShare<C>>,
) -> Result<[u8; 64], Error> {
    package.check_against(public)?;
    package.check_share_set(shares)?;
    let frost_shares = shares
        .iter()
        .map(|(p, s)| (p.to_frost::<C>(), s.0))
        .collect();
    let sig = frost_core::aggregate_custom(
        &package.to_frost(),
        &frost_shares,
        public.frost_package(),
        frost_core::CheaterDetection::AllCheaters,
    )
    .map_err(|e| match e {
        frost_core::Error::InvalidSignatureShare { culprits } => Error::InvalidSignatureShare {
            culprits: culprits
                .iter()
                .filter_map(|c| from_frost(&public.participants, c))
                .collect(),
        },
        frost_core::Error::InvalidSignature => Error::InvalidSignature,
        other => frost_err(other),
    })?;
    signature_bytes(&sig)
}
