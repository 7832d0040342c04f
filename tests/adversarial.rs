//! Adversarial suites over the real gRPC API, with real processes.
//!
//! - A malicious signer (fault injection, `fault_injection` in its config): a wrong
//!   proof of knowledge or garbage encrypted shares in DKG are named by the honest
//!   signers, the DKG aborts cleanly and the abort is in the audit log with its culprit;
//!   a stalling signer or one replaying an old share is routed around and the signature
//!   completes with honest signers.
//! - A malicious coordinator (its own certificate and identity key, talking to signers
//!   directly, `support::rogue`): the same commitments asked for twice (same request
//!   or a replayed package under another), a DKG session started twice, round-1
//!   messages of another session, and an incomplete round-1 set are all refused by
//!   every honest signer.
//!
//! (Bad signature shares: `tests/cluster.rs`, `corrupted_share_is_named_…`; forged
//! approvals and policy abuse by a coordinator: the policy tests there.)

mod support;

use serde_json::Value;
use support::{hexs, rogue, verify_independently, Cluster};
use tonic::Code;

/// Restarts `signer` with `fault` in its config (`None`: honest again).
fn set_fault(c: &mut Cluster, signer: &str, fault: Option<&str>) {
    c.kill(signer);
    let cfg = c.dir.join(signer).join("signer.toml");
    let text = std::fs::read_to_string(&cfg).expect("config");
    let honest: String = text
        .lines()
        .filter(|l| !l.starts_with("fault_injection"))
        .map(|l| format!("{l}\n"))
        .collect();
    let text = match fault {
        Some(f) => format!("fault_injection = \"{f}\"\n{honest}"),
        None => honest,
    };
    std::fs::write(&cfg, text).expect("config");
    c.restart(signer);
}

/// The entries of kind `kind` in the coordinator's audit log (from an export).
fn coordinator_entries(c: &Cluster, kind: &str) -> Vec<Value> {
    let export = c.audit_export(&format!("export-{kind}.json"));
    let bundle: Value = serde_json::from_slice(&std::fs::read(&export).unwrap()).unwrap();
    let log = bundle["parties"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == "coordinator")
        .expect("coordinator log")["log"]
        .as_str()
        .unwrap()
        .to_string();
    let entries = custody_audit::entry::parse_records(&hex::decode(log).unwrap()).unwrap();
    entries
        .iter()
        .filter(|e| e.kind == kind)
        .map(|e| serde_json::from_slice(&e.body).unwrap())
        .collect()
}

fn key_count(c: &Cluster) -> usize {
    let v = c.json(&["key", "list", "--json"]);
    v.as_array()
        .or_else(|| v["keys"].as_array())
        .expect("keys")
        .len()
}

/// A DKG with one misbehaving signer: every attempt aborts naming it (in the error and
/// in the audit log), no key appears, and once it behaves the cluster makes keys again.
fn dkg_names_the_culprit(name: &str, fault: &str) {
    let mut c = Cluster::start(name, 3, 2);
    let before = key_count(&c);
    set_fault(&mut c, "signer-3", Some(fault));
    assert!(c.log("signer-3").contains("FAULT INJECTION"));
    for suite in ["secp256k1-tr", "ed25519"] {
        let err = c.fails(&["key", "create", "--suite", suite]);
        assert!(
            err.contains("ABORTED") && err.contains("culprit") && err.contains("signer-3"),
            "{suite}: {err}"
        );
    }
    assert_eq!(key_count(&c), before, "no key from an aborted DKG");
    let aborted = coordinator_entries(&c, "ceremony-aborted");
    assert_eq!(aborted.len(), 2, "{aborted:?}");
    for a in &aborted {
        assert_eq!(a["ceremony"], "dkg");
        assert_eq!(a["culprits"], serde_json::json!(["signer-3"]), "{a}");
    }
    // The export (with the aborts in it) still verifies.
    c.audit_verify(&c.audit_export("after-aborts.json"));
    set_fault(&mut c, "signer-3", None);
    let k = c.json(&["key", "create", "--suite", "secp256k1-tr", "--json"]);
    let key = k["key_id"].as_str().unwrap();
    let s = c.json(&["sign", "--key", key, "--message", "c0ffee", "--json"]);
    assert!(verify_independently(
        "secp256k1-tr",
        &hexs(&k["public_key"]),
        &[0xc0, 0xff, 0xee],
        &hexs(&s["signature"])
    ));
}

#[test]
fn a_signer_with_a_wrong_proof_of_knowledge_is_named_and_the_dkg_aborts() {
    dkg_names_the_culprit("adv-pok", "bad-proof-of-knowledge");
}

#[test]
fn a_signer_sending_garbage_encrypted_shares_is_named_and_the_dkg_aborts() {
    dkg_names_the_culprit("adv-round2", "garbage-round2");
}

/// Signs `count` messages with a fresh key of each suite; every signature verifies.
fn sign_many(c: &Cluster, count: u8) {
    for suite in ["secp256k1-tr", "ed25519"] {
        let k = c.json(&["key", "create", "--suite", suite, "--json"]);
        let key = k["key_id"].as_str().unwrap();
        for i in 0..count {
            let msg = [i; 8];
            let s = c.json(&[
                "sign",
                "--key",
                key,
                "--message",
                &hex::encode(msg),
                "--json",
            ]);
            assert!(
                verify_independently(suite, &hexs(&k["public_key"]), &msg, &hexs(&s["signature"])),
                "{suite}: {s}"
            );
        }
    }
}

