//! Long-term identities, signed envelopes and confidential (sealed) messages.
//!
//! Every participant has two long-term keys:
//! - an Ed25519 key (RFC 8032) that signs every message it sends, inside an
//!   [envelope](open_envelope), so a relay (the coordinator) cannot forge or alter one;
//! - an X25519 key to which peers encrypt secret round messages with HPKE (RFC 9180,
//!   mode Base, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305), so a relay
//!   cannot read them.
//!
//! Envelope layout: `0x01 ‖ u32 body length ‖ body ‖ 64-byte Ed25519 signature`, where
//! the signature is over `"custody/v1/envelope\0" ‖ body` and the body is a complete
//! wire message (see [`crate::wire`]) whose header names the sender. Receivers look the
//! sender up in the [`Roster`] and verify with `verify_strict`.
//!
//! Sealed body layout: `32-byte HPKE encapsulated key ‖ ciphertext`, with HPKE
//! `info = "custody/v1/confidential"` and the message header (suite, kind, session,
//! sender, recipient) as associated data, so a ciphertext cannot be moved to another
//! ceremony, kind, sender or recipient.

use std::collections::BTreeMap;

use ed25519_dalek::Signer;
use hpke::{Deserializable, Kem as _, Serializable};
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::error::{DecodeError, Error};
use crate::ids::ParticipantId;
use crate::wire::{self, Header, Reader, Writer};

type HpkeKem = hpke::kem::X25519HkdfSha256;
type HpkeKdf = hpke::kdf::HkdfSha256;
type HpkeAead = hpke::aead::ChaCha20Poly1305;

const ENVELOPE_VERSION: u8 = 1;
const ENVELOPE_DOMAIN: &[u8] = b"custody/v1/envelope\0";
const SEAL_INFO: &[u8] = b"custody/v1/confidential";
/// Largest envelope body accepted (2 MiB: a signing package with a 1 MiB message).
pub const MAX_ENVELOPE_BODY: usize = 2 << 20;
/// Length of an encapsulated HPKE key.
pub const ENCAPPED_LEN: usize = 32;

/// The public half of an identity: what peers and auditors need.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct IdentityPublic {
    /// Ed25519 verifying key for envelopes.
    pub verify: [u8; 32],
    /// X25519 public key for sealed messages.
    pub encrypt: [u8; 32],
}

impl IdentityPublic {
    /// 64 bytes: verify key then encryption key.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&self.verify);
        out[32..].copy_from_slice(&self.encrypt);
        out
    }

    /// Inverse of [`IdentityPublic::to_bytes`]; checks both keys are valid points.
    pub fn from_bytes(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let verify = r.array::<32>()?;
        let encrypt = r.array::<32>()?;
        r.finish()?;
        ed25519_dalek::VerifyingKey::from_bytes(&verify)
            .map_err(|_| DecodeError::InvalidElement("identity verifying key"))?;
        Ok(IdentityPublic { verify, encrypt })
    }
}

/// A participant's long-term identity as the engine uses it: signs envelopes and opens
/// sealed messages. [`IdentityKey`] implements it in software; an HSM-held identity
/// (the `hsm` crate's token identity) implements it with the signing key in the token.
pub trait Identity: core::fmt::Debug {
    /// The public half.
    fn public(&self) -> IdentityPublic;
    /// An Ed25519 signature over `msg` (already domain-separated by the caller). Fails
    /// only when the key is out of reach (an HSM that is gone), with
    /// [`Error::IdentityUnavailable`].
    fn sign_raw(&self, msg: &[u8]) -> Result<[u8; 64], Error>;
    /// Opens a sealed body addressed to us; `header` is the associated data. Errors name
    /// the sender (`header.from`).
    fn open(&self, header: &Header, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error>;
}

/// The X25519 secret to which peers seal round-2 messages (HPKE recipient side).
///
/// # Security
/// Zeroized on drop, never printed. Persist it only sealed.
pub struct OpeningKey {
    secret: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

impl core::fmt::Debug for OpeningKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OpeningKey")
            .field("public", &hex::encode(self.public))
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl OpeningKey {
    /// A fresh random key.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut secret = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut secret[..]);
        Self::from_secret_bytes(&secret)
    }

