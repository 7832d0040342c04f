//! Wire-format snapshots: a whole seeded ceremony (DKG, signing) is deterministic, so
//! every message it produces is compared byte for byte with a committed snapshot. A
//! change to any encoding, hash input or domain tag fails here; if the change is meant,
//! bump the wire version and regenerate with `UPDATE_SNAPSHOTS=1 cargo test -p
//! custody-protocol --test snapshots`.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write;

use common::*;
use custody_protocol::sim::{self, Participants, Step};
use custody_protocol::{EngineSuite, Suite};

fn record<C: EngineSuite>(seed: u64) -> String {
    let mut r = rng(seed);
    let parts = Participants::generate(3, &mut r);
    let mut seen: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut hook = |step: Step,
                    from: custody_protocol::ParticipantId,
                    to: custody_protocol::ParticipantId,
                    m: &mut Vec<u8>| {
        seen.entry(format!("{step:?} {from:?}->{to:?}"))
            .or_insert_with(|| m.clone());
        true
    };
    let shares = sim::dkg::<C, _>(&parts, 2, session(1), &mut r, &mut hook)
        .shares()
        .unwrap();
    let public = shares[&pid(1)].public().clone();
    let sig = sim::sign(
        &parts,
        &public,
        &shares,
        &pids(&[1, 3]),
        b"snapshot",
        session(2),
        &mut r,
        &mut hook,
    )
    .unwrap();
    let mut out = String::new();
    writeln!(out, "suite {}", C::SUITE).unwrap();
    for (p, k) in &parts.identities {
        use custody_protocol::Identity;
        writeln!(out, "identity {p:?} {}", hex::encode(k.public().to_bytes())).unwrap();
    }
    writeln!(out, "public_key {}", hex::encode(public.public_key())).unwrap();
    writeln!(out, "public_key_set {}", hex::encode(public.to_bytes())).unwrap();
    writeln!(
        out,
        "key_share P2 {}",
        hex::encode(shares[&pid(2)].to_secret_bytes())
    )
    .unwrap();
    for (k, v) in &seen {
        writeln!(out, "{k} {}", hex::encode(v)).unwrap();
    }
    writeln!(out, "signature {}", hex::encode(sig)).unwrap();
    out
}

fn check(suite: Suite, got: String) {
    let path = format!(
        "{}/tests/snapshots/{}.txt",
        env!("CARGO_MANIFEST_DIR"),
        suite.name()
    );
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}; generate it with UPDATE_SNAPSHOTS=1"));
    for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
        assert_eq!(g, w, "line {} of {path} differs", i + 1);
    }
    assert_eq!(
        got.lines().count(),
        want.lines().count(),
        "{path}: number of lines differs"
    );
}

#[test]
fn wire_snapshot_secp256k1_tr() {
    check(Suite::Secp256k1Tr, record::<Secp>(4242));
}

#[test]
fn wire_snapshot_ed25519() {
    check(Suite::Ed25519, record::<Ed>(4242));
}
