//! Identifiers of ceremonies and participants.

use core::fmt;

/// A ceremony's session id: 32 bytes chosen by whoever starts the ceremony.
///
/// Every wire message carries it and every hash of the engine is bound to it, so no
/// message of one ceremony is accepted in another (see `wire`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub [u8; 32]);

impl SessionId {
    /// A fresh random session id.
    pub fn random<R: rand_core::RngCore + rand_core::CryptoRng>(rng: &mut R) -> Self {
        let mut b = [0u8; 32];
        rng.fill_bytes(&mut b);
        SessionId(b)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", hex::encode(&self.0[..8]))
    }
}

/// A participant's index within one key's signer set: 1..=65535 (zero is not a valid
/// FROST identifier). It maps to the FROST identifier with the same integer value.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ParticipantId(u16);

impl ParticipantId {
    /// `None` for zero.
    pub const fn new(id: u16) -> Option<Self> {
        if id == 0 {
            None
        } else {
            Some(ParticipantId(id))
        }
    }

    /// The integer value (never zero).
    pub const fn get(self) -> u16 {
        self.0
    }

    /// The FROST identifier with the same value.
    pub fn to_frost<C: frost_core::Ciphersuite>(self) -> frost_core::Identifier<C> {
        // Invariant: self.0 != 0, the only value `Identifier::try_from(u16)` rejects.
        frost_core::Identifier::try_from(self.0).expect("non-zero participant id")
    }

    /// `n` participants numbered 1..=n.
    pub fn range(n: u16) -> Vec<ParticipantId> {
        (1..=n).map(ParticipantId).collect()
    }
}

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "P{}", self.0)
    }
}

/// Finds the participant whose FROST identifier is `ident` among `set`.
pub(crate) fn from_frost<C: frost_core::Ciphersuite>(
    set: &[ParticipantId],
    ident: &frost_core::Identifier<C>,
) -> Option<ParticipantId> {
    set.iter().copied().find(|p| p.to_frost::<C>() == *ident)
}
