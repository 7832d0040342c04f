//! Black-box tests of the distributed core: real `custody` processes (signers,
//! coordinator, `custody dev`, the CLI) talking mTLS gRPC over 127.0.0.1.

mod support;

use std::time::{Duration, Instant};

use custody_protocol::proto::custody_client::CustodyClient;
use custody_protocol::proto::signer_client::SignerClient;
use custody_protocol::proto::*;
use serde_json::Value;
use support::rogue::{as_rogue_coordinator, as_rogue_coordinator_with};
use support::{hexs, verify_independently, Cluster};
use tonic::Code;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn create(c: &Cluster, suite: &str) -> (String, Vec<u8>) {
    let k = c.json(&["key", "create", "--suite", suite, "--json"]);
    let pk = hexs(&k["public_key"]);
    assert_eq!(pk.len(), 32, "{k}");
    (k["key_id"].as_str().expect("key_id").to_string(), pk)
}

fn sign(c: &Cluster, key: &str, msg_hex: &str, request_id: Option<&str>) -> Value {
    let mut args = vec!["sign", "--key", key, "--message", msg_hex, "--json"];
    if let Some(r) = request_id {
        args.extend(["--request-id", r]);
    }
    c.json(&args)
}

fn sign_and_verify(c: &Cluster, suite: &str, key: &str, pk: &[u8], msg: &[u8]) -> Value {
    let s = sign(c, key, &hex::encode(msg), None);
    let sig = hexs(&s["signature"]);
    assert_eq!(sig.len(), 64);
    assert!(
        verify_independently(suite, pk, msg, &sig),
        "signature does not verify: {s}"
    );
    s
}

#[test]
fn contract_in_both_suites() {
    let c = Cluster::start("contract", 5, 3);
    for suite in ["secp256k1-tr", "ed25519"] {
        let (key, pk) = create(&c, suite);
        let list = c.json(&["key", "list", "--json"]);
        let listed = list
            .as_array()
            .expect("array")
            .iter()
            .find(|k| k["key_id"] == key.as_str())
            .expect("listed");
        assert_eq!(listed["suite"], suite);
        assert_eq!(listed["threshold"], 3);
        assert_eq!(listed["signers"].as_array().map(Vec::len), Some(5));
        assert_eq!(hexs(&listed["public_key"]), pk);

        let msg = format!("pay 1 BTC to bob ({suite})").into_bytes();
        let req = format!("req-{suite}");
        let first = sign(&c, &key, &hex::encode(&msg), Some(&req));
        let sig = hexs(&first["signature"]);
        assert!(verify_independently(suite, &pk, &msg, &sig));
        assert_eq!(first["signers"].as_array().map(Vec::len), Some(3));
        // A flipped message bit must not verify: the verifier is not a rubber stamp.
        let mut other = msg.clone();
        other[0] ^= 1;
        assert!(!verify_independently(suite, &pk, &other, &sig));

        // Idempotency: the same request id returns the stored signature.
        let again = sign(&c, &key, &hex::encode(&msg), Some(&req));
        assert_eq!(again["signature"], first["signature"]);
        assert_eq!(again["replayed"], true);
        let err = c.fails(&[
            "sign",
            "--key",
            &key,
            "--message",
            "00",
            "--request-id",
            &req,
            "--json",
        ]);
        assert!(err.contains("FAILED_PRECONDITION"), "{err}");

        // An empty message and a 256 KiB message (from a file) sign too.
        sign_and_verify(&c, suite, &key, &pk, b"");
        let big = vec![0xab; 256 << 10];
        let file = c.dir.join("big-message");
        std::fs::write(&file, &big).expect("write");
        let s = c.json(&[
            "sign",
            "--key",
            &key,
            "--message-file",
            file.to_str().expect("path"),
            "--json",
        ]);
        assert!(verify_independently(
            suite,
            &pk,
            &big,
            &hexs(&s["signature"])
        ));
    }
    // Quorums rotate: over a few signatures every signer takes part.
    let (key, pk) = create(&c, "ed25519");
    let mut used = std::collections::BTreeSet::new();
    for i in 0..10u8 {
        let s = sign_and_verify(&c, "ed25519", &key, &pk, &[i]);
        used.extend(
            s["signers"]
                .as_array()
                .expect("signers")
                .iter()
                .map(|v| v.as_u64().expect("id")),
        );
    }
    assert_eq!(used.len(), 5, "signers used: {used:?}");

    let err = c.fails(&["sign", "--key", "k-nope", "--message", "00", "--json"]);
    assert!(err.contains("NOT_FOUND") && err.contains("k-nope"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    let err = c.fails(&["sign", "--key", "k-nope", "--message", "zz", "--json"]);
    assert!(err.contains("--message"), "{err}");
}

#[test]
fn survives_losing_n_minus_t_signers_then_refuses_quickly() {
    let mut c = Cluster::start("quorum", 5, 3);
    let (secp, secp_pk) = create(&c, "secp256k1-tr");
    let (ed, ed_pk) = create(&c, "ed25519");
    sign_and_verify(&c, "secp256k1-tr", &secp, &secp_pk, b"warm up");

    c.kill("signer-1");
    c.kill("signer-4");
    for i in 0..3u8 {
        sign_and_verify(&c, "secp256k1-tr", &secp, &secp_pk, &[i; 40]);
        sign_and_verify(&c, "ed25519", &ed, &ed_pk, &[i; 40]);
    }

    c.kill("signer-5");
    let started = Instant::now();
    let err = c.fails(&["sign", "--key", &secp, "--message", "01", "--json"]);
    let took = started.elapsed();
    assert!(err.contains("UNAVAILABLE"), "{err}");
    assert!(err.contains("needs 3"), "{err}");
    assert!(took < Duration::from_secs(15), "UNAVAILABLE took {took:?}");

    for s in ["signer-1", "signer-4", "signer-5"] {
        c.restart(s);
    }
    // Same keys, same public keys, and every signer serves again.
    for i in 0..5u8 {
        sign_and_verify(&c, "secp256k1-tr", &secp, &secp_pk, &[i; 10]);
        sign_and_verify(&c, "ed25519", &ed, &ed_pk, &[i; 10]);
    }
    let status = c.json(&["status", "--json"]);
    for s in status["signers"].as_array().expect("signers") {
        assert_eq!(s["reachable"], true, "{status}");
    }
}

#[test]
fn restarts_keep_every_key() {
    let mut c = Cluster::start("restart", 3, 2);
    let (secp, secp_pk) = create(&c, "secp256k1-tr");
    let (ed, ed_pk) = create(&c, "ed25519");
    let first = sign(&c, &secp, "aa", Some("before-restart"));
    let before = c.json(&["key", "list", "--json"]);

    c.kill("coordinator");
    let err = c.fails(&["key", "list", "--json"]);
    assert!(err.contains("coordinator"), "{err}");
    c.restart("coordinator");
    assert_eq!(c.json(&["key", "list", "--json"]), before);
    sign_and_verify(
        &c,
        "secp256k1-tr",
        &secp,
        &secp_pk,
        b"after coordinator restart",
    );
    sign_and_verify(&c, "ed25519", &ed, &ed_pk, b"after coordinator restart");
    // Stored results survive too.
    let again = sign(&c, &secp, "aa", Some("before-restart"));
    assert_eq!(again["signature"], first["signature"]);
    assert_eq!(again["replayed"], true);
    let got = c.json(&["signature", "before-restart", "--json"]);
    assert_eq!(got["signature"], first["signature"]);

    // Results the database lost in a crash come back from the audit log: the
    // coordinator's database is put back to a copy from before two signatures (what a
    // crash between the audit sync and the database flush leaves), and a retry of
    // each request gets its signature again, not a second one.
    c.kill("coordinator");
    let db = c.dir.join("coordinator/db");
    let old = c.dir.join("coordinator-db-before");
    copy_dir(&db, &old);
    c.restart("coordinator");
    let lost: Vec<Value> = ["lost-1", "lost-2"]
        .iter()
        .map(|id| sign(&c, &ed, "bb", Some(id)))
        .collect();
    c.kill("coordinator");
    std::fs::remove_dir_all(&db).expect("remove database");
    std::fs::rename(&old, &db).expect("put back the old database");
    c.restart("coordinator");
    assert!(
        c.log("coordinator")
            .contains("signing results the database lost in a crash are back"),
        "{}",
        c.log_tail("coordinator")
    );
    for (id, first) in ["lost-1", "lost-2"].iter().zip(&lost) {
        let got = c.json(&["signature", id, "--json"]);
        assert_eq!(got["signature"], first["signature"], "{id}");
        let again = sign(&c, &ed, "bb", Some(id));
        assert_eq!(again["signature"], first["signature"], "{id}");
        assert_eq!(again["replayed"], true, "{id}");
    }

    // `custody dev` again on the same directory: the same cluster with its keys.
    c.restart_all();
    assert_eq!(c.json(&["key", "list", "--json"]), before);
    sign_and_verify(&c, "secp256k1-tr", &secp, &secp_pk, b"after full restart");
    sign_and_verify(&c, "ed25519", &ed, &ed_pk, b"after full restart");
}

/// Copies a directory tree (a stopped daemon's database).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create copy");
    for e in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy file");
        }
    }
}

