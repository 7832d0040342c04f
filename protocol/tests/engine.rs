//! End-to-end engine tests over the in-memory simulation (seeded ChaCha20).

mod common;

use std::collections::BTreeMap;

use common::*;
use custody_protocol::dkg::{self, DkgConfig, DKG_KINDS};
use custody_protocol::sim::{self, Participants, Step};
use custody_protocol::{DecodeError, EngineSuite, Error, KeyShare, ParticipantId, PublicKeySet};

fn dkg_then_sign<C: EngineSuite>(n: u16, t: u16, seed: u64) {
    let mut r = rng(seed);
    let parts = Participants::generate(n, &mut r);
    let ceremony = sim::dkg::<C, _>(&parts, t, session(7), &mut r, &mut sim::honest);
    let confirmations = ceremony.confirmations.clone();
    let shares = ceremony.shares().expect("DKG succeeds");
    assert_eq!(shares.len(), n as usize);

    // Everyone derived the same public key set, and the confirmations say so.
    let public = shares[&pid(1)].public().clone();
    for s in shares.values() {
        assert_eq!(s.public(), &public);
        assert_eq!(s.public().threshold(), t);
    }
    dkg::check_confirmations(
        &parts.roster,
        C::SUITE,
        DKG_KINDS,
        &session(7),
        &parts.ids(),
        &public.digest(),
        sim::labelled(&confirmations),
    )
    .expect("confirmations agree");

    // Two different quorums of exactly t sign; both signatures verify independently.
    let pk = public.public_key();
    let first: Vec<_> = parts.ids().into_iter().take(t as usize).collect();
    let last: Vec<_> = parts
        .ids()
        .into_iter()
        .rev()
        .take(t as usize)
        .collect::<Vec<_>>();
    for (i, quorum) in [first, last].iter().enumerate() {
        let mut quorum = quorum.clone();
        quorum.sort();
        let msg = format!("pay 1 BTC to Alice #{i}");
        let sig = sim::sign(
            &parts,
            &public,
            &shares,
            &quorum,
            msg.as_bytes(),
            session(8 + i as u8),
            &mut r,
            &mut sim::honest,
        )
        .expect("signing succeeds");
        assert!(
            verify_independently(C::SUITE, &pk, msg.as_bytes(), &sig),
            "{:?} {t}-of-{n}",
            C::SUITE
        );
        assert!(custody_protocol::verify_signature(
            C::SUITE,
            &pk,
            msg.as_bytes(),
            &sig
        ));
        assert!(!verify_independently(
            C::SUITE,
            &pk,
            b"another message",
            &sig
        ));
    }
}

#[test]
fn dkg_and_sign_2_of_3_secp256k1_tr() {
    dkg_then_sign::<Secp>(3, 2, 1);
}
#[test]
fn dkg_and_sign_3_of_5_secp256k1_tr() {
    dkg_then_sign::<Secp>(5, 3, 2);
}
#[test]
fn dkg_and_sign_7_of_10_secp256k1_tr() {
    dkg_then_sign::<Secp>(10, 7, 3);
}
#[test]
fn dkg_and_sign_2_of_3_ed25519() {
    dkg_then_sign::<Ed>(3, 2, 4);
}
#[test]
fn dkg_and_sign_3_of_5_ed25519() {
    dkg_then_sign::<Ed>(5, 3, 5);
}
#[test]
fn dkg_and_sign_7_of_10_ed25519() {
    dkg_then_sign::<Ed>(10, 7, 6);
}

fn refresh_keeps_key<C: EngineSuite>(seed: u64) {
    let (parts, old, mut r) = setup::<C>(5, 3, seed);
    let pk = old[&pid(1)].public_key();
    let new = sim::refresh::<C, _>(&parts, old.clone(), session(2), &mut r, &mut sim::honest)
        .shares()
        .expect("refresh succeeds");
    for (p, s) in &new {
        assert_eq!(s.public_key(), pk, "group key unchanged");
        assert_ne!(
            s.public().verifying_share(*p),
            old[p].public().verifying_share(*p),
            "share changed"
        );
    }
    let quorum = pids(&[1, 2, 3]);
    let sig = sim::sign(
        &parts,
        new[&pid(1)].public(),
        &new,
        &quorum,
        b"after refresh",
        session(3),
        &mut r,
        &mut sim::honest,
    )
    .unwrap();
    assert!(verify_independently(C::SUITE, &pk, b"after refresh", &sig));

    // An old share of P1 mixed with new shares of P2, P3 does not sign, and the
    // aggregator names P1.
    let mut mixed = new.clone();
    let stale = KeyShare::<C>::from_secret_bytes(&old[&pid(1)].to_secret_bytes()).unwrap();
    mixed.insert(pid(1), stale);
    let err = sim::sign(
        &parts,
        new[&pid(1)].public(),
        &mixed,
        &quorum,
        b"mixed",
        session(4),
        &mut r,
        &mut sim::honest,
    )
    .unwrap_err();
    assert_eq!(
        err,
        Error::InvalidSignatureShare {
            culprits: vec![pid(1)]
        }
    );
}

