//! The fuzz targets' seed corpora (`fuzz/corpus/<target>/`): real inputs made by the
//! real code, so the fuzzers start from valid messages, logs, transcripts and configs.
//! `FUZZ_SEEDS_WRITE=1 cargo test --test fuzz_seeds` regenerates them; every run checks
//! that each committed seed still goes through its target's entry point, and that the
//! seeds that must parse still do (a format change that orphans the corpus fails here).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use custody_audit::cold::{ColdRequest, ColdResponse, COLD_REQUEST_FORMAT, COLD_RESPONSE_FORMAT};
use custody_audit::transcript::{Message, Party, SignedRequest, DKG_FORMAT, SIGNING_FORMAT};
use custody_audit::{AuditLog, DkgTranscript, SigningTranscript};
use custody_hsm::Sealer;
use custody_protocol::frost_ed25519::Ed25519Sha512;
use custody_protocol::frost_secp256k1_tr::Secp256K1Sha256TR;
use custody_protocol::sign::COORDINATOR;
use custody_protocol::sim::{self, Participants, Step};
use custody_protocol::{identity, EngineSuite, Identity, IdentityKey, ParticipantId, SessionId};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

const SIGNER_TOML: &str = r#"name = "signer-1"
listen = "127.0.0.1:0"
data_dir = "/var/lib/custody/signer-1"

[tls]
ca = "/etc/custody/ca.pem"
cert = "/etc/custody/signer-1.pem"
key = "/etc/custody/signer-1.key"

[sealer]
kind = "pkcs11"
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "custody-signer-1"
key_label = "custody-sealing"
pin_file = "/etc/custody/token.pin"
"#;

const COORDINATOR_TOML: &str = r#"name = "coordinator"
listen = "127.0.0.1:0"
data_dir = "/var/lib/custody/coordinator"
default_threshold = 2

[tls]
ca = "/etc/custody/ca.pem"
cert = "/etc/custody/coordinator.pem"
key = "/etc/custody/coordinator.key"

[sealer]
kind = "insecure-software"
key_file = "/var/lib/custody/coordinator/INSECURE-sealing.key"

[[signers]]
name = "signer-1"
endpoint = "10.0.0.1:7001"

[[signers]]
name = "signer-2"
endpoint = "10.0.0.2:7001"
"#;