#[test]
fn corrupted_share_is_named_and_another_quorum_signs() {
    let mut c = Cluster::start("culprit", 3, 2);
    // Make signer-1 misbehave: valid envelopes around wrong signature shares.
    c.kill("signer-1");
    let cfg = c.dir.join("signer-1/signer.toml");
    let text = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(
        &cfg,
        format!("fault_injection = \"corrupt-signature-shares\"\n{text}"),
    )
    .expect("config");
    c.restart("signer-1");
    assert!(c.log("signer-1").contains("FAULT INJECTION"));

    for suite in ["secp256k1-tr", "ed25519"] {
        let (key, pk) = create(&c, suite);
        for i in 0..4u8 {
            let s = sign_and_verify(&c, suite, &key, &pk, &[i; 16]);
            assert!(
                !s["signers"]
                    .as_array()
                    .expect("signers")
                    .contains(&Value::from(1)),
                "{s}"
            );
        }
    }
    let log = c.log("coordinator");
    assert!(
        log.contains("CULPRIT: participant 1 (signer-1)")
            && log.contains("invalid signature share"),
        "the coordinator log names the culprit:\n{log}"
    );
}

#[test]
fn coordinator_relays_round2_shares_it_cannot_read() {
    use custody_protocol::identity::open_sealed;
    use custody_protocol::wire::Kind;
    use custody_protocol::{ParticipantId, Roster, SessionId, Suite};

    let c = Cluster::start("sealed", 3, 2);
    let (key, _) = create(&c, "secp256k1-tr");
    // The audit transcript of a real DKG holds no round-2 message at all.
    let path = c
        .dir
        .join(format!("coordinator/transcripts/dkg-{key}.json"));
    let text = std::fs::read_to_string(&path).expect("transcript");
    let t: Value = serde_json::from_str(&text).expect("json");
    assert!(
        t.get("round2").is_none(),
        "round-2 messages in a transcript"
    );

    // Relay a DKG as the coordinator does (its certificate, its role) and keep every
    // sealed round-2 message it sees.
    let load = |dir: &str, aad: Vec<u8>| {
        let d = c.dir.join(dir);
        let sealer =
            custody_hsm::InsecureSoftwareSealer::open_or_create(&d.join("INSECURE-sealing.key"))
                .expect("sealer");
        custody_pki::load_or_create_identity(&d.join("identity.sealed"), &sealer, &aad)
            .expect("identity")
    };
    let coordinator = load(
        "coordinator",
        custody_coordinator::identity_aad("coordinator"),
    );
    let session = SessionId([9; 32]);
    let mut roster = Roster::new();
    let mut names = std::collections::BTreeMap::new();
    let round2: Vec<(ParticipantId, ParticipantId, Vec<u8>)> = rt().block_on(async {
        let mut clients = Vec::new();
        let mut participants = Vec::new();
        for i in 1..=3u16 {
            let name = format!("signer-{i}");
            let mut s = SignerClient::new(
                c.channel(&c.addr(&name), Some("coordinator"))
                    .await
                    .expect("channel"),
            );
            let id = s
                .identity(IdentityRequest {})
                .await
                .expect("identity")
                .into_inner();
            let p = ParticipantId::new(i).expect("id");
            roster.insert(
                p,
                custody_protocol::IdentityPublic::from_bytes(&id.identity).expect("identity"),
            );
            names.insert(p, name);
            participants.push(Participant {
                id: i as u32,
                certificate: id.certificate,
            });
            clients.push((p, s));
        }
        let mut round1 = Vec::new();
        for (p, s) in &mut clients {
            let r = s
                .dkg_start(DkgStartRequest {
                    key_id: "k-relayed".into(),
                    session: session.0.to_vec(),
                    suite: "secp256k1-tr".into(),
                    threshold: 2,
                    participants: participants.clone(),
                    me: p.get() as u32,
                    policy: String::new(),
                    refresh: false,
                })
                .await
                .expect("dkg start")
                .into_inner();
            round1.push((*p, r.round1));
        }
        let mut sealed = Vec::new();
        for (p, s) in &mut clients {
            let r = s
                .dkg_round1(DkgRound1Request {
                    session: session.0.to_vec(),
                    round1: round1
                        .iter()
                        .filter(|(q, _)| q != p)
                        .map(|(q, e)| Relayed {
                            from: q.get() as u32,
                            to: p.get() as u32,
                            envelope: e.clone(),
                        })
                        .collect(),
                })
                .await
                .expect("dkg round 1")
                .into_inner();
            for m in r.shares {
                sealed.push((*p, ParticipantId::new(m.to as u16).expect("to"), m.envelope));
            }
        }
        sealed
    });
    assert_eq!(
        round2.len(),
        3 * 2,
        "every participant sends a share to every other"
    );
    for (from, to, env) in round2 {
        // The coordinator, holding everything it relayed and its own identity, cannot
        // open the share...
        let err = open_sealed(
            &coordinator,
            &roster,
            from,
            &env,
            Suite::Secp256k1Tr,
            Kind::DkgRound2,
            &session,
            to,
        )
        .expect_err("the coordinator must not decrypt a round-2 share");
        assert!(
            matches!(err, custody_protocol::Error::DecryptionFailed { .. }),
            "{err:?}"
        );
        // ...while the recipient can, and the plaintext never appears in the record.
        let name = &names[&to];
        let recipient = load(name, custody_signer::store::identity_aad(name));
        let plain = open_sealed(
            &recipient,
            &roster,
            from,
            &env,
            Suite::Secp256k1Tr,
            Kind::DkgRound2,
            &session,
            to,
        )
        .expect("the recipient decrypts its share");
        assert_eq!(plain.len(), 32);
    }
}

