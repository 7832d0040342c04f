//! Property tests of the policy invariants: over random sequences of requests and
//! clock advances no accepted set exceeds a limit; keys outside a signing state never
//! sign; the lifecycle only moves along allowed edges; approvals and time locks hold.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::{Signer, SigningKey};
use hot_warm_cold::decide::valid_approvals;
use hot_warm_cold::*;
use proptest::prelude::*;

/// The lifecycle as specified (DESIGN.md, issue "tiers"): every allowed edge.
const EDGES: &[(State, Event, State)] = &[
    (State::Pending, Event::DkgCompleted, State::Active),
    (State::Pending, Event::DkgFailed, State::Destroyed),
    (State::Active, Event::Suspend, State::Suspended),
    (State::Rotating, Event::Suspend, State::Suspended),
    (State::Suspended, Event::Resume, State::Active),
    (State::Active, Event::StartRotation, State::Rotating),
    (State::Rotating, Event::RotationCompleted, State::Retired),
    (State::Rotating, Event::RotationFailed, State::Active),
    (State::Active, Event::StartRefresh, State::Refreshing),
    (State::Refreshing, Event::RefreshCompleted, State::Active),
    (State::Refreshing, Event::RefreshFailed, State::Active),
    (State::Active, Event::Retire, State::Retired),
    (State::Suspended, Event::Retire, State::Retired),
    (State::Rotating, Event::Retire, State::Retired),
    (State::Retired, Event::Destroy, State::Destroyed),
    (State::Suspended, Event::Destroy, State::Destroyed),
];

#[test]
fn every_state_and_event_matches_the_specified_edges() {
    for s in State::ALL {
        for e in Event::ALL {
            let spec = EDGES
                .iter()
                .find(|(f, ev, _)| *f == s && *ev == e)
                .map(|(_, _, n)| *n);
            match spec {
                Some(next) => assert_eq!(s.apply(e), Ok(next), "{s:?} + {e:?}"),
                None => assert_eq!(
                    s.apply(e),
                    Err(TransitionError { from: s, event: e }),
                    "{s:?} + {e:?}"
                ),
            }
        }
    }
    // Destroyed is terminal; retired keys never sign again.
    assert!(Event::ALL
        .iter()
        .all(|e| State::Destroyed.apply(*e).is_err()));
    assert!(Event::ALL.iter().all(|e| State::Retired
        .apply(*e)
        .map_or(true, |n| n == State::Destroyed)));
}

fn key(state: State) -> KeyStatus {
    KeyStatus {
        key_id: "k-test".into(),
        state,
        created_at: 1_000,
        signatures: 0,
    }
}

fn limited_policy() -> Policy {
    let mut assets = BTreeMap::new();
    assets.insert(
        "BTC".to_string(),
        AssetLimits {
            per_request: 50,
            per_window: 120,
            window_secs: 100,
        },
    );
    assets.insert(
        "EUR".to_string(),
        AssetLimits {
            per_request: 1_000,
            per_window: 2_500,
            window_secs: 30,
        },
    );
    Policy {
        tier: Tier::Hot,
        assets,
        allowlist: Some(["alice".to_string(), "bob".to_string()].into()),
        allow_raw: false,
        approvals: None,
        time_lock_secs: 0,
        max_age_secs: None,
        max_signatures: None,
        admins: None,
    }
}

