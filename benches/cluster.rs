//! Distributed signing benchmark: hot signing over mTLS gRPC on loopback, against the
//! in-process engine baseline measured in the same run.
//!
//! ```sh
//! cargo bench --bench cluster            # CUSTODY_BENCH_SECS=5 CUSTODY_BENCH_SAMPLES=1000
//! ```
//!
//! It starts `custody dev` (5 signers, threshold 3, release build) in a temporary
//! directory, creates one key per suite, then measures:
//! - **baseline**: one signature in one process, serially: 3 commits + 3 shares +
//!   aggregate (with verification), median of 300 runs, measured right before and
//!   right after each row (the faster of the two is kept: this host's speed drifts);
//! - **latency**: p50 and p99 of sequential `Sign` calls from one client (the client's
//!   TLS, the coordinator, three signers in parallel, aggregation, the durable result);
//! - **throughput**: signatures per second with 1, 16 and 64 concurrent clients.
//!
//! "Crypto alone on 2 cores" is `2 / baseline`: what the machine could sign if every
//! core did nothing but the serial signature's arithmetic. The daemons' CPU time per
//! signature (their threads' run time from `/proc/<pid>/task/*/schedstat`, coordinator
//! and signers) at the highest level says the same less noisily: `serial / CPU per
//! signature` is the share of the cluster's work that is the signature's arithmetic.
//!
//! A second table gives the floors that the design's rules put under both targets,
//! from parts measured in the same run (one share, the aggregation's last step,
//! envelope signatures and verifications, `fdatasync` on the cluster's file system, the
//! latency and CPU of a trivial gRPC call): the p50 no implementation of these rules
//! can beat here, and the most throughput it can reach.
//!
//! `CUSTODY_BENCH_ONLY=software,secp256k1-tr` keeps only the named sealings and suites;
//! `CUSTODY_BENCH_LEVELS=64` measures only those concurrency levels (for a profile).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use custody_protocol::proto::custody_client::CustodyClient;
use custody_protocol::proto::{CreateKeyRequest, SignRequest};
use custody_protocol::sign::{self, SigningPackage};
use custody_protocol::sim::{self, Participants};
use custody_protocol::{EngineSuite, ParticipantId, SessionId};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

type Secp = custody_protocol::frost_secp256k1_tr::Secp256K1Sha256TR;
type Ed = custody_protocol::frost_ed25519::Ed25519Sha512;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The in-process engine, measured in the same run: one serial signature and the
/// parts that bound the distributed path from below.
#[derive(Clone, Copy)]
struct Baseline {
    /// One serial signature, 3-of-5: 3 commits + 3 shares + aggregate (median).
    serial: Duration,
    /// One signer's share alone (median).
    share: Duration,
    /// Aggregation with verification (median).
    aggregate: Duration,
    /// What is left of it once the shares are in: sum and verify (median).
    finish: Duration,
    /// Signing the envelope of a signing package and of a signature share (medians).
    package_sign: Duration,
    share_sign: Duration,
    /// Opening (parsing and strictly verifying) those envelopes (medians).
    package_open: Duration,
    share_open: Duration,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    percentile(&v, 0.5)
}

/// Times `f` `n` times; the median.
fn time_each(n: usize, mut f: impl FnMut()) -> Duration {
    median(
        (0..n)
            .map(|_| {
                let t0 = Instant::now();
                f();
                t0.elapsed()
            })
            .collect(),
    )
}

