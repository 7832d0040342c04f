//! The payments daemon as `custody dev` runs it: tokenization, idempotent payments,
//! validation, detokenization only for its role, batches with inclusion proofs that
//! verify offline and fail when altered.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::Cluster;

fn out(o: &std::process::Output) -> (bool, String, String) {
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

#[test]
fn tokenize_pay_batch_and_prove() {
    let c = Cluster::start("payments", 2, 2);
    let tok = c.json(&[
        "payments",
        "tokenize",
        "--kind",
        "card",
        "--data",
        "4111 1111 1111 1111",
        "--json",
    ]);
    let token = tok["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("tok_"));
    let (ok, _, err) = out(&c.cli(&[
        "payments",
        "tokenize",
        "--kind",
        "card",
        "--data",
        "4111111111111112",
    ]));
    assert!(
        !ok && err.contains("INVALID_ARGUMENT") && err.contains("Luhn"),
        "{err}"
    );

    let pay = |key: &str, amount: &str, currency: &str| {
        c.cli(&[
            "payments",
            "pay",
            "--token",
            &token,
            "--amount",
            amount,
            "--currency",
            currency,
            "--merchant",
            "m-1",
            "--idempotency-key",
            key,
            "--json",
        ])
    };
    let (ok, first, err) = out(&pay("order-1", "1250", "EUR"));
    assert!(ok, "{err}");
    let first: Value = serde_json::from_str(&first).unwrap();
    let (_, again, _) = out(&pay("order-1", "1250", "EUR"));
    let again: Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["replayed"], true);
    let (ok, _, err) = out(&pay("order-1", "1300", "EUR"));
    assert!(!ok && err.contains("ALREADY_EXISTS"), "{err}");
    for (amount, currency, field) in [("0", "EUR", "amount"), ("10", "XXX", "currency")] {
        let (ok, _, err) = out(&pay("order-9", amount, currency));
        assert!(
            !ok && err.contains("INVALID_ARGUMENT") && err.contains(field),
            "{err}"
        );
    }
    let mut ids = vec![first["id"].as_str().unwrap().to_string()];
    for i in 2..=5 {
        let (ok, p, err) = out(&pay(&format!("order-{i}"), &format!("{}", i * 100), "USD"));
        assert!(ok, "{err}");
        ids.push(
            serde_json::from_str::<Value>(&p).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }

    // Only the detokenizer gets the data back.
    let (ok, _, err) = out(&c.cli(&["payments", "detokenize", &token]));
    assert!(!ok && err.contains("PERMISSION_DENIED"), "{err}");
    let (ok, data, err) = out(&c.cli(&["payments", "detokenize", &token, "--as", "detokenizer"]));
    assert!(ok, "{err}");
    assert_eq!(data.trim(), "4111111111111111");
    assert!(!std::fs::read_to_string(c.dir.join("logs/payments.log"))
        .unwrap()
        .contains("4111111111111111"));

    // The batch closes by age (2 s in a dev cluster), and its header is signed by the
    // settlement key through the coordinator; every payment gets a proof.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, batches, _) = out(&c.cli(&["payments", "batches", "--json"]));
        let all: Vec<Value> = batches
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let batched: u64 = all.iter().map(|b| b["count"].as_u64().unwrap()).sum();
        if batched == 5 && all.iter().all(|b| b["state"] == "signed") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not batched and signed: {batches}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let verify = |file: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["payments", "verify-proof", file.to_str().unwrap()];
        args.extend(extra);
        out(&c.offline(&args))
    };
    for id in &ids {
        let (ok, proof, err) = out(&c.cli(&["payments", "proof", id]));
        assert!(ok, "{err}");
        let file = c.dir.join(format!("{id}.proof.json"));
        std::fs::write(&file, &proof).unwrap();
        let (ok, report, err) = verify(&file, &[]);
        assert!(ok, "{err}");
        assert!(
            report.contains(id.as_str()) && report.contains("signed by settlement key"),
            "{report}"
        );
        let v: Value = serde_json::from_str(&proof).unwrap();
        let pk = v["batch"]["signed_by"]["public_key"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(verify(&file, &["--public-key", &pk]).0);
        assert!(!verify(&file, &["--public-key", &hex::encode([3u8; 32])]).0);
        // Another amount, another batch root, a header signature not the key's: refused.
        let mut v: Value = serde_json::from_str(&proof).unwrap();
        v["payment"]["amount"] = 1.into();
        std::fs::write(&file, v.to_string()).unwrap();
        assert!(!verify(&file, &[]).0);
        let mut v: Value = serde_json::from_str(&proof).unwrap();
        v["batch"]["root"] = hex::encode([7u8; 32]).into();
        std::fs::write(&file, v.to_string()).unwrap();
        assert!(!verify(&file, &[]).0);
        let mut v: Value = serde_json::from_str(&proof).unwrap();
        let mut sig = hex::decode(v["batch"]["signature"].as_str().unwrap()).unwrap();
        sig[10] ^= 1;
        v["batch"]["signature"] = hex::encode(sig).into();
        std::fs::write(&file, v.to_string()).unwrap();
        assert!(!verify(&file, &[]).0);
    }
    // The settlement is a signature of the key like any other: in the audit log, and
    // replayed by the auditor with its message recomputed from the settlement fields.
    let export = c.dir.join("export.json");
    let (ok, _, err) = out(&c.cli(&[
        "audit",
        "export",
        "--as",
        "auditor",
        "--out",
        export.to_str().unwrap(),
    ]));
    assert!(ok, "{err}");
    let ca = c.dir.join("pki/ca.pem");
    let (ok, report, err) = out(&c.offline(&[
        "audit",
        "verify",
        export.to_str().unwrap(),
        "--ca",
        ca.to_str().unwrap(),
        "--json",
    ]));
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&report).unwrap();
    assert!(v["summary"]["signatures"].as_u64().unwrap() >= 1, "{v}");
}
