//! Canonical byte encoding of every protocol message.
//!
//! Every message starts with a fixed 39-byte [`Header`]:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | wire version, currently `2` (2 added the transcript digest to signature shares) |
//! | 1 | 1 | suite (`1` = secp256k1-tr, `2` = ed25519) |
//! | 2 | 1 | message [`Kind`] |
//! | 3 | 32 | session id |
//! | 35 | 2 | sender participant id, big-endian, non-zero |
//! | 37 | 2 | recipient participant id, big-endian, `0` = broadcast |
//!
//! The body follows; its layout is given on each message type. Integers are big-endian,
//! group elements and scalars use the suite's fixed-size canonical encoding (33-byte
//! SEC1 compressed points and 32-byte big-endian scalars for secp256k1-tr; 32-byte
//! RFC 8032 points and little-endian scalars for ed25519). Lists carry a `u16` count
//! and are strictly ordered by participant id. Decoders check every field, re-encode
//! each element and scalar to reject non-canonical forms, and reject trailing bytes, so
//! every message has exactly one encoding.

use frost_core::{Ciphersuite, Field, Group};

use crate::error::{DecodeError, Error};
use crate::ids::{ParticipantId, SessionId};
use crate::suite::{EngineSuite, Suite};

/// Current wire version.
pub const WIRE_VERSION: u8 = 2;
/// Length of the [`Header`].
pub const HEADER_LEN: usize = 39;
/// Largest number of participants in one ceremony.
pub const MAX_PARTICIPANTS: usize = 1024;
/// Largest message a signing request may carry (1 MiB).
pub const MAX_SIGNING_MESSAGE: usize = 1 << 20;

/// What a message is. The numeric values are part of the wire format.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[repr(u8)]
pub enum Kind {
    /// DKG round 1 broadcast: commitment and proof of knowledge.
    DkgRound1 = 1,
    /// DKG round 2: a secret share, always sealed to its recipient.
    DkgRound2 = 2,
    /// DKG echo: hash of every round-1 package the sender saw.
    DkgEcho = 3,
    /// DKG confirmation: the group key and verifying shares the sender derived.
    DkgConfirm = 4,
    /// Refresh round 1 broadcast (commitment to a zero-constant polynomial).
    RefreshRound1 = 5,
    /// Refresh round 2: a secret share, always sealed.
    RefreshRound2 = 6,
    /// Refresh echo.
    RefreshEcho = 7,
    /// Refresh confirmation.
    RefreshConfirm = 8,
    /// Signing round 1: a signer's nonce commitments.
    SigningCommitments = 9,
    /// The signing package: message and the commitments of every signer.
    SigningPackage = 10,
    /// Signing round 2: a signature share.
    SignatureShare = 11,
    /// Repair step 1: a helper's delta for another helper, always sealed.
    RepairDelta = 12,
    /// Repair step 2: a helper's sigma for the participant being repaired, always sealed.
    RepairSigma = 13,
    /// A batch of one signer's nonce commitments, drawn ahead of any signing session
    /// (session id all zero); each commitment is bound to a session only by the signing
    /// package that uses it, once.
    CommitmentBatch = 14,
}

impl Kind {
    /// Inverse of `as u8`.
    pub fn from_u8(b: u8) -> Option<Kind> {
        use Kind::*;
        Some(match b {
            1 => DkgRound1,
            2 => DkgRound2,
            3 => DkgEcho,
            4 => DkgConfirm,
            5 => RefreshRound1,
            6 => RefreshRound2,
            7 => RefreshEcho,
            8 => RefreshConfirm,
            9 => SigningCommitments,
            10 => SigningPackage,
            11 => SignatureShare,
            12 => RepairDelta,
            13 => RepairSigma,
            14 => CommitmentBatch,
            _ => return None,
        })
    }

    /// Kinds whose body is sealed to the recipient (never travels in clear).
    pub fn is_confidential(self) -> bool {
        matches!(
            self,
            Kind::DkgRound2 | Kind::RefreshRound2 | Kind::RepairDelta | Kind::RepairSigma
        )
    }
}

