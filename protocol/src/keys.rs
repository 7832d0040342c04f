//! Key material a ceremony produces: a participant's secret [`KeyShare`] and the public
//! [`PublicKeySet`] everyone (coordinator, auditors) may hold.

use std::collections::BTreeMap;

use frost_core::keys::{KeyPackage, PublicKeyPackage, SigningShare, VerifyingShare};
use frost_core::VerifyingKey;
use zeroize::Zeroizing;

use crate::error::{DecodeError, Error};
use crate::hash::TaggedHash;
use crate::ids::ParticipantId;
use crate::suite::{EngineSuite, Suite};
use crate::wire::{self, Reader, Writer};

const KEYS_VERSION: u8 = 1;

/// The public side of a threshold key: group key, threshold and every participant's
/// verifying share. Holds no secret.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKeySet<C: EngineSuite> {
    pub(crate) threshold: u16,
    pub(crate) participants: Vec<ParticipantId>,
    pub(crate) package: PublicKeyPackage<C>,
}

impl<C: EngineSuite> core::fmt::Debug for PublicKeySet<C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PublicKeySet")
            .field("suite", &C::SUITE)
            .field("threshold", &self.threshold)
            .field("participants", &self.participants)
            .field("public_key", &hex::encode(self.public_key()))
            .finish()
    }
}

impl<C: EngineSuite> PublicKeySet<C> {
    pub(crate) fn from_frost(
        threshold: u16,
        participants: Vec<ParticipantId>,
        package: PublicKeyPackage<C>,
    ) -> Self {
        PublicKeySet {
            threshold,
            participants,
            package,
        }
    }

    /// The key as external verifiers use it (BIP340 x-only or RFC 8032, 32 bytes).
    pub fn public_key(&self) -> [u8; 32] {
        C::external_public_key(self.package.verifying_key())
    }

    /// The frost verifying key.
    pub fn verifying_key(&self) -> &VerifyingKey<C> {
        self.package.verifying_key()
    }

    /// Minimum number of signers.
    pub fn threshold(&self) -> u16 {
        self.threshold
    }

    /// Every participant holding a share, ascending.
    pub fn participants(&self) -> &[ParticipantId] {
        &self.participants
    }

    /// A participant's verifying share (`share·G`).
    pub fn verifying_share(&self, id: ParticipantId) -> Option<&VerifyingShare<C>> {
        self.package.verifying_shares().get(&id.to_frost::<C>())
    }

    /// The frost public key package.
    pub fn frost_package(&self) -> &PublicKeyPackage<C> {
        &self.package
    }

    /// Canonical encoding: `version ‖ suite ‖ u16 threshold ‖ u16 n ‖ group key ‖
    /// (u16 id ‖ verifying share)ⁿ`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        self.encode(&mut w);
        w.into_vec()
    }

    fn encode(&self, w: &mut Writer) {
        w.u8(KEYS_VERSION);
        w.u8(C::SUITE.wire_id());
        w.u16(self.threshold);
        // Invariant: participants were validated to be at most MAX_PARTICIPANTS.
        w.u16(self.participants.len() as u16);
        // Invariant: verifying keys and shares are never the identity element, the only
        // element that fails to serialize.
        let vk = self.package.verifying_key().to_element();
        wire::put_element::<C>(w, &vk).expect("group key is not the identity");
        for p in &self.participants {
            let share = self.package.verifying_shares()[&p.to_frost::<C>()];
            w.u16(p.get());
            wire::put_element::<C>(w, &share.to_element()).expect("share is not the identity");
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let v = r.u8()?;
        if v != KEYS_VERSION {
            return Err(DecodeError::UnsupportedVersion(v));
        }
        let s = r.u8()?;
        let suite = Suite::from_wire_id(s).ok_or(DecodeError::UnknownSuite(s))?;
        if suite != C::SUITE {
            return Err(DecodeError::WrongSuite {
                expected: C::SUITE,
                found: suite,
            });
        }
        let threshold = r.u16()?;
        let n = r.u16()? as usize;
        if n > wire::MAX_PARTICIPANTS {
            return Err(DecodeError::TooLong {
                what: "participants",
                len: n,
                max: wire::MAX_PARTICIPANTS,
            });
        }
        if threshold < 2 || threshold as usize > n {
            return Err(DecodeError::InvalidParticipant(threshold));
        }
        let vk = VerifyingKey::<C>::new(wire::get_element::<C>(r, "group key")?);
        let mut participants = Vec::with_capacity(n);
        let mut shares = BTreeMap::new();
        for _ in 0..n {
            let p = wire::get_participant(r)?;
            let e = wire::get_element::<C>(r, "verifying share")?;
            if participants.last().is_some_and(|last| *last >= p) {
                return Err(DecodeError::NotCanonical("participants"));
            }
            participants.push(p);
            shares.insert(p.to_frost::<C>(), VerifyingShare::new(e));
        }
        Ok(PublicKeySet {
            threshold,
            participants,
            package: PublicKeyPackage::new(shares, vk, Some(threshold)),
        })
    }

    /// Inverse of [`PublicKeySet::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let out = Self::decode(&mut r)?;
        r.finish()?;
        Ok(out)
    }

    /// A tagged hash of the canonical encoding: what participants confirm after a
    /// ceremony, so everyone can check they derived the same public key set.
    pub fn digest(&self) -> [u8; 32] {
        TaggedHash::new("custody/v1/public-key-set")
            .part(&self.to_bytes())
            .finish()
    }
}

