//! Property tests of the engine's invariants (proptest; frost gets a ChaCha20 RNG built
//! from a drawn `u64`, never proptest's own RNG).

mod common;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use common::*;
use custody_protocol::identity::{open_envelope, seal_envelope};
use custody_protocol::sign::{self, SigningPackage};
use custody_protocol::sim::{self, Participants, Step};
use custody_protocol::wire::{self, Kind};
use custody_protocol::{EngineSuite, Error, KeyShare, ParticipantId, Suite};
use proptest::prelude::*;

type Fixture<C> = (Participants, BTreeMap<ParticipantId, KeyShare<C>>);

fn fixture_secp() -> &'static Fixture<Secp> {
    static F: OnceLock<Fixture<Secp>> = OnceLock::new();
    F.get_or_init(|| {
        let (p, s, _) = setup::<Secp>(5, 3, 1000);
        (p, s)
    })
}

fn fixture_ed() -> &'static Fixture<Ed> {
    static F: OnceLock<Fixture<Ed>> = OnceLock::new();
    F.get_or_init(|| {
        let (p, s, _) = setup::<Ed>(5, 3, 1001);
        (p, s)
    })
}

fn subset(mask: u8) -> Vec<ParticipantId> {
    (1..=5u16)
        .filter(|i| mask & (1 << (i - 1)) != 0)
        .map(pid)
        .collect()
}

fn any_subset_signs<C: EngineSuite>(
    fx: &Fixture<C>,
    mask: u8,
    msg: &[u8],
    seed: u64,
) -> Result<(), TestCaseError> {
    let (parts, shares) = fx;
    let public = shares[&pid(1)].public();
    let signers = subset(mask);
    let mut r = rng(seed);
    let res = sim::sign(
        parts,
        public,
        shares,
        &signers,
        msg,
        session(9),
        &mut r,
        &mut sim::honest,
    );
    if signers.len() >= 3 {
        let sig = res.map_err(|e| TestCaseError::fail(format!("{signers:?}: {e}")))?;
        prop_assert!(verify_independently(
            C::SUITE,
            &public.public_key(),
            msg,
            &sig
        ));
    } else {
        prop_assert!(
            matches!(
                res,
                Err(Error::BelowThreshold { threshold: 3, .. }) | Err(Error::InvalidParameters(_))
            ),
            "{signers:?}: {res:?}"
        );
    }
    Ok(())
}

/// Flips bit `bit` of byte `at % len` in a message.
fn flip(m: &mut [u8], at: usize, bit: u8) {
    let i = at % m.len();
    m[i] ^= 1 << (bit % 8);
}

