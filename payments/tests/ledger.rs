//! Payments: Merkle commitments and proofs, idempotency, durability across reopen, and
//! batches that take each payment exactly once.

use std::collections::BTreeSet;

use custody_payments::merkle;
use custody_payments::model::{check_clear, NewPayment};
use custody_payments::store::{Created, Store};
use proptest::prelude::*;

fn leaves(n: usize, salt: u8) -> Vec<[u8; 32]> {
    (0..n)
        .map(|i| merkle::leaf(&[salt, (i % 256) as u8, (i / 256) as u8]))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_leaf_has_a_proof_and_nothing_else_does(n in 1usize..300, salt in any::<u8>(), pick in any::<prop::sample::Index>()) {
        let l = leaves(n, salt);
        let root = merkle::root(&l).unwrap();
        let i = pick.index(n);
        let p = merkle::proof(&l, i).unwrap();
        prop_assert!(merkle::verify(&l[i], &p, &root));
        // Another leaf, another root, a flipped sibling: all fail.
        prop_assert!(!merkle::verify(&merkle::leaf(b"not in it"), &p, &root));
        let mut other = root;
        other[0] ^= 1;
        prop_assert!(!merkle::verify(&l[i], &p, &other));
        if let Some(first) = p.first() {
            let mut bad = p.clone();
            let mut b = hex::decode(&first.sibling).unwrap();
            b[5] ^= 0x10;
            bad[0].sibling = hex::encode(b);
            prop_assert!(!merkle::verify(&l[i], &bad, &root));
        }
        if n > 1 {
            let j = (i + 1) % n;
            prop_assert!(!merkle::verify(&l[j], &p, &root));
        }
    }

    #[test]
    fn different_leaf_lists_have_different_roots(n in 1usize..60, salt in any::<u8>()) {
        let l = leaves(n, salt);
        let mut longer = l.clone();
        longer.push(*l.last().unwrap()); // duplicating the last leaf changes the root
        prop_assert_ne!(merkle::root(&l), merkle::root(&longer));
        let mut swapped = l.clone();
        if n > 1 && swapped[0] != swapped[1] {
            swapped.swap(0, 1);
            prop_assert_ne!(merkle::root(&l), merkle::root(&swapped));
        }
    }
}

#[test]
fn card_numbers_are_luhn_checked() {
    assert_eq!(
        check_clear("card", "4111 1111 1111 1111").unwrap(),
        "4111111111111111"
    );
    assert!(check_clear("card", "4111 1111 1111 1112").is_err());
    assert!(check_clear("card", "4111").is_err());
    assert!(check_clear("account", "DE89370400440532013000").is_ok());
    assert!(check_clear("account", "a b").is_err());
    assert_eq!(check_clear("iban", "x").unwrap_err().field, "kind");
}

fn pay(key: &str, amount: u64) -> NewPayment {
    NewPayment {
        token: "tok_0123".into(),
        amount,
        currency: "EUR".into(),
        merchant: "m-1".into(),
        idempotency_key: key.into(),
    }
}

#[test]
fn idempotency_durability_and_batches() {
    let dir = std::env::temp_dir().join(format!("custody-payments-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ids: BTreeSet<String> = {
        let store = Store::open(&dir).unwrap();
        rt.block_on(async {
            // 64 concurrent requests, 8 idempotency keys: exactly 8 payments.
            let mut tasks = Vec::new();
            for i in 0..64u64 {
                let s = store.clone();
                tasks.push(tokio::spawn(async move {
                    s.create(pay(&format!("k-{}", i % 8), 100 + i % 8)).await
                }));
            }
            let mut created = BTreeSet::new();
            let mut seen = BTreeSet::new();
            for t in tasks {
                match t.await.unwrap().unwrap() {
                    Created::New(p) => assert!(created.insert(p.id)),
                    Created::Existing(p) => {
                        seen.insert(p.id);
                    }
                    Created::Conflict(id) => panic!("conflict {id}"),
                }
            }
            assert_eq!(created.len(), 8);
            assert!(seen.is_subset(&created));
            // The same key with another body is refused.
            assert!(matches!(
                store.create(pay("k-0", 999)).await.unwrap(),
                Created::Conflict(_)
            ));
            created
        })
    };
    // Everything acknowledged survives a reopen; the idempotency keys too. (The writer
    // thread lets go of the database once the last handle is dropped.)
    let store = {
        let mut tries = 0;
        loop {
            match Store::open(&dir) {
                Ok(s) => break s,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("{e}"),
            }
        }
    };
    let again = rt.block_on(store.create(pay("k-3", 103))).unwrap();
    assert!(
        matches!(again, Created::Existing(ref p) if ids.contains(&p.id)),
        "{again:?}"
    );
    assert_eq!(store.pending_count(), 8);
    // Batches take the oldest payments, each exactly once.
    let b1 = store.close_batch(5).unwrap().unwrap();
    let b2 = store.close_batch(5).unwrap().unwrap();
    assert!(store.close_batch(5).unwrap().is_none());
    assert_eq!((b1.count, b2.count), (5, 3));
    let all: BTreeSet<_> = b1.payments.iter().chain(&b2.payments).cloned().collect();
    assert_eq!(all, ids);
    for b in [&b1, &b2] {
        let leaves: Vec<[u8; 32]> = b
            .payments
            .iter()
            .map(|id| store.payment(id).unwrap().unwrap().leaf())
            .collect();
        let root: [u8; 32] = hex::decode(&b.root).unwrap().try_into().unwrap();
        for (i, id) in b.payments.iter().enumerate() {
            let p = store.payment(id).unwrap().unwrap();
            assert_eq!(p.batch.as_deref(), Some(b.id.as_str()));
            assert!(merkle::verify(
                &p.leaf(),
                &merkle::proof(&leaves, i).unwrap(),
                &root
            ));
        }
        assert_eq!(
            b.totals["EUR"],
            b.payments
                .iter()
                .map(|id| store.payment(id).unwrap().unwrap().amount as u128)
                .sum::<u128>()
        );
        // The leaves kept with the batch are the payments' own.
        assert_eq!(store.batch_leaves(&b.id).unwrap().unwrap(), leaves);
        // Proofs from the store verify, and only at their own position.
        for id in &b.payments {
            let mut proof = custody_payments::proof::make(&store, id).unwrap();
            custody_payments::proof::verify(&proof, None).unwrap();
            proof.index = (proof.index + 1) % proof.batch.count;
            let err = custody_payments::proof::verify(&proof, None).unwrap_err();
            assert!(err.contains("shape"), "{err}");
        }
    }
    // The settler's view: unsigned batches, oldest first; a signed one leaves it.
    let unsigned: Vec<String> = store
        .unsigned_batches()
        .unwrap()
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(unsigned, vec![b1.id.clone(), b2.id.clone()]);
    let mut signed = store.batch(&b1.id).unwrap().unwrap();
    signed.state = "signed".into();
    store.put_batch(&signed).unwrap();
    let unsigned: Vec<String> = store
        .unsigned_batches()
        .unwrap()
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(unsigned, vec![b2.id.clone()]);
    // Listing: newest first, bounded.
    let recent: Vec<String> = store
        .recent_batches(10)
        .unwrap()
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(recent, vec![b2.id.clone(), b1.id.clone()]);
    assert_eq!(store.recent_batches(1).unwrap().len(), 1);
    let newest = store.payments(None, 3).unwrap();
    assert_eq!(newest.len(), 3);
    assert!(newest.windows(2).all(|w| w[0].seq > w[1].seq));
    assert!(store.payments(Some("nobody"), 3).unwrap().is_empty());
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
