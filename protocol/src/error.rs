//! The one error type of the engine.
//!
//! Every error that a remote party can cause names that party (`culprits()`), so a
//! caller can exclude it and retry, as RFC 9591 §5 and the `frost-core` errors do.

use crate::ids::ParticipantId;

/// Why a byte string could not be decoded into a protocol message.
///
/// Decoders never panic: every malformed input maps to one of these variants.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended before the message did.
    #[error("truncated input: needed {needed} more bytes")]
    Truncated {
        /// How many more bytes the decoder needed.
        needed: usize,
    },
    /// Bytes were left after a complete message.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// The wire-format version is not one this build understands.
    #[error("unsupported wire version {0}")]
    UnsupportedVersion(u8),
    /// The suite byte names no known ciphersuite.
    #[error("unknown ciphersuite id {0}")]
    UnknownSuite(u8),
    /// The message belongs to another ciphersuite than the one expected.
    #[error("message is for suite {found}, expected {expected}")]
    WrongSuite {
        /// Suite the decoder was asked for.
        expected: crate::Suite,
        /// Suite the message carries.
        found: crate::Suite,
    },
    /// The kind byte is not known.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// The message is of another kind than the one expected.
    #[error("message kind {found:?}, expected {expected:?}")]
    WrongKind {
        /// Kind the decoder was asked for.
        expected: crate::wire::Kind,
        /// Kind the message carries.
        found: crate::wire::Kind,
    },
    /// The message belongs to another ceremony (session id mismatch).
    #[error("message belongs to session {found}, expected {expected}")]
    WrongSession {
        /// Session the decoder was asked for.
        expected: crate::SessionId,
        /// Session the message carries.
        found: crate::SessionId,
    },
    /// A participant id of zero, or outside the ceremony.
    #[error("invalid participant id {0}")]
    InvalidParticipant(u16),
    /// A group element is not a valid, canonical, non-identity encoding.
    #[error("invalid group element encoding in {0}")]
    InvalidElement(&'static str),
    /// A scalar is not a canonical encoding.
    #[error("invalid scalar encoding in {0}")]
    InvalidScalar(&'static str),
    /// A length field exceeds what this message type allows.
    #[error("length {len} exceeds the limit {max} for {what}")]
    TooLong {
        /// What was too long.
        what: &'static str,
        /// Length found.
        len: usize,
        /// Largest length allowed.
        max: usize,
    },
    /// A list has another length than the ceremony requires.
    #[error("{what} has {len} entries, expected {expected}")]
    WrongCount {
        /// What was counted.
        what: &'static str,
        /// Entries found.
        len: usize,
        /// Entries required.
        expected: usize,
    },
    /// A list that must be strictly ordered (canonical) is not.
    #[error("entries of {0} are not in strictly increasing order")]
    NotCanonical(&'static str),
}

/// Errors of the threshold engine.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A message could not be decoded. `sender` is the participant the message claims to
    /// come from, when the header could be read.
    #[error("malformed message from {sender:?}: {source}")]
    Decode {
        /// Claimed sender, if known.
        sender: Option<ParticipantId>,
        /// What was wrong.
        #[source]
        source: DecodeError,
    },
    /// An envelope's signature does not verify under the sender's identity key.
    #[error("envelope from participant {culprit} has an invalid signature")]
    BadEnvelopeSignature {
        /// The participant the envelope claims to come from.
        culprit: ParticipantId,
    },
    /// An envelope names a sender that is not in the roster.
    #[error("envelope from unknown participant {0}")]
    UnknownSender(ParticipantId),
    /// An envelope's signing key is not the roster key of the sender it names.
    #[error("envelope claims participant {culprit} but is signed by another identity key")]
    SenderKeyMismatch {
        /// The participant the envelope claims to come from.
        culprit: ParticipantId,
    },
    /// A message delivered as coming from `culprit` names another sender in its header.
    #[error("message delivered from participant {culprit} claims to come from {claimed}")]
    WrongSender {
        /// The participant the message was delivered from.
        culprit: ParticipantId,
        /// The sender its header names.
        claimed: ParticipantId,
    },
    /// A message was addressed to another participant.
    #[error("message from {sender} addressed to {to}, not to us")]
    Misaddressed {
        /// Sender.
        sender: ParticipantId,
        /// Recipient named in the header.
        to: u16,
    },
    /// A confidential message failed to decrypt (tampered ciphertext, wrong recipient).
    #[error("confidential message from participant {culprit} failed to decrypt")]
    DecryptionFailed {
        /// The participant that sent the ciphertext.
        culprit: ParticipantId,
    },
    /// A participant sent two messages of the same round, or a message was missing.
    #[error("round {round}: expected messages from {expected:?}, got from {got:?}")]
    WrongParticipants {
        /// Round or message name.
        round: &'static str,
        /// Participants we expected to hear from.
        expected: Vec<ParticipantId>,
        /// Participants we heard from.
        got: Vec<ParticipantId>,
    },
    /// A participant sent two different messages for the same slot.
    #[error("participant {culprit} sent more than one {round} message")]
    Duplicate {
        /// Round or message name.
        round: &'static str,
        /// The participant who sent twice.
        culprit: ParticipantId,
    },
    /// A proof of knowledge in a DKG round-1 package does not verify.
    #[error("participant {culprit} sent an invalid proof of knowledge")]
    InvalidProofOfKnowledge {
        /// The participant who sent it.
        culprit: ParticipantId,
    },
    /// A DKG/refresh round-2 share does not match its sender's public commitment.
    #[error("participant {culprit} sent a secret share inconsistent with its commitment")]
    InvalidSecretShare {
        /// The participant who sent it.
        culprit: ParticipantId,
    },
    /// A participant's echo of the round-1 broadcast differs from ours: someone
    /// (possibly the relay) showed different round-1 packages to different parties.
    #[error("participant {culprit} saw a different set of round-1 packages")]
    EchoMismatch {
        /// The participant whose echo differs.
        culprit: ParticipantId,
    },
    /// One or more signature shares do not verify.
    #[error("invalid signature shares from participants {culprits:?}")]
    InvalidSignatureShare {
        /// Every participant whose share failed.
        culprits: Vec<ParticipantId>,
    },
    /// A repaired share does not match the public verifying share of its owner: one of
    /// the helpers sent a wrong value.
    #[error("repaired share for participant {0} does not match its verifying share")]
    RepairMismatch(ParticipantId),
    /// The parameters of a ceremony are invalid (threshold, participant set, roles).
    #[error("invalid parameters: {0}")]
    InvalidParameters(String),
    /// Not enough participants to reach the threshold.
    #[error("{have} participants given, threshold is {threshold}")]
    BelowThreshold {
        /// Participants available.
        have: usize,
        /// Threshold of the key.
        threshold: u16,
    },
    /// The signing package does not contain our commitment, or contains a different one.
    #[error("signing package does not carry this signer's commitment")]
    CommitmentMismatch,
    /// The final signature did not verify (and no share could be blamed).
    #[error("aggregate signature is invalid")]
    InvalidSignature,
    /// Any other error reported by `frost-core`.
    #[error("frost: {0}")]
    Frost(String),
    /// HPKE failure when sealing (not caused by a peer).
    #[error("encryption failed: {0}")]
    Encryption(String),
    /// Our own identity key could not sign (an HSM that is gone): not caused by a peer.
    #[error("identity key unavailable: {0}")]
    IdentityUnavailable(String),
}

impl Error {
    /// The participants that caused this error, if it is attributable.
    pub fn culprits(&self) -> Vec<ParticipantId> {
        match self {
            Error::Decode {
                sender: Some(s), ..
            } => vec![*s],
            Error::BadEnvelopeSignature { culprit }
            | Error::SenderKeyMismatch { culprit }
            | Error::WrongSender { culprit, .. }
            | Error::DecryptionFailed { culprit }
            | Error::Duplicate { culprit, .. }
            | Error::InvalidProofOfKnowledge { culprit }
            | Error::InvalidSecretShare { culprit }
            | Error::EchoMismatch { culprit } => vec![*culprit],
            Error::Misaddressed { sender, .. } => vec![*sender],
            Error::UnknownSender(p) => vec![*p],
            Error::InvalidSignatureShare { culprits } => culprits.clone(),
            Error::Decode { sender: None, .. }
            | Error::WrongParticipants { .. }
            | Error::RepairMismatch(_)
            | Error::InvalidParameters(_)
            | Error::BelowThreshold { .. }
            | Error::CommitmentMismatch
            | Error::InvalidSignature
            | Error::Frost(_)
            | Error::Encryption(_)
            | Error::IdentityUnavailable(_) => Vec::new(),
        }
    }

    pub(crate) fn decode(sender: Option<ParticipantId>, source: DecodeError) -> Self {
        Error::Decode { sender, source }
    }
}

/// Result alias of the engine.
pub type Result<T, E = Error> = core::result::Result<T, E>;
