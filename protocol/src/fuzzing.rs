//! Entry points for the fuzz targets in `fuzz/`: each takes untrusted bytes the way a
//! daemon does, must never panic, and checks what must hold of whatever decodes
//! (decoders accept only canonical encodings, so decode → encode is the identity).

use crate::dkg::{Digests, Round1Package};
use crate::identity::{self, IdentityKey, Roster};
use crate::sign::{CommitmentBatch, Commitments, ShareMessage, SigningPackage, COORDINATOR};
use crate::suite::EngineSuite;
use crate::wire::{self, Body, Kind, Reader, Writer};
use crate::{with_suite, Identity, KeyShare, ParticipantId, PublicKeySet};

fn canonical<B: Body>(body: &B, input: &[u8]) {
    let mut w = Writer::default();
    if body.encode_body(&mut w).is_ok() {
        assert_eq!(
            w.into_vec(),
            input,
            "a decoded body re-encodes to other bytes"
        );
    }
}

/// Decodes `body` as a `kind` message; whether it decoded completely (no bytes left),
/// after checking that whatever decoded re-encodes to exactly `body`. Sealed kinds
/// (ciphertext, opened only by their recipient) are `None`.
fn message_in<C: EngineSuite>(kind: Kind, body: &[u8]) -> Option<bool> {
    let mut r = Reader::new(body);
    macro_rules! check {
        ($decoded:expr) => {{
            let mut ok = false;
            if let Ok(b) = $decoded {
                if r.finish().is_ok() {
                    canonical(&b, body);
                    ok = true;
                }
            }
            Some(ok)
        }};
    }
    match kind {
        Kind::DkgRound1 | Kind::RefreshRound1 => {
            // The count is the body's own first field; the decoder insists on it.
            let n = body
                .get(..2)
                .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]) as usize);
            check!(Round1Package::<C>::decode_body(
                &mut r,
                n.min(wire::MAX_PARTICIPANTS)
            ))
        }
        Kind::DkgEcho | Kind::RefreshEcho => check!(Digests::decode(&mut r, 1)),
        Kind::DkgConfirm | Kind::RefreshConfirm => check!(Digests::decode(&mut r, 2)),
        Kind::SigningCommitments => check!(Commitments::<C>::decode_body(&mut r)),
        Kind::CommitmentBatch => check!(CommitmentBatch::<C>::decode_body(&mut r, 4096)),
        Kind::SigningPackage => check!(SigningPackage::<C>::decode_body(&mut r)),
        Kind::SignatureShare => check!(ShareMessage::<C>::decode_body(&mut r)),
        // Sealed kinds: the body is ciphertext, opened only by its recipient.
        Kind::DkgRound2 | Kind::RefreshRound2 | Kind::RepairDelta | Kind::RepairSigma => None,
    }
}

/// A complete wire message (header and body), as a relay or peer hands it over.
pub fn message(bytes: &[u8]) {
    let _ = decodes(bytes);
}

/// Whether `bytes` is a complete, canonical wire message (header and body) of a kind
/// that is not sealed; `None` for sealed kinds (ciphertext). Panics if something
/// decodes to a value that re-encodes to other bytes.
pub fn decodes(bytes: &[u8]) -> Option<bool> {
    let Ok((header, _)) = wire::split(bytes) else {
        return Some(false);
    };
    let body = &bytes[wire::HEADER_LEN..];
    with_suite!(header.suite, C => message_in::<C>(header.kind, body))
}

/// Whether `bytes` is an envelope that opens (signature valid) against the fuzz
/// targets' fixed roster.
pub fn envelope_opens(bytes: &[u8]) -> bool {
    let key = IdentityKey::from_secret_bytes(&[7; 64]);
    let mut roster = Roster::new();
    roster.insert(ParticipantId::new(1).expect("non-zero"), key.public());
    roster.insert(COORDINATOR, key.public());
    identity::open_envelope(&roster, bytes).is_ok()
}

/// A signed envelope, opened against a fixed roster (one known sender).
pub fn envelope(bytes: &[u8]) {
    let key = IdentityKey::from_secret_bytes(&[7; 64]);
    let mut roster = Roster::new();
    roster.insert(ParticipantId::new(1).expect("non-zero"), key.public());
    roster.insert(COORDINATOR, key.public());
    if let Ok(opened) = identity::open_envelope(&roster, bytes) {
        message(opened.body);
    }
    // A sealed body addressed to us: must fail cleanly (wrong key) or open.
    if let Ok(msg) = identity::envelope_body(bytes) {
        if let Ok((h, _)) = wire::split(msg) {
            if h.kind.is_confidential() {
                let _ = key.open(&h, &msg[wire::HEADER_LEN..]);
            }
        }
    }
}

/// A canonical public key set, in both suites.
pub fn public_key_set(bytes: &[u8]) {
    with_suite!(crate::Suite::Secp256k1Tr, C => public_key_set_in::<C>(bytes));
    with_suite!(crate::Suite::Ed25519, C => public_key_set_in::<C>(bytes));
}

fn public_key_set_in<C: EngineSuite>(bytes: &[u8]) {
    if let Ok(set) = PublicKeySet::<C>::from_bytes(bytes) {
        assert_eq!(
            set.to_bytes(),
            bytes,
            "a decoded key set re-encodes to other bytes"
        );
    }
}

/// A key share as unsealed from storage, in both suites.
pub fn key_share(bytes: &[u8]) {
    let _ = KeyShare::<crate::frost_secp256k1_tr::Secp256K1Sha256TR>::from_secret_bytes(bytes);
    let _ = KeyShare::<crate::frost_ed25519::Ed25519Sha512>::from_secret_bytes(bytes);
}
