//! Ceremony replay: real transcripts (from the engine's simulation) replay clean;
//! every flipped byte, dropped or reordered message is detected; a party holding the
//! coordinator's key but no signer key cannot forge one.

mod common;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use custody_audit::transcript::{Message, SignedRequest};
use custody_audit::{replay_dkg, replay_signing, Trust};
use custody_protocol::frost_ed25519::Ed25519Sha512;
use custody_protocol::frost_secp256k1_tr::Secp256K1Sha256TR;
use custody_protocol::sign::{self, SigningPackage, COORDINATOR};
use custody_protocol::wire::{self, Kind};
use custody_protocol::{identity, Identity, IdentityKey, SessionId};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

use common::{ceremonies, Ceremonies};

fn secp() -> &'static Ceremonies {
    static C: OnceLock<Ceremonies> = OnceLock::new();
    C.get_or_init(|| ceremonies::<Secp256K1Sha256TR>(7))
}

fn pinned(c: &Ceremonies) -> Trust {
    let mut map = BTreeMap::new();
    for (p, k) in &c.parts.identities {
        map.insert(common::name(*p), k.public().to_bytes());
    }
    map.insert(
        "coordinator".into(),
        c.parts.coordinator.public().to_bytes(),
    );
    Trust::Pinned(map)
}

#[test]
fn real_transcripts_replay_clean_in_both_suites() {
    for c in [secp(), &ceremonies::<Ed25519Sha512>(8)] {
        let trust = pinned(c);
        let dkg = replay_dkg(&c.dkg, &trust).expect("DKG replays");
        assert_eq!(dkg.public_key, c.dkg.public_key);
        assert_eq!(dkg.participants.len(), 3);
        let s = replay_signing(&c.signing, &trust, Some(&dkg.public_key_set))
            .expect("signature replays");
        assert_eq!(s.signature, c.signing.signature);
        replay_signing(&c.signing, &Trust::Unpinned, None).expect("unpinned replay");
        let r = replay_dkg(&c.refresh, &trust).expect("refresh replays");
        assert!(r.refresh);
        assert_eq!(r.public_key, dkg.public_key, "same group key");
        assert_ne!(r.public_key_set, dkg.public_key_set, "new verifying shares");
    }
}

#[test]
fn a_refresh_must_keep_the_key_it_claims_to_refresh() {
    let c = secp();
    let trust = pinned(c);
    // Claimed as a refresh of another key (another ceremony's key set).
    let mut t = c.refresh.clone();
    t.previous_public_key_set = Some(ceremonies::<Secp256K1Sha256TR>(9).dkg.public_key_set);
    assert!(replay_dkg(&t, &trust).is_err());
    // A DKG passed off as a refresh, and the reverse.
    let mut t = c.dkg.clone();
    t.format = custody_audit::transcript::REFRESH_FORMAT.into();
    assert!(replay_dkg(&t, &trust).is_err());
    let mut t = c.refresh.clone();
    t.format = custody_audit::transcript::DKG_FORMAT.into();
    assert!(replay_dkg(&t, &trust).is_err());
    t.previous_public_key_set = None;
    assert!(replay_dkg(&t, &trust).is_err());
}

#[test]
fn identities_must_match_the_pinned_ones() {
    let c = secp();
    let Trust::Pinned(mut map) = pinned(c) else {
        unreachable!()
    };
    map.remove("signer-2");
    let err = replay_dkg(&c.dkg, &Trust::Pinned(map.clone())).unwrap_err();
    assert!(
        err.contains("signer-2 is not among the trusted identities"),
        "{err}"
    );
    map.insert("signer-2".into(), [7; 64]);
    let err = replay_dkg(&c.dkg, &Trust::Pinned(map)).unwrap_err();
    assert!(err.contains("not its trusted identity"), "{err}");
}

#[test]
fn the_coordinator_key_alone_cannot_forge_a_signature_transcript() {
    let c = secp();
    let trust = pinned(c);
    // The forger holds the coordinator's identity key and everything public: it
    // re-signs the signing package with another message and keeps the real shares.
    let env = hex::decode(&c.signing.package).unwrap();
    let body = identity::envelope_body(&env).unwrap();
    let session = SessionId(hex::decode(&c.signing.session).unwrap().try_into().unwrap());
    let (h, pkg) = wire::decode_with(
        body,
        custody_protocol::Suite::Secp256k1Tr,
        Kind::SigningPackage,
        &session,
        |_, r| SigningPackage::<Secp256K1Sha256TR>::decode_body(r),
    )
    .unwrap();
    let commitments = pkg
        .signers()
        .into_iter()
        .map(|p| (p, pkg.commitments_of(p).unwrap()))
        .collect();
    let forged_pkg = SigningPackage::new(commitments, b"pay 5000 to mallory".to_vec()).unwrap();
    let forged_env = identity::signed(&c.parts.coordinator, &h, &forged_pkg).unwrap();
    let mut t = c.signing.clone();
    t.request = SignedRequest::Raw {
        message: hex::encode(b"pay 5000 to mallory"),
    };
    t.package = hex::encode(&forged_env);
    let err = replay_signing(&t, &trust, None).unwrap_err();
    assert!(
        err.contains("confirms another key, request or signing package"),
        "{err}"
    );

    // Or it claims another request id for the real signature.
    let mut t = c.signing.clone();
    t.request_id = "other".into();
    assert!(replay_signing(&t, &trust, None).is_err());

    // Or it signs shares with keys of its own: only passes if identities are not pinned.
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    let fake = IdentityKey::generate(&mut rng);
    let mut t = c.signing.clone();
    t.signers[0].identity = hex::encode(fake.public().to_bytes());
    let err = replay_signing(&t, &trust, None).unwrap_err();
    assert!(err.contains("not its trusted identity"), "{err}");
    let _ = (COORDINATOR, sign::transcript_digest("a", "b", b"c"));
}

