//! # custody-protocol: the threshold engine
//!
//! FROST (RFC 9591) distributed key generation, signing, share refresh and share repair
//! over two ciphersuites chosen at run time by name ([`Suite`]):
//! `secp256k1-tr` (BIP340 Schnorr, Taproot; `frost-secp256k1-tr`) and `ed25519`
//! (RFC 8032; `frost-ed25519`).
//!
//! What this crate adds to `frost-core`:
//! - **rounds are types**: each step consumes the previous step's secret state, and
//!   signing consumes its nonces ([`sign::Nonces::sign`] takes `self`);
//! - **a canonical wire format** ([`wire`]) with a version, the suite and the session id
//!   in every message; decoders reject trailing bytes, wrong sessions, wrong suites and
//!   non-canonical encodings with typed errors;
//! - **signed envelopes** (Ed25519 identity keys) on every message and **sealed**
//!   (HPKE, RFC 9180) round-2 secrets ([`identity`]), so a relaying coordinator can
//!   neither forge, alter nor read them;
//! - **broadcast echo** in DKG and refresh ([`dkg`]): a participant finishes only if
//!   every peer saw the same round-1 messages;
//! - **culprits**: every error a peer can cause names it ([`Error::culprits`]).
//!
//! The crate does no I/O, holds no clock and keeps no storage: transports (gRPC, files,
//! in-memory simulation) are adapters around these functions.

pub mod dkg;
pub mod error;
pub mod hash;
pub mod identity;
pub mod ids;
pub mod keys;
pub mod repair;
pub mod sign;
pub mod sim;
pub mod suite;
pub mod wire;

pub use error::{DecodeError, Error, Result};
pub use identity::{Identity, IdentityKey, IdentityPublic, Roster};
pub use ids::{ParticipantId, SessionId};
pub use keys::{KeyShare, PublicKeySet};
pub use suite::{verify_signature, EngineSuite, Suite};

pub use frost_ed25519;
pub use frost_secp256k1_tr;
