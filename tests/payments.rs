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
    // Idempotency keys are per merchant: another merchant's order-1 is its own.
    let (ok, other, err) = out(&c.cli(&[
        "payments",
        "pay",
        "--token",
        &token,
        "--amount",
        "1300",
        "--currency",
        "EUR",
        "--merchant",
        "m-2",
        "--idempotency-key",
        "order-1",
        "--json",
    ]));
    assert!(ok, "{err}");
    let other: Value = serde_json::from_str(&other).unwrap();
    assert_ne!(other["id"], first["id"]);
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
        if batched == 6 && all.iter().all(|b| b["state"] == "signed") {
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
        // A header said to be signed, without the signature.
        let mut v: Value = serde_json::from_str(&proof).unwrap();
        v["batch"]["signature"] = "".into();
        std::fs::write(&file, v.to_string()).unwrap();
        assert!(!verify(&file, &[]).0);
        assert!(!verify(&file, &["--public-key", &pk]).0);
        let mut v: Value = serde_json::from_str(&proof).unwrap();
        let mut sig = hex::decode(v["batch"]["signature"].as_str().unwrap()).unwrap();
        sig[10] ^= 1;
        v["batch"]["signature"] = hex::encode(sig).into();
        std::fs::write(&file, v.to_string()).unwrap();
        assert!(!verify(&file, &[]).0);
    }
    // Only the payments daemon asks for settlements: a payment backend cannot have the
    // settlement key sign a header of its own making.
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let st = rt.block_on(async {
            let ch = c
                .channel(&c.coordinator_addr(), Some("payment-backend"))
                .await
                .unwrap();
            custody_protocol::proto::custody_client::CustodyClient::new(ch)
                .sign(custody_protocol::proto::SignRequest {
                    key_id: "k-any".into(),
                    request_id: "settle-bat_forged".into(),
                    settlement: Some(custody_protocol::proto::Settlement {
                        batch_id: "bat_forged".into(),
                        root: vec![1; 32],
                        count: 1,
                        totals: vec![custody_protocol::proto::SettlementTotal {
                            currency: "EUR".into(),
                            amount: "1".into(),
                        }],
                        period_start_ms: 0,
                        period_end_ms: 0,
                    }),
                    ..Default::default()
                })
                .await
                .expect_err("refused")
        });
        assert_eq!(st.code(), tonic::Code::PermissionDenied, "{st:?}");
    }
    // The settlement is a signature of the key like any other: in the audit log, and
    // replayed by the auditor with its message recomputed from the settlement fields.
    let v = c.audit_verify(&c.audit_export("export.json"));
    assert!(v["summary"]["signatures"].as_u64().unwrap() >= 1, "{v}");
}

