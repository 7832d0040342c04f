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
//!   aggregate (with verification), median of many runs;
//! - **latency**: p50 and p99 of sequential `Sign` calls from one client (the client's
//!   TLS, the coordinator, three signers in parallel, aggregation, the durable result);
//! - **throughput**: signatures per second with 1, 16 and 64 concurrent clients.
//!
//! "Crypto alone on 2 cores" is `2 / baseline`: what the machine could sign if every
//! core did nothing but the serial signature's arithmetic. The daemons' CPU time per
//! signature (user + system, from `/proc`, coordinator and signers) at the highest
//! level says the same less noisily: `serial / CPU per signature` is the share of the
//! cluster's work that is the signature's arithmetic.
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

/// Median time of one serial in-process signature, 3-of-5.
fn baseline<C: EngineSuite>(samples: usize) -> Duration {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let parts = Participants::generate(5, &mut rng);
    let shares = sim::dkg::<C, _>(&parts, 3, SessionId([1; 32]), &mut rng, &mut sim::honest)
        .shares()
        .expect("dkg");
    let public = shares.values().next().expect("share").public().clone();
    let quorum: Vec<ParticipantId> = ParticipantId::range(3);
    let msg = [0x42u8; 32];
    let mut times = Vec::with_capacity(samples);
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
        let s: BTreeMap<_, _> = nonces
            .into_iter()
            .map(|(p, n)| (p, n.sign(&shares[&p], &pkg).expect("share")))
            .collect();
        std::hint::black_box(sign::aggregate(&public, &pkg, &s).expect("aggregate"));
        times.push(t0.elapsed());
    }
    times.sort();
    percentile(&times, 0.5)
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

/// CPU time (user + system) the coordinator and signers used so far.
fn daemons_cpu(cluster: &support::Cluster) -> Duration {
    // /proc/<pid>/stat counts in USER_HZ ticks, 100 per second on Linux.
    const TICK: Duration = Duration::from_millis(10);
    let mut ticks = 0u64;
    for name in cluster.daemon_names() {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", cluster.pid(&name)))
            .expect("daemon stat");
        // Fields after the command (which is in parentheses and may hold spaces).
        let rest = &stat[stat.rfind(')').expect("stat") + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15, i.e. 11 and 12 after the command.
        ticks += f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    }
    TICK * ticks as u32
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
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..clients {
        let (mut c, key, done) = (client.clone(), key.to_string(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                c.sign(SignRequest {
                    key_id: key.clone(),
                    message: format!("throughput {w} {i}").into_bytes(),
                    request_id: String::new(),
                    transfer: None,
                    settlement: None,
                })
                .await
                .expect("sign");
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let n = done.load(Ordering::Relaxed);
    let cpu = daemons_cpu(cluster).saturating_sub(cpu0) / n.max(1) as u32;
    (n as f64 / t0.elapsed().as_secs_f64(), cpu)
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
        // Transport floor: a trivial call to the coordinator.
        let mut floor = Vec::new();
        for _ in 0..300 {
            let t0 = Instant::now();
            client
                .get_key(custody_protocol::proto::GetKeyRequest {
                    key_id: key.clone(),
                })
                .await
                .expect("get key");
            floor.push(t0.elapsed());
        }
        floor.sort();
        let rpc_floor = percentile(&floor, 0.5);
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
    let baselines = [baseline::<Secp>(300), baseline::<Ed>(300)];
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
        for (suite, base) in suites.iter().zip(baselines).filter(|(s, _)| selected(s)) {
            rows.push((
                sealing,
                *suite,
                base,
                measure(&cluster, &rt, suite, samples, secs),
            ));
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
    for (sealing, suite, base, r) in rows {
        let crypto = 2.0 / base.as_secs_f64();
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
            ms(base),
            ms(r.rpc_floor),
            ms(r.p50),
            ms(r.p99),
            r.p50.as_secs_f64() / base.as_secs_f64(),
            crypto,
            100.0 * best / crypto,
            ms(cpu),
            100.0 * base.as_secs_f64() / cpu.as_secs_f64().max(1e-9),
        );
    }
}