#[test]
fn mtls_and_roles_are_enforced() {
    let c = Cluster::start("auth", 3, 2);
    let (key, _) = create(&c, "ed25519");
    let coord = c.coordinator_addr();
    let signer = c.addr("signer-1");
    rt().block_on(async {
        // No client certificate: refused at the handshake (or the first call).
        match c.channel(&coord, None).await {
            Err(_) => {}
            Ok(ch) => {
                let r = CustodyClient::new(ch).list_keys(ListKeysRequest {}).await;
                assert!(r.is_err(), "a client without a certificate was served");
            }
        }
        // A certificate from another CA: refused too.
        let other = c.dir.join("other-ca");
        std::fs::create_dir_all(&other).expect("dir");
        let ca = custody_pki::Ca::create(&other, "rogue").expect("ca");
        ca.issue(&other, "operator", custody_pki::Role::Operator, None)
            .expect("issue");
        let rogue = {
            let ca_pem = std::fs::read_to_string(c.dir.join("pki/ca.pem")).expect("ca");
            let tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
                .domain_name("localhost")
                .identity(tonic::transport::Identity::from_pem(
                    std::fs::read_to_string(other.join("operator.pem")).expect("pem"),
                    std::fs::read_to_string(other.join("operator.key")).expect("key"),
                ));
            tonic::transport::Endpoint::from_shared(format!("https://{coord}"))
                .expect("endpoint")
                .tls_config(tls)
                .expect("tls")
                .connect_timeout(Duration::from_secs(5))
                .connect()
                .await
        };
        if let Ok(ch) = rogue {
            let r = CustodyClient::new(ch).list_keys(ListKeysRequest {}).await;
            assert!(r.is_err(), "a certificate from another CA was accepted");
        }

        // Wrong roles get PERMISSION_DENIED.
        let mut auditor =
            CustodyClient::new(c.channel(&coord, Some("auditor")).await.expect("auditor"));
        let st = auditor
            .create_key(CreateKeyRequest {
                suite: "ed25519".into(),
                ..Default::default()
            })
            .await
            .expect_err("auditor may not create keys");
        assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
        assert!(
            auditor.list_keys(ListKeysRequest {}).await.is_ok(),
            "auditors may list keys"
        );
        let mut as_signer = CustodyClient::new(
            c.channel(&coord, Some("signer-2"))
                .await
                .expect("signer cert"),
        );
        let st = as_signer
            .sign(SignRequest {
                key_id: key.clone(),
                message: vec![1],
                request_id: String::new(),
                transfer: None,
                settlement: None,
            })
            .await
            .expect_err("a signer certificate may not ask for signatures");
        assert_eq!(st.code(), Code::PermissionDenied);

        // Signers accept only the coordinator.
        for who in ["operator", "payment-backend", "signer-2"] {
            let mut s = SignerClient::new(c.channel(&signer, Some(who)).await.expect("channel"));
            let st = s
                .commit(CommitRequest {
                    key_id: key.clone(),
                    count: 1,
                })
                .await
                .expect_err("refused");
            assert_eq!(st.code(), Code::PermissionDenied, "{who}: {st:?}");
            let st = s
                .sign_share(SignShareRequest {
                    key_id: key.clone(),
                    package: vec![1, 2, 3],
                    ..Default::default()
                })
                .await
                .expect_err("refused");
            assert_eq!(st.code(), Code::PermissionDenied, "{who}: {st:?}");
        }
    });
}

#[test]
fn malformed_requests_get_invalid_argument_and_daemons_keep_serving() {
    let c = Cluster::start("malformed", 3, 2);
    let (key, pk) = create(&c, "secp256k1-tr");
    let coord = c.coordinator_addr();
    let signer = c.addr("signer-2");
    rt().block_on(async {
        let mut op =
            CustodyClient::new(c.channel(&coord, Some("operator")).await.expect("operator"))
                .max_encoding_message_size(8 << 20);
        let bad_keys = [
            CreateKeyRequest {
                suite: "rsa".into(),
                ..Default::default()
            },
            CreateKeyRequest {
                suite: "ed25519".into(),
                threshold: 1,
                ..Default::default()
            },
            CreateKeyRequest {
                suite: "ed25519".into(),
                threshold: 4,
                ..Default::default()
            },
            CreateKeyRequest {
                suite: "ed25519".into(),
                signers: vec!["signer-9".into()],
                ..Default::default()
            },
            CreateKeyRequest {
                suite: "ed25519".into(),
                signer_count: 7,
                ..Default::default()
            },
            CreateKeyRequest {
                suite: "ed25519".into(),
                tier: "lukewarm".into(),
                ..Default::default()
            },
            CreateKeyRequest {
                suite: "ed25519".into(),
                name: "x".repeat(500),
                ..Default::default()
            },
        ];
        for req in bad_keys {
            let st = op.create_key(req.clone()).await.expect_err("refused");
            assert_eq!(st.code(), Code::InvalidArgument, "{req:?}: {st:?}");
        }
        let bad_signs = [
            SignRequest {
                key_id: String::new(),
                message: vec![1],
                request_id: String::new(),
                transfer: None,
                settlement: None,
            },
            SignRequest {
                key_id: "../etc".into(),
                message: vec![1],
                request_id: String::new(),
                transfer: None,
                settlement: None,
            },
            SignRequest {
                key_id: key.clone(),
                message: vec![0; (1 << 20) + 1],
                request_id: String::new(),
                transfer: None,
                settlement: None,
            },
            SignRequest {
                key_id: key.clone(),
                message: vec![1],
                request_id: "r".repeat(129),
                transfer: None,
                settlement: None,
            },
            SignRequest {
                key_id: key.clone(),
                message: vec![1],
                request_id: "white space".into(),
                transfer: None,
                settlement: None,
            },
        ];
        for req in bad_signs {
            let st = op.sign(req).await.expect_err("refused");
            assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
        }
        let st = op
            .get_key(GetKeyRequest {
                key_id: "k-unknown".into(),
            })
            .await
            .expect_err("unknown");
        assert_eq!(st.code(), Code::NotFound);
        let st = op
            .get_signature(GetSignatureRequest {
                request_id: "nope".into(),
            })
            .await
            .expect_err("unknown");
        assert_eq!(st.code(), Code::NotFound);

        // The signer's own API, called with the coordinator's certificate but garbage.
        let mut s = SignerClient::new(
            c.channel(&signer, Some("coordinator"))
                .await
                .expect("channel"),
        );
        let st = s
            .dkg_start(DkgStartRequest {
                key_id: "k-x".into(),
                session: vec![1; 5],
                suite: "ed25519".into(),
                threshold: 2,
                participants: vec![],
                me: 1,
                policy: String::new(),
                refresh: false,
            })
            .await
            .expect_err("refused");
        assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
        let st = s
            .sign_share(SignShareRequest {
                key_id: key.clone(),
                package: vec![0xff; 300],
                request_id: "r-1".into(),
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
        let st = s
            .commit(CommitRequest {
                key_id: key.clone(),
                count: 100_000,
            })
            .await
            .expect_err("refused");
        assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
        let st = s
            .dkg_round1(DkgRound1Request {
                session: vec![9; 32],
                round1: vec![],
            })
            .await
            .expect_err("refused");
        assert_eq!(st.code(), Code::NotFound, "{st:?}");

        // Health service answers on both daemons.
        for (addr, who) in [(&coord, "operator"), (&signer, "coordinator")] {
            let mut h = tonic_health::pb::health_client::HealthClient::new(
                c.channel(addr, Some(who)).await.expect("channel"),
            );
            let r = h
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .expect("health");
            assert_eq!(
                r.into_inner().status,
                tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            );
        }
    });
    // Everyone still serves.
    sign_and_verify(&c, "secp256k1-tr", &key, &pk, b"still here");
}

/// SoftHSM2 present? Under CI it must be (CI installs it): fail rather than skip.
fn softhsm_available() -> bool {
    let ok = std::path::Path::new("/usr/lib/softhsm/libsofthsm2.so").exists();
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "CI must install softhsm2");
        eprintln!("skipping: softhsm2 is not installed");
    }
    ok
}