#[test]
fn refresh_keeps_group_key_and_invalidates_old_shares_secp256k1_tr() {
    refresh_keeps_key::<Secp>(10);
}
#[test]
fn refresh_keeps_group_key_and_invalidates_old_shares_ed25519() {
    refresh_keeps_key::<Ed>(11);
}

fn repair_restores<C: EngineSuite>(seed: u64) {
    let (parts, mut shares, mut r) = setup::<C>(5, 3, seed);
    let pk = shares[&pid(1)].public_key();
    let lost = shares.remove(&pid(5)).unwrap();
    let public = lost.public().clone();
    drop(lost);
    let helpers = pids(&[1, 2, 4]);
    let repaired = sim::repair(
        &parts,
        &shares,
        &helpers,
        pid(5),
        public.clone(),
        session(5),
        &mut r,
        &mut sim::honest,
    )
    .expect("repair succeeds");
    assert_eq!(repaired.public(), &public);
    shares.insert(pid(5), repaired);
    let quorum = pids(&[3, 4, 5]);
    let sig = sim::sign(
        &parts,
        &public,
        &shares,
        &quorum,
        b"repaired",
        session(6),
        &mut r,
        &mut sim::honest,
    )
    .unwrap();
    assert!(verify_independently(C::SUITE, &pk, b"repaired", &sig));

    // Too few helpers is refused before anything is sent.
    let err = sim::repair(
        &parts,
        &shares,
        &pids(&[1, 2]),
        pid(5),
        public.clone(),
        session(7),
        &mut r,
        &mut sim::honest,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::BelowThreshold {
                have: 2,
                threshold: 3
            }
        ),
        "{err:?}"
    );

    // A helper's tampered sigma is detected and attributed.
    let err = sim::repair(
        &parts,
        &shares,
        &helpers,
        pid(5),
        public,
        session(8),
        &mut r,
        &mut |step, from, _, m| {
            if step == Step::RepairSigma && from == pid(2) {
                let i = m.len() - 70;
                m[i] ^= 1;
            }
            true
        },
    )
    .unwrap_err();
    assert_eq!(err.culprits(), vec![pid(2)], "{err:?}");
}

#[test]
fn repair_restores_a_working_share_secp256k1_tr() {
    repair_restores::<Secp>(20);
}
#[test]
fn repair_restores_a_working_share_ed25519() {
    repair_restores::<Ed>(21);
}

/// A repaired share is checked against the owner's verifying share: sigmas for another
/// key's public set do not produce a share.
#[test]
fn repair_against_wrong_public_set_is_refused() {
    let (parts, shares, mut r) = setup::<Secp>(3, 2, 30);
    let (_, other, _) = setup::<Secp>(3, 2, 31);
    let wrong: PublicKeySet<Secp> = other[&pid(3)].public().clone();
    let err = sim::repair(
        &parts,
        &shares,
        &pids(&[1, 2]),
        pid(3),
        wrong,
        session(9),
        &mut r,
        &mut sim::honest,
    )
    .unwrap_err();
    assert_eq!(err, Error::RepairMismatch(pid(3)));
}

