//! Real logs and transcripts for the audit tests: ceremonies run by the engine's
//! in-memory simulation (every message encoded, signed and relayed as over gRPC).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use custody_audit::transcript::{
    Message, Party, SignedRequest, DKG_FORMAT, REFRESH_FORMAT, SIGNING_FORMAT,
};
use custody_audit::{DkgTranscript, SigningTranscript};
use custody_protocol::sign::COORDINATOR;
use custody_protocol::sim::{self, Participants, Step};
use custody_protocol::{EngineSuite, Identity, IdentityKey, ParticipantId, SessionId};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

pub fn party(id: ParticipantId, name: &str, key: &IdentityKey) -> Party {
    Party {
        id: id.get(),
        name: name.into(),
        identity: hex::encode(key.public().to_bytes()),
        certificate: None,
    }
}

pub fn name(p: ParticipantId) -> String {
    if p == COORDINATOR {
        "coordinator".into()
    } else {
        format!("signer-{p}")
    }
}

/// A 2-of-3 DKG and one signature by signers 1 and 3, as transcripts, with the
/// identities that signed them.
#[derive(Debug)]
pub struct Ceremonies {
    pub parts: Participants,
    pub dkg: DkgTranscript,
    pub signing: SigningTranscript,
    /// A refresh of the key after the signature.
    pub refresh: DkgTranscript,
}

pub fn ceremonies<C: EngineSuite>(seed: u64) -> Ceremonies {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let parts = Participants::generate(3, &mut rng);
    let session = SessionId::random(&mut rng);
    let mut round1 = BTreeMap::new();
    let mut echoes = BTreeMap::new();
    let ceremony = sim::dkg::<C, _>(&parts, 2, session, &mut rng, &mut |step, from, _, m| {
        match step {
            Step::Round1 => {
                round1.entry(from).or_insert_with(|| m.clone());
            }
            Step::Echo => {
                echoes.entry(from).or_insert_with(|| m.clone());
            }
            _ => {}
        }
        true
    });
    let confirmations = ceremony.confirmations.clone();
    let shares = ceremony.shares().expect("honest DKG");
    let public = shares.values().next().expect("a share").public().clone();
    let msgs = |m: &BTreeMap<ParticipantId, Vec<u8>>| -> Vec<Message> {
        m.iter()
            .map(|(p, e)| Message {
                from: p.get(),
                envelope: hex::encode(e),
            })
            .collect()
    };
    let dkg = DkgTranscript {
        format: DKG_FORMAT.into(),
        previous_public_key_set: None,
        key_id: sim::SIM_KEY_ID.into(),
        suite: C::SUITE.name().into(),
        threshold: 2,
        session: hex::encode(session.0),
        participants: parts
            .identities
            .iter()
            .map(|(p, k)| party(*p, &name(*p), k))
            .collect(),
        round1: msgs(&round1),
        echoes: msgs(&echoes),
        confirmations: msgs(&confirmations.into_iter().collect()),
        public_key_set: hex::encode(public.to_bytes()),
        public_key: hex::encode(public.public_key()),
    };

    let signers = [
        ParticipantId::new(1).unwrap(),
        ParticipantId::new(3).unwrap(),
    ];
    let message = b"pay 5 to bob".to_vec();
    let session = SessionId::random(&mut rng);
    let mut package = None;
    let mut share_envs = BTreeMap::new();
    let signature = sim::sign::<C, _>(
        &parts,
        &public,
        &shares,
        &signers,
        &message,
        session,
        &mut rng,
        &mut |step, from, _, m| {
            match step {
                Step::Package => {
                    package.get_or_insert_with(|| m.clone());
                }
                Step::Share => {
                    share_envs.insert(from, m.clone());
                }
                _ => {}
            }
            true
        },
    )
    .expect("honest signature");
    let signing = SigningTranscript {
        format: SIGNING_FORMAT.into(),
        key_id: sim::SIM_KEY_ID.into(),
        suite: C::SUITE.name().into(),
        request_id: sim::SIM_REQUEST_ID.into(),
        request: SignedRequest::Raw {
            message: hex::encode(&message),
        },
        approvals: vec![],
        session: hex::encode(session.0),
        coordinator: party(COORDINATOR, "coordinator", &parts.coordinator),
        signers: signers
            .iter()
            .map(|p| party(*p, &name(*p), &parts.identities[p]))
            .collect(),
        public_key_set: hex::encode(public.to_bytes()),
        package: hex::encode(package.expect("package relayed")),
        shares: msgs(&share_envs),
        signature: hex::encode(signature),
    };
    let session = SessionId::random(&mut rng);
    let mut round1 = BTreeMap::new();
    let mut echoes = BTreeMap::new();
    let ceremony = sim::refresh::<C, _>(
        &parts,
        shares,
        session,
        &mut rng,
        &mut |step, from, _, m| {
            match step {
                Step::Round1 => {
                    round1.entry(from).or_insert_with(|| m.clone());
                }
                Step::Echo => {
                    echoes.entry(from).or_insert_with(|| m.clone());
                }
                _ => {}
            }
            true
        },
    );
    let confirmations = ceremony.confirmations.clone();
    let refreshed = ceremony.shares().expect("honest refresh");
    let new_public = refreshed.values().next().expect("a share").public().clone();
    assert_eq!(new_public.public_key(), public.public_key());
    assert_ne!(new_public.to_bytes(), public.to_bytes());
    let refresh = DkgTranscript {
        format: REFRESH_FORMAT.into(),
        previous_public_key_set: Some(hex::encode(public.to_bytes())),
        session: hex::encode(session.0),
        round1: msgs(&round1),
        echoes: msgs(&echoes),
        confirmations: msgs(&confirmations.into_iter().collect()),
        public_key_set: hex::encode(new_public.to_bytes()),
        ..dkg.clone()
    };
    Ceremonies {
        parts,
        dkg,
        signing,
        refresh,
    }
}

pub fn shared(key: &IdentityKey) -> Arc<dyn Identity + Send + Sync> {
    Arc::new(IdentityKey::from_secret_bytes(&key.to_secret_bytes()))
}

/// A scratch directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "custody-audit-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
