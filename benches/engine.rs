//! In-process baseline of the threshold engine (criterion).
//!
//! `cargo bench --bench engine` measures, for both suites and t-of-n in {2-of-3, 3-of-5,
//! 7-of-10, 10-of-15}:
//! - `dkg`: a whole DKG among all n participants in one process, with everything the
//!   distributed system does per message (encoding, Ed25519 envelopes, HPKE-sealed
//!   round-2 shares, echo check, confirmations);
//! - `commit`: t signers drawing nonces;
//! - `sign`: t signers producing their signature shares for one package;
//! - `aggregate`: combining t shares and verifying the signature;
//! - `signature`: the serial total for one signature (t commits + t shares + aggregate),
//!   the number later distributed benchmarks are compared against.
//!
//! Results and the command line are recorded in BENCHMARKS.md.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use custody_protocol::sign::{self, SigningPackage};
use custody_protocol::sim::{self, Participants};
use custody_protocol::{EngineSuite, KeyShare, ParticipantId, SessionId};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

type Secp = custody_protocol::frost_secp256k1_tr::Secp256K1Sha256TR;
type Ed = custody_protocol::frost_ed25519::Ed25519Sha512;

const SIZES: [(u16, u16); 4] = [(2, 3), (3, 5), (7, 10), (10, 15)];

fn shares<C: EngineSuite>(
    t: u16,
    n: u16,
    rng: &mut ChaCha20Rng,
) -> (Participants, BTreeMap<ParticipantId, KeyShare<C>>) {
    let parts = Participants::generate(n, rng);
    let s = sim::dkg::<C, _>(&parts, t, SessionId([1; 32]), rng, &mut sim::honest)
        .shares()
        .expect("DKG");
    (parts, s)
}

fn suite<C: EngineSuite>(c: &mut Criterion) {
    let name = C::SUITE.name();
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    for (t, n) in SIZES {
        let id = format!("{t}-of-{n}");
        let (parts, shares) = shares::<C>(t, n, &mut rng);
        let quorum: Vec<ParticipantId> = parts.ids().into_iter().take(t as usize).collect();
        let public = shares[&quorum[0]].public().clone();
        let msg = [0x42u8; 32];

        let mut g = c.benchmark_group(format!("dkg/{name}"));
        g.sample_size(10).measurement_time(Duration::from_secs(4));
        g.bench_function(BenchmarkId::from_parameter(&id), |b| {
            b.iter(|| {
                sim::dkg::<C, _>(&parts, t, SessionId([2; 32]), &mut rng, &mut sim::honest)
                    .shares()
                    .expect("DKG")
            })
        });
        g.finish();

        let mut g = c.benchmark_group(format!("signing/{name}"));
        g.sample_size(30).measurement_time(Duration::from_secs(3));
        g.bench_function(BenchmarkId::new("commit", &id), |b| {
            b.iter(|| {
                for p in &quorum {
                    black_box(sign::commit(&shares[p], &mut rng));
                }
            })
        });
        let setup = |rng: &mut ChaCha20Rng| {
            let mut nonces = BTreeMap::new();
            let mut comms = BTreeMap::new();
            for p in &quorum {
                let (nn, cc) = sign::commit(&shares[p], rng);
                nonces.insert(*p, nn);
                comms.insert(*p, cc);
            }
            let pkg = SigningPackage::new(comms, msg.to_vec()).expect("package");
            (nonces, pkg)
        };
        g.bench_function(BenchmarkId::new("sign", &id), |b| {
            b.iter_batched(
                || setup(&mut rng),
                |(nonces, pkg)| {
                    for (p, nn) in nonces {
                        black_box(nn.sign(&shares[&p], &pkg).expect("share"));
                    }
                },
                BatchSize::SmallInput,
            )
        });
        let (nonces, pkg) = setup(&mut rng);
        let sig_shares: BTreeMap<_, _> = nonces
            .into_iter()
            .map(|(p, nn)| (p, nn.sign(&shares[&p], &pkg).expect("share")))
            .collect();
        g.bench_function(BenchmarkId::new("aggregate", &id), |b| {
            b.iter(|| black_box(sign::aggregate(&public, &pkg, &sig_shares).expect("aggregate")))
        });
        g.bench_function(BenchmarkId::new("signature", &id), |b| {
            b.iter(|| {
                let (nonces, pkg) = setup(&mut rng);
                let s: BTreeMap<_, _> = nonces
                    .into_iter()
                    .map(|(p, nn)| (p, nn.sign(&shares[&p], &pkg).expect("share")))
                    .collect();
                black_box(sign::aggregate(&public, &pkg, &s).expect("aggregate"))
            })
        });
        g.finish();
    }
}

fn benches(c: &mut Criterion) {
    suite::<Secp>(c);
    suite::<Ed>(c);
}

criterion_group!(engine, benches);
criterion_main!(engine);