/// Seeds of one suite's ceremony: messages, envelopes, key material, transcripts.
fn ceremony<C: EngineSuite>(seed: u64, out: &mut BTreeMap<&'static str, Vec<Vec<u8>>>) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let parts = Participants::generate(3, &mut rng);
    let session = SessionId::random(&mut rng);
    let mut envelopes: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut round1 = BTreeMap::new();
    let mut echoes = BTreeMap::new();
    let c = sim::dkg::<C, _>(&parts, 2, session, &mut rng, &mut |step, from, _, m| {
        envelopes
            .entry(format!("{step:?}"))
            .or_insert_with(|| m.clone());
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
    let confirmations: BTreeMap<ParticipantId, Vec<u8>> = c.confirmations.iter().cloned().collect();
    let shares = c.shares().expect("DKG");
    let public = shares.values().next().unwrap().public().clone();
    let signers = [
        ParticipantId::new(1).unwrap(),
        ParticipantId::new(3).unwrap(),
    ];
    let sign_session = SessionId::random(&mut rng);
    let mut package = Vec::new();
    let mut share_envs = BTreeMap::new();
    let signature = sim::sign::<C, _>(
        &parts,
        &public,
        &shares,
        &signers,
        b"seed",
        sign_session,
        &mut rng,
        &mut |step, from, _, m| {
            envelopes
                .entry(format!("{step:?}"))
                .or_insert_with(|| m.clone());
            match step {
                Step::Package => package = m.clone(),
                Step::Share => {
                    share_envs.insert(from, m.clone());
                }
                _ => {}
            }
            true
        },
    )
    .expect("signature");
    for env in envelopes.values() {
        out.entry("envelope").or_default().push(env.clone());
        out.entry("wire_message")
            .or_default()
            .push(identity::envelope_body(env).unwrap().to_vec());
    }
    out.entry("public_key_set")
        .or_default()
        .push(public.to_bytes());
    out.entry("key_share")
        .or_default()
        .push(shares.values().next().unwrap().to_secret_bytes().to_vec());
    let msgs = |m: &BTreeMap<ParticipantId, Vec<u8>>| -> Vec<Message> {
        m.iter()
            .map(|(p, e)| Message {
                from: p.get(),
                envelope: hex::encode(e),
            })
            .collect()
    };
    let party = |p: ParticipantId, k: &IdentityKey| Party {
        id: p.get(),
        name: if p == COORDINATOR {
            "coordinator".into()
        } else {
            format!("signer-{p}")
        },
        identity: hex::encode(k.public().to_bytes()),
        certificate: None,
    };
    let dkg = DkgTranscript {
        format: DKG_FORMAT.into(),
        previous_public_key_set: None,
        key_id: sim::SIM_KEY_ID.into(),
        suite: C::SUITE.name().into(),
        threshold: 2,
        session: hex::encode(session.0),
        participants: parts.identities.iter().map(|(p, k)| party(*p, k)).collect(),
        round1: msgs(&round1),
        echoes: msgs(&echoes),
        confirmations: msgs(&confirmations),
        public_key_set: hex::encode(public.to_bytes()),
        public_key: hex::encode(public.public_key()),
    };
    let signing = SigningTranscript {
        format: SIGNING_FORMAT.into(),
        key_id: sim::SIM_KEY_ID.into(),
        suite: C::SUITE.name().into(),
        request_id: sim::SIM_REQUEST_ID.into(),
        request: SignedRequest::Raw {
            message: hex::encode(b"seed"),
        },
        approvals: vec![],
        session: hex::encode(sign_session.0),
        coordinator: party(COORDINATOR, &parts.coordinator),
        signers: signers
            .iter()
            .map(|p| party(*p, &parts.identities[p]))
            .collect(),
        public_key_set: hex::encode(public.to_bytes()),
        package: hex::encode(&package),
        shares: msgs(&share_envs),
        signature: hex::encode(signature),
    };
    out.entry("transcript")
        .or_default()
        .push(serde_json::to_vec_pretty(&dkg).unwrap());
    out.entry("transcript")
        .or_default()
        .push(serde_json::to_vec_pretty(&signing).unwrap());
    let cold = ColdRequest {
        format: COLD_REQUEST_FORMAT.into(),
        kind: "sign".into(),
        signer: "signer-1".into(),
        key_id: "k-seed".into(),
        request_id: "r-seed".into(),
        request: SignedRequest::Transfer {
            asset: "BTC".into(),
            amount: "700".into(),
            destination: "vault".into(),
            memo: String::new(),
        },
        approvals: vec![],
        package: hex::encode(&package),
        coordinator_certificate: String::new(),
        signature: hex::encode([0u8; 64]),
    };
    out.entry("cold_file")
        .or_default()
        .push(serde_json::to_vec_pretty(&cold).unwrap());
    let resp = ColdResponse {
        format: COLD_RESPONSE_FORMAT.into(),
        kind: "sign".into(),
        signer: "signer-1".into(),
        key_id: "k-seed".into(),
        request_id: "r-seed".into(),
        envelope: hex::encode(share_envs.values().next().unwrap()),
    };
    out.entry("cold_file")
        .or_default()
        .push(serde_json::to_vec_pretty(&resp).unwrap());
}

fn audit_log() -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("custody-fuzz-seeds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let writer: std::sync::Arc<dyn Identity + Send + Sync> =
        std::sync::Arc::new(custody_audit::fuzzing::writer());
    let (log, _) =
        AuditLog::open(&dir.join("audit.log"), writer, "coordinator", "coordinator").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bytes = rt.block_on(async {
        log.append("daemon-started", &serde_json::json!({ "version": "seed" }))
            .await
            .unwrap();
        log.append(
            "sign-refused",
            &serde_json::json!({ "key_id": "k", "request_id": "r", "reason": "seed" }),
        )
        .await
        .unwrap();
        log.export(custody_audit::fuzzing::FUZZ_NONCE)
            .await
            .unwrap()
    });
    drop(log);
    let _ = std::fs::remove_dir_all(&dir);
    bytes
}

fn seeds() -> BTreeMap<&'static str, Vec<Vec<u8>>> {
    let mut out = BTreeMap::new();
    ceremony::<Secp256K1Sha256TR>(1, &mut out);
    ceremony::<Ed25519Sha512>(2, &mut out);
    let sealer = custody_hsm::InsecureSoftwareSealer::from_key(&[9; 32], "fuzz".into());
    out.entry("sealed_blob")
        .or_default()
        .push(sealer.seal(b"fuzz", b"a share, sealed").unwrap());
    let log = audit_log();
    let bundle = serde_json::json!({
        "format": "custody-audit-export/v1",
        "exported_at_ms": 0,
        "nonce": hex::encode(custody_audit::fuzzing::FUZZ_NONCE),
        "parties": [{
            "name": "coordinator", "role": "coordinator",
            "identity": hex::encode(custody_audit::fuzzing::writer().public().to_bytes()),
            "log": hex::encode(&log),
        }],
    });
    out.entry("audit_log").or_default().push(log);
    out.entry("export_bundle")
        .or_default()
        .push(serde_json::to_vec_pretty(&bundle).unwrap());
    let hot = hot_warm_cold::Policy::permissive_hot().to_json();
    let warm = r#"{"tier":"warm","assets":{"BTC":{"per_request":100,"per_window":1000,"window_secs":3600}},"allowlist":["bob"],"allow_raw":false,"approvals":{"required":1,"approvers":["3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"]},"time_lock_secs":60,"max_age_secs":86400,"max_signatures":1000,"admins":{"required":1,"approvers":["3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"]}}"#;
    out.entry("policy")
        .or_default()
        .extend([hot.into_bytes(), warm.as_bytes().to_vec()]);
    out.entry("signer_config")
        .or_default()
        .push(SIGNER_TOML.as_bytes().to_vec());
    out.entry("coordinator_config")
        .or_default()
        .push(COORDINATOR_TOML.as_bytes().to_vec());
    out.entry("payments_config")
        .or_default()
        .push(PAYMENTS_TOML.as_bytes().to_vec());
    out.entry("payment_proof")
        .or_default()
        .push(payment_proof());
    use prost::Message as _;
    let create = custody_protocol::proto::CreatePaymentRequest {
        token: "tok_00112233445566778899aabbccddeeff".into(),
        amount: 1250,
        currency: "EUR".into(),
        merchant: "m-1".into(),
        idempotency_key: "order-1".into(),
    };
    let tokenize = custody_protocol::proto::TokenizeRequest {
        kind: "card".into(),
        data: "4111 1111 1111 1111".into(),
    };
    out.entry("payment_request").or_default().extend([
        [vec![0], create.encode_to_vec()].concat(),
        [vec![1], tokenize.encode_to_vec()].concat(),
    ]);
    out
}

const PAYMENTS_TOML: &str = r#"name = "payments"
listen = "127.0.0.1:0"
data_dir = "/var/lib/custody/payments"
metrics_listen = "127.0.0.1:9464"

[tls]
ca = "/etc/custody/ca.pem"
cert = "/etc/custody/payments.pem"
key = "/etc/custody/payments.key"

[sealer]
kind = "insecure-software"
key_file = "/var/lib/custody/payments/INSECURE-sealing.key"

[batch]
max_count = 10000
max_age_secs = 60

[settlement]
key_id = "k-00112233445566778899aabbccddeeff"
coordinator = "coordinator.custody.internal:7443"
public_key = "a4438ae8e1093dffc4423167ccb48f5075793df1b1786f677cb27985566c0ba6"

[settlement.client_tls]
ca = "/etc/custody/ca.pem"
cert = "/etc/custody/payments.pem"
key = "/etc/custody/payments.key"
"#;

/// A real inclusion proof: three payments in a store, one batch, the second's proof.
fn payment_proof() -> Vec<u8> {
    use custody_payments::model::NewPayment;
    let dir = std::env::temp_dir().join(format!("custody-fuzz-proof-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let json = {
        let store = custody_payments::store::Store::open(&dir).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut ids = Vec::new();
        for i in 0..3u64 {
            let p = NewPayment {
                token: "tok_00112233445566778899aabbccddeeff".into(),
                amount: 100 + i,
                currency: "EUR".into(),
                merchant: "m-1".into(),
                idempotency_key: format!("o-{i}"),
            };
            match rt.block_on(store.create(p)).unwrap() {
                custody_payments::store::Created::New(p) => ids.push(p.id),
                other => panic!("{other:?}"),
            }
        }
        store.close_batch(10).unwrap().unwrap();
        let proof = custody_payments::proof::make(&store, &ids[1]).unwrap();
        serde_json::to_vec_pretty(&proof).unwrap()
    };
    let _ = std::fs::remove_dir_all(&dir);
    json
}

/// Runs a target's entry point on one input (what the fuzz target does).
fn run(target: &str, data: &[u8]) {
    match target {
        "wire_message" => custody_protocol::fuzzing::message(data),
        "envelope" => custody_protocol::fuzzing::envelope(data),
        "public_key_set" => custody_protocol::fuzzing::public_key_set(data),
        "key_share" => custody_protocol::fuzzing::key_share(data),
        "sealed_blob" => {
            let s = custody_hsm::InsecureSoftwareSealer::from_key(&[9; 32], "fuzz".into());
            assert!(s.unseal(b"fuzz", data).is_ok(), "sealed seed does not open");
        }
        "audit_log" => {
            custody_audit::fuzzing::log(data);
            let w = custody_audit::fuzzing::writer().public().verify;
            custody_audit::verify_log(data, &w, Some(custody_audit::fuzzing::FUZZ_NONCE))
                .expect("seed log verifies");
        }
        "transcript" => custody_audit::fuzzing::transcript(data),
        "export_bundle" => custody_audit::fuzzing::bundle(data),
        "cold_file" => custody_audit::fuzzing::cold_file(data),
        "policy" => {
            custody_audit::fuzzing::policy(data);
            hot_warm_cold::Policy::from_json(std::str::from_utf8(data).unwrap())
                .expect("seed policy parses");
        }
        "signer_config" => {
            custody_signer::Config::parse(std::str::from_utf8(data).unwrap())
                .expect("seed config parses");
        }
        "coordinator_config" => {
            custody_coordinator::config::Config::parse(std::str::from_utf8(data).unwrap())
                .expect("seed config parses");
        }
        "payments_config" => {
            custody_payments::fuzzing::config(data);
            custody_payments::config::Config::parse(std::str::from_utf8(data).unwrap())
                .expect("seed config parses");
        }
        "payment_proof" => {
            custody_payments::fuzzing::proof(data);
            let p: custody_payments::proof::Proof = serde_json::from_slice(data).unwrap();
            custody_payments::proof::verify(&p, None).expect("seed proof verifies");
        }
        "payment_request" => custody_payments::fuzzing::request(data),
        other => panic!("no target {other}"),
    }
}

#[test]
fn every_fuzz_target_has_seeds_that_go_through_it() {
    let root = corpus();
    if std::env::var_os("FUZZ_SEEDS_WRITE").is_some() {
        for (target, list) in seeds() {
            let dir = root.join(target);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            for (i, data) in list.iter().enumerate() {
                std::fs::write(dir.join(format!("seed-{i:02}")), data).unwrap();
            }
        }
    }
    let targets: Vec<String> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets"))
            .expect("fuzz/fuzz_targets")
            .map(|e| {
                e.unwrap()
                    .path()
                    .file_stem()
                    .unwrap()
                    .to_string_lossy()
                    .to_string()
            })
            .collect();
    assert_eq!(targets.len(), 15, "{targets:?}");
    for target in targets {
        let dir = root.join(&target);
        let files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; run FUZZ_SEEDS_WRITE=1 cargo test --test fuzz_seeds",
                    dir.display()
                )
            })
            .map(|e| e.unwrap().path())
            .collect();
        assert!(!files.is_empty(), "{target}: no seeds");
        for f in files {
            run(&target, &std::fs::read(&f).unwrap());
        }
    }
}