    /// The key with these 32 secret bytes (X25519 clamps any 32 bytes).
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Self {
        let secret = Zeroizing::new(*secret);
        let public: [u8; 32] = HpkeKem::sk_to_pk(&Self::hpke_secret(&secret))
            .to_bytes()
            .into();
        OpeningKey { secret, public }
    }

    fn hpke_secret(bytes: &[u8; 32]) -> <HpkeKem as hpke::Kem>::PrivateKey {
        // Invariant: X25519 accepts every 32-byte string as a secret (it clamps).
        <HpkeKem as hpke::Kem>::PrivateKey::from_bytes(bytes)
            .expect("any 32 bytes are an X25519 secret")
    }

    /// The public key peers encrypt to.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    /// The secret bytes, for sealed storage.
    pub fn to_secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(*self.secret)
    }

    /// Opens a sealed body addressed to us, `header` as associated data; a failure
    /// names the sender (`header.from`).
    pub fn open(&self, header: &Header, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        let culprit = header.from;
        if sealed.len() < ENCAPPED_LEN {
            return Err(Error::DecryptionFailed { culprit });
        }
        let (enc, ct) = sealed.split_at(ENCAPPED_LEN);
        let enc = <HpkeKem as hpke::Kem>::EncappedKey::from_bytes(enc)
            .map_err(|_| Error::DecryptionFailed { culprit })?;
        let sk = Self::hpke_secret(&self.secret);
        let pt = hpke::single_shot_open::<HpkeAead, HpkeKdf, HpkeKem>(
            &hpke::OpModeR::Base,
            &sk,
            &enc,
            SEAL_INFO,
            ct,
            &header.to_bytes(),
        )
        .map_err(|_| Error::DecryptionFailed { culprit })?;
        Ok(Zeroizing::new(pt))
    }
}

/// A participant's long-term secret keys, held in software.
///
/// # Security
/// Both secrets are zeroized on drop and never printed. Persist them only sealed
/// (see the `hsm` crate); [`IdentityKey::to_secret_bytes`] returns a zeroizing buffer.
pub struct IdentityKey {
    signing: ed25519_dalek::SigningKey,
    opening: OpeningKey,
}

impl core::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IdentityKey")
            .field(
                "verify",
                &hex::encode(self.signing.verifying_key().as_bytes()),
            )
            .field("secrets", &"<redacted>")
            .finish()
    }
}

impl IdentityKey {
    /// Fresh random keys.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut secret = Zeroizing::new([0u8; 64]);
        rng.fill_bytes(&mut secret[..]);
        Self::from_secret_bytes(&secret)
    }

    /// Keys from 64 secret bytes: the Ed25519 seed then the X25519 secret.
    pub fn from_secret_bytes(secret: &[u8; 64]) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(&secret[..32]);
        let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
        let mut enc = Zeroizing::new([0u8; 32]);
        enc.copy_from_slice(&secret[32..]);
        IdentityKey {
            signing,
            opening: OpeningKey::from_secret_bytes(&enc),
        }
    }

    /// The 64 secret bytes, for sealed storage.
    pub fn to_secret_bytes(&self) -> Zeroizing<[u8; 64]> {
        let mut out = Zeroizing::new([0u8; 64]);
        out[..32].copy_from_slice(self.signing.as_bytes());
        out[32..].copy_from_slice(&self.opening.secret[..]);
        out
    }
}

impl Identity for IdentityKey {
    fn public(&self) -> IdentityPublic {
        IdentityPublic {
            verify: self.signing.verifying_key().to_bytes(),
            encrypt: self.opening.public,
        }
    }

    fn sign_raw(&self, msg: &[u8]) -> Result<[u8; 64], Error> {
        Ok(self.signing.sign(msg).to_bytes())
    }

    fn open(&self, header: &Header, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        self.opening.open(header, sealed)
    }
}

