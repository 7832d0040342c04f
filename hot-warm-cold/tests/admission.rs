//! Property tests of admission ([`hot_warm_cold::admit`]) as a signer runs it: over
//! random sequences of transfers (new, retried, and request ids reused for other
//! content), settlements (batches retried and reused) and clock advances, with the
//! plan stored after each admission exactly as the signer stores it:
//! - no window ever releases more than its limit, and no key more than its signatures;
//! - a retry is admitted only for the same content, and stores nothing;
//! - within the window a request id is admitted for one message only, and a batch id
//!   for one content, for good;
//! - the stored record never keeps what no window can count, and never loses what one
//!   can.

use std::collections::{BTreeMap, BTreeSet};

use hot_warm_cold::admit::admitted_digest;
use hot_warm_cold::*;
use proptest::prelude::*;

/// An admission that stored a plan: when, the request id, its digest, what it moved.
type Released = (u64, String, [u8; 32], Vec<(String, u128)>);

const WINDOW: u64 = 100;
const PER_WINDOW: u128 = 150;
const MAX_SIGNATURES: u64 = 12;

fn policy() -> Policy {
    let mut p = Policy::permissive_hot();
    p.allow_raw = false;
    p.max_signatures = Some(MAX_SIGNATURES);
    for asset in ["BTC", "EUR"] {
        p.assets.insert(
            asset.into(),
            AssetLimits {
                per_request: 100,
                per_window: PER_WINDOW,
                window_secs: WINDOW,
            },
        );
    }
    p
}

#[derive(Clone, Debug)]
enum Op {
    /// A transfer under request id `id`, of `amount`, its memo `variant` (so the same
    /// id with another variant is other content).
    Transfer { id: u8, amount: u128, variant: u8 },
    /// A settlement of batch `batch` with root `variant`.
    Settle { batch: u8, variant: u8, total: u128 },
    /// The clock moves on.
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..8, 1u128..120, 0u8..2).prop_map(|(id, amount, variant)| Op::Transfer { id, amount, variant }),
        2 => (0u8..3, 0u8..2, 1u128..90).prop_map(|(batch, variant, total)| Op::Settle { batch, variant, total }),
        2 => (1u64..80).prop_map(Op::Wait),
    ]
}

fn request(op: &Op) -> Option<Request> {
    Some(match *op {
        Op::Transfer {
            id,
            amount,
            variant,
        } => Request::Transfer(Transfer {
            asset: "BTC".into(),
            amount,
            destination: "alice".into(),
            request_id: format!("r-{id}"),
            memo: format!("m{variant}"),
        }),
        Op::Settle {
            batch,
            variant,
            total,
        } => Request::Settlement(Settlement {
            batch_id: format!("b{batch}"),
            root: [variant; 32],
            count: 1,
            totals: BTreeMap::from([("EUR".to_string(), total)]),
            period_start_ms: 0,
            period_end_ms: 1,
            request_id: format!("settle-b{batch}"),
        }),
        Op::Wait(_) => return None,
    })
}