#[test]
fn a_stalling_signer_is_timed_out_and_honest_signers_sign() {
    let mut c = Cluster::start("adv-stall", 3, 2);
    set_fault(&mut c, "signer-3", Some("stall-signing"));
    sign_many(&c, 4);
    let log = c.log("coordinator");
    assert!(
        log.contains("signer dropped from quorum") && log.contains("signer-3"),
        "the coordinator names the staller:\n{log}"
    );
}

#[test]
fn a_signer_replaying_an_old_share_is_named_and_honest_signers_sign() {
    let mut c = Cluster::start("adv-replay", 3, 2);
    set_fault(&mut c, "signer-2", Some("replay-shares"));
    sign_many(&c, 5);
    let log = c.log("coordinator");
    assert!(
        log.contains("CULPRIT: participant 2 (signer-2)"),
        "the coordinator names the replaying signer:\n{log}"
    );
}

#[test]
fn a_coordinator_cannot_reuse_commitments_or_dkg_messages() {
    let mut c = Cluster::start("adv-coord", 3, 2);
    let k = c.json(&["key", "create", "--suite", "secp256k1-tr", "--json"]);
    let key = k["key_id"].as_str().unwrap().to_string();

    // The same commitments twice: for the same request (a retry that would reuse a
    // nonce) and for another request (a replayed package). The first use works.
    for ids in [["twice-1", "twice-1"], ["twice-2", "twice-3"]] {
        let rounds = rogue::same_commitments_again(&c, &key, 2, b"pay mallory".to_vec(), &ids);
        for r in &rounds[0] {
            assert!(r.is_ok(), "first use: {r:?}");
        }
        for r in &rounds[1] {
            let st = r.as_ref().expect_err("nonces are used once");
            assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");
            assert!(st.message().contains("already used commitment"), "{st:?}");
        }
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Two sessions with the same signers.
        let (mut clients, a) = rogue::dkg_start(&c, "k-rogue-a", [0xa1; 32], 3).await;
        let a: Vec<Vec<u8>> = a.into_iter().map(|r| r.expect("start a")).collect();
        let (_, b) = rogue::dkg_start(&c, "k-rogue-b", [0xb2; 32], 3).await;
        assert!(b.iter().all(Result::is_ok), "start b: {b:?}");
        // A session started twice: refused (a signer never makes two round-1
        // messages for one session, so a coordinator cannot show peers different ones).
        let (_, again) = rogue::dkg_start(&c, "k-rogue-a", [0xa1; 32], 3).await;
        for r in again {
            assert_eq!(r.expect_err("twice").code(), Code::AlreadyExists);
        }
        // Round-1 messages of session A delivered in session B: refused by each.
        for (i, s) in clients.iter_mut().enumerate() {
            let st = s
                .dkg_round1(custody_protocol::proto::DkgRound1Request {
                    session: vec![0xb2; 32],
                    round1: rogue::relay(&a, i),
                })
                .await
                .expect_err("another session's messages");
            assert!(
                matches!(st.code(), Code::InvalidArgument | Code::Aborted),
                "{st:?}"
            );
        }
        // An incomplete set (one peer's message withheld): refused.
        let (mut clients_c, c_msgs) = rogue::dkg_start(&c, "k-rogue-c", [0xc3; 32], 3).await;
        let c_msgs: Vec<Vec<u8>> = c_msgs.into_iter().map(|r| r.expect("start c")).collect();
        let mut withheld = rogue::relay(&c_msgs, 0);
        withheld.pop();
        let st = clients_c[0]
            .dkg_round1(custody_protocol::proto::DkgRound1Request {
                session: vec![0xc3; 32],
                round1: withheld,
            })
            .await
            .expect_err("a withheld message");
        assert!(
            matches!(st.code(), Code::InvalidArgument | Code::Aborted),
            "{st:?}"
        );
    });
    // Commitments drawn before a signer restarted died with its process (nonces live in
    // memory only): asked over them afterwards, it refuses; its peer still signs.
    let (_, package) = rt.block_on(rogue::package(&c, &key, 2, b"after a restart".to_vec()));
    c.kill("signer-1");
    c.restart("signer-1");
    let ask = |name: &'static str| {
        let (c, key, package) = (&c, key.clone(), package.clone());
        rt.block_on(async move {
            rogue::signer(c, name)
                .await
                .sign_share(custody_protocol::proto::SignShareRequest {
                    key_id: key,
                    package,
                    request_id: "after-restart".into(),
                    ..Default::default()
                })
                .await
        })
    };
    let st = ask("signer-1").expect_err("nonces from before the restart");
    assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");
    assert!(ask("signer-2").is_ok());

    // A package with fewer commitments than the key's threshold is refused before the
    // signer takes a nonce, spends allowance or writes `share-issued`.
    let (mut one, short) = rt.block_on(rogue::package(&c, &key, 1, b"too few".to_vec()));
    let st = rt
        .block_on(
            one[0].sign_share(custody_protocol::proto::SignShareRequest {
                key_id: key.clone(),
                package: short,
                request_id: "too-few".into(),
                ..Default::default()
            }),
        )
        .expect_err("below the threshold");
    assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
    assert!(st.message().contains("threshold"), "{st:?}");

    // The honest signers keep serving the real coordinator.
    let s = c.json(&["sign", "--key", &key, "--message", "00", "--json"]);
    assert!(verify_independently(
        "secp256k1-tr",
        &hexs(&k["public_key"]),
        &[0],
        &hexs(&s["signature"])
    ));
}