/// A settlement key of the warm tier: each batch header waits, as a request that
/// approvers see in full (`custody request show`), for their approvals and its time
/// lock; then it is signed and the proofs verify against the warm key.
#[test]
fn warm_settlement_key_waits_for_approvals() {
    let mut c = Cluster::start("paywarm", 2, 2);
    let mut approvers = Vec::new();
    for i in 1..=2 {
        let file = c.dir.join(format!("approver-{i}.json"));
        let o = c.offline(&["approver", "keygen", "--out", file.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        approvers.push((file, String::from_utf8_lossy(&o.stdout).trim().to_string()));
    }
    let policy = serde_json::json!({
        "tier": "warm", "allow_raw": false, "allowlist": null,
        "assets": { "EUR": { "per_request": 1_000_000, "per_window": 10_000_000, "window_secs": 86400 } },
        "approvals": { "required": 2, "approvers": [&approvers[0].1, &approvers[1].1] },
        "time_lock_secs": 1, "max_age_secs": null, "max_signatures": null,
    });
    let policy_file = c.dir.join("settle-warm.json");
    std::fs::write(&policy_file, policy.to_string()).unwrap();
    let k = c.json(&[
        "key",
        "create",
        "--suite",
        "ed25519",
        "--name",
        "settlement-warm",
        "--policy",
        policy_file.to_str().unwrap(),
        "--json",
    ]);
    let key = k["key_id"].as_str().unwrap().to_string();
    let pk = k["public_key"].as_str().unwrap().to_string();
    assert_eq!(k["tier"], "warm");

    // The payments daemon now settles with (and pins) the warm key.
    c.kill("payments");
    let config = c.dir.join("payments/payments.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let mut replaced = 0;
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("key_id = ") {
                replaced += 1;
                format!("key_id = \"{key}\"\n")
            } else if l.starts_with("public_key = ") {
                replaced += 1;
                format!("public_key = \"{pk}\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert_eq!(replaced, 2, "{text}");
    std::fs::write(&config, text).unwrap();
    c.restart("payments");

    let token = c.json(&[
        "payments", "tokenize", "--kind", "account", "--data", "ACC-7", "--json",
    ])["token"]
        .as_str()
        .unwrap()
        .to_string();
    let mut ids = Vec::new();
    for i in 1..=3 {
        let p = c.json(&[
            "payments",
            "pay",
            "--token",
            &token,
            "--amount",
            &format!("{}", 100 * i),
            "--currency",
            "EUR",
            "--merchant",
            "m-1",
            "--idempotency-key",
            &format!("w-{i}"),
            "--json",
        ]);
        ids.push(p["id"].as_str().unwrap().to_string());
    }
    // The batch closes (2 s) and its settlement waits for approvals.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (batch, request) = loop {
        let (_, batches, _) = out(&c.cli(&["payments", "batches", "--json"]));
        let b: Option<Value> = batches
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .next();
        if let Some(b) = b {
            assert_eq!(b["state"], "closed", "signed without approvals: {b}");
            let id = b["id"].as_str().unwrap().to_string();
            let o = c.cli(&["request", "show", &format!("settle-{id}"), "--json"]);
            if o.status.success() {
                break (b, serde_json::from_slice::<Value>(&o.stdout).unwrap());
            }
        }
        assert!(
            Instant::now() < deadline,
            "no settlement request: {batches}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let batch_id = batch["id"].as_str().unwrap().to_string();
    let request_id = format!("settle-{batch_id}");
    assert_eq!(request["state"], "waiting-approvals", "{request}");
    assert_eq!(request["key_id"], key.as_str());
    // Approvers see the header they approve, not just a hash.
    assert_eq!(
        request["settlement"]["batch_id"],
        batch_id.as_str(),
        "{request}"
    );
    assert_eq!(request["settlement"]["count"], 3);
    assert_eq!(request["settlement"]["totals"]["EUR"], "600");
    assert_eq!(request["settlement"]["root"], batch["root"]);
    let (_, text, _) = out(&c.cli(&["request", "show", &request_id]));
    assert!(
        text.contains(&format!("settle batch {batch_id} of 3 payments")),
        "{text}"
    );
    for (file, _) in &approvers {
        let (ok, _, err) = out(&c.cli(&["approve", &request_id, "--key", file.to_str().unwrap()]));
        assert!(ok, "{err}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, batches, _) = out(&c.cli(&["payments", "batches", "--json"]));
        let b: Value = serde_json::from_str(batches.lines().next().unwrap()).unwrap();
        if b["state"] == "signed" {
            break;
        }
        assert!(Instant::now() < deadline, "not signed after approvals: {b}");
        std::thread::sleep(Duration::from_millis(200));
    }
    for id in &ids {
        let (ok, proof, err) = out(&c.cli(&["payments", "proof", id]));
        assert!(ok, "{err}");
        let file = c.dir.join(format!("{id}.proof.json"));
        std::fs::write(&file, &proof).unwrap();
        let (ok, report, err) = out(&c.offline(&[
            "payments",
            "verify-proof",
            file.to_str().unwrap(),
            "--public-key",
            &pk,
        ]));
        assert!(ok && report.contains(&key), "{report} {err}");
    }
    // The auditor sees the request, both approvals and the signature, and they check
    // out against the key's approvers.
    let v = c.audit_verify(&c.audit_export("export.json"));
    assert!(v["summary"]["signatures"].as_u64().unwrap() >= 1, "{v}");
}

/// `kill -9` of the payments daemon under load, again and again: no acknowledged
/// payment is lost, no idempotency key makes two payments, no payment is in two
/// batches, and every batch closed before a crash is signed after the restart.
#[test]
fn kill_9_under_load_loses_and_doubles_nothing() {
    use custody_protocol::proto::payments_client::PaymentsClient;
    use custody_protocol::proto::{
        CreatePaymentRequest, GetPaymentRequest, ListBatchesRequest, TokenizeRequest,
    };
    use std::collections::{BTreeMap, BTreeSet};

    let mut c = Cluster::start("paykill", 2, 2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = |c: &Cluster| {
        let addr = std::fs::read_to_string(c.dir.join("payments/listen-addr")).unwrap();
        let tls = c.tls(Some("payment-backend"));
        async move {
            let ch = tonic::transport::Endpoint::from_shared(format!("https://{}", addr.trim()))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(10))
                .connect()
                .await
                .expect("payments");
            PaymentsClient::new(ch).max_decoding_message_size(64 << 20)
        }
    };
    let token = rt.block_on(async {
        client(&c)
            .await
            .tokenize(TokenizeRequest {
                kind: "account".into(),
                data: "ACC-001".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .token
    });
    // Every acknowledged payment: idempotency key → payment id.
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    let mut sent = 0u64;
    const ROUNDS: usize = 6;
    for round in 0..ROUNDS {
        let start = sent;
        let results = rt.block_on(async {
            let cl = client(&c).await;
            let mut tasks = Vec::new();
            for w in 0..16u64 {
                let mut cl = cl.clone();
                let token = token.clone();
                tasks.push(tokio::spawn(async move {
                    let mut got = Vec::new();
                    for i in 0..400u64 {
                        let key = format!("r{round}-w{w}-{i}");
                        let r = cl
                            .create_payment(CreatePaymentRequest {
                                token: token.clone(),
                                amount: 100 + i,
                                currency: "EUR".into(),
                                merchant: "m-crash".into(),
                                idempotency_key: key.clone(),
                            })
                            .await;
                        match r {
                            Ok(p) => got.push((key, p.into_inner().id)),
                            Err(_) => break, // the daemon died
                        }
                    }
                    got
                }));
            }
            // Let the load run, then kill the daemon in the middle of it.
            // Later rounds run long enough for batches to close (2 s) and be signed.
            let ms = if round < 3 {
                150 + 60 * round as u64
            } else {
                2_050 + 200 * (round as u64 - 3)
            };
            tokio::time::sleep(Duration::from_millis(ms)).await;
            c.kill("payments");
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            all
        });
        sent += results.len() as u64;
        for (k, id) in results {
            assert!(acked.insert(k, id).is_none());
        }
        assert!(
            sent > start,
            "round {round}: nothing acknowledged before the kill"
        );
        c.restart("payments");
    }
    let report = rt.block_on(async {
        let mut cl = client(&c).await;
        // Nothing acknowledged is lost; a retry of any key returns the same payment.
        for (key, id) in &acked {
            let p = cl
                .get_payment(GetPaymentRequest { id: id.clone() })
                .await
                .expect("acknowledged payment");
            assert_eq!(&p.into_inner().idempotency_key, key);
        }
        for (key, id) in acked.iter().step_by(97) {
            let amount: u64 = 100 + key.rsplit('-').next().unwrap().parse::<u64>().unwrap();
            let p = cl
                .create_payment(CreatePaymentRequest {
                    token: token.clone(),
                    amount,
                    currency: "EUR".into(),
                    merchant: "m-crash".into(),
                    idempotency_key: key.clone(),
                })
                .await
                .expect("retry")
                .into_inner();
            assert_eq!(&p.id, id, "a retry made a second payment");
        }
        // Every payment batched and every batch signed, eventually; each payment in
        // exactly one batch (the batches' counts add up to the payments batched).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let batches = cl
                .list_batches(ListBatchesRequest { limit: 0 })
                .await
                .unwrap()
                .into_inner()
                .batches;
            let counted: u64 = batches.iter().map(|b| b.count).sum();
            let signed = batches.iter().all(|b| b.state == "signed");
            let listed = cl
                .list_payments(custody_protocol::proto::ListPaymentsRequest {
                    merchant: "m-crash".into(),
                    limit: 100_000,
                })
                .await
                .unwrap()
                .into_inner()
                .payments;
            let batch_of: BTreeMap<_, _> = listed
                .iter()
                .map(|p| (p.id.clone(), p.batch.clone()))
                .collect();
            let unbatched = acked
                .values()
                .filter(|id| batch_of.get(*id).is_none_or(|b| b.is_empty()))
                .count();
            if unbatched == 0 && signed && counted >= acked.len() as u64 {
                break (batches.len(), counted);
            }
            assert!(
                Instant::now() < deadline,
                "{unbatched} unbatched, signed {signed}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    // Payments that were written but never acknowledged (in flight at a kill) may be
    // batched too; never twice, and every acknowledged one is there.
    let (batches, counted) = report;
    let all = rt.block_on(async {
        client(&c)
            .await
            .list_payments(custody_protocol::proto::ListPaymentsRequest {
                merchant: "m-crash".into(),
                limit: 100_000,
            })
            .await
            .unwrap()
            .into_inner()
            .payments
    });
    assert_eq!(
        counted,
        all.len() as u64,
        "a payment in two batches, or one in none"
    );
    let keys: BTreeSet<_> = all.iter().map(|p| p.idempotency_key.clone()).collect();
    assert_eq!(
        keys.len(),
        all.len(),
        "an idempotency key with two payments"
    );
    eprintln!(
        "{ROUNDS} kill -9 rounds: {} acknowledged, {} stored, {batches} batches, 0 lost, 0 doubled",
        acked.len(),
        all.len()
    );
}
