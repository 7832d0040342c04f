//! Payments: durable ingest per second with 1, 16 and 64 concurrent clients (group
//! commit: one transaction and one flush per group), and the time to close a batch of
//! 100,000 payments (Merkle root over their leaves, every payment marked, one
//! transaction, one flush). In process against the real store on this machine's disk,
//! then again end to end: `CreatePayment` over mTLS gRPC on loopback from this process
//! to the payments daemon of a `custody dev` cluster (a separate OS process, batching
//! and signing settlements in the background as it always does). The threshold
//! signature of a header is measured by `cargo bench --bench cluster` (milliseconds).
//!
//! `cargo bench --bench payments` (SECONDS=5 by default per level).

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use custody_payments::model::NewPayment;
use custody_payments::store::{Created, Store};

fn main() {
    let secs: u64 = std::env::var("SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let dir = std::env::temp_dir().join(format!("custody-bench-payments-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(&dir).expect("store");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let seq = Arc::new(AtomicU64::new(0));
    println!("durable payment ingest (group commit), {secs} s per level:");
    for clients in [1usize, 16, 64] {
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(secs);
        rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..clients {
                let (store, done, seq) = (store.clone(), done.clone(), seq.clone());
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let n = seq.fetch_add(1, Ordering::Relaxed);
                        let p = NewPayment {
                            token: "tok_bench".into(),
                            amount: 100 + n % 1000,
                            currency: "EUR".into(),
                            merchant: "m-bench".into(),
                            idempotency_key: format!("bench-{n}"),
                        };
                        match store.create(p).await {
                            Ok(Created::New(_)) => {
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                            other => panic!("{other:?}"),
                        }
                    }
                }));
            }
            for t in tasks {
                t.await.expect("task");
            }
        });
        let n = done.load(Ordering::Relaxed);
        println!(
            "  {clients:>2} clients: {:>8.0} payments/s ({n} in {secs} s)",
            n as f64 / secs as f64
        );
    }
    // Fill to at least 100,000 pending, then close one batch of exactly 100,000.
    let pending = store.pending_count();
    if pending < 100_000 {
        rt.block_on(async {
            let mut tasks = Vec::new();
            let per = (100_000 - pending) / 64 + 1;
            for _ in 0..64 {
                let (store, seq) = (store.clone(), seq.clone());
                tasks.push(tokio::spawn(async move {
                    for _ in 0..per {
                        let n = seq.fetch_add(1, Ordering::Relaxed);
                        let p = NewPayment {
                            token: "tok_bench".into(),
                            amount: 100,
                            currency: "USD".into(),
                            merchant: "m-bench".into(),
                            idempotency_key: format!("bench-{n}"),
                        };
                        store.create(p).await.expect("create");
                    }
                }));
            }
            for t in tasks {
                t.await.expect("task");
            }
        });
    }
    let t0 = Instant::now();
    let b = store.close_batch(100_000).expect("close").expect("a batch");
    let close = t0.elapsed();
    println!(
        "close a batch of {} payments (read them, Merkle root, one transaction, flush): {:.0} ms",
        b.count,
        close.as_secs_f64() * 1000.0
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    grpc_ingest(&rt, secs);
}

/// `CreatePayment` through the daemon: the client's TLS and HTTP/2, the daemon's
/// validation, group commit and answer, from a separate process.
fn grpc_ingest(rt: &tokio::runtime::Runtime, secs: u64) {
    use custody_protocol::proto::payments_client::PaymentsClient;
    use custody_protocol::proto::{CreatePaymentRequest, TokenizeRequest};
    let cluster = support::Cluster::start("bench-payments", 2, 2);
    let addr = std::fs::read_to_string(cluster.dir.join("payments/listen-addr"))
        .expect("payments address")
        .trim()
        .to_string();
    println!("\ndurable payment ingest over mTLS gRPC (custody dev's payments daemon, another process), {secs} s per level:");
    rt.block_on(async {
        // A few HTTP/2 connections, shared round robin, as a backend's pool would.
        let mut channels = Vec::new();
        for _ in 0..4 {
            channels.push(PaymentsClient::new(
                cluster
                    .channel(&addr, Some("payment-backend"))
                    .await
                    .expect("connect"),
            ));
        }
        let token = channels[0]
            .clone()
            .tokenize(TokenizeRequest {
                kind: "account".into(),
                data: "ACC-BENCH".into(),
            })
            .await
            .expect("tokenize")
            .into_inner()
            .token;
        let seq = Arc::new(AtomicU64::new(0));
        for clients in [1usize, 16, 64] {
            let done = Arc::new(AtomicU64::new(0));
            let deadline = Instant::now() + Duration::from_secs(secs);
            let mut tasks = Vec::new();
            for i in 0..clients {
                let mut c = channels[i % channels.len()].clone();
                let (done, seq, token) = (done.clone(), seq.clone(), token.clone());
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let n = seq.fetch_add(1, Ordering::Relaxed);
                        c.create_payment(CreatePaymentRequest {
                            token: token.clone(),
                            amount: 100 + n % 1000,
                            currency: "EUR".into(),
                            merchant: "m-bench".into(),
                            idempotency_key: format!("grpc-{n}"),
                        })
                        .await
                        .expect("create payment");
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            for t in tasks {
                t.await.expect("task");
            }
            let n = done.load(Ordering::Relaxed);
            println!(
                "  {clients:>2} clients: {:>8.0} payments/s ({n} in {secs} s)",
                n as f64 / secs as f64
            );
        }
    });
}