/// Encrypts `plaintext` to `recipient` with `header` as associated data; returns the
/// sealed body (`encapsulated key ‖ ciphertext`).
pub fn seal<R: RngCore + CryptoRng>(
    rng: &mut R,
    header: &Header,
    recipient: &IdentityPublic,
    plaintext: &[u8],
) -> Result<Vec<u8>, Error> {
    let pk = <HpkeKem as hpke::Kem>::PublicKey::from_bytes(&recipient.encrypt)
        .map_err(|e| Error::Encryption(format!("recipient encryption key: {e}")))?;
    let (enc, ct) = hpke::single_shot_seal::<HpkeAead, HpkeKdf, HpkeKem, _>(
        &hpke::OpModeS::Base,
        &pk,
        SEAL_INFO,
        plaintext,
        &header.to_bytes(),
        rng,
    )
    .map_err(|e| Error::Encryption(e.to_string()))?;
    let mut out = Vec::with_capacity(ENCAPPED_LEN + ct.len());
    out.extend_from_slice(&enc.to_bytes());
    out.extend_from_slice(&ct);
    Ok(out)
}

/// The identities of every participant of a ceremony, by participant id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roster(BTreeMap<ParticipantId, IdentityPublic>);

impl Roster {
    /// An empty roster.
    pub fn new() -> Self {
        Roster::default()
    }
    /// Adds or replaces a participant.
    pub fn insert(&mut self, id: ParticipantId, public: IdentityPublic) {
        self.0.insert(id, public);
    }
    /// Looks a participant up.
    pub fn get(&self, id: ParticipantId) -> Option<&IdentityPublic> {
        self.0.get(&id)
    }
    /// All entries.
    pub fn iter(&self) -> impl Iterator<Item = (&ParticipantId, &IdentityPublic)> {
        self.0.iter()
    }
    /// Participant ids.
    pub fn ids(&self) -> Vec<ParticipantId> {
        self.0.keys().copied().collect()
    }
}

impl FromIterator<(ParticipantId, IdentityPublic)> for Roster {
    fn from_iter<T: IntoIterator<Item = (ParticipantId, IdentityPublic)>>(iter: T) -> Self {
        Roster(iter.into_iter().collect())
    }
}

/// Signs a complete wire message (`body`) into an envelope.
pub fn seal_envelope(signer: &dyn Identity, body: &[u8]) -> Result<Vec<u8>, Error> {
    let mut msg = Vec::with_capacity(ENVELOPE_DOMAIN.len() + body.len());
    msg.extend_from_slice(ENVELOPE_DOMAIN);
    msg.extend_from_slice(body);
    let sig = signer.sign_raw(&msg)?;
    let mut w = Writer::with_capacity(1 + 4 + body.len() + 64);
    w.u8(ENVELOPE_VERSION);
    w.var_bytes(body);
    w.bytes(&sig);
    Ok(w.into_vec())
}

/// An envelope whose signature has been checked against the roster.
#[derive(Debug, Clone)]
pub struct Opened<'a> {
    /// The header of the enclosed message.
    pub header: Header,
    /// The enclosed message, header included.
    pub body: &'a [u8],
}

/// Parses an envelope, finds its sender in `roster` and verifies the signature.
///
/// Errors: a malformed envelope is a `Decode` error (sender unknown when the header
/// cannot be read), an unknown sender `UnknownSender`, a bad signature
/// `BadEnvelopeSignature` naming the sender the header claims.
pub fn open_envelope<'a>(roster: &Roster, envelope: &'a [u8]) -> Result<Opened<'a>, Error> {
    let mut r = Reader::new(envelope);
    let parse = |r: &mut Reader<'a>| -> Result<(&'a [u8], [u8; 64]), DecodeError> {
        let v = r.u8()?;
        if v != ENVELOPE_VERSION {
            return Err(DecodeError::UnsupportedVersion(v));
        }
        let body = r.var_bytes("envelope body", MAX_ENVELOPE_BODY)?;
        let sig = r.array::<64>()?;
        Ok((body, sig))
    };
    let (body, sig) = parse(&mut r).map_err(|e| Error::decode(None, e))?;
    let (header, _) = wire::split(body)?;
    r.finish()
        .map_err(|e| Error::decode(Some(header.from), e))?;
    let public = roster
        .get(header.from)
        .ok_or(Error::UnknownSender(header.from))?;
    let culprit = header.from;
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&public.verify)
        .map_err(|_| Error::SenderKeyMismatch { culprit })?;
    let mut msg = Vec::with_capacity(ENVELOPE_DOMAIN.len() + body.len());
    msg.extend_from_slice(ENVELOPE_DOMAIN);
    msg.extend_from_slice(body);
    let sig = ed25519_dalek::Signature::from_bytes(&sig);
    vk.verify_strict(&msg, &sig)
        .map_err(|_| Error::BadEnvelopeSignature { culprit })?;
    Ok(Opened { header, body })
}

