//! Audit logs of a real cluster: exported through the coordinator, verified and
//! replayed offline by the CLI; tampering and forgery by a holder of the coordinator's
//! key are detected.

mod support;

use custody_audit::entry::{parse_records, Entry};
use custody_audit::export::{Bundle, Signature, SIGNATURE};
use custody_audit::transcript::SignedRequest;
use custody_protocol::sign::SigningPackage;
use custody_protocol::wire::{self, Kind};
use custody_protocol::{identity, Identity, SessionId, Suite};
use serde_json::Value;
use support::Cluster;

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn verify(c: &Cluster, file: &std::path::Path) -> std::process::Output {
    let ca = c.dir.join("pki/ca.pem");
    c.offline(&[
        "audit",
        "verify",
        file.to_str().unwrap(),
        "--ca",
        ca.to_str().unwrap(),
    ])
}

/// Rewrites `b`'s coordinator log with `f` applied to its entries, re-chained and
/// re-signed with the coordinator's own identity key (what its holder can do).
fn resign_coordinator_log(c: &Cluster, b: &mut Bundle, f: impl FnOnce(&mut Vec<Entry>)) {
    let key = {
        let d = c.dir.join("coordinator");
        let sealer =
            custody_hsm::InsecureSoftwareSealer::open_or_create(&d.join("INSECURE-sealing.key"))
                .expect("sealer");
        custody_pki::load_or_create_identity(
            &d.join("identity.sealed"),
            &sealer,
            &custody_coordinator::identity_aad("coordinator"),
        )
        .expect("identity")
    };
    let p = b
        .parties
        .iter_mut()
        .find(|p| p.role == "coordinator")
        .unwrap();
    let mut entries = parse_records(&hex::decode(&p.log).unwrap()).unwrap();
    f(&mut entries);
    let mut prev = [0u8; 32];
    let mut out = Vec::new();
    for (i, e) in entries.iter_mut().enumerate() {
        e.seq = i as u64;
        e.prev = prev;
        e.sig = key.sign_raw(&e.signed_bytes()).unwrap();
        prev = e.hash();
        out.extend(e.to_record());
    }
    p.log = hex::encode(out);
}