/// A signer who shows different round-1 packages to different peers (each validly
/// signed by itself) makes the DKG abort for every honest participant: the echo check
/// catches what signatures alone cannot.
#[test]
fn equivocation_in_round1_aborts_dkg() {
    let mut r = rng(40);
    let parts = Participants::generate(4, &mut r);
    // A second, different round-1 broadcast from P1 for the same session.
    let cfg = DkgConfig {
        session: session(1),
        threshold: 3,
        participants: parts.ids(),
        me: pid(1),
    };
    let (_, other_round1) = dkg::start::<Secp, _>(cfg, &parts.identities[&pid(1)], &mut r).unwrap();
    let out = sim::dkg::<Secp, _>(&parts, 3, session(1), &mut r, &mut |step, from, to, m| {
        if step == Step::Round1 && from == pid(1) && to == pid(4) {
            *m = other_round1.clone();
        }
        true
    });
    for (p, res) in &out.results {
        assert!(res.is_err(), "{p:?} must not finish: {res:?}");
    }
    // The honest majority blames the participant whose view differs.
    let err = out.results[&pid(2)].as_ref().unwrap_err();
    assert!(matches!(err, Error::EchoMismatch { .. }), "{err:?}");
}

/// Round-1 messages of one session are refused in another, naming the sender.
#[test]
fn messages_of_one_session_are_refused_in_another() {
    let mut r = rng(50);
    let parts = Participants::generate(3, &mut r);
    let mut starts = BTreeMap::new();
    for s in [1u8, 2] {
        for p in parts.ids() {
            let cfg = DkgConfig {
                session: session(s),
                threshold: 2,
                participants: parts.ids(),
                me: p,
            };
            starts.insert(
                (s, p),
                dkg::start::<Ed, _>(cfg, &parts.identities[&p], &mut r).unwrap(),
            );
        }
    }
    let (state, _) = starts.remove(&(2, pid(1))).unwrap();
    let from_s1 = starts[&(1, pid(2))].1.clone();
    let from_s2 = starts[&(2, pid(3))].1.clone();
    let inbox = [(pid(2), from_s1.as_slice()), (pid(3), from_s2.as_slice())];
    let err = state
        .receive(&parts.identities[&pid(1)], &parts.roster, inbox, &mut r)
        .unwrap_err();
    assert!(
        matches!(err, Error::Decode { sender: Some(p), source: DecodeError::WrongSession { .. } } if p == pid(2)),
        "{err:?}"
    );
}

/// The relay cannot read round-2 shares: what it carries is ciphertext, and the only
/// party whose identity opens it is the recipient.
#[test]
fn round2_shares_are_sealed_to_their_recipient() {
    let mut r = rng(60);
    let parts = Participants::generate(3, &mut r);
    let mut seen = Vec::new();
    let shares = sim::dkg::<Secp, _>(&parts, 2, session(1), &mut r, &mut |step, from, to, m| {
        if step == Step::Round2 {
            seen.push((from, to, m.clone()));
        }
        true
    })
    .shares()
    .unwrap();
    assert_eq!(seen.len(), 6);
    for (from, to, env) in &seen {
        // No share of the recipient appears in clear in what was relayed.
        let secret = shares[to].to_secret_bytes();
        let share_bytes = &secret[4..36];
        assert!(!env.windows(32).any(|w| w == share_bytes));
        // Someone else's identity cannot open it.
        let other = parts
            .ids()
            .into_iter()
            .find(|p| p != from && p != to)
            .unwrap();
        let err = custody_protocol::identity::open_sealed(
            &parts.identities[&other],
            &parts.roster,
            *from,
            env,
            custody_protocol::Suite::Secp256k1Tr,
            custody_protocol::wire::Kind::DkgRound2,
            &session(1),
            other,
        )
        .unwrap_err();
        assert!(matches!(err, Error::Misaddressed { .. }), "{err:?}");
    }
}

/// Bad parameters are refused with a clear error.
#[test]
fn invalid_parameters_are_refused() {
    let mut r = rng(70);
    let parts = Participants::generate(3, &mut r);
    for (t, ids, me) in [
        (1, pids(&[1, 2, 3]), pid(1)),
        (4, pids(&[1, 2, 3]), pid(1)),
        (2, pids(&[1, 1, 3]), pid(1)),
        (2, pids(&[3, 2, 1]), pid(1)),
        (2, pids(&[1, 2, 3]), pid(4)),
    ] {
        let cfg = DkgConfig {
            session: session(1),
            threshold: t,
            participants: ids,
            me,
        };
        let err = dkg::start::<Ed, _>(cfg, &parts.identities[&pid(1)], &mut r).unwrap_err();
        assert!(matches!(err, Error::InvalidParameters(_)), "{err:?}");
    }
}