fn transfer(asset: &str, amount: u128, destination: &str, id: u64) -> Request {
    Request::Transfer(Transfer {
        asset: asset.into(),
        amount,
        destination: destination.into(),
        request_id: format!("r-{id}"),
        memo: String::new(),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the sequence of requests and clock advances, every accepted transfer
    /// is within its per-request limit, and no window of any asset holds more than the
    /// window limit (checking windows that end at each accepted time suffices: any
    /// other window's entries are a subset of one of those).
    #[test]
    fn no_accepted_set_exceeds_a_limit(
        steps in proptest::collection::vec((0u64..40, 0usize..2, 1u128..1_200, 0usize..3), 1..120)
    ) {
        let policy = limited_policy();
        let k = key(State::Active);
        let mut ledger = SpendLedger::new();
        let mut now = 2_000u64;
        let assets = ["BTC", "EUR"];
        let dests = ["alice", "bob", "mallory"];
        for (i, (advance, asset, amount, dest)) in steps.into_iter().enumerate() {
            now += advance;
            let req = transfer(assets[asset], amount, dests[dest], i as u64);
            if decide(&k, &policy, &ledger, &req, &[], now, now).is_allow() {
                prop_assert!(dest != 2, "a non-allowlisted destination was accepted");
                prop_assert!(amount <= policy.assets[assets[asset]].per_request);
                ledger.record(now, assets[asset], amount);
            }
        }
        for (t_end, asset, _) in ledger.entries() {
            let l = policy.assets[asset.as_str()];
            let total: u128 = ledger
                .entries()
                .iter()
                .filter(|(t, a, _)| a == asset && *t <= *t_end && *t + l.window_secs > *t_end)
                .map(|(_, _, v)| *v)
                .sum();
            prop_assert!(total <= l.per_window, "{asset}: {total} in the window ending at {t_end}");
        }
    }

    /// Keys that are not active (or rotating) never sign, whatever the request.
    #[test]
    fn keys_outside_signing_states_never_sign(state_i in 0usize..7, raw in any::<bool>(), amount in 1u128..10) {
        let state = State::ALL[state_i];
        let policy = Policy::permissive_hot();
        let req = if raw {
            Request::Raw { request_id: "r".into(), message: vec![1, 2, 3] }
        } else {
            transfer("BTC", amount, "alice", 1)
        };
        let d = decide(&key(state), &policy, &SpendLedger::new(), &req, &[], 0, 5_000);
        if state.may_sign() {
            prop_assert_eq!(d, Decision::Allow);
        } else {
            prop_assert_eq!(d, Decision::Deny(DenyReason::NotActive(state)));
        }
    }

    /// Random event sequences: the state changes only along the specified edges
    /// ([`EDGES`], written out independently of the implementation), a refused event
    /// leaves it unchanged, and a destroyed key never comes back.
    #[test]
    fn lifecycle_moves_only_along_allowed_edges(events in proptest::collection::vec(0usize..12, 0..60)) {
        let allowed: BTreeSet<(State, Event, State)> = EDGES.iter().copied().collect();
        let mut state = State::Pending;
        let mut destroyed = false;
        for e in events {
            let event = Event::ALL[e];
            match state.apply(event) {
                Ok(next) => {
                    prop_assert!(allowed.contains(&(state, event, next)));
                    prop_assert!(!destroyed, "a destroyed key moved");
                    state = next;
                }
                Err(err) => prop_assert_eq!(err, TransitionError { from: state, event }),
            }
            destroyed |= state == State::Destroyed;
        }
    }

    /// A warm request is allowed only with `required` valid signatures from distinct
    /// listed approvers over its digest, and only after its time lock.
    #[test]
    fn approvals_and_time_lock(
        seed in any::<u64>(),
        signers in proptest::collection::vec(0usize..4, 0..8),
        forged in 0usize..3,
        outsiders in 0usize..3,
        wait in 0u64..200,
    ) {
        let keys: Vec<SigningKey> = (0..4u8).map(|i| SigningKey::from_bytes(&[i.wrapping_add(seed as u8) ^ 0x5a; 32])).collect();
        let approvers: BTreeSet<[u8; 32]> = keys.iter().take(3).map(|k| k.verifying_key().to_bytes()).collect();
        prop_assume!(approvers.len() == 3);
        let mut policy = Policy::permissive_hot();
        policy.tier = Tier::Warm;
        policy.approvals = Some(ApprovalRule { required: 2, approvers: approvers.clone() });
        policy.time_lock_secs = 100;
        policy.check().expect("coherent");
        let k = key(State::Active);
        let req = transfer("BTC", 5, "alice", seed);
        let digest = req.approval_message(&k.key_id);
        let mut approvals: Vec<Approval> = signers
            .iter()
            .map(|i| Approval { approver: keys[*i].verifying_key().to_bytes(), signature: keys[*i].sign(&digest).to_bytes().to_vec() })
            .collect();
        // Forgeries: a listed approver's key with a signature over another request.
        let other = transfer("BTC", 6, "alice", seed).approval_message(&k.key_id);
        for k in keys.iter().take(forged) {
            approvals.push(Approval { approver: k.verifying_key().to_bytes(), signature: k.sign(&other).to_bytes().to_vec() });
        }
        // Outsiders: valid signatures by keys not in the rule (their seeds are not
        // uniform, the approvers' are, so they never coincide).
        for i in 0..outsiders {
            let mut seed_bytes = [0xeeu8; 32];
            seed_bytes[0] = i as u8;
            let o = SigningKey::from_bytes(&seed_bytes);
            approvals.push(Approval { approver: o.verifying_key().to_bytes(), signature: o.sign(&digest).to_bytes().to_vec() });
        }
        let distinct_listed: BTreeSet<usize> = signers.iter().copied().filter(|i| *i < 3).collect();
        prop_assert_eq!(valid_approvals(&policy, &digest, &approvals), distinct_listed.len());
        let d = decide(&k, &policy, &SpendLedger::new(), &req, &approvals, 10_000, 10_000 + wait);
        let expect_allow = distinct_listed.len() >= 2 && wait >= 100;
        prop_assert_eq!(d.is_allow(), expect_allow, "{:?}", d);
        if distinct_listed.len() >= 2 && wait < 100 {
            prop_assert_eq!(d, Decision::Deny(DenyReason::TimeLocked { remaining_secs: 100 - wait }));
        }
    }

    /// Every field of a transfer, and the key it is signed with, changes its message.
    #[test]
    fn transfer_message_binds_every_field(amount in 1u128..u128::MAX, memo in "[a-z]{0,8}") {
        let t = Transfer { asset: "BTC".into(), amount, destination: "alice".into(), request_id: "r-1".into(), memo: memo.clone() };
        let m = t.message("k-1");
        prop_assert_ne!(m, t.message("k-2"));
        let mut variants = vec![t.clone(), t.clone(), t.clone(), t.clone(), t.clone()];
        variants[0].asset = "ETH".into();
        variants[1].amount = amount - 1;
        variants[2].destination = "bob".into();
        variants[3].request_id = "r-2".into();
        variants[4].memo = format!("{memo}x");
        for v in variants {
            prop_assert_ne!(v.message("k-1"), m);
        }
    }
}

#[test]
fn raw_messages_only_where_allowed_and_limits_named() {
    let policy = limited_policy();
    let k = key(State::Active);
    let raw = Request::Raw {
        request_id: "r".into(),
        message: vec![0; 32],
    };
    assert_eq!(
        decide(&k, &policy, &SpendLedger::new(), &raw, &[], 0, 5_000),
        Decision::Deny(DenyReason::RawNotAllowed)
    );
    let d = decide(
        &k,
        &policy,
        &SpendLedger::new(),
        &transfer("DOGE", 1, "alice", 1),
        &[],
        0,
        5_000,
    );
    assert_eq!(d, Decision::Deny(DenyReason::UnknownAsset("DOGE".into())));
    let d = decide(
        &k,
        &policy,
        &SpendLedger::new(),
        &transfer("BTC", 51, "alice", 1),
        &[],
        0,
        5_000,
    );
    assert_eq!(
        d,
        Decision::Deny(DenyReason::OverRequestLimit {
            amount: 51,
            limit: 50
        })
    );
    let mut aged = policy.clone();
    aged.max_age_secs = Some(10);
    aged.max_signatures = Some(3);
    let d = decide(
        &k,
        &aged,
        &SpendLedger::new(),
        &transfer("BTC", 1, "alice", 1),
        &[],
        0,
        5_000,
    );
    assert!(
        matches!(d, Decision::Deny(DenyReason::TooOld { .. })),
        "{d:?}"
    );
    let mut busy = key(State::Active);
    busy.signatures = 3;
    aged.max_age_secs = None;
    let d = decide(
        &busy,
        &aged,
        &SpendLedger::new(),
        &transfer("BTC", 1, "alice", 1),
        &[],
        0,
        5_000,
    );
    assert_eq!(
        d,
        Decision::Deny(DenyReason::TooManySignatures { count: 3, max: 3 })
    );
    // Every reason reads as a sentence.
    assert_eq!(
        DenyReason::OverRequestLimit {
            amount: 51,
            limit: 50
        }
        .to_string(),
        "amount 51 exceeds the per-request limit 50"
    );
}

#[test]
fn incoherent_policies_are_refused() {
    let mut p = Policy::permissive_hot();
    p.tier = Tier::Cold;
    assert!(p.check().is_err(), "cold without approvals");
    p.approvals = Some(ApprovalRule {
        required: 3,
        approvers: [[1u8; 32], [2u8; 32]].into(),
    });
    assert!(p.check().is_err(), "3 of 2");
    p.approvals = Some(ApprovalRule {
        required: 2,
        approvers: [[1u8; 32], [2u8; 32]].into(),
    });
    assert!(p.check().is_ok());
    assert_eq!("warm".parse::<Tier>(), Ok(Tier::Warm));
    assert!("tepid".parse::<Tier>().is_err());
}