/// The fixed header of every message.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Header {
    /// Ciphersuite.
    pub suite: Suite,
    /// Message kind.
    pub kind: Kind,
    /// Ceremony.
    pub session: SessionId,
    /// Sender.
    pub from: ParticipantId,
    /// Recipient, or `None` for a broadcast.
    pub to: Option<ParticipantId>,
}

impl Header {
    /// Encodes the header (39 bytes).
    pub fn encode(&self, w: &mut Writer) {
        w.u8(WIRE_VERSION);
        w.u8(self.suite.wire_id());
        w.u8(self.kind as u8);
        w.bytes(&self.session.0);
        w.u16(self.from.get());
        w.u16(self.to.map_or(0, ParticipantId::get));
    }

    /// The header alone, as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        self.encode(&mut w);
        w.into_vec()
    }

    /// Decodes a header from the front of `r`.
    pub fn decode(r: &mut Reader<'_>) -> Result<Header, DecodeError> {
        let version = r.u8()?;
        if version != WIRE_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let suite_id = r.u8()?;
        let suite = Suite::from_wire_id(suite_id).ok_or(DecodeError::UnknownSuite(suite_id))?;
        let kind_id = r.u8()?;
        let kind = Kind::from_u8(kind_id).ok_or(DecodeError::UnknownKind(kind_id))?;
        let session = SessionId(r.array::<32>()?);
        let from = r.u16()?;
        let from = ParticipantId::new(from).ok_or(DecodeError::InvalidParticipant(from))?;
        let to = ParticipantId::new(r.u16()?);
        Ok(Header {
            suite,
            kind,
            session,
            from,
            to,
        })
    }

    /// Checks suite, kind and session against what the caller expects.
    pub fn expect(&self, suite: Suite, kind: Kind, session: &SessionId) -> Result<(), Error> {
        let sender = Some(self.from);
        if self.suite != suite {
            return Err(Error::decode(
                sender,
                DecodeError::WrongSuite {
                    expected: suite,
                    found: self.suite,
                },
            ));
        }
        if self.kind != kind {
            return Err(Error::decode(
                sender,
                DecodeError::WrongKind {
                    expected: kind,
                    found: self.kind,
                },
            ));
        }
        if self.session != *session {
            return Err(Error::decode(
                sender,
                DecodeError::WrongSession {
                    expected: *session,
                    found: self.session,
                },
            ));
        }
        Ok(())
    }
}

/// Appends canonical encodings to a buffer.
#[derive(Default, Debug)]
pub struct Writer(Vec<u8>);

impl Writer {
    /// A writer with room for `n` bytes.
    pub fn with_capacity(n: usize) -> Self {
        Writer(Vec::with_capacity(n))
    }
    /// One byte.
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    /// Big-endian u16.
    pub fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    /// Big-endian u32.
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    /// Raw bytes (fixed length known to the reader).
    pub fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    /// A u32 length followed by the bytes.
    pub fn var_bytes(&mut self, b: &[u8]) {
        // Invariant: every caller bounds its data far below 4 GiB (MAX_SIGNING_MESSAGE).
        self.u32(u32::try_from(b.len()).expect("length fits in u32"));
        self.0.extend_from_slice(b);
    }
    /// The buffer.
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

/// Reads canonical encodings, failing with typed errors and never panicking.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let rest = self.buf.len() - self.pos;
        if n > rest {
            return Err(DecodeError::Truncated { needed: n - rest });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }
    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    /// One byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    /// Big-endian u16.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    /// Big-endian u32.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    /// A u32 length (at most `max`) followed by that many bytes.
    pub fn var_bytes(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(DecodeError::TooLong { what, len, max });
        }
        self.take(len)
    }
    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }
    /// Fails unless every byte was read.
    pub fn finish(self) -> Result<(), DecodeError> {
        let rest = self.buf.len() - self.pos;
        if rest == 0 {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(rest))
        }
    }
}

