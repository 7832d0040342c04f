//! Payments: durable ingest per second with 1, 16 and 64 concurrent clients (group
//! commit: one transaction and one flush per group), and the time to close a batch of
//! 100,000 payments (Merkle root over their leaves, every payment marked, one
//! transaction, one flush). In process against the real store on this machine's disk;
//! the gRPC/TLS hop and the threshold signature of the header are measured by
//! `cargo bench --bench cluster` (one signature, milliseconds).
//!
//! `cargo bench --bench payments` (SECONDS=5 by default per level).

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
}