fn flip_in_dkg<C: EngineSuite>(
    step: Step,
    from: u16,
    to: u16,
    at: usize,
    bit: u8,
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut r = rng(seed);
    let parts = Participants::generate(3, &mut r);
    let (from, to) = (pid(from), pid(to));
    let out = sim::dkg::<C, _>(&parts, 2, session(3), &mut r, &mut |s, f, t, m| {
        if s == step && f == from && t == to {
            flip(m, at, bit);
        }
        true
    });
    let err = out.results[&to]
        .as_ref()
        .expect_err("tampered message must be refused");
    prop_assert_eq!(err.culprits(), vec![from], "{:?}", err);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any set of at least t of the n signers produces a valid signature; fewer cannot.
    #[test]
    fn any_t_subset_signs_and_fewer_cannot(mask in 1u8..32, msg in proptest::collection::vec(any::<u8>(), 0..200), seed: u64) {
        any_subset_signs(fixture_secp(), mask, &msg, seed)?;
        any_subset_signs(fixture_ed(), mask, &msg, seed)?;
    }

    /// A flipped bit anywhere in a round-1 envelope is refused and names its sender.
    #[test]
    fn flipped_round1_byte_names_sender(from in 1u16..=3, d in 1u16..=2, at: usize, bit: u8, seed: u64, ed: bool) {
        let to = (from - 1 + d) % 3 + 1;
        if ed { flip_in_dkg::<Ed>(Step::Round1, from, to, at, bit, seed)?; }
        else { flip_in_dkg::<Secp>(Step::Round1, from, to, at, bit, seed)?; }
    }

    /// A flipped bit anywhere in a sealed round-2 envelope (ciphertext, header or
    /// signature) is refused and names its sender.
    #[test]
    fn flipped_round2_byte_names_sender(from in 1u16..=3, d in 1u16..=2, at: usize, bit: u8, seed: u64, ed: bool) {
        let to = (from - 1 + d) % 3 + 1;
        if ed { flip_in_dkg::<Ed>(Step::Round2, from, to, at, bit, seed)?; }
        else { flip_in_dkg::<Secp>(Step::Round2, from, to, at, bit, seed)?; }
    }

    /// A flipped bit in the echo is refused and names its sender.
    #[test]
    fn flipped_echo_byte_names_sender(from in 1u16..=3, d in 1u16..=2, at: usize, bit: u8, seed: u64) {
        let to = (from - 1 + d) % 3 + 1;
        flip_in_dkg::<Ed>(Step::Echo, from, to, at, bit, seed)?;
    }

    /// A flipped bit in the signature part of a share's envelope is refused and names
    /// the signer.
    #[test]
    fn flipped_envelope_signature_names_signer(who in 1u16..=3, at in 0usize..64, bit: u8, seed: u64) {
        let (parts, shares) = fixture_secp();
        let public = shares[&pid(1)].public();
        let mut r = rng(seed);
        let res = sim::sign(parts, public, shares, &pids(&[1, 2, 3]), b"m", session(4), &mut r, &mut |s, f, _, m| {
            if s == Step::Share && f == pid(who) {
                let n = m.len();
                flip(&mut m[n - 64..], at, bit);
            }
            true
        });
        let err = res.expect_err("must be refused");
        prop_assert!(matches!(err, Error::BadEnvelopeSignature { .. }), "{:?}", err);
        prop_assert_eq!(err.culprits(), vec![pid(who)]);
    }

    /// A malicious signer that sends a wrong signature share (validly enveloped) is
    /// named by the aggregator.
    #[test]
    fn bad_signature_share_names_signer(who in 1u16..=3, at in 0usize..32, bit: u8, seed: u64, ed: bool) {
        fn run<C: EngineSuite>(fx: &Fixture<C>, who: u16, at: usize, bit: u8, seed: u64) -> Result<(), TestCaseError> {
            let (parts, shares) = fx;
            let public = shares[&pid(1)].public();
            let mut r = rng(seed);
            let res = sim::sign(parts, public, shares, &pids(&[1, 2, 3]), b"m", session(5), &mut r, &mut |s, f, _, m| {
                if s == Step::Share && f == pid(who) {
                    // Re-sign a corrupted share with the signer's own identity key.
                    let opened = open_envelope(&parts.roster, m).unwrap();
                    let mut body = opened.body.to_vec();
                    let n = body.len();
                    flip(&mut body[n - 32..], at, bit);
                    *m = seal_envelope(&parts.identities[&pid(who)], &body).unwrap();
                }
                true
            });
            let err = res.expect_err("must be refused");
            prop_assert_eq!(err.culprits(), vec![pid(who)], "{:?}", err);
            Ok(())
        }
        if ed { run(fixture_ed(), who, at, bit, seed)?; } else { run(fixture_secp(), who, at, bit, seed)?; }
    }

    /// A message of one session is refused in any other, naming its sender.
    #[test]
    fn wrong_session_is_refused(a: [u8; 32], b: [u8; 32], seed: u64) {
        prop_assume!(a != b);
        let (parts, shares) = fixture_ed();
        let mut r = rng(seed);
        let (_, c) = sign::commit(&shares[&pid(2)], &mut r);
        let h = wire::Header { suite: Suite::Ed25519, kind: Kind::SigningCommitments, session: custody_protocol::SessionId(a), from: pid(2), to: None };
        let env = custody_protocol::identity::signed(&parts.identities[&pid(2)], &h, &c).unwrap();
        let opened = custody_protocol::identity::open_from(&parts.roster, pid(2), &env).unwrap();
        let err = wire::decode_with(opened.body, Suite::Ed25519, Kind::SigningCommitments, &custody_protocol::SessionId(b), |_, r| {
            sign::Commitments::<Ed>::decode_body(r)
        }).unwrap_err();
        prop_assert!(matches!(err, Error::Decode { sender: Some(p), source: custody_protocol::DecodeError::WrongSession { .. } } if p == pid(2)), "{:?}", err);
        // And with the right session it decodes to the same commitments.
        let (_, back) = wire::decode_with(opened.body, Suite::Ed25519, Kind::SigningCommitments, &custody_protocol::SessionId(a), |_, r| {
            sign::Commitments::<Ed>::decode_body(r)
        }).unwrap();
        prop_assert_eq!(back, c);
    }

    /// Signing packages round-trip; every truncation, any appended byte and the other
    /// suite's decoder are refused.
    #[test]
    fn signing_package_encoding_is_canonical(mask in 1u8..32, msg in proptest::collection::vec(any::<u8>(), 0..100), seed: u64, cut: usize, extra: u8) {
        let (_, shares) = fixture_secp();
        let mut r = rng(seed);
        let commitments = subset(mask).into_iter().map(|p| (p, sign::commit(&shares[&p], &mut r).1)).collect();
        let pkg = SigningPackage::<Secp>::new(commitments, msg).unwrap();
        let h = wire::Header { suite: Suite::Secp256k1Tr, kind: Kind::SigningPackage, session: session(1), from: sign::COORDINATOR, to: None };
        let bytes = wire::encode(&h, &pkg).unwrap();
        let decode = |b: &[u8]| wire::decode_with(b, Suite::Secp256k1Tr, Kind::SigningPackage, &session(1), |_, r| SigningPackage::<Secp>::decode_body(r));
        let (h2, back) = decode(&bytes).unwrap();
        prop_assert_eq!(h2, h);
        prop_assert_eq!(&back, &pkg);
        prop_assert_eq!(wire::encode(&h2, &back).unwrap(), bytes.clone());
        let n = cut % bytes.len();
        prop_assert!(decode(&bytes[..n]).is_err());
        let mut longer = bytes.clone();
        longer.push(extra);
        prop_assert!(decode(&longer).is_err());
        prop_assert!(wire::decode_with(&bytes, Suite::Ed25519, Kind::SigningPackage, &session(1), |_, r| SigningPackage::<Ed>::decode_body(r)).is_err());
    }

    /// Arbitrary bytes never panic any decoder.
    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let (parts, _) = fixture_ed();
        let _ = open_envelope(&parts.roster, &bytes);
        let _ = wire::decode_with(&bytes, Suite::Ed25519, Kind::SigningPackage, &session(1), |_, r| SigningPackage::<Ed>::decode_body(r));
        let _ = wire::decode_with(&bytes, Suite::Secp256k1Tr, Kind::DkgRound1, &session(1), |_, r| custody_protocol::dkg::Round1Package::<Secp>::decode_body(r, 3));
        let _ = KeyShare::<Secp>::from_secret_bytes(&bytes);
        let _ = custody_protocol::PublicKeySet::<Ed>::from_bytes(&bytes);
    }
}