/// A participant's share of a threshold key.
///
/// # Security
/// Holds a secret signing share: zeroized on drop (frost's `KeyPackage` is
/// `ZeroizeOnDrop`), redacted in `Debug`, no `Display`. Persist it only sealed
/// ([`KeyShare::to_secret_bytes`] returns a zeroizing buffer for the sealer).
#[derive(Clone)]
pub struct KeyShare<C: EngineSuite> {
    pub(crate) me: ParticipantId,
    pub(crate) key_package: KeyPackage<C>,
    pub(crate) public: PublicKeySet<C>,
}

impl<C: EngineSuite> core::fmt::Debug for KeyShare<C> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeyShare")
            .field("me", &self.me)
            .field("signing_share", &"<redacted>")
            .field("public", &self.public)
            .finish()
    }
}

impl<C: EngineSuite> KeyShare<C> {
    /// Builds a share and checks that the signing share matches the participant's
    /// verifying share in `public`.
    pub(crate) fn new(
        me: ParticipantId,
        signing_share: SigningShare<C>,
        public: PublicKeySet<C>,
    ) -> Result<Self, Error> {
        let verifying_share = VerifyingShare::<C>::from(signing_share);
        match public.verifying_share(me) {
            Some(expected) if *expected == verifying_share => {}
            _ => return Err(Error::RepairMismatch(me)),
        }
        let key_package = KeyPackage::new(
            me.to_frost::<C>(),
            signing_share,
            verifying_share,
            *public.verifying_key(),
            public.threshold,
        );
        Ok(KeyShare {
            me,
            key_package,
            public,
        })
    }

    /// This participant's id.
    pub fn id(&self) -> ParticipantId {
        self.me
    }

    /// The public side of the key.
    pub fn public(&self) -> &PublicKeySet<C> {
        &self.public
    }

    /// The key as external verifiers use it.
    pub fn public_key(&self) -> [u8; 32] {
        self.public.public_key()
    }

    /// Serialized form for sealed storage: `version ‖ suite ‖ u16 id ‖ signing share ‖
    /// public key set`.
    pub fn to_secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::default();
        w.u8(KEYS_VERSION);
        w.u8(C::SUITE.wire_id());
        w.u16(self.me.get());
        wire::put_scalar::<C>(&mut w, &self.key_package.signing_share().to_scalar());
        self.public.encode(&mut w);
        Zeroizing::new(w.into_vec())
    }

    /// Inverse of [`KeyShare::to_secret_bytes`]; checks the share against its verifying
    /// share.
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes);
        let parse = |r: &mut Reader<'_>| -> Result<_, DecodeError> {
            let v = r.u8()?;
            if v != KEYS_VERSION {
                return Err(DecodeError::UnsupportedVersion(v));
            }
            let s = r.u8()?;
            let suite = Suite::from_wire_id(s).ok_or(DecodeError::UnknownSuite(s))?;
            if suite != C::SUITE {
                return Err(DecodeError::WrongSuite {
                    expected: C::SUITE,
                    found: suite,
                });
            }
            let me = wire::get_participant(r)?;
            let share = wire::get_scalar::<C>(r, "signing share")?;
            let public = PublicKeySet::<C>::decode(r)?;
            Ok((me, SigningShare::new(share), public))
        };
        let (me, share, public) = parse(&mut r).map_err(|e| Error::decode(None, e))?;
        r.finish().map_err(|e| Error::decode(None, e))?;
        Self::new(me, share, public)
    }

    pub(crate) fn key_package(&self) -> &KeyPackage<C> {
        &self.key_package
    }
}

/// Checks a threshold and participant set: 2 ≤ t ≤ n ≤ MAX_PARTICIPANTS, ids strictly
/// increasing (so unique), `me` among them when given.
pub(crate) fn validate_set(
    threshold: u16,
    participants: &[ParticipantId],
    me: Option<ParticipantId>,
) -> Result<(), Error> {
    let n = participants.len();
    if n > wire::MAX_PARTICIPANTS {
        return Err(Error::InvalidParameters(format!(
            "{n} participants, at most {} allowed",
            wire::MAX_PARTICIPANTS
        )));
    }
    if threshold < 2 || threshold as usize > n {
        return Err(Error::InvalidParameters(format!(
            "threshold {threshold} with {n} participants: need 2 <= t <= n"
        )));
    }
    if participants.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::InvalidParameters(
            "participant ids must be unique and ascending".into(),
        ));
    }
    if let Some(me) = me {
        if !participants.contains(&me) {
            return Err(Error::InvalidParameters(format!(
                "participant {me} is not in the participant set"
            )));
        }
    }
    Ok(())
}

pub(crate) fn frost_err<C: EngineSuite>(e: frost_core::Error<C>) -> Error {
    Error::Frost(e.to_string())
}