/// Encodes a group element (never the identity).
pub(crate) fn put_element<C: EngineSuite>(
    w: &mut Writer,
    e: &<C::Group as Group>::Element,
) -> Result<(), Error> {
    let s = <C::Group as Group>::serialize(e).map_err(|e| Error::Frost(e.to_string()))?;
    w.bytes(s.as_ref());
    Ok(())
}

/// Decodes a canonical, non-identity group element.
pub(crate) fn get_element<C: EngineSuite>(
    r: &mut Reader<'_>,
    what: &'static str,
) -> Result<<C::Group as Group>::Element, DecodeError> {
    let bytes = r.take(C::ELEMENT_LEN)?;
    let ser = <<C::Group as Group>::Serialization>::try_from(bytes)
        .map_err(|_| DecodeError::InvalidElement(what))?;
    let e =
        <C::Group as Group>::deserialize(&ser).map_err(|_| DecodeError::InvalidElement(what))?;
    // Only the canonical encoding of a point is accepted.
    if C::accepted_is_canonical(bytes) {
        Ok(e)
    } else {
        Err(DecodeError::InvalidElement(what))
    }
}

/// Encodes a scalar.
pub(crate) fn put_scalar<C: Ciphersuite>(
    w: &mut Writer,
    s: &<<C::Group as Group>::Field as Field>::Scalar,
) {
    w.bytes(<<C::Group as Group>::Field as Field>::serialize(s).as_ref());
}

/// Decodes a canonical scalar.
pub(crate) fn get_scalar<C: EngineSuite>(
    r: &mut Reader<'_>,
    what: &'static str,
) -> Result<<<C::Group as Group>::Field as Field>::Scalar, DecodeError> {
    let bytes = r.take(C::SCALAR_LEN)?;
    let ser = <<<C::Group as Group>::Field as Field>::Serialization>::try_from(bytes)
        .map_err(|_| DecodeError::InvalidScalar(what))?;
    let s = <<C::Group as Group>::Field as Field>::deserialize(&ser)
        .map_err(|_| DecodeError::InvalidScalar(what))?;
    if <<C::Group as Group>::Field as Field>::serialize(&s).as_ref() != bytes {
        return Err(DecodeError::InvalidScalar(what));
    }
    Ok(s)
}

/// A participant id field (non-zero).
pub(crate) fn get_participant(r: &mut Reader<'_>) -> Result<ParticipantId, DecodeError> {
    let v = r.u16()?;
    ParticipantId::new(v).ok_or(DecodeError::InvalidParticipant(v))
}

/// A message type with a body encoding. Each type fixes its [`Kind`]s.
pub trait Body: Sized {
    /// Appends the body.
    fn encode_body(&self, w: &mut Writer) -> Result<(), Error>;
}

/// Encodes `header` then `body`.
pub fn encode<B: Body>(header: &Header, body: &B) -> Result<Vec<u8>, Error> {
    let mut w = Writer::with_capacity(HEADER_LEN + 128);
    header.encode(&mut w);
    body.encode_body(&mut w)?;
    Ok(w.into_vec())
}

/// Splits a message into its header and a reader positioned at the body.
pub fn split(bytes: &[u8]) -> Result<(Header, Reader<'_>), Error> {
    let mut r = Reader::new(bytes);
    let h = Header::decode(&mut r).map_err(|e| Error::decode(None, e))?;
    Ok((h, r))
}

/// Decodes a complete message whose header must match `suite`, `kind` and `session`;
/// `body` decodes the rest, and nothing may follow it.
pub fn decode_with<T>(
    bytes: &[u8],
    suite: Suite,
    kind: Kind,
    session: &SessionId,
    body: impl FnOnce(&Header, &mut Reader<'_>) -> Result<T, DecodeError>,
) -> Result<(Header, T), Error> {
    let (h, mut r) = split(bytes)?;
    h.expect(suite, kind, session)?;
    let v = body(&h, &mut r).map_err(|e| Error::decode(Some(h.from), e))?;
    r.finish().map_err(|e| Error::decode(Some(h.from), e))?;
    Ok((h, v))
}