/// Amounts per asset a request moves.
fn amounts(r: &Request) -> Vec<(String, u128)> {
    match r {
        Request::Transfer(t) => vec![(t.asset.clone(), t.amount)],
        Request::Settlement(s) => s.totals.iter().map(|(c, v)| (c.clone(), *v)).collect(),
        Request::Raw { .. } => vec![],
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn admission_holds_limits_ids_and_batches(ops in proptest::collection::vec(op(), 1..80)) {
        let policy = policy();
        let key_id = "k-1";
        let mut now = 1_000u64;
        // The signer's store.
        let mut usage = Usage::default();
        let mut settled: BTreeMap<String, [u8; 32]> = BTreeMap::new();
        // The model: every admission that stored a plan, unpruned.
        let mut released: Vec<Released> = Vec::new();
        let mut batches: BTreeMap<String, [u8; 32]> = BTreeMap::new();
        for op in &ops {
            if let Op::Wait(s) = op {
                now += s;
                continue;
            }
            let r = request(op).expect("a request");
            let id = r.request_id().to_string();
            let digest = admitted_digest(key_id, &r);
            let cx = Context {
                key_id,
                state: State::Active,
                created_at: 0,
                policy: &policy,
                usage: &usage,
                settled: settled.get(&id).copied(),
                sighting: None,
                now,
            };
            let before = usage.clone();
            let outcome = admit(&cx, &r, &[]);
            prop_assert!(outcome.sighting.is_none(), "no time lock, no sighting");
            match outcome.result {
                Ok(Admitted::Retry) => {
                    // Only for content admitted before under this id.
                    let seen = released.iter().any(|(_, i, d, _)| *i == id && *d == digest);
                    prop_assert!(seen, "a retry of {} that was never admitted", id);
                }
                Ok(Admitted::New(plan)) => {
                    let settlement = matches!(r, Request::Settlement(_));
                    prop_assert_eq!(plan.settled.is_some(), settlement);
                    if settlement {
                        prop_assert!(batches.insert(id.clone(), digest).is_none(), "batch {} settled twice", id);
                    }
                    // Within the window the id is admitted for one message only.
                    let horizon = now.saturating_sub(WINDOW);
                    prop_assert!(
                        !released.iter().any(|(t, i, d, _)| *t >= horizon && *i == id && *d != digest),
                        "request id {} admitted for two messages in one window", id
                    );
                    released.push((now, id.clone(), digest, amounts(&r)));
                    let next = plan.usage.expect("a ledger policy stores usage");
                    prop_assert_eq!(next.signatures, before.signatures + 1);
                    usage = next;
                    if let Some(d) = plan.settled {
                        settled.insert(id.clone(), d);
                    }
                }
                Err(reason) => {
                    prop_assert!(DenyReason::TAGS.contains(&reason.tag()));
                    if let DenyReason::BatchReused(b) = &reason {
                        prop_assert_eq!(b, &id);
                        prop_assert!(batches.get(&id).is_some_and(|d| *d != digest));
                    }
                }
            }
            // No window releases more than its limit, no key more than its signatures.
            let from = now.saturating_sub(WINDOW);
            for asset in ["BTC", "EUR"] {
                let total: u128 = released
                    .iter()
                    .filter(|(t, ..)| *t > from)
                    .flat_map(|(_, _, _, a)| a.iter())
                    .filter(|(a, _)| a == asset)
                    .map(|(_, v)| *v)
                    .sum();
                prop_assert!(total <= PER_WINDOW, "{} released {} in one window", asset, total);
            }
            prop_assert!(released.len() as u64 <= MAX_SIGNATURES);
            prop_assert_eq!(usage.signatures, released.len() as u64);
            // The record keeps nothing older than the last store's window, and every id
            // that window can still count.
            let oldest = usage.requests.values().map(|(t, _)| *t).min();
            prop_assert!(oldest.is_none_or(|t| t >= usage_horizon(&released, now)));
            let live: BTreeSet<&String> = released
                .iter()
                .filter(|(t, ..)| *t >= usage_horizon(&released, now))
                .map(|(_, i, ..)| i)
                .collect();
            for id in live {
                prop_assert!(usage.requests.contains_key(id), "id {} pruned too early", id);
            }
        }
    }

    /// A key outside a signing state, or too old, admits nothing, retries included.
    #[test]
    fn no_state_but_active_or_rotating_admits(state in proptest::sample::select(State::ALL.to_vec()), age in 0u64..20) {
        let mut policy = policy();
        policy.max_age_secs = Some(10);
        let r = request(&Op::Transfer { id: 1, amount: 5, variant: 0 }).expect("request");
        let mut usage = Usage::default();
        usage.requests.insert("r-1".into(), (95, admitted_digest("k", &r)));
        let cx = Context {
            key_id: "k",
            state,
            created_at: 100 - age,
            policy: &policy,
            usage: &usage,
            settled: None,
            sighting: None,
            now: 100,
        };
        let got = admit(&cx, &r, &[]).result;
        if !state.may_sign() {
            prop_assert_eq!(got, Err(DenyReason::NotActive(state)));
        } else if age > 10 {
            prop_assert_eq!(got, Err(DenyReason::TooOld { age_secs: age, max_secs: 10 }));
        } else {
            prop_assert_eq!(got, Ok(Admitted::Retry));
        }
    }
}

/// The oldest time the signer's record must still hold: the last stored admission's
/// horizon (records are pruned when a plan is stored).
fn usage_horizon(released: &[Released], now: u64) -> u64 {
    released
        .last()
        .map_or(now, |(t, ..)| t.saturating_sub(WINDOW))
}

#[test]
fn first_sighting_is_kept_and_binds_the_id() {
    let t = |memo: &str| {
        Request::Transfer(Transfer {
            asset: "BTC".into(),
            amount: 1,
            destination: "alice".into(),
            request_id: "w-1".into(),
            memo: memo.into(),
        })
    };
    let (s, new) = admit::first_seen("k", &t("a"), None, 50).expect("new");
    assert!(new);
    assert_eq!(s.at, 50);
    let (again, new) = admit::first_seen("k", &t("a"), Some(s), 90).expect("seen");
    assert!(!new);
    assert_eq!(again.at, 50, "the first sighting counts, not the latest");
    assert_eq!(
        admit::first_seen("k", &t("b"), Some(s), 90),
        Err(DenyReason::ProposedForAnother("w-1".into()))
    );
}