#[test]
fn the_coordinator_key_alone_cannot_forge_a_dkg_transcript() {
    let c = secp();
    let trust = pinned(c);
    // Claim another public key set: the commitments give the real one.
    let mut t = c.dkg.clone();
    let other = ceremonies::<Secp256K1Sha256TR>(8).dkg;
    t.public_key_set = other.public_key_set.clone();
    t.public_key = other.public_key.clone();
    assert!(replay_dkg(&t, &trust).is_err());
    // Swap in another ceremony's round 1 from the same signers' point of view: the
    // envelopes are signed by other identities (or the session differs).
    let mut t = c.dkg.clone();
    t.round1 = other.round1.clone();
    assert!(replay_dkg(&t, &trust).is_err());
    // Drop a confirmation.
    let mut t = c.dkg.clone();
    t.confirmations.pop();
    let err = replay_dkg(&t, &trust).unwrap_err();
    assert!(err.contains("confirmation"), "{err}");
}

/// Which list of a transcript a mutation hits.
fn lists(c: &Ceremonies) -> Vec<(&'static str, Vec<Message>)> {
    vec![
        ("round1", c.dkg.round1.clone()),
        ("echoes", c.dkg.echoes.clone()),
        ("confirmations", c.dkg.confirmations.clone()),
        ("refresh round1", c.refresh.round1.clone()),
        ("refresh echoes", c.refresh.echoes.clone()),
        ("refresh confirmations", c.refresh.confirmations.clone()),
        ("shares", c.signing.shares.clone()),
        (
            "package",
            vec![Message {
                from: COORDINATOR.get(),
                envelope: c.signing.package.clone(),
            }],
        ),
    ]
}

fn replays(c: &Ceremonies, which: &str, list: Vec<Message>) -> bool {
    let trust = pinned(c);
    let (mut dkg, mut signing, mut refresh) = (c.dkg.clone(), c.signing.clone(), c.refresh.clone());
    match which {
        "refresh round1" => refresh.round1 = list,
        "refresh echoes" => refresh.echoes = list,
        "refresh confirmations" => refresh.confirmations = list,
        "round1" => dkg.round1 = list,
        "echoes" => dkg.echoes = list,
        "confirmations" => dkg.confirmations = list,
        "shares" => signing.shares = list,
        _ => signing.package = list.first().map(|m| m.envelope.clone()).unwrap_or_default(),
    }
    let Ok(d) = replay_dkg(&dkg, &trust) else {
        return false;
    };
    replay_signing(&signing, &trust, Some(&d.public_key_set)).is_ok()
        && replay_dkg(&refresh, &trust).is_ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn any_flipped_byte_of_any_message_is_detected(
        which in 0usize..8, msg in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(), bit in 0u8..8,
    ) {
        let c = secp();
        let (name, mut list) = lists(c).swap_remove(which);
        let m = msg.index(list.len());
        let mut bytes = hex::decode(&list[m].envelope).unwrap();
        let i = at.index(bytes.len());
        bytes[i] ^= 1 << bit;
        list[m].envelope = hex::encode(bytes);
        prop_assert!(!replays(c, name, list));
    }

    #[test]
    fn any_truncated_message_is_detected(
        which in 0usize..8, msg in any::<prop::sample::Index>(), len in any::<prop::sample::Index>(),
    ) {
        let c = secp();
        let (name, mut list) = lists(c).swap_remove(which);
        let m = msg.index(list.len());
        let bytes = hex::decode(&list[m].envelope).unwrap();
        list[m].envelope = hex::encode(&bytes[..len.index(bytes.len())]);
        prop_assert!(!replays(c, name, list));
    }

    #[test]
    fn any_dropped_or_reordered_message_is_detected(
        which in 0usize..8, i in any::<prop::sample::Index>(), j in any::<prop::sample::Index>(), drop in any::<bool>(),
    ) {
        let c = secp();
        let (name, mut list) = lists(c).swap_remove(which);
        let (i, j) = (i.index(list.len()), j.index(list.len()));
        if drop {
            list.remove(i);
        } else {
            prop_assume!(i != j);
            list.swap(i, j);
        }
        prop_assert!(!replays(c, name, list));
    }
}

#[test]
fn the_clean_lists_replay() {
    let c = secp();
    for (name, list) in lists(c) {
        assert!(replays(c, name, list), "{name}");
    }
}

#[test]
fn approvals_in_a_signing_transcript_must_verify() {
    use ed25519_dalek::Signer;
    let c = secp();
    let trust = pinned(c);
    let mut t = c.signing.clone();
    let sk = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let digest = t.approval_digest().unwrap();
    t.approvals.push(custody_audit::transcript::ApprovalRecord {
        approver: hex::encode(sk.verifying_key().to_bytes()),
        signature: hex::encode(sk.sign(&digest).to_bytes()),
    });
    replay_signing(&t, &trust, None).expect("a valid approval");
    let mut bad = t.clone();
    let mut sig = hex::decode(&bad.approvals[0].signature).unwrap();
    sig[3] ^= 1;
    bad.approvals[0].signature = hex::encode(sig);
    assert!(replay_signing(&bad, &trust, None)
        .unwrap_err()
        .contains("does not verify"));
    let mut twice = t.clone();
    twice.approvals.push(t.approvals[0].clone());
    assert!(replay_signing(&twice, &trust, None)
        .unwrap_err()
        .contains("twice"));
    // An approval of another request does not verify for this one.
    let mut other = t.clone();
    other.request_id = "another".into();
    assert!(replay_signing(&other, &trust, None).is_err());
}
