//! The daemons' logic in one process: signer cores and the coordinator's drivers over
//! an in-memory link (`support::inproc`), time moved by a manual clock. The same
//! ceremonies as the process-level suites, in milliseconds: DKG and signing in both
//! suites, a signer sending bad shares named and routed around, refresh, repair, and
//! a warm request whose time lock every signer counts on its own (moved) clock.

mod support;

use custody_protocol::proto::*;
use ed25519_dalek::Signer as _;
use support::inproc::InProc;
use support::verify_independently;

async fn create(c: &InProc, suite: &str, policy: &str) -> Key {
    c.client("operator")
        .await
        .create_key(CreateKeyRequest {
            suite: suite.into(),
            policy: policy.into(),
            ..Default::default()
        })
        .await
        .expect("create key")
        .into_inner()
}

async fn sign(c: &InProc, key: &Key, message: &[u8], request_id: &str) -> SignResponse {
    c.client("operator")
        .await
        .sign(SignRequest {
            key_id: key.key_id.clone(),
            message: message.to_vec(),
            request_id: request_id.into(),
            ..Default::default()
        })
        .await
        .expect("sign")
        .into_inner()
}

fn verifies(key: &Key, message: &[u8], s: &SignResponse) -> bool {
    verify_independently(&key.suite, &key.public_key, message, &s.signature)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkg_and_signing_in_both_suites() {
    let c = InProc::start("both-suites", 3, 2, &[]).await;
    for suite in ["secp256k1-tr", "ed25519"] {
        let key = create(&c, suite, "").await;
        assert_eq!(key.state, "active");
        for i in 0..4 {
            let msg = format!("message {i} in {suite}").into_bytes();
            let s = sign(&c, &key, &msg, &format!("{suite}-{i}")).await;
            assert!(verifies(&key, &msg, &s), "{suite} signature {i}");
        }
        // The same request again: the stored result, not a second signature.
        let msg = format!("message 0 in {suite}").into_bytes();
        let again = sign(&c, &key, &msg, &format!("{suite}-0")).await;
        assert!(again.replayed);
        assert!(verifies(&key, &msg, &again));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signer_sending_bad_shares_is_named_and_routed_around() {
    let c = InProc::start("culprit", 3, 2, &[("signer-2", "corrupt-signature-shares")]).await;
    let key = create(&c, "secp256k1-tr", "").await;
    // Quorums rotate: within a few signatures signer-2 is asked, named and passed over.
    for i in 0..6 {
        let msg = format!("payout {i}").into_bytes();
        let s = sign(&c, &key, &msg, &format!("c-{i}")).await;
        assert!(verifies(&key, &msg, &s));
        assert!(
            !s.signers.contains(&2),
            "signer-2's bad share made a signature"
        );
    }
    // Named: counted against signer-2 alone.
    let metrics = c.metrics();
    let culprits = |signer: &str| {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "custody_signer_culprits_total{{signer=\"{signer}\"}} "
                ))
            })
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(
        culprits("signer-2") >= 1.0,
        "signer-2 not named:\n{metrics}"
    );
    assert_eq!(culprits("signer-1") + culprits("signer-3"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_keeps_the_key_and_repair_brings_a_lost_share_back() {
    let c = InProc::start("refresh-repair", 3, 2, &[]).await;
    let key = create(&c, "ed25519", "").await;
    let refreshed = c
        .client("operator")
        .await
        .refresh_key(RefreshKeyRequest {
            key_id: key.key_id.clone(),
        })
        .await
        .expect("refresh")
        .into_inner();
    assert_eq!(refreshed.public_key, key.public_key);
    assert_ne!(refreshed.public_key_set, key.public_key_set, "new shares");
    let s = sign(&c, &key, b"after refresh", "r-1").await;
    assert!(verifies(&key, b"after refresh", &s));

    c.wipe_signer("signer-3");
    let repaired = c
        .client("operator")
        .await
        .repair_key(RepairKeyRequest {
            key_id: key.key_id.clone(),
            signer: "signer-3".into(),
        })
        .await
        .expect("repair")
        .into_inner();
    assert_eq!(repaired.public_key, key.public_key);
    // signer-3 signs again with its recovered share: every quorum of 2 of 3 is tried.
    let mut with_3 = false;
    for i in 0..6 {
        let msg = format!("after repair {i}").into_bytes();
        let s = sign(&c, &key, &msg, &format!("p-{i}")).await;
        assert!(verifies(&key, &msg, &s));
        with_3 |= s.signers.contains(&3);
    }
    assert!(with_3, "the repaired signer never signed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_request_waits_for_approvals_and_its_time_lock_on_every_signer() {
    let c = InProc::start("warm", 3, 2, &[]).await;
    let approvers: Vec<ed25519_dalek::SigningKey> = (1u8..=2)
        .map(|i| ed25519_dalek::SigningKey::from_bytes(&[i; 32]))
        .collect();
    let policy = serde_json::json!({
        "tier": "warm", "allow_raw": false, "allowlist": ["vault"],
        "assets": { "BTC": { "per_request": 1000, "per_window": 5000, "window_secs": 86400 } },
        "approvals": { "required": 2, "approvers": approvers
            .iter()
            .map(|k| hex::encode(k.verifying_key().to_bytes()))
            .collect::<Vec<_>>() },
        "time_lock_secs": 600, "max_age_secs": null, "max_signatures": null,
    });
    let key = create(&c, "secp256k1-tr", &policy.to_string()).await;
    let mut client = c.client("operator").await;
    let asked = client
        .sign(SignRequest {
            key_id: key.key_id.clone(),
            request_id: "w-1".into(),
            transfer: Some(Transfer {
                asset: "BTC".into(),
                amount: "700".into(),
                destination: "vault".into(),
                memo: String::new(),
            }),
            ..Default::default()
        })
        .await
        .expect("sign")
        .into_inner();
    assert_eq!(asked.state, "pending");
    let pending = asked.pending.expect("pending request");
    let approve = |k: &ed25519_dalek::SigningKey| ApproveRequest {
        request_id: "w-1".into(),
        approval: Some(Approval {
            approver: k.verifying_key().to_bytes().to_vec(),
            signature: k.sign(&pending.approval_digest).to_bytes().to_vec(),
        }),
    };
    let r = client
        .approve(approve(&approvers[0]))
        .await
        .expect("approve")
        .into_inner();
    assert_eq!(r.state, "waiting-approvals");
    c.clock.advance(300);
    let r = client
        .approve(approve(&approvers[1]))
        .await
        .expect("approve")
        .into_inner();
    assert_eq!(r.state, "time-locked", "{r:?}");
    // Past the lock on every clock (the signers read the same moved clock): the
    // coordinator's ticker signs it.
    c.clock.advance(301);
    let mut state = String::new();
    for _ in 0..100 {
        let r = client
            .get_request(GetRequestRequest {
                request_id: "w-1".into(),
            })
            .await
            .expect("get request")
            .into_inner();
        state = r.state.clone();
        if state == "signed" {
            let result = r.result.expect("the signature");
            assert!(verify_independently(
                &key.suite,
                &key.public_key,
                &r.message,
                &result.signature
            ));
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("not signed after the time lock: {state}");
}

/// Nonces die with the share: commitments a (compromised) coordinator drew before a
/// refresh, or before the key was destroyed, get no share after it, at every signer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonces_drawn_before_a_refresh_or_destruction_sign_nothing_after_it() {
    let c = InProc::start("nonces", 3, 2, &[]).await;
    for end in ["refresh", "destroy"] {
        let key = create(&c, "secp256k1-tr", "").await;
        let package = c.rogue_package(&key.key_id, &[1, 2], b"drawn before").await;
        let mut client = c.client("operator").await;
        if end == "refresh" {
            client
                .refresh_key(RefreshKeyRequest {
                    key_id: key.key_id.clone(),
                })
                .await
                .expect("refresh");
        } else {
            for event in ["suspend", "destroy"] {
                client
                    .change_key_state(ChangeKeyStateRequest {
                        key_id: key.key_id.clone(),
                        event: event.into(),
                    })
                    .await
                    .expect(event);
            }
        }
        for name in ["signer-1", "signer-2"] {
            let got = c
                .signer(name)
                .sign_share(
                    c.coordinator(),
                    SignShareRequest {
                        key_id: key.key_id.clone(),
                        package: package.clone(),
                        request_id: format!("before-{end}"),
                        ..Default::default()
                    },
                )
                .await;
            let st = got.expect_err("a share from nonces drawn before the share changed");
            match end {
                "refresh" => assert!(
                    st.metadata()
                        .contains_key(custody_protocol::api::STALE_COMMITMENT),
                    "{name} after refresh: {st:?}"
                ),
                _ => assert_eq!(
                    st.code(),
                    tonic::Code::NotFound,
                    "{name} after destroy: {st:?}"
                ),
            }
        }
    }
}

/// A destroy is final on every signer, whatever races it: a policy change in flight
/// (read before the destroy, written after) must not write the key's old record, share
/// and state back over the tombstone. Each round races the two on one signer; after
/// it the key must stay destroyed there (a resume is refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_racing_a_destroy_never_brings_the_key_back() {
    let c = InProc::start("destroy-race", 3, 2, &[]).await;
    let admin = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let policy = |per_request: u64| {
        serde_json::json!({
            "tier": "hot", "allow_raw": true, "allowlist": null,
            "assets": { "BTC": { "per_request": per_request, "per_window": 1000, "window_secs": 60 } },
            "approvals": null, "time_lock_secs": 0, "max_age_secs": null, "max_signatures": null,
            "admins": { "required": 1, "approvers": [hex::encode(admin.verifying_key().to_bytes())] },
        })
        .to_string()
    };
    let signer = c.signer("signer-1");
    for round in 0..12 {
        let key = create(&c, "ed25519", &policy(10)).await;
        let mut client = c.client("operator").await;
        client
            .change_key_state(ChangeKeyStateRequest {
                key_id: key.key_id.clone(),
                event: "suspend".into(),
            })
            .await
            .expect("suspend");
        let current = hot_warm_cold::Policy::from_json(&policy(10)).expect("policy");
        let new = hot_warm_cold::Policy::from_json(&policy(20)).expect("policy");
        let digest = new.change_digest(&key.key_id, 0, &current.digest());
        let change = SetPolicyRequest {
            key_id: key.key_id.clone(),
            policy: new.to_json(),
            approvals: vec![Approval {
                approver: admin.verifying_key().to_bytes().to_vec(),
                signature: admin.sign(&digest).to_bytes().to_vec(),
            }],
        };
        let destroy = KeyLifecycleRequest {
            key_id: key.key_id.clone(),
            event: "destroy".into(),
        };
        let (s1, s2, who) = (signer.clone(), signer.clone(), c.coordinator());
        let a = tokio::spawn(async move { s1.set_policy(who, change).await });
        let b = tokio::spawn(async move { s2.key_lifecycle(who, destroy).await });
        let _ = a.await.expect("task");
        b.await.expect("task").expect("destroy");
        let resumed = signer
            .key_lifecycle(
                c.coordinator(),
                KeyLifecycleRequest {
                    key_id: key.key_id.clone(),
                    event: "resume".into(),
                },
            )
            .await;
        assert!(
            resumed.is_err(),
            "round {round}: the destroyed key came back (resumed: {resumed:?})"
        );
    }
}