fn baseline<C: EngineSuite>(samples: usize) -> Baseline {
    use custody_protocol::identity::{self, IdentityKey, Roster};
    use custody_protocol::wire::{Header, Kind};
    use custody_protocol::Identity;
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let parts = Participants::generate(5, &mut rng);
    let shares = sim::dkg::<C, _>(&parts, 3, SessionId([1; 32]), &mut rng, &mut sim::honest)
        .shares()
        .expect("dkg");
    let public = shares.values().next().expect("share").public().clone();
    let quorum: Vec<ParticipantId> = ParticipantId::range(3);
    let msg = [0x42u8; 32];
    let (mut serial, mut one, mut agg, mut fin) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..samples {
        let t0 = Instant::now();
        let mut nonces = BTreeMap::new();
        let mut comms = BTreeMap::new();
        for p in &quorum {
            let (n, c) = sign::commit(&shares[p], &mut rng);
            nonces.insert(*p, n);
            comms.insert(*p, c);
        }
        let pkg = SigningPackage::new(comms, msg.to_vec()).expect("package");
        let mut s = BTreeMap::new();
        for (p, n) in nonces {
            let t1 = Instant::now();
            s.insert(p, n.sign(&shares[&p], &pkg).expect("share"));
            one.push(t1.elapsed());
        }
        let t2 = Instant::now();
        std::hint::black_box(sign::aggregate(&public, &pkg, &s).expect("aggregate"));
        agg.push(t2.elapsed());
        serial.push(t0.elapsed());
        // The part of aggregation left once the shares are in (the coordinator
        // prepares the rest while the signers compute), outside the serial time.
        let prepared = sign::prepare_aggregate(&public, &pkg).expect("prepare");
        let t3 = Instant::now();
        std::hint::black_box(prepared.finish(&public, &pkg, &s).expect("finish"));
        fin.push(t3.elapsed());
        last = Some((pkg, s));
    }
    // The envelopes the distributed path adds: the coordinator signs the package, each
    // signer opens it and signs its share, the coordinator opens each share.
    let (pkg, s) = last.expect("samples");
    let (coordinator, signer) = (
        IdentityKey::generate(&mut rng),
        IdentityKey::generate(&mut rng),
    );
    let (me, signer_id) = (sign::COORDINATOR, quorum[0]);
    let roster: Roster = [(me, coordinator.public()), (signer_id, signer.public())]
        .into_iter()
        .collect();
    let header = |kind, from, to| Header {
        suite: C::SUITE,
        kind,
        session: SessionId([3; 32]),
        from,
        to,
    };
    let pkg_header = header(Kind::SigningPackage, me, None);
    let share_header = header(Kind::SignatureShare, signer_id, Some(me));
    let share_msg = sign::ShareMessage {
        transcript: [9; 32],
        share: s[&signer_id],
    };
    let n = samples.max(200);
    let package_sign = time_each(n, || {
        std::hint::black_box(identity::signed(&coordinator, &pkg_header, &pkg).expect("sign"));
    });
    let share_sign = time_each(n, || {
        std::hint::black_box(identity::signed(&signer, &share_header, &share_msg).expect("sign"));
    });
    let pkg_env = identity::signed(&coordinator, &pkg_header, &pkg).expect("sign");
    let share_env = identity::signed(&signer, &share_header, &share_msg).expect("sign");
    let package_open = time_each(n, || {
        std::hint::black_box(identity::open_from(&roster, me, &pkg_env).expect("open"));
    });
    let share_open = time_each(n, || {
        std::hint::black_box(identity::open_from(&roster, signer_id, &share_env).expect("open"));
    });
    Baseline {
        serial: median(serial),
        share: median(one),
        aggregate: median(agg),
        finish: median(fin),
        package_sign,
        share_sign,
        package_open,
        share_open,
    }
}

/// Median latency of a synced append of a 300-byte record (what each audit entry
/// waits for) in `dir`, on the cluster's file system, with the cluster idle.
fn fdatasync_p50(dir: &std::path::Path) -> Duration {
    use std::io::Write;
    let path = dir.join("fdatasync-probe");
    let mut f = std::fs::File::create(&path).expect("probe file");
    let t = time_each(300, || {
        f.write_all(&[7u8; 300]).expect("probe write");
        f.sync_data().expect("probe sync");
    });
    drop(f);
    let _ = std::fs::remove_file(&path);
    t
}

