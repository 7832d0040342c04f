//! Shared helpers for the engine's test suites.
#![allow(dead_code)]

use std::collections::BTreeMap;

use custody_protocol::sim::{self, Participants};
use custody_protocol::{EngineSuite, KeyShare, ParticipantId, SessionId, Suite};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

pub type Secp = custody_protocol::frost_secp256k1_tr::Secp256K1Sha256TR;
pub type Ed = custody_protocol::frost_ed25519::Ed25519Sha512;

pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

pub fn session(tag: u8) -> SessionId {
    SessionId([tag; 32])
}

pub fn pid(n: u16) -> ParticipantId {
    ParticipantId::new(n).unwrap()
}

pub fn pids(ns: &[u16]) -> Vec<ParticipantId> {
    ns.iter().map(|n| pid(*n)).collect()
}

/// Verifies a signature with an implementation independent of frost: `k256`'s BIP340
/// verifier or `ed25519-dalek`'s strict RFC 8032 verifier.
pub fn verify_independently(
    suite: Suite,
    public_key: &[u8; 32],
    msg: &[u8],
    sig: &[u8; 64],
) -> bool {
    match suite {
        Suite::Secp256k1Tr => {
            let Ok(vk) = k256::schnorr::VerifyingKey::from_bytes(public_key) else {
                return false;
            };
            let Ok(sig) = k256::schnorr::Signature::try_from(&sig[..]) else {
                return false;
            };
            vk.verify_raw(msg, &sig).is_ok()
        }
        Suite::Ed25519 => {
            let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(public_key) else {
                return false;
            };
            vk.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(sig))
                .is_ok()
        }
    }
}

/// A DKG among `n` fresh participants with threshold `t`, all honest.
pub fn setup<C: EngineSuite>(
    n: u16,
    t: u16,
    seed: u64,
) -> (
    Participants,
    BTreeMap<ParticipantId, KeyShare<C>>,
    ChaCha20Rng,
) {
    let mut r = rng(seed);
    let parts = Participants::generate(n, &mut r);
    let shares = sim::dkg::<C, _>(&parts, t, session(1), &mut r, &mut sim::honest)
        .shares()
        .expect("honest DKG succeeds");
    (parts, shares, r)
}
