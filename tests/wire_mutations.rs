//! Every wire type, as the real engine sends it (a DKG and a signature in each suite,
//! through the in-process simulation): each message round-trips exactly, and every
//! mutation of it (any flipped bit, any truncation, any appended byte) is refused —
//! by the envelope's signature always, and by the decoder too wherever the body is not
//! ciphertext (a mutated body that still decodes must be another canonical message).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use custody_protocol::frost_ed25519::Ed25519Sha512;
use custody_protocol::frost_secp256k1_tr::Secp256K1Sha256TR;
use custody_protocol::identity::{self, Roster};
use custody_protocol::sim::{self, Participants, Step};
use custody_protocol::{fuzzing, wire, EngineSuite, Identity, ParticipantId, SessionId};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// (step, envelope) of every message of a 2-of-3 DKG and one signature.
struct Messages {
    roster: Roster,
    all: Vec<(Step, Vec<u8>)>,
}

fn ceremony<C: EngineSuite>(seed: u64) -> Messages {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let parts = Participants::generate(3, &mut rng);
    let mut all = Vec::new();
    let c = sim::dkg::<C, _>(
        &parts,
        2,
        SessionId::random(&mut rng),
        &mut rng,
        &mut |step, _, _, m| {
            all.push((step, m.clone()));
            true
        },
    );
    let shares: BTreeMap<ParticipantId, _> = c.shares().expect("DKG");
    let public = shares.values().next().unwrap().public().clone();
    let signers = [
        ParticipantId::new(1).unwrap(),
        ParticipantId::new(2).unwrap(),
    ];
    sim::sign::<C, _>(
        &parts,
        &public,
        &shares,
        &signers,
        b"mutate me",
        SessionId::random(&mut rng),
        &mut rng,
        &mut |step, _, _, m| {
            all.push((step, m.clone()));
            true
        },
    )
    .expect("signature");
    let mut roster = parts.roster.clone();
    roster.insert(
        custody_protocol::sign::COORDINATOR,
        parts.coordinator.public(),
    );
    Messages { roster, all }
}

fn messages(ed: bool) -> &'static Messages {
    static SECP: OnceLock<Messages> = OnceLock::new();
    static ED: OnceLock<Messages> = OnceLock::new();
    if ed {
        ED.get_or_init(|| ceremony::<Ed25519Sha512>(7))
    } else {
        SECP.get_or_init(|| ceremony::<Secp256K1Sha256TR>(8))
    }
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Append(u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => any::<u8>().prop_map(Mutation::Append),
    ]
}

fn apply(m: &Mutation, bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    match m {
        Mutation::Flip(i, b) => {
            let i = i % out.len();
            out[i] ^= 1 << b;
        }
        Mutation::Truncate(n) => out.truncate(n % out.len()),
        Mutation::Append(b) => out.push(*b),
    }
    out
}

#[test]
fn every_message_kind_is_covered_and_round_trips() {
    for ed in [false, true] {
        let m = messages(ed);
        let mut kinds = std::collections::BTreeSet::new();
        for (step, env) in &m.all {
            let opened = identity::open_envelope(&m.roster, env).expect("opens");
            let (h, _) = wire::split(opened.body).expect("header");
            kinds.insert(format!("{:?}", h.kind));
            match fuzzing::decodes(opened.body) {
                Some(ok) => assert!(ok, "{step:?} {:?} does not decode", h.kind),
                None => assert!(h.kind.is_confidential(), "{:?}", h.kind),
            }
        }
        // DKG round 1, round 2 (sealed), echo, confirmation; commitments, package,
        // signature share.
        assert_eq!(kinds.len(), 7, "{kinds:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_mutation_of_every_message_is_refused(ed: bool, which: usize, m in mutation()) {
        let msgs = messages(ed);
        let (step, env) = &msgs.all[which % msgs.all.len()];
        // The signed envelope: any change is refused.
        let mutated = apply(&m, env);
        prop_assert!(
            identity::open_envelope(&msgs.roster, &mutated).is_err(),
            "{:?}: mutated envelope {:?} opens", step, m
        );
        // The message inside: a truncation or an extension never decodes; a flipped
        // bit decodes only as another canonical message (checked inside `decodes`),
        // which the envelope above refuses.
        let body = identity::envelope_body(env).unwrap();
        let mutated = apply(&m, body);
        let decoded = fuzzing::decodes(&mutated);
        if matches!(m, Mutation::Truncate(_) | Mutation::Append(_)) {
            prop_assert_ne!(decoded, Some(true), "{:?}: {:?} decodes", step, m);
        }
    }
}
