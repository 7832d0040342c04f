//! A cluster directory made by an earlier version starts and signs with this one.
//!
//! `tests/fixtures/da740d3/cluster` was made by `custody dev` at da740d3, the version
//! before the daemons' restructure (its `expected.json` says how): three keys (one
//! with limits and an allowlist, one plain, one warm), signatures of each, a payment
//! settled in a signed batch. This version must open every record it left (sealed
//! shares, signers' ledgers, settled batches, first sightings, the coordinator's
//! results, the audit logs), sign with the old keys, and hold the old ledger's limits.

mod support;

use std::path::Path;

use serde_json::Value;
use support::{hexs, verify_independently, Cluster};

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/da740d3")
}

fn s(v: &Value) -> &str {
    v.as_str().expect("string")
}

#[test]
fn a_cluster_made_by_the_version_before_starts_and_signs() {
    let expected: Value = serde_json::from_slice(
        &std::fs::read(fixture().join("expected.json")).expect("expected.json"),
    )
    .expect("expected.json is JSON");
    let c = Cluster::from_fixture("upgrade", &fixture().join("cluster"));

    // Every key is there, with its public key.
    let list = c.json(&["key", "list", "--json"]);
    for name in ["limited", "plain", "warm"] {
        let key = &expected[name]["key_id"];
        let listed = list
            .as_array()
            .expect("array")
            .iter()
            .find(|k| k["key_id"] == *key)
            .unwrap_or_else(|| panic!("key {key} listed: {list}"));
        assert_eq!(listed["state"], "active", "{listed}");
        if let Some(pk) = expected[name]["public_key"].as_str() {
            assert_eq!(listed["public_key"], pk);
        }
    }

    // Past results are found, and a retry is answered from them, not signed again.
    let limited = &expected["limited"];
    let t1 = &limited["signed"];
    let got = c.json(&["signature", s(&t1["request_id"]), "--json"]);
    assert_eq!(got["signature"], t1["signature"]);
    let key = s(&limited["key_id"]);
    let transfer = |amount: &str, id: &str| {
        vec![
            "sign",
            "--key",
            key,
            "--asset",
            "BTC",
            "--amount",
            amount,
            "--destination",
            "alice",
            "--request-id",
            id,
            "--json",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    let args = transfer("60", s(&t1["request_id"]));
    let again = c.json(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(again["signature"], t1["signature"]);
    assert_eq!(again["replayed"], true);
    let got = c.json(&[
        "signature",
        s(&expected["plain"]["signed"]["request_id"]),
        "--json",
    ]);
    assert_eq!(got["signature"], expected["plain"]["signed"]["signature"]);
    let got = c.json(&["signature", s(&expected["warm"]["request_id"]), "--json"]);
    assert_eq!(got["signature"], expected["warm"]["signature"]);

    // The signers' ledgers survived: signers 1-3 each released 60 of the 150 a window
    // allows, and every quorum of 3 of 5 holds one of them, so 100 more is refused and
    // 90 more is signed.
    let args = transfer("100", "up-t-2");
    let err = c.fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        err.contains("PERMISSION_DENIED") && err.contains("exceeds the limit 150"),
        "{err}"
    );
    let args = transfer("90", "up-t-3");
    let signed = c.json(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(verify_independently(
        "secp256k1-tr",
        &hexs(&limited["public_key"]),
        &hexs(&signed["message"]),
        &hexs(&signed["signature"]),
    ));

    // The plain key signs new messages under its old public key.
    let plain = &expected["plain"];
    let message = b"after the upgrade";
    let msg = hex::encode(message);
    let signed = c.json(&[
        "sign",
        "--key",
        s(&plain["key_id"]),
        "--message",
        &msg,
        "--request-id",
        "up-r-2",
        "--json",
    ]);
    assert!(verify_independently(
        "ed25519",
        &hexs(&plain["public_key"]),
        message,
        &hexs(&signed["signature"]),
    ));

    // The settled batch and its payment's proof still verify.
    let out = c.cli(&["payments", "proof", s(&expected["payments"]["payment"])]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = c.dir.join("upgrade.proof.json");
    std::fs::write(&file, &out.stdout).expect("proof file");
    let out = c.offline(&["payments", "verify-proof", file.to_str().expect("path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The audit logs, old entries and new, verify as one.
    c.audit_verify(&c.audit_export("upgrade-audit.json"));
}