async fn latency(
    client: &CustodyClient<tonic::transport::Channel>,
    key: &str,
    samples: usize,
) -> (Duration, Duration) {
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples {
        let mut c = client.clone();
        let t0 = Instant::now();
        c.sign(SignRequest {
            key_id: key.to_string(),
            message: format!("latency {i}").into_bytes(),
            request_id: String::new(),
            transfer: None,
            settlement: None,
        })
        .await
        .expect("sign");
        times.push(t0.elapsed());
    }
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

/// CPU time a process used so far: the sum of its threads' run time from
/// `/proc/<pid>/task/*/schedstat` (nanoseconds, unlike the 10 ms ticks of `stat`).
fn process_cpu(pid: &str) -> Duration {
    let mut ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(st) = std::fs::read_to_string(t.path().join("schedstat")) {
                ns += st
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    Duration::from_nanos(ns)
}

/// CPU time the coordinator and signers used so far.
fn daemons_cpu(cluster: &support::Cluster) -> Duration {
    cluster
        .daemon_names()
        .iter()
        .map(|name| process_cpu(&cluster.pid(name).to_string()))
        .sum()
}

/// Runs `clients` concurrent callers for `secs` seconds, each calling `call(client,
/// caller, i)` for its `i`-th call; returns how many calls completed and how long it
/// took.
async fn concurrently<F, Fut>(
    client: &CustodyClient<tonic::transport::Channel>,
    clients: usize,
    secs: u64,
    call: F,
) -> (u64, Duration)
where
    F: Fn(CustodyClient<tonic::transport::Channel>, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|w| {
            let (c, done, call) = (client.clone(), done.clone(), call.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while Instant::now() < deadline {
                    call(c.clone(), w, i).await;
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("caller task");
    }
    (done.load(Ordering::Relaxed), t0.elapsed())
}

/// Signatures per second with `clients` concurrent clients, and the daemons' CPU time
/// per signature meanwhile.
async fn throughput(
    cluster: &support::Cluster,
    client: &CustodyClient<tonic::transport::Channel>,
    key: &str,
    clients: usize,
    secs: u64,
) -> (f64, Duration) {
    let cpu0 = daemons_cpu(cluster);
    let key = key.to_string();
    let (n, took) = concurrently(client, clients, secs, move |mut c, w, i| {
        let key = key.clone();
        async move {
            c.sign(SignRequest {
                key_id: key,
                message: format!("throughput {w} {i}").into_bytes(),
                request_id: String::new(),
                transfer: None,
                settlement: None,
            })
            .await
            .expect("sign");
        }
    })
    .await;
    let cpu = daemons_cpu(cluster).saturating_sub(cpu0) / n.max(1) as u32;
    (n as f64 / took.as_secs_f64(), cpu)
}

/// Concurrency levels for throughput: `CUSTODY_BENCH_LEVELS` (comma-separated), default
/// 1,16,64 (a profile of one level: `CUSTODY_BENCH_LEVELS=64`).
fn levels() -> Vec<usize> {
    std::env::var("CUSTODY_BENCH_LEVELS")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![1, 16, 64])
}

/// `CUSTODY_BENCH_ONLY` (comma-separated names: `software`, `softhsm`, `secp256k1-tr`,
/// `ed25519`) keeps only those sealings and suites; unset keeps all.
fn selected(name: &str) -> bool {
    match std::env::var("CUSTODY_BENCH_ONLY") {
        Ok(v) if !v.trim().is_empty() => {
            let all = ["software", "softhsm", "secp256k1-tr", "ed25519"];
            let picked: Vec<&str> = v.split(',').map(str::trim).collect();
            // A dimension with nothing picked keeps all of its values.
            let dim: &[&str] = if name.starts_with("soft") {
                &all[..2]
            } else {
                &all[2..]
            };
            !dim.iter().any(|d| picked.contains(d)) || picked.contains(&name)
        }
        _ => true,
    }
}

/// Latency, throughput and the gRPC floor of one cluster, for one suite.
struct Row {
    p50: Duration,
    p99: Duration,
    /// (clients, signatures per second, daemons' CPU time per signature).
    tput: Vec<(usize, f64, Duration)>,
    rpc_floor: Duration,
    /// CPU time of one trivial call, both ends.
    rpc_cpu: Duration,
    /// The same with as many concurrent callers as the top throughput level.
    rpc_cpu_loaded: Duration,
}

fn measure(
    cluster: &support::Cluster,
    rt: &tokio::runtime::Runtime,
    suite: &str,
    samples: usize,
    secs: u64,
) -> Row {
    rt.block_on(async {
        let ch = cluster
            .channel(&cluster.coordinator_addr(), Some("operator"))
            .await
            .expect("connect");
        let mut client = CustodyClient::new(ch);
        let key = client
            .create_key(CreateKeyRequest {
                suite: suite.into(),
                threshold: 3,
                ..Default::default()
            })
            .await
            .expect("create key")
            .into_inner()
            .key_id;
        // Warm up: connections, commitment pools.
        for i in 0..200 {
            client
                .sign(SignRequest {
                    key_id: key.clone(),
                    message: vec![i as u8],
                    request_id: String::new(),
                    transfer: None,
                    settlement: None,
                })
                .await
                .expect("warm-up sign");
        }
        // Transport floor: a trivial call to the coordinator, its latency and the CPU
        // both ends spend on it (the coordinator, and this process, which does nothing
        // else meanwhile).
        let calls = 1000;
        let cpu0 = daemons_cpu(cluster) + process_cpu("self");
        let mut floor = Vec::new();
        for _ in 0..calls {
            let t0 = Instant::now();
            client
                .get_key(custody_protocol::proto::GetKeyRequest {
                    key_id: key.clone(),
                })
                .await
                .expect("get key");
            floor.push(t0.elapsed());
        }
        let rpc_cpu = (daemons_cpu(cluster) + process_cpu("self")).saturating_sub(cpu0) / calls;
        floor.sort();
        let rpc_floor = percentile(&floor, 0.5);
        // The same call from as many concurrent callers as the top throughput level:
        // under load HTTP/2 and the runtimes share work between calls (fewer wake-ups
        // and writes per call), so a call costs less CPU than alone.
        let top = levels().into_iter().max().unwrap_or(1);
        let cpu0 = daemons_cpu(cluster) + process_cpu("self");
        let k = key.clone();
        let (calls, _) = concurrently(&client, top, 2, move |mut c, _, _| {
            let key_id = k.clone();
            async move {
                c.get_key(custody_protocol::proto::GetKeyRequest { key_id })
                    .await
                    .expect("get key");
            }
        })
        .await;
        let rpc_cpu_loaded =
            (daemons_cpu(cluster) + process_cpu("self")).saturating_sub(cpu0) / calls.max(1) as u32;
        let (p50, p99) = latency(&client, &key, samples).await;
        let mut tput = Vec::new();
        for c in levels() {
            let (rate, cpu) = throughput(cluster, &client, &key, c, secs).await;
            tput.push((c, rate, cpu));
        }
        Row {
            p50,
            p99,
            tput,
            rpc_floor,
            rpc_cpu,
            rpc_cpu_loaded,
        }
    })
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument selects nothing here.
    let secs = env("CUSTODY_BENCH_SECS", 5);
    let samples = env("CUSTODY_BENCH_SAMPLES", 1000) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let suites = ["secp256k1-tr", "ed25519"];
    // This host's speed drifts within minutes (other tenants): the in-process parts
    // are measured right before and right after each row, and the faster of the two
    // is kept (the stricter comparison for the cluster).
    let measure_baseline = |suite: &str| match suite {
        "secp256k1-tr" => baseline::<Secp>(300),
        _ => baseline::<Ed>(300),
    };
    let mut sealings = vec!["software"];
    if std::path::Path::new("/usr/lib/softhsm/libsofthsm2.so").exists() {
        sealings.push("softhsm");
    } else {
        eprintln!("softhsm2 not installed: measuring software-sealed signers only");
    }
    let mut rows = Vec::new();
    for sealing in sealings.into_iter().filter(|s| selected(s)) {
        let cluster =
            support::Cluster::start_with(&format!("bench-{sealing}"), 5, 3, &["--hsm", sealing]);
        let sync = fdatasync_p50(&cluster.dir);
        for suite in suites.iter().filter(|s| selected(s)) {
            let before = measure_baseline(suite);
            let row = measure(&cluster, &rt, suite, samples, secs);
            let after = measure_baseline(suite);
            let base = if after.serial < before.serial {
                after
            } else {
                before
            };
            rows.push((sealing, *suite, base, sync, row));
        }
    }

    println!(
        "\nDistributed hot signing, 3-of-5, mTLS gRPC on loopback (custody dev, release build)"
    );
    println!(
        "samples: {samples} sequential signatures for latency; {secs} s per throughput level\n"
    );
    let levels = levels();
    let top = *levels.iter().max().expect("levels");
    let heads: String = levels
        .iter()
        .map(|c| format!(" {c} client{} |", if *c == 1 { "" } else { "s" }))
        .collect();
    println!("| signers seal with | suite | in-process serial signature | gRPC floor (GetKey p50) | p50 | p99 | p50 / serial |{heads} crypto alone on 2 cores (2 / serial) | {top} clients / crypto alone | daemons' CPU per signature at {top} clients | serial / that CPU |");
    println!(
        "|---|---|---|---|---|---|---|{}---|---|---|---|",
        "---|".repeat(levels.len())
    );
    for (sealing, suite, base, _, r) in &rows {
        let serial = base.serial;
        let crypto = 2.0 / serial.as_secs_f64();
        let tput: String = r
            .tput
            .iter()
            .map(|(_, x, _)| format!(" {x:.0}/s |"))
            .collect();
        let (best, cpu) = r
            .tput
            .iter()
            .find(|(c, _, _)| *c == top)
            .map(|(_, x, cpu)| (*x, *cpu))
            .unwrap_or_default();
        println!(
            "| {sealing} | {suite} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2}× |{tput} {:.0}/s | {:.0}% | {:.2} ms | {:.0}% |",
            ms(serial),
            ms(r.rpc_floor),
            ms(r.p50),
            ms(r.p99),
            r.p50.as_secs_f64() / serial.as_secs_f64(),
            crypto,
            100.0 * best / crypto,
            ms(cpu),
            100.0 * serial.as_secs_f64() / cpu.as_secs_f64().max(1e-9),
        );
    }

    // What the design's rules leave reachable, from parts measured in this run. Each
    // signature keeps its own calls, envelopes and synced audit entries (what makes
    // shares attributable and ceremonies replayable), so:
    // - latency cannot beat the dependency chain: client -> coordinator call, the
    //   coordinator signs the package, one call to the signers, a signer opens it and
    //   computes its share while its `share-issued` entry syncs, signs the share; the
    //   coordinator opens the share, sums and verifies (the rest of the aggregation
    //   overlaps the shares), signs and syncs its `signature` entry;
    // - CPU per signature cannot drop below the arithmetic plus 4 calls (both ends, at
    //   what a call costs among as many concurrent ones as the top level), 8 envelope
    //   or audit signatures and 6 envelope verifications.
    println!("\nFloors that the design's rules put under the targets (parts measured in this run, one at a time)\n");
    println!("| signers seal with | suite | one share alone | aggregate (after the shares: sum + verify) | envelope sign / open (package) | envelope sign / open (share) | fdatasync p50 | CPU of one gRPC call, both ends: alone / among {top} concurrent | p50 floor | p50 floor / serial (target ≤ 0.6×) | CPU floor per signature | serial / CPU floor = most throughput can reach (target ≥ 70%) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (sealing, suite, base, sync, r) in &rows {
        let p50_floor = 2 * r.rpc_floor
            + base.package_sign
            + base.package_open
            + base.share.max(*sync)
            + base.share_sign
            + base.share_open
            + base.finish
            + base.share_sign
            + *sync;
        let cpu_floor = base.serial
            + 4 * r.rpc_cpu_loaded
            + base.package_sign
            + 3 * base.package_open
            + 3 * base.share_sign
            + 3 * base.share_open
            + 4 * base.share_sign;
        println!(
            "| {sealing} | {suite} | {:.3} ms | {:.3} ms ({:.3} ms) | {:.3} / {:.3} ms | {:.3} / {:.3} ms | {:.3} ms | {:.3} / {:.3} ms | {:.2} ms | {:.2}× | {:.2} ms | {:.0}% |",
            ms(base.share),
            ms(base.aggregate),
            ms(base.finish),
            ms(base.package_sign),
            ms(base.package_open),
            ms(base.share_sign),
            ms(base.share_open),
            ms(*sync),
            ms(r.rpc_cpu),
            ms(r.rpc_cpu_loaded),
            ms(p50_floor),
            p50_floor.as_secs_f64() / base.serial.as_secs_f64(),
            ms(cpu_floor),
            100.0 * base.serial.as_secs_f64() / cpu_floor.as_secs_f64(),
        );
    }
}