#[test]
fn softhsm_cluster_seals_shares_in_tokens_and_survives_restart() {
    if !softhsm_available() {
        return;
    }
    let mut c = Cluster::start_with("softhsm", 3, 2, &["--hsm", "softhsm"]);
    let (secp, secp_pk) = create(&c, "secp256k1-tr");
    let (ed, ed_pk) = create(&c, "ed25519");
    sign_and_verify(&c, "secp256k1-tr", &secp, &secp_pk, b"sealed in a token");
    sign_and_verify(&c, "ed25519", &ed, &ed_pk, b"sealed in a token");
    for s in ["signer-1", "signer-2", "signer-3"] {
        let log = c.log(s);
        assert!(
            log.contains("PKCS#11 token"),
            "{s} does not seal with its token:\n{log}"
        );
        assert!(
            !log.contains("INSECURE"),
            "{s} warns about software sealing:\n{log}"
        );
        assert!(!c.dir.join(s).join("INSECURE-sealing.key").exists());
        // The envelope-signing key is in the token; only the sealed X25519 key is on disk.
        assert!(c.dir.join(s).join("identity-x25519.sealed").exists());
        assert!(!c.dir.join(s).join("identity.sealed").exists());
    }
    // Many concurrent signatures: every signer signs each envelope in its token.
    let coord = c.coordinator_addr();
    rt().block_on(async {
        let ch = c.channel(&coord, Some("operator")).await.expect("channel");
        let mut tasks = Vec::new();
        for i in 0..48u32 {
            let mut client = CustodyClient::new(ch.clone());
            let (key, suite, pk) = if i % 2 == 0 {
                (secp.clone(), "secp256k1-tr", secp_pk.clone())
            } else {
                (ed.clone(), "ed25519", ed_pk.clone())
            };
            tasks.push(tokio::spawn(async move {
                let msg = format!("concurrent {i}").into_bytes();
                let r = client
                    .sign(SignRequest {
                        key_id: key,
                        message: msg.clone(),
                        request_id: String::new(),
                        transfer: None,
                        settlement: None,
                    })
                    .await
                    .expect("sign")
                    .into_inner();
                assert!(verify_independently(suite, &pk, &msg, &r.signature));
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
    });

    // A copy of signer-1's data directory, given another token (signer-2's, with its
    // PIN), opens nothing: the signer refuses to start.
    let thief = c.dir.join("thief");
    std::fs::create_dir_all(&thief).expect("dir");
    std::fs::copy(
        c.dir.join("signer-1/identity-x25519.sealed"),
        thief.join("identity-x25519.sealed"),
    )
    .expect("copy");
    let text = std::fs::read_to_string(c.dir.join("signer-1/signer.toml")).expect("config");
    let stolen = text
        .replace(
            &c.dir.join("signer-1").display().to_string(),
            &thief.display().to_string(),
        )
        .replace("token_label = \"signer-1\"", "token_label = \"signer-2\"")
        .replace(
            &format!("{}/token.pin", thief.display()),
            &c.dir.join("signer-2/token.pin").display().to_string(),
        )
        .replace(
            &format!("{}/softhsm", thief.display()),
            &c.dir.join("signer-2/softhsm").display().to_string(),
        );
    assert!(stolen.contains("token_label = \"signer-2\""), "{stolen}");
    std::fs::write(thief.join("signer.toml"), &stolen).expect("config");
    let err = run_expecting_failure(&thief.join("signer.toml"));
    assert!(err.contains("rejected"), "{err}");

    // A wrong PIN fails at start with a clear message.
    c.kill("signer-3");
    let pin_file = c.dir.join("signer-3/token.pin");
    let pin = std::fs::read(&pin_file).expect("pin");
    std::fs::write(&pin_file, b"not-the-pin").expect("pin");
    let err = run_expecting_failure(&c.dir.join("signer-3/signer.toml"));
    assert!(err.contains("PIN is incorrect"), "{err}");
    std::fs::write(&pin_file, pin).expect("pin");
    c.restart("signer-3");

    // Shares come back out of the tokens after a full restart.
    c.restart_all();
    sign_and_verify(&c, "secp256k1-tr", &secp, &secp_pk, b"after restart");
    sign_and_verify(&c, "ed25519", &ed, &ed_pk, b"after restart");
}

/// Runs `custody signer --config CONFIG`, which must exit with an error within 60 s;
/// returns its standard error.
fn run_expecting_failure(config: &std::path::Path) -> String {
    let mut child = std::process::Command::new(support::BIN)
        .arg("signer")
        .arg("--config")
        .arg(config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start signer");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(
                !status.success(),
                "the signer started with {}",
                config.display()
            );
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
                .expect("read");
            return err;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "the signer with {} neither started nor failed",
                config.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn daemons_run_hardened() {
    let c = Cluster::start("hardened", 2, 2);
    for daemon in ["signer-1", "signer-2", "coordinator"] {
        let pid = c.pid(daemon);
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
        let core = limits
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .expect("core limit");
        let fields: Vec<&str> = core.split_whitespace().collect();
        assert_eq!(&fields[4..6], ["0", "0"], "{daemon}: {core}");
        let log = c.log(daemon);
        assert!(log.contains("core_dumps_disabled=true"), "{daemon}:\n{log}");
        // Memory is locked, or the log says clearly why not.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let locked_kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmLck:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmLck");
        assert!(
            (locked_kb > 0 && log.contains("memory_locked=true"))
                || log.contains("memory is not locked"),
            "{daemon}: VmLck {locked_kb} kB\n{log}"
        );
    }
}

/// A policy with limits: BTC only, at most 100 per transfer and 150 per hour, to
/// alice only, no raw messages.
const LIMITED_POLICY: &str = r#"{
  "tier": "hot",
  "assets": { "BTC": { "per_request": 100, "per_window": 150, "window_secs": 3600 } },
  "allowlist": ["alice"],
  "allow_raw": false,
  "approvals": null,
  "time_lock_secs": 0,
  "max_age_secs": null,
  "max_signatures": null
}"#;

fn sign_transfer(
    c: &Cluster,
    key: &str,
    amount: &str,
    dest: &str,
    id: &str,
) -> std::process::Output {
    c.cli(&[
        "sign",
        "--key",
        key,
        "--asset",
        "BTC",
        "--amount",
        amount,
        "--destination",
        dest,
        "--request-id",
        id,
        "--json",
    ])
}

#[test]
fn signers_enforce_the_key_policy_even_against_their_coordinator() {
    // 3-of-3: every signer takes part in every signature, so every ledger sees all.
    let c = Cluster::start("policy", 3, 3);
    // An empty policy file is a mistake, never the permissive development policy.
    let empty = c.dir.join("empty-policy.json");
    std::fs::write(&empty, "\n").expect("policy");
    let err = c.fails(&[
        "key",
        "create",
        "--suite",
        "secp256k1-tr",
        "--policy",
        empty.to_str().expect("path"),
    ]);
    assert!(err.contains("the file is empty"), "{err}");
    let policy_file = c.dir.join("policy.json");
    std::fs::write(&policy_file, LIMITED_POLICY).expect("policy");
    let k = c.json(&[
        "key",
        "create",
        "--suite",
        "secp256k1-tr",
        "--policy",
        policy_file.to_str().expect("path"),
        "--json",
    ]);
    let key = k["key_id"].as_str().expect("key id").to_string();
    let pk = hexs(&k["public_key"]);
    assert_eq!(k["policy"]["allow_raw"], false, "{k}");

    // Within policy: signed, over the message the signers derive from the transfer.
    let out = sign_transfer(&c, &key, "60", "alice", "t-1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&out.stdout).expect("json");
    let t = hot_warm_cold::Transfer {
        asset: "BTC".into(),
        amount: 60,
        destination: "alice".into(),
        request_id: "t-1".into(),
        memo: String::new(),
    };
    assert_eq!(hexs(&s["message"]), t.message(&key));
    assert!(verify_independently(
        "secp256k1-tr",
        &pk,
        &t.message(&key),
        &hexs(&s["signature"])
    ));

    // Refused by every signer, with the reason, through the coordinator.
    for (args, why) in [
        (
            vec!["sign", "--key", &key, "--message", "00", "--json"],
            "raw messages",
        ),
        (
            vec![
                "sign",
                "--key",
                &key,
                "--asset",
                "BTC",
                "--amount",
                "10",
                "--destination",
                "mallory",
                "--json",
            ],
            "allowlist",
        ),
        (
            vec![
                "sign",
                "--key",
                &key,
                "--asset",
                "BTC",
                "--amount",
                "101",
                "--destination",
                "alice",
                "--json",
            ],
            "per-request limit",
        ),
        (
            vec![
                "sign",
                "--key",
                &key,
                "--asset",
                "ETH",
                "--amount",
                "1",
                "--destination",
                "alice",
                "--json",
            ],
            "not allowed",
        ),
    ] {
        let err = c.fails(&args);
        assert!(
            err.contains("PERMISSION_DENIED") && err.contains(why),
            "{args:?}: {err}"
        );
    }
    // The window: 60 + 60 fits in 150, a third 60 does not; a retry of an admitted
    // request is not counted twice.
    assert!(sign_transfer(&c, &key, "60", "alice", "t-2")
        .status
        .success());
    assert!(
        sign_transfer(&c, &key, "60", "alice", "t-2")
            .status
            .success(),
        "idempotent retry"
    );
    let out = sign_transfer(&c, &key, "60", "alice", "t-3");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success() && err.contains("exceeds the limit 150"),
        "{err}"
    );
    assert!(c.log("signer-1").contains("REFUSED by policy"));
    // A refusal spends nothing: 30 more still fits exactly.
    let out = sign_transfer(&c, &key, "30", "alice", "t-4");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A compromised coordinator: its own certificate and identity key, talking to the
    // signers directly, asking for a share of an over-limit transfer, of a raw message,
    // or of a package whose message is not the transfer it names.
    let over = hot_warm_cold::Transfer {
        asset: "BTC".into(),
        amount: 100,
        destination: "alice".into(),
        request_id: "evil-1".into(),
        memo: String::new(),
    };
    let mallory = hot_warm_cold::Transfer {
        asset: "BTC".into(),
        amount: 1,
        destination: "mallory".into(),
        request_id: "evil-4".into(),
        memo: String::new(),
    };
    let small = Transfer {
        asset: "BTC".into(),
        amount: "1".into(),
        destination: "alice".into(),
        memo: String::new(),
    };
    let cases = [
        // Over the window limit (150 of 150 already spent).
        (
            over.message(&key).to_vec(),
            "evil-1",
            Some(proto_transfer(&over)),
            "exceeds the limit",
        ),
        // A raw message on a key that forbids them.
        (
            b"send everything to mallory".to_vec(),
            "evil-2",
            None,
            "raw messages",
        ),
        // A small transfer as cover for other bytes.
        (
            b"other bytes".to_vec(),
            "evil-3",
            Some(small),
            "not the message of the transfer",
        ),
        // A destination outside the allowlist.
        (
            mallory.message(&key).to_vec(),
            "evil-4",
            Some(proto_transfer(&mallory)),
            "not on the allowlist",
        ),
    ];
    for (message, request_id, transfer, why) in cases {
        for r in as_rogue_coordinator(&c, &key, 3, message, request_id, transfer) {
            let st = r.expect_err("an honest signer refuses");
            assert_eq!(st.code(), Code::PermissionDenied, "{request_id}: {st:?}");
            assert!(st.message().contains(why), "{request_id}: {}", st.message());
        }
    }
}

/// A settlement's request id names its batch for good: after the policy's window has
/// passed (and the signers' request-id ledger has forgotten it), a compromised
/// coordinator still cannot have the same batch id signed over other content.
#[test]
fn a_batch_id_is_never_signed_again_with_other_content() {
    let c = Cluster::start("settled", 3, 2);
    let policy = r#"{
      "tier": "hot",
      "assets": { "EUR": { "per_request": 1000, "per_window": 100000, "window_secs": 1 } },
      "allowlist": null, "allow_raw": false, "approvals": null, "time_lock_secs": 0,
      "max_age_secs": null, "max_signatures": null
    }"#;
    let policy_file = c.dir.join("settle.json");
    std::fs::write(&policy_file, policy).expect("policy");
    let k = c.json(&[
        "key",
        "create",
        "--suite",
        "secp256k1-tr",
        "--policy",
        policy_file.to_str().expect("path"),
        "--json",
    ]);
    let key = k["key_id"].as_str().expect("key id").to_string();
    let settle = |batch: &str, root: u8| {
        let p = Settlement {
            batch_id: batch.into(),
            root: vec![root; 32],
            count: 1,
            totals: vec![SettlementTotal {
                currency: "EUR".into(),
                amount: "5".into(),
            }],
            period_start_ms: 0,
            period_end_ms: 1,
        };
        let request_id = format!("settle-{batch}");
        let message = custody_api::settlement(&p, &request_id)
            .expect("settlement")
            .message(&key)
            .to_vec();
        as_rogue_coordinator_with(&c, &key, 2, message, &request_id, None, vec![], Some(p))
    };
    for r in settle("bat_1", 1) {
        r.expect("within the limits");
    }
    // The window passes; another settlement prunes the request-id ledger.
    std::thread::sleep(Duration::from_millis(2500));
    for r in settle("bat_2", 2) {
        r.expect("within the limits");
    }
    for r in settle("bat_1", 9) {
        let st = r.expect_err("an honest signer refuses");
        assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
        assert!(
            st.message().contains("already settled with other content"),
            "{}",
            st.message()
        );
    }
    // The same content again is a retry (the same batch, signed again).
    for r in settle("bat_1", 1) {
        r.expect("a retry of the same batch");
    }
}

fn proto_transfer(t: &hot_warm_cold::Transfer) -> Transfer {
    Transfer {
        asset: t.asset.clone(),
        amount: t.amount.to_string(),
        destination: t.destination.clone(),
        memo: t.memo.clone(),
    }
}

#[test]
fn lifecycle_is_enforced_by_every_signer() {
    let mut c = Cluster::start("lifecycle", 3, 2);
    let (key, pk) = create(&c, "secp256k1-tr");
    sign_and_verify(&c, "secp256k1-tr", &key, &pk, b"before");

    let k = c.json(&["key", "suspend", &key, "--json"]);
    assert_eq!(k["state"], "suspended", "{k}");
    let err = c.fails(&["sign", "--key", &key, "--message", "01", "--json"]);
    assert!(
        err.contains("FAILED_PRECONDITION") && err.contains("suspended"),
        "{err}"
    );
    // Even the coordinator's own credentials get no share of a suspended key.
    for r in as_rogue_coordinator(&c, &key, 3, b"while suspended".to_vec(), "s-1", None) {
        let st = r.expect_err("refused");
        assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
        assert!(
            st.message().to_lowercase().contains("suspended"),
            "{}",
            st.message()
        );
    }
    assert_eq!(
        c.json(&["key", "resume", &key, "--json"])["state"],
        "active"
    );
    assert_eq!(c.json(&["key", "show", &key, "--json"])["state"], "active");
    sign_and_verify(&c, "secp256k1-tr", &key, &pk, b"after resume");
    // Illegal edges are refused with the reason.
    let err = c.fails(&["key", "destroy", &key, "--json"]);
    assert!(
        err.contains("FAILED_PRECONDITION") && err.contains("Destroy"),
        "active keys are not destroyed: {err}"
    );

    assert_eq!(
        c.json(&["key", "retire", &key, "--json"])["state"],
        "retired"
    );
    let err = c.fails(&["key", "resume", &key, "--json"]);
    assert!(err.contains("FAILED_PRECONDITION"), "{err}");
    for r in as_rogue_coordinator(&c, &key, 3, b"while retired".to_vec(), "s-2", None) {
        assert_eq!(r.expect_err("refused").code(), Code::PermissionDenied);
    }

    assert_eq!(
        c.json(&["key", "destroy", &key, "--json"])["state"],
        "destroyed"
    );
    for s in ["signer-1", "signer-2", "signer-3"] {
        assert!(c.log(s).contains("key lifecycle: destroy"), "{s}");
    }
    // After a full restart the key is still a tombstone and its shares are gone.
    c.restart_all();
    let listed = c.json(&["key", "list", "--json"]);
    let tomb = listed
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["key_id"] == key.as_str())
        .expect("tombstone");
    assert_eq!(tomb["state"], "destroyed");
    assert_eq!(hexs(&tomb["public_key"]), pk, "the public key is kept");
    let err = c.fails(&["sign", "--key", &key, "--message", "01", "--json"]);
    assert!(err.contains("destroyed"), "{err}");
    let st = rt()
        .block_on(async {
            let mut s = SignerClient::new(
                c.channel(&c.addr("signer-1"), Some("coordinator"))
                    .await
                    .expect("channel"),
            );
            s.commit(CommitRequest {
                key_id: key.clone(),
                count: 1,
            })
            .await
        })
        .expect_err("no share, no commitments");
    assert_eq!(st.code(), Code::NotFound, "{st:?}");
}

#[test]
fn warm_keys_sign_after_approvals_and_a_time_lock_that_every_signer_checks() {
    let c = Cluster::start("warm", 3, 2);
    // Three approvers; two must approve.
    let mut approvers = Vec::new();
    for i in 1..=4 {
        let file = c.dir.join(format!("approver-{i}.json"));
        let out = c.offline(&["approver", "keygen", "--out", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pk = String::from_utf8_lossy(&out.stdout).trim().to_string();
        approvers.push((file, pk));
    }
    let policy = serde_json::json!({
        "tier": "warm", "allow_raw": false, "allowlist": null,
        "assets": { "BTC": { "per_request": 100, "per_window": 1000, "window_secs": 3600 } },
        "approvals": { "required": 2, "approvers": [&approvers[0].1, &approvers[1].1, &approvers[2].1] },
        "time_lock_secs": 2, "max_age_secs": null, "max_signatures": null,
    });
    let policy_file = c.dir.join("warm.json");
    std::fs::write(&policy_file, policy.to_string()).unwrap();
    let k = c.json(&[
        "key",
        "create",
        "--suite",
        "secp256k1-tr",
        "--policy",
        policy_file.to_str().unwrap(),
        "--json",
    ]);
    let key = k["key_id"].as_str().unwrap().to_string();
    assert_eq!(k["tier"], "warm");

    let transfer = ["--asset", "BTC", "--amount", "10", "--destination", "bob"];
    let mut args = vec!["sign", "--key", key.as_str()];
    args.extend(transfer);
    args.extend(["--request-id", "w-1", "--json"]);
    let r = c.json(&args);
    assert_eq!(r["state"], "waiting-approvals", "{r}");
    assert_eq!(
        (r["approvals"].as_u64(), r["required"].as_u64()),
        (Some(0), Some(2))
    );
    let approve = |i: usize| {
        c.cli(&[
            "approve",
            "w-1",
            "--key",
            approvers[i].0.to_str().unwrap(),
            "--json",
        ])
    };
    let out = approve(0);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["approvals"], 1, "{r}");
    // Not an approver of this key; an approval twice counts once.
    let out = approve(3);
    assert!(String::from_utf8_lossy(&out.stderr).contains("PERMISSION_DENIED"));
    assert_eq!(
        serde_json::from_slice::<Value>(&approve(0).stdout).unwrap()["approvals"],
        1
    );
    let r: Value = serde_json::from_slice(&approve(1).stdout).unwrap();
    assert_eq!(r["approvals"], 2, "{r}");
    // Signed once the time lock is over (by the coordinator's background task).
    let deadline = Instant::now() + Duration::from_secs(20);
    let signed = loop {
        let r = c.json(&["request", "show", "w-1", "--json"]);
        if r["state"] == "signed" {
            break r;
        }
        assert!(r["state"] != "refused", "{r}");
        assert!(Instant::now() < deadline, "not signed: {r}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let sig = hexs(&signed["signature"]);
    assert!(verify_independently(
        "secp256k1-tr",
        &hexs(&k["public_key"]),
        &hexs(&signed["message"]),
        &sig
    ));
    // The same request again returns the signature.
    let r = c.json(&args);
    assert_eq!(hexs(&r["signature"]), sig);
    let list = c.json(&["request", "list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 1);

    // A compromised coordinator, talking to the signers itself: without approvals,
    // every signer refuses; with two valid approvals but a request the signers have
    // just seen, every signer's own time lock refuses it.
    let t = Transfer {
        asset: "BTC".into(),
        amount: "20".into(),
        destination: "mallory".into(),
        memo: String::new(),
    };
    let message = custody_api::transfer(&t, "w-rogue")
        .unwrap()
        .message(&key)
        .to_vec();
    for r in as_rogue_coordinator(&c, &key, 3, message.clone(), "w-rogue", Some(t.clone())) {
        let st = r.expect_err("no approvals");
        assert!(st.message().contains("approvals"), "{st:?}");
    }
    let digest = custody_protocol::hash::TaggedHash::new("custody/v1/approval")
        .part(key.as_bytes())
        .part(&message)
        .finish();
    let approvals: Vec<Approval> = approvers[..2]
        .iter()
        .map(|(file, _)| {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
            let seed: [u8; 32] = hexs(&v["secret_key"]).try_into().unwrap();
            let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
            use ed25519_dalek::Signer;
            Approval {
                approver: sk.verifying_key().to_bytes().to_vec(),
                signature: sk.sign(&digest).to_bytes().to_vec(),
            }
        })
        .collect();
    for r in as_rogue_coordinator_with(&c, &key, 3, message, "w-rogue", Some(t), approvals, None) {
        let st = r.expect_err("time lock");
        assert!(st.message().contains("time lock"), "{st:?}");
    }

    // The audit export verifies, approvals checked against the key's approver set.
    let file = c.audit_export("export.json");
    c.audit_verify(&file);
}

#[test]
fn policy_limits_retire_keys_automatically_and_say_so() {
    let c = Cluster::start("limits", 3, 2);
    let policy = |max_age: Value, max_sigs: Value| {
        serde_json::json!({
            "tier": "hot", "allow_raw": true, "allowlist": null, "assets": {},
            "approvals": null, "time_lock_secs": 0,
            "max_age_secs": max_age, "max_signatures": max_sigs,
        })
        .to_string()
    };
    // At most two signatures (t = n, so every signer counts every one).
    let file = c.dir.join("two.json");
    std::fs::write(&file, policy(Value::Null, 2.into())).unwrap();
    let k = c.json(&[
        "key",
        "create",
        "--suite",
        "ed25519",
        "--threshold",
        "3",
        "--policy",
        file.to_str().unwrap(),
        "--json",
    ]);
    let key = k["key_id"].as_str().unwrap().to_string();
    for m in ["01", "02"] {
        c.json(&["sign", "--key", &key, "--message", m, "--json"]);
    }
    // The coordinator counted two: the key retires (a third request is refused, by
    // the coordinator if the retirement is through, else by every signer).
    let err = c.fails(&["sign", "--key", &key, "--message", "03"]);
    assert!(
        (err.contains("PERMISSION_DENIED") && err.contains("rotate it")) || err.contains("retired"),
        "{err}"
    );
    // A key one second old at most: retired by the coordinator's own clock.
    let file = c.dir.join("young.json");
    std::fs::write(&file, policy(1.into(), Value::Null)).unwrap();
    let k = c.json(&[
        "key",
        "create",
        "--suite",
        "secp256k1-tr",
        "--policy",
        file.to_str().unwrap(),
        "--json",
    ]);
    let young = k["key_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    for key in [&key, &young] {
        loop {
            let k = c.json(&["key", "show", key, "--json"]);
            if k["state"] == "retired" {
                let why = k["state_reason"].as_str().unwrap();
                assert!(why.starts_with("retired automatically"), "{k}");
                break;
            }
            assert!(Instant::now() < deadline, "not retired: {k}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert!(c.log("coordinator").contains("retired automatically"));
    let err = c.fails(&["sign", "--key", &young, "--message", "04"]);
    assert!(
        err.contains("FAILED_PRECONDITION") && err.contains("retired"),
        "{err}"
    );
}

fn approve_pc2(c: &Cluster, admins: &[(std::path::PathBuf, String)], i: usize) -> Value {
    let out = c.cli(&[
        "approve",
        "pc-2",
        "--key",
        admins[i].0.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn policy_changes_need_the_admins_that_every_signer_checks() {
    let c = Cluster::start("policy", 3, 2);
    let mut admins = Vec::new();
    for i in 1..=3 {
        let file = c.dir.join(format!("admin-{i}.json"));
        let out = c.offline(&["approver", "keygen", "--out", file.to_str().unwrap()]);
        assert!(out.status.success());
        admins.push((
            file,
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ));
    }
    let policy = |per_request: u64| {
        serde_json::json!({
            "tier": "hot", "allow_raw": false, "allowlist": null,
            "assets": { "BTC": { "per_request": per_request, "per_window": 1000, "window_secs": 3600 } },
            "approvals": null, "time_lock_secs": 0, "max_age_secs": null, "max_signatures": null,
            "admins": { "required": 2, "approvers": [&admins[0].1, &admins[1].1, &admins[2].1] },
        })
        .to_string()
    };
    let (v1, v2) = (c.dir.join("v1.json"), c.dir.join("v2.json"));
    std::fs::write(&v1, policy(10)).unwrap();
    std::fs::write(&v2, policy(50)).unwrap();
    let k = c.json(&[
        "key",
        "create",
        "--suite",
        "ed25519",
        "--policy",
        v1.to_str().unwrap(),
        "--json",
    ]);
    let key = k["key_id"].as_str().unwrap().to_string();
    let pay = |id: &str| {
        c.cli(&[
            "sign",
            "--key",
            &key,
            "--asset",
            "BTC",
            "--amount",
            "20",
            "--destination",
            "bob",
            "--request-id",
            id,
            "--json",
        ])
    };
    let out = pay("p-20a");
    assert!(String::from_utf8_lossy(&out.stderr).contains("per-request limit"));

    let r = c.json(&[
        "key",
        "policy",
        &key,
        "--policy",
        v2.to_str().unwrap(),
        "--request-id",
        "pc-1",
        "--json",
    ]);
    assert_eq!(
        (r["kind"].as_str(), r["state"].as_str()),
        (Some("policy-change"), Some("waiting-approvals")),
        "{r}"
    );
    assert_eq!(r["required"], 2);

    // A compromised coordinator asks the signers directly, with one admin's approval
    // (or none): every signer refuses.
    let current = hot_warm_cold::Policy::from_json(&policy(10)).unwrap();
    let new = hot_warm_cold::Policy::from_json(&policy(50)).unwrap();
    let digest = new.change_digest(&key, 0, &current.digest());
    let all: Vec<Approval> = admins
        .iter()
        .map(|(file, _)| {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
            let seed: [u8; 32] = hexs(&v["secret_key"]).try_into().unwrap();
            let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
            use ed25519_dalek::Signer;
            Approval {
                approver: sk.verifying_key().to_bytes().to_vec(),
                signature: sk.sign(&digest).to_bytes().to_vec(),
            }
        })
        .collect();
    let one = all[..1].to_vec();
    rt().block_on(async {
        for i in 1..=3 {
            let mut s = SignerClient::new(
                c.channel(&c.addr(&format!("signer-{i}")), Some("coordinator"))
                    .await
                    .expect("channel"),
            );
            for approvals in [vec![], one.clone()] {
                let st = s
                    .set_policy(SetPolicyRequest {
                        key_id: key.clone(),
                        policy: policy(900),
                        approvals,
                    })
                    .await
                    .expect_err("refused");
                assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
                assert!(st.message().contains("admin approvals"), "{st:?}");
            }
        }
    });

    let approve = |i: usize| {
        let out = c.cli(&[
            "approve",
            "pc-1",
            "--key",
            admins[i].0.to_str().unwrap(),
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    assert_eq!(approve(0)["approvals"], 1);
    let r = approve(2);
    assert_eq!(r["state"], "applied", "{r}");
    let shown = c.json(&["key", "show", &key, "--json"]);
    assert_eq!(
        shown["policy"]["assets"]["BTC"]["per_request"], 50,
        "{shown}"
    );
    let out = pay("p-20b");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The old approvals do not apply again: they were for the policy that is gone.
    let r = c.json(&[
        "key",
        "policy",
        &key,
        "--policy",
        v1.to_str().unwrap(),
        "--request-id",
        "pc-2",
        "--json",
    ]);
    assert_eq!(r["state"], "waiting-approvals");
    // Approved, the policy goes back to v1 (version 2 now)...
    approve_pc2(&c, &admins, 0);
    let r = approve_pc2(&c, &admins, 1);
    assert_eq!(r["state"], "applied", "{r}");
    // ...and the admins' approvals of the first change (version 0) cannot be replayed
    // to move it to v2 again: every signer refuses them.
    rt().block_on(async {
        for i in 1..=3 {
            let mut s = SignerClient::new(
                c.channel(&c.addr(&format!("signer-{i}")), Some("coordinator"))
                    .await
                    .expect("channel"),
            );
            let st = s
                .set_policy(SetPolicyRequest {
                    key_id: key.clone(),
                    policy: policy(50),
                    approvals: all.clone(),
                })
                .await
                .expect_err("a replayed approval");
            assert_eq!(st.code(), Code::PermissionDenied, "{st:?}");
        }
    });

    // A key whose policy names no admins never changes.
    let k = c.json(&["key", "create", "--suite", "ed25519", "--json"]);
    let err = c.fails(&[
        "key",
        "policy",
        k["key_id"].as_str().unwrap(),
        "--policy",
        v2.to_str().unwrap(),
        "--request-id",
        "pc-3",
    ]);
    assert!(
        err.contains("FAILED_PRECONDITION") && err.contains("no admins"),
        "{err}"
    );

    // The auditor sees the change, with its approvals checked against the old policy.
    let file = c.audit_export("export.json");
    let v = c.audit_verify(&file);
    assert_eq!(v["summary"]["policy_changes"], 2, "{v}");
}

/// `custody signer offline` for request file `req` (its signer named in the file
/// name), answer in `resp`.
fn cold_answer(c: &Cluster, req: &std::path::Path, resp: &std::path::Path) -> std::process::Output {
    let name = req.file_name().unwrap().to_string_lossy().to_string();
    let signer = name.split('.').nth(2).unwrap().to_string();
    let config = c.dir.join(&signer).join("signer.toml");
    c.offline(&[
        "signer",
        "offline",
        "--config",
        config.to_str().unwrap(),
        "--request",
        req.to_str().unwrap(),
        "--response",
        resp.to_str().unwrap(),
    ])
}

/// `custody cold export` of `request_id` for signers 1 and 3 into `DIR/dir`: the
/// request files.
fn cold_export(c: &Cluster, request_id: &str, dir: &str) -> Vec<std::path::PathBuf> {
    let dir = c.dir.join(dir);
    let out = c.cli(&[
        "cold",
        "export",
        request_id,
        "--out",
        dir.to_str().unwrap(),
        "--signers",
        "signer-1,signer-3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files: Vec<std::path::PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(std::path::PathBuf::from)
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    files
}

/// One trip of `request_id`: exported, answered by each offline signer, imported; the
/// request as `cold import --json` reports it.
fn cold_trip(c: &Cluster, request_id: &str, dir: &str) -> Value {
    let responses: Vec<std::path::PathBuf> = cold_export(c, request_id, dir)
        .iter()
        .map(|req| {
            let resp = req.with_extension("response");
            let out = cold_answer(c, req, &resp);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            resp
        })
        .collect();
    let mut args = vec!["cold", "import"];
    let paths: Vec<String> = responses
        .iter()
        .map(|p| p.to_string_lossy().to_string())
        .collect();
    args.extend(paths.iter().map(String::as_str));
    args.push("--json");
    c.json(&args)
}

/// A 2-of-3 cluster with a cold key (one approver, BTC per request 1000, per window
/// `window_limit`, destination `vault`), signers 1 and 3 offline: the cluster, the
/// approver's key file, and the key as `key create --json` prints it.
fn cold_cluster(name: &str, window_limit: u64) -> (Cluster, std::path::PathBuf, Value) {
    let c = Cluster::start(name, 3, 2);
    let approver = c.dir.join("approver.json");
    let out = c.offline(&["approver", "keygen", "--out", approver.to_str().unwrap()]);
    assert!(out.status.success());
    let pk = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let policy = serde_json::json!({
        "tier": "cold", "allow_raw": false, "allowlist": ["vault"],
        "assets": { "BTC": { "per_request": 1000, "per_window": window_limit, "window_secs": 86400 } },
        "approvals": { "required": 1, "approvers": [pk] },
        "time_lock_secs": 0, "max_age_secs": null, "max_signatures": null,
    });
    let file = c.dir.join("cold.json");
    std::fs::write(&file, policy.to_string()).unwrap();
    // The key ceremony runs with the signers connected; then they go offline.
    let k = c.json(&[
        "key",
        "create",
        "--suite",
        "secp256k1-tr",
        "--policy",
        file.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(k["tier"], "cold");
    for s in ["signer-1", "signer-3"] {
        c.kill(s);
    }
    (c, approver, k)
}

/// Asks cold key `key` for `amount` BTC to `vault` under `request_id` and approves it:
/// the request then awaits cold commitments.
fn cold_request(
    c: &Cluster,
    approver: &std::path::Path,
    key: &str,
    amount: &str,
    request_id: &str,
) {
    let r = c.json(&[
        "sign",
        "--key",
        key,
        "--asset",
        "BTC",
        "--amount",
        amount,
        "--destination",
        "vault",
        "--request-id",
        request_id,
        "--json",
    ]);
    assert_eq!(r["state"], "waiting-approvals", "{r}");
    let out = c.cli(&[
        "approve",
        request_id,
        "--key",
        approver.to_str().unwrap(),
        "--json",
    ]);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["state"], "awaiting-cold-commitments", "{r}");
}

#[test]
fn cold_keys_sign_with_air_gapped_signers_over_files() {
    let (mut c, approver, k) = cold_cluster("cold", 5000);
    let key = k["key_id"].as_str().unwrap().to_string();
    cold_request(&c, &approver, &key, "700", "c-1");
    // Trip 1: commitments.
    let r = cold_trip(&c, "c-1", "trip-1");
    assert_eq!(r["state"], "awaiting-cold-shares", "{r}");
    // Trip 2: shares; the last one signs.
    let r = cold_trip(&c, "c-1", "trip-2");
    assert_eq!(r["state"], "signed", "{r}");
    assert!(verify_independently(
        "secp256k1-tr",
        &hexs(&k["public_key"]),
        &hexs(&r["message"]),
        &hexs(&r["signature"])
    ));

    // An offline signer asked again for the same package answers the same share; the
    // nonces were marked used: a request file whose signature was tampered with is
    // refused before anything else.
    let req = c
        .dir
        .join("trip-2")
        .read_dir()
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.extension().is_some_and(|e| e == "json") && p.to_string_lossy().contains("signer-1")
        });
    let req = req.expect("a sign request");
    let again = c.dir.join("again.response");
    assert!(cold_answer(&c, &req, &again).status.success());
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(req.with_extension("response")).unwrap()
    );
    let mut forged: Value = serde_json::from_slice(&std::fs::read(&req).unwrap()).unwrap();
    forged["request"]["transfer"]["destination"] = "mallory".into();
    let forged_file = c.dir.join("trip-2/c-1.sign.signer-1.forged.json");
    std::fs::write(&forged_file, forged.to_string()).unwrap();
    let out = cold_answer(&c, &forged_file, &c.dir.join("forged.response"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not verify"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Back online, the audit export covers the offline shares too.
    for s in ["signer-1", "signer-3"] {
        c.restart(s);
    }
    let export = c.audit_export("export.json");
    let v = c.audit_verify(&export);
    assert_eq!(v["summary"]["signatures"], 1, "{v}");
    assert_eq!(v["summary"]["shares_matched"], 2, "{v}");
}

/// A compromised coordinator (its own identity key) sends an offline signer a trip-2
/// file whose package holds this signer's commitment alone, below the key's
/// threshold: a share cannot come of it. The signer refuses it as the hot path does,
/// before the policy counts anything: the allowance it would have spent is still
/// there for the next request (checked at the signer that got the bad package).
#[test]
fn a_cold_package_below_the_threshold_is_refused_before_it_spends_allowance() {
    use custody_audit::cold::ColdRequest;
    use custody_protocol::sign::{SigningPackage, COORDINATOR};
    use custody_protocol::wire::{self, Header, Kind};
    use custody_protocol::{identity, Identity, ParticipantId, Roster};
    type C = custody_protocol::frost_secp256k1_tr::Secp256K1Sha256TR;

    // Window 1000: 700 for c-1 and 700 for c-2 cannot both be spent.
    let (c, approver, k) = cold_cluster("cold-package", 1000);
    let key = k["key_id"].as_str().unwrap().to_string();
    cold_request(&c, &approver, &key, "700", "c-1");
    let r = cold_trip(&c, "c-1", "c1-trip-1");
    assert_eq!(r["state"], "awaiting-cold-shares", "{r}");
    let honest = cold_export(&c, "c-1", "c1-trip-2")
        .into_iter()
        .find(|p| p.to_string_lossy().contains("signer-1"))
        .expect("signer-1's sign request");
    let mut req: ColdRequest = serde_json::from_slice(&std::fs::read(&honest).unwrap()).unwrap();

    // The rogue keeps signer-1's commitment only, re-signs the package and the file.
    let rogue = support::rogue::coordinator_identity(&c);
    let mut roster = Roster::new();
    roster.insert(COORDINATOR, rogue.public());
    let envelope = hex::decode(&req.package).unwrap();
    let opened = identity::open_from(&roster, COORDINATOR, &envelope).expect("package");
    let session = opened.header.session;
    let (_, package) = wire::decode_with(
        opened.body,
        custody_protocol::Suite::Secp256k1Tr,
        Kind::SigningPackage,
        &session,
        |_, r| SigningPackage::<C>::decode_body(r),
    )
    .expect("decode package");
    let one = ParticipantId::new(1).unwrap();
    let mine = package.commitments_of(one).expect("signer-1's commitment");
    let alone = SigningPackage::<C>::new([(one, mine)].into(), package.message().to_vec())
        .expect("package of one");
    let header = Header {
        suite: custody_protocol::Suite::Secp256k1Tr,
        kind: Kind::SigningPackage,
        session,
        from: COORDINATOR,
        to: None,
    };
    req.package = hex::encode(identity::signed(&rogue, &header, &alone).expect("signed"));
    req.signature = hex::encode(rogue.sign_raw(&req.signed_bytes().unwrap()).expect("sign"));
    let bad = c.dir.join("c1-trip-2/c-1.sign.signer-1.rogue.json");
    std::fs::write(&bad, serde_json::to_vec(&req).unwrap()).unwrap();
    let out = cold_answer(&c, &bad, &c.dir.join("rogue.response"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a package of one signer was answered"
    );
    assert!(
        err.contains("signing package") && err.contains("threshold"),
        "refused for another reason: {err}"
    );

    // c-1 never completes; c-2 asks for 700 of the same window, and signer-1 (which
    // refused the rogue package) still has it to give.
    cold_request(&c, &approver, &key, "700", "c-2");
    let r = cold_trip(&c, "c-2", "c2-trip-1");
    assert_eq!(r["state"], "awaiting-cold-shares", "{r}");
    let r = cold_trip(&c, "c-2", "c2-trip-2");
    assert_eq!(r["state"], "signed", "{r}");
    assert!(verify_independently(
        "secp256k1-tr",
        &hexs(&k["public_key"]),
        &hexs(&r["message"]),
        &hexs(&r["signature"])
    ));
}

#[test]
fn a_signer_that_lost_its_share_gets_it_back_from_the_others() {
    let mut c = Cluster::start("repair", 3, 2);
    let k = c.json(&["key", "create", "--suite", "ed25519", "--json"]);
    let key = k["key_id"].as_str().unwrap().to_string();
    // signer-3 loses its database (its identity survives).
    c.kill("signer-3");
    std::fs::remove_dir_all(c.dir.join("signer-3/db")).unwrap();
    c.restart("signer-3");
    // Signing goes on with the others.
    c.json(&["sign", "--key", &key, "--message", "01", "--json"]);
    let r = c.json(&["key", "repair", &key, "--signer", "signer-3", "--json"]);
    assert_eq!(r["public_key"], k["public_key"]);
    // Without signer-1, only signer-2 and the repaired signer-3 can sign.
    c.kill("signer-1");
    let s = c.json(&["sign", "--key", &key, "--message", "02", "--json"]);
    assert_eq!(s["signers"], serde_json::json!([2, 3]), "{s}");
    assert!(verify_independently(
        "ed25519",
        &hexs(&k["public_key"]),
        &hexs(&s["message"]),
        &hexs(&s["signature"])
    ));
    // A signer that still holds its share is not "repaired" over it.
    let err = c.fails(&["key", "repair", &key, "--signer", "signer-2"]);
    assert!(
        err.contains("holds a share") || err.contains("UNAVAILABLE"),
        "{err}"
    );
    c.restart("signer-1");
    let file = c.audit_export("export.json");
    let v = c.audit_verify(&file);
    assert_eq!(v["summary"]["repairs"], 1, "{v}");
}