#[test]
fn a_real_cluster_exports_verifiable_logs_and_replayable_ceremonies() {
    let c = Cluster::start("audit", 3, 2);
    let mut keys = Vec::new();
    for suite in ["secp256k1-tr", "ed25519"] {
        let k = c.json(&["key", "create", "--suite", suite, "--json"]);
        let key = k["key_id"].as_str().unwrap().to_string();
        c.json(&["sign", "--key", &key, "--message", "68656c6c6f", "--json"]);
        keys.push(key);
    }
    c.json(&[
        "sign",
        "--key",
        &keys[0],
        "--asset",
        "BTC",
        "--amount",
        "5",
        "--destination",
        "bob",
        "--request-id",
        "pay-1",
        "--json",
    ]);
    ok(&c.cli(&["key", "suspend", &keys[1]]));
    // A caller with the wrong role: refused, and recorded.
    c.fails(&["key", "create", "--suite", "ed25519", "--as", "auditor"]);

    let file = c.dir.join("export.json");
    let out = ok(&c.cli(&[
        "audit",
        "export",
        "--as",
        "auditor",
        "--out",
        file.to_str().unwrap(),
    ]));
    assert!(out.contains("4 logs"), "{out}");
    // An operator may export too; a payment backend may not.
    let err = c.fails(&[
        "audit",
        "export",
        "--as",
        "payment-backend",
        "--out",
        "/dev/null",
    ]);
    assert!(err.contains("PERMISSION_DENIED"), "{err}");

    let report = ok(&verify(&c, &file));
    assert!(report.contains("OK: everything checks"), "{report}");
    let ca = c.dir.join("pki/ca.pem");
    let json: Value = serde_json::from_str(&ok(&c.offline(&[
        "audit",
        "verify",
        file.to_str().unwrap(),
        "--ca",
        ca.to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    let s = &json["summary"];
    assert_eq!(json["ok"], true);
    // Two keys here, and the settlement key `custody dev` made for the payments daemon.
    assert_eq!(s["keys"].as_array().unwrap().len(), 3, "{json}");
    assert_eq!(s["signatures"], 3, "{json}");
    // Every signature had 2 shares, each in its signer's own log; every DKG had 3
    // participants, each recording it.
    assert_eq!(s["shares_matched"], 6, "{json}");
    assert_eq!(s["dkg_confirmations_matched"], 9, "{json}");
    assert!(s["auth_denied"].as_u64().unwrap() >= 1, "{json}");
    assert_eq!(s["lifecycle"], 4, "{json}");
    assert_eq!(
        s["unaccounted_shares"].as_array().unwrap().len(),
        0,
        "{json}"
    );
    // Without naming what to trust, nothing is claimed.
    let out = c.offline(&["audit", "verify", file.to_str().unwrap()]);
    assert!(!out.status.success());

    // One ceremony alone, from the coordinator's transcript directory.
    let dkg = c
        .dir
        .join(format!("coordinator/transcripts/dkg-{}.json", keys[0]));
    let out = ok(&c.offline(&[
        "audit",
        "replay",
        dkg.to_str().unwrap(),
        "--ca",
        ca.to_str().unwrap(),
    ]));
    assert!(out.contains("OK: 1 DKG"), "{out}");
    let out = ok(&c.offline(&[
        "audit",
        "replay",
        file.to_str().unwrap(),
        "--ca",
        ca.to_str().unwrap(),
    ]));
    assert!(
        out.contains("OK: 3 DKG and 3 signing ceremonies replay"),
        "{out}"
    );

    let bundle: Bundle = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let write = |b: &Bundle, name: &str| {
        let f = c.dir.join(name);
        std::fs::write(&f, serde_json::to_vec(b).unwrap()).unwrap();
        f
    };
    let fails_with = |f: &std::path::Path, want: &str| {
        let out = verify(&c, f);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            !out.status.success() && err.contains(want),
            "want {want:?}: {err}"
        );
    };

    // A flipped byte in a signer's log.
    let mut b = bundle.clone();
    let p = b.parties.iter_mut().find(|p| p.name == "signer-2").unwrap();
    let mut log = hex::decode(&p.log).unwrap();
    let mid = log.len() / 2;
    log[mid] ^= 0x20;
    p.log = hex::encode(log);
    fails_with(&write(&b, "flipped.json"), "log of signer-2");

    // A signer log cut short at an entry boundary (its export seal dropped).
    let mut b = bundle.clone();
    let p = b.parties.iter_mut().find(|p| p.name == "signer-1").unwrap();
    let recs = parse_records(&hex::decode(&p.log).unwrap()).unwrap();
    let cut: Vec<u8> = recs[..recs.len() - 1]
        .iter()
        .flat_map(Entry::to_record)
        .collect();
    p.log = hex::encode(cut);
    fails_with(&write(&b, "cut.json"), "truncated");

    // A signer's log missing from the export.
    let mut b = bundle.clone();
    b.parties.retain(|p| p.name != "signer-3");
    fails_with(&write(&b, "missing.json"), "signer-3");

    // The holder of the coordinator's key rewrites its own log: the transfer's
    // destination changed, the package re-signed, the chain re-signed. The signers'
    // shares confirm the real request, so the replay fails.
    let mut b = bundle.clone();
    resign_coordinator_log(&c, &mut b, |entries| {
        let e = entries
            .iter_mut()
            .find(|e| e.kind == SIGNATURE && String::from_utf8_lossy(&e.body).contains("pay-1"))
            .expect("the transfer's entry");
        let mut s: Signature = serde_json::from_slice(&e.body).unwrap();
        let t = &mut s.transcript;
        if let SignedRequest::Transfer { destination, .. } = &mut t.request {
            *destination = "mallory".into();
        }
        let forged_message = hot_warm_cold::Transfer {
            asset: "BTC".into(),
            amount: 5,
            destination: "mallory".into(),
            request_id: "pay-1".into(),
            memo: String::new(),
        }
        .message(&t.key_id);
        let env = hex::decode(&t.package).unwrap();
        let body = identity::envelope_body(&env).unwrap();
        let session = SessionId(hex::decode(&t.session).unwrap().try_into().unwrap());
        type C = custody_protocol::frost_secp256k1_tr::Secp256K1Sha256TR;
        let (h, pkg) = wire::decode_with(
            body,
            Suite::Secp256k1Tr,
            Kind::SigningPackage,
            &session,
            |_, r| SigningPackage::<C>::decode_body(r),
        )
        .unwrap();
        let commitments = pkg
            .signers()
            .into_iter()
            .map(|p| (p, pkg.commitments_of(p).unwrap()))
            .collect();
        let forged = SigningPackage::new(commitments, forged_message.to_vec()).unwrap();
        let key = {
            let d = c.dir.join("coordinator");
            let sealer = custody_hsm::InsecureSoftwareSealer::open_or_create(
                &d.join("INSECURE-sealing.key"),
            )
            .unwrap();
            custody_pki::load_or_create_identity(
                &d.join("identity.sealed"),
                &sealer,
                &custody_coordinator::identity_aad("coordinator"),
            )
            .unwrap()
        };
        t.package = hex::encode(identity::signed(&key, &h, &forged).unwrap());
        e.body = serde_json::to_vec(&s).unwrap();
    });
    fails_with(
        &write(&b, "forged.json"),
        "confirms another key, request or signing package",
    );

    // Or it drops a signature from its own log and re-chains it: the chain checks,
    // but the signers' own logs still record their shares of it, and the report names
    // them as unaccounted for.
    let mut b = bundle.clone();
    resign_coordinator_log(&c, &mut b, |entries| {
        entries.retain(|e| {
            !(e.kind == SIGNATURE && String::from_utf8_lossy(&e.body).contains("pay-1"))
        });
    });
    let out = c.offline(&[
        "audit",
        "verify",
        write(&b, "dropped.json").to_str().unwrap(),
        "--ca",
        ca.to_str().unwrap(),
        "--json",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["summary"]["signatures"], 2, "{v}");
    let unaccounted = v["summary"]["unaccounted_shares"].as_array().unwrap();
    assert_eq!(unaccounted.len(), 2, "{v}");
    assert!(
        unaccounted
            .iter()
            .all(|u| u.as_str().unwrap().ends_with("/pay-1")),
        "{v}"
    );
}

#[test]
fn refresh_keeps_the_key_changes_every_share_and_replays() {
    let mut c = Cluster::start("refresh", 3, 2);
    let ca = c.dir.join("pki/ca.pem");
    let mut created = Vec::new();
    for suite in ["secp256k1-tr", "ed25519"] {
        let k = c.json(&["key", "create", "--suite", suite, "--json"]);
        let key = k["key_id"].as_str().unwrap().to_string();
        created.push(key.clone());
        c.json(&["sign", "--key", &key, "--message", "01", "--json"]);
        let r = c.json(&["key", "refresh", &key, "--json"]);
        assert_eq!(r["public_key"], k["public_key"], "same group key");
        assert_ne!(
            r["public_key_set"], k["public_key_set"],
            "every verifying share new"
        );
        assert_eq!(r["state"], "active");
        // It signs as before, under the same public key, with the new shares.
        for msg in ["02", "03"] {
            let s = c.json(&["sign", "--key", &key, "--message", msg, "--json"]);
            assert!(support::verify_independently(
                suite,
                &support::hexs(&k["public_key"]),
                &support::hexs(&s["message"]),
                &support::hexs(&s["signature"]),
            ));
        }
        // The refresh ceremony alone replays from its transcript file.
        let file = std::fs::read_dir(c.dir.join("coordinator/transcripts"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().contains(&format!("refresh-{key}")))
            .expect("refresh transcript");
        let out = ok(&c.offline(&[
            "audit",
            "replay",
            file.to_str().unwrap(),
            "--ca",
            ca.to_str().unwrap(),
        ]));
        assert!(out.contains("refresh (same group key)"), "{out}");
    }

    // A signer down: the refresh cannot start, nothing changes, the key signs again.
    let key = created[0].clone();
    let before = c.json(&["key", "show", &key, "--json"]);
    c.kill("signer-3");
    let err = c.fails(&["key", "refresh", &key]);
    assert!(err.contains("UNAVAILABLE"), "{err}");
    let after = c.json(&["key", "show", &key, "--json"]);
    assert_eq!(after["state"], "active");
    assert_eq!(after["public_key_set"], before["public_key_set"]);
    c.json(&["sign", "--key", &key, "--message", "04", "--json"]);
    c.restart("signer-3");
    c.json(&["key", "refresh", &key, "--json"]);
    c.json(&["sign", "--key", &key, "--message", "05", "--json"]);

    // The export replays every DKG and refresh, and every signature before and after.
    let file = c.dir.join("export.json");
    ok(&c.cli(&[
        "audit",
        "export",
        "--as",
        "auditor",
        "--out",
        file.to_str().unwrap(),
    ]));
    let json: Value = serde_json::from_str(&ok(&c.offline(&[
        "audit",
        "verify",
        file.to_str().unwrap(),
        "--ca",
        ca.to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    let s = &json["summary"];
    let keys = s["keys"].as_array().unwrap();
    assert_eq!(
        keys.len(),
        6,
        "3 DKGs (one the settlement key) and 3 refreshes: {json}"
    );
    assert_eq!(keys.iter().filter(|k| k["refresh"] == true).count(), 3);
    assert_eq!(s["signatures"], 8, "{json}");
}