/// Whether `bytes` decode as a wire element: the group's decoder accepts them and
/// [`EngineSuite::accepted_is_canonical`] too, which must agree exactly with
/// re-encoding (the wire decoder calls it instead of re-encoding every point).
fn accepted_encoding_is_canonical<C: EngineSuite>(bytes: &[u8]) -> Result<bool, TestCaseError> {
    use frost_core::Group;
    let Ok(ser) = <<C::Group as Group>::Serialization>::try_from(bytes) else {
        return Ok(false);
    };
    let Ok(e) = <C::Group as Group>::deserialize(&ser) else {
        return Ok(false);
    };
    let again = <C::Group as Group>::serialize(&e).expect("not the identity");
    prop_assert_eq!(
        C::accepted_is_canonical(bytes),
        again.as_ref() == bytes,
        "canonical check and re-encoding disagree on {:?}",
        bytes
    );
    Ok(again.as_ref() == bytes)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The wire's canonical-encoding check agrees with re-encoding on random bytes and
    /// on small changes of real points (a flipped bit, a changed tag or sign).
    #[test]
    fn decoded_points_have_one_encoding(x: [u8; 32], tag in 0u8..8, at in 0usize..33, bit in 0u8..8) {
        let mut secp = [0u8; 33];
        secp[0] = tag;
        secp[1..].copy_from_slice(&x);
        accepted_encoding_is_canonical::<Secp>(&secp)?;
        accepted_encoding_is_canonical::<Ed>(&x)?;
        // A real point, then one bit flipped.
        let real_secp = fixture_secp().1.values().next().unwrap().public().verifying_key().serialize().unwrap();
        let real_ed = fixture_ed().1.values().next().unwrap().public().verifying_key().serialize().unwrap();
        prop_assert!(accepted_encoding_is_canonical::<Secp>(&real_secp)?);
        prop_assert!(accepted_encoding_is_canonical::<Ed>(&real_ed)?);
        let mut m = real_secp.clone();
        flip(&mut m, at, bit);
        accepted_encoding_is_canonical::<Secp>(&m)?;
        let mut m = real_ed.clone();
        flip(&mut m, at % 32, bit);
        accepted_encoding_is_canonical::<Ed>(&m)?;
    }
}

/// The only second encodings of Ed25519 points, y in [p, 2^255) with either sign bit,
/// never decode as wire elements.
#[test]
fn non_canonical_ed25519_y_is_refused() {
    for k in 0u8..19 {
        for sign in [0u8, 0x80] {
            let mut b = [0xffu8; 32];
            b[0] = 0xed + k;
            b[31] = 0x7f | sign;
            assert!(!Ed::accepted_is_canonical(&b), "y = p + {k}");
        }
    }
    // secp256k1: x at or above p never decodes, with either tag.
    let mut p = [0xffu8; 32]; // p = 2^256 - 2^32 - 977 = ff..ff fffffffe fffffc2f
    p[27] = 0xfe;
    p[30] = 0xfc;
    p[31] = 0x2f;
    for tag in [2u8, 3] {
        for x in [p, [0xff; 32], {
            let mut q = p;
            q[31] = 0x30;
            q
        }] {
            let mut b = [tag; 33];
            b[1..].copy_from_slice(&x);
            assert!(
                !accepted_encoding_is_canonical::<Secp>(&b).unwrap(),
                "x >= p decodes: {b:?}"
            );
        }
    }
    // The largest canonical y is accepted by the byte check.
    let mut b = [0xffu8; 32];
    b[0] = 0xec;
    b[31] = 0x7f;
    assert!(Ed::accepted_is_canonical(&b));
}