/// The message inside an envelope, without checking its signature (for digests over
/// messages whose envelopes are verified elsewhere).
pub fn envelope_body(envelope: &[u8]) -> Result<&[u8], Error> {
    let mut r = Reader::new(envelope);
    let v = r.u8().map_err(|e| Error::decode(None, e))?;
    if v != ENVELOPE_VERSION {
        return Err(Error::decode(None, DecodeError::UnsupportedVersion(v)));
    }
    let body = r
        .var_bytes("envelope body", MAX_ENVELOPE_BODY)
        .map_err(|e| Error::decode(None, e))?;
    r.array::<64>().map_err(|e| Error::decode(None, e))?;
    r.finish().map_err(|e| Error::decode(None, e))?;
    Ok(body)
}

/// Opens an envelope delivered as coming from `from` (the relay says who sent it):
/// like [`open_envelope`], but every failure is attributed to `from`, and a header
/// naming another sender is refused.
pub fn open_from<'a>(
    roster: &Roster,
    from: ParticipantId,
    envelope: &'a [u8],
) -> Result<Opened<'a>, Error> {
    let opened = open_envelope(roster, envelope).map_err(|e| match e {
        Error::Decode { source, .. } => Error::Decode {
            sender: Some(from),
            source,
        },
        e if e.culprits() == [from] => e,
        e => match e.culprits().first() {
            Some(claimed) => Error::WrongSender {
                culprit: from,
                claimed: *claimed,
            },
            None => e,
        },
    })?;
    if opened.header.from != from {
        return Err(Error::WrongSender {
            culprit: from,
            claimed: opened.header.from,
        });
    }
    Ok(opened)
}

/// Encodes `header ‖ body` and signs it into an envelope.
pub fn signed<B: wire::Body>(
    identity: &dyn Identity,
    header: &Header,
    body: &B,
) -> Result<Vec<u8>, Error> {
    seal_envelope(identity, &wire::encode(header, body)?)
}

/// Seals `plaintext` to `recipient` under `header` and signs the result into an
/// envelope. `header.kind` must be a confidential kind.
pub fn signed_sealed<R: RngCore + CryptoRng>(
    identity: &dyn Identity,
    rng: &mut R,
    header: &Header,
    recipient: &IdentityPublic,
    plaintext: &[u8],
) -> Result<Vec<u8>, Error> {
    debug_assert!(header.kind.is_confidential());
    let sealed = seal(rng, header, recipient, plaintext)?;
    let mut w = Writer::with_capacity(wire::HEADER_LEN + sealed.len());
    header.encode(&mut w);
    w.bytes(&sealed);
    seal_envelope(identity, &w.into_vec())
}

/// Opens an envelope from `from` that must carry a sealed message of `kind` in
/// `session` addressed to `me`; returns the plaintext.
#[allow(clippy::too_many_arguments)]
pub fn open_sealed(
    identity: &dyn Identity,
    roster: &Roster,
    from: ParticipantId,
    envelope: &[u8],
    suite: crate::Suite,
    kind: wire::Kind,
    session: &crate::SessionId,
    me: ParticipantId,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let opened = open_from(roster, from, envelope)?;
    let h = opened.header;
    h.expect(suite, kind, session)?;
    if h.to != Some(me) {
        return Err(Error::Misaddressed {
            sender: h.from,
            to: h.to.map_or(0, ParticipantId::get),
        });
    }
    identity.open(&h, &opened.body[wire::HEADER_LEN..])
}