/// Key shares survive their storage encoding, and a corrupted encoding is refused.
#[test]
fn key_share_storage_round_trip() {
    let (_, shares, _) = setup::<Ed>(3, 2, 80);
    let s = &shares[&pid(2)];
    let bytes = s.to_secret_bytes();
    let back = KeyShare::<Ed>::from_secret_bytes(&bytes).unwrap();
    assert_eq!(back.public(), s.public());
    assert_eq!(back.to_secret_bytes(), bytes);
    // A different share under the same public set fails the verifying-share check.
    let mut bad = bytes.to_vec();
    bad[10] ^= 1;
    assert!(KeyShare::<Ed>::from_secret_bytes(&bad).is_err());
    let mut long = bytes.to_vec();
    long.push(0);
    assert!(matches!(
        KeyShare::<Ed>::from_secret_bytes(&long),
        Err(Error::Decode {
            source: DecodeError::TrailingBytes(1),
            ..
        })
    ));
    // Debug never shows the secret.
    assert!(format!("{s:?}").contains("<redacted>"));
    assert!(!format!("{s:?}").contains(&hex::encode(&bytes[4..36])));
    let _: ParticipantId = s.id();
}

/// Aggregation prepared from the package before the shares arrive gives exactly what
/// `aggregate` gives, for many signatures (both Y parities of the group commitment in
/// BIP340), and still names the signer of a bad share.
fn prepared_aggregation_matches<C: EngineSuite>(seed: u64) {
    use custody_protocol::sign::{self, SigningPackage};
    use custody_protocol::wire::{Body, Reader, Writer};
    let (_, shares, mut r) = setup::<C>(5, 3, seed);
    let public = shares[&pid(1)].public().clone();
    let quorum = pids(&[1, 3, 5]);
    let mut bad_checked = 0;
    for i in 0..24u8 {
        let mut nonces = BTreeMap::new();
        let mut comms = BTreeMap::new();
        for p in &quorum {
            let (n, c) = sign::commit(&shares[p], &mut r);
            nonces.insert(*p, n);
            comms.insert(*p, c);
        }
        let pkg = SigningPackage::new(comms, vec![i; 1 + i as usize]).expect("package");
        let prepared = sign::prepare_aggregate(&public, &pkg).expect("prepare");
        let mut s: BTreeMap<_, _> = nonces
            .into_iter()
            .map(|(p, n)| (p, n.sign(&shares[&p], &pkg).expect("share")))
            .collect();
        let full = sign::aggregate(&public, &pkg, &s).expect("aggregate");
        assert_eq!(prepared.finish(&public, &pkg, &s).expect("finish"), full);
        assert!(custody_protocol::verify_signature(
            C::SUITE,
            &public.public_key(),
            pkg.message(),
            &full
        ));
        // Fewer shares than signers: refused, not summed.
        let mut fewer = s.clone();
        fewer.remove(&pid(3));
        assert!(matches!(
            prepared.finish(&public, &pkg, &fewer),
            Err(Error::WrongParticipants { .. })
        ));
        // A bad share from signer 3 (one bit flipped, still a canonical scalar).
        let mut w = Writer::default();
        s[&pid(3)].encode_body(&mut w).expect("encode");
        let mut bytes = w.into_vec();
        bytes[C::SCALAR_LEN / 2] ^= 1;
        if let Ok(bad) = sign::SignatureShare::<C>::decode_body(&mut Reader::new(&bytes)) {
            s.insert(pid(3), bad);
            match prepared.finish(&public, &pkg, &s) {
                Err(Error::InvalidSignatureShare { culprits }) => {
                    assert_eq!(culprits, vec![pid(3)])
                }
                other => panic!("bad share accepted or misattributed: {other:?}"),
            }
            bad_checked += 1;
        }
    }
    assert!(
        bad_checked >= 20,
        "only {bad_checked} corrupted shares were checked"
    );
}

#[test]
fn prepared_aggregation_matches_aggregate_secp256k1_tr() {
    prepared_aggregation_matches::<custody_protocol::frost_secp256k1_tr::Secp256K1Sha256TR>(41);
}

#[test]
fn prepared_aggregation_matches_aggregate_ed25519() {
    prepared_aggregation_matches::<custody_protocol::frost_ed25519::Ed25519Sha512>(42);
}
