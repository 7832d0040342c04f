//! `custody dev`: a whole local cluster in one command, like `vault server -dev`.
//!
//! Creates the cluster directory on first use (CA, identities, certificates, configs;
//! see [`super::cluster`]), starts every signer and the coordinator as separate OS
//! processes on 127.0.0.1 ports chosen by the OS, prints one line when the cluster is
//! ready, and runs until interrupted, stopping its children. Running it again on the
//! same directory restarts the same cluster with its keys.
//!
//! Development only: secrets are sealed by a software key kept in the directory, and
//! the CA key sits next to the certificates.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::cluster::{self, Layout};
use super::Error;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Cluster directory (created on first use; reused afterwards).
    #[arg(long, default_value = "custody-dev")]
    dir: PathBuf,
    /// Number of signers n (first use only; default 5).
    #[arg(long)]
    signers: Option<u16>,
    /// Default threshold t of new keys (first use only; default 3).
    #[arg(long)]
    threshold: Option<u16>,
    /// How signers seal shares and identities (first use only): `software` (INSECURE,
    /// a key file beside the data) or `softhsm` (a SoftHSM2 token per signer, through
    /// PKCS#11; needs `apt-get install softhsm2`).
    #[arg(long, value_enum)]
    hsm: Option<cluster::Hsm>,
    /// Create the cluster directory (CA, certificates, configs) and exit without
    /// starting anything: to read or edit the configs first.
    #[arg(long)]
    init_only: bool,
}

/// How long a daemon may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a daemon may take to stop before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

struct Proc {
    name: String,
    child: Child,
}

pub fn run(a: Args) -> Result<(), Error> {
    super::daemon::runtime()?.block_on(run_async(a))
}

async fn run_async(a: Args) -> Result<(), Error> {
    std::fs::create_dir_all(&a.dir).map_err(|e| format!("--dir {}: {e}", a.dir.display()))?;
    let dir = a
        .dir
        .canonicalize()
        .map_err(|e| format!("--dir {}: {e}", a.dir.display()))?;
    let layout = Layout::new(&dir);
    let file = match layout.load()? {
        Some(f) => {
            if a.signers.is_some_and(|n| n != f.signers)
                || a.threshold.is_some_and(|t| t != f.threshold)
            {
                return Err(format!(
                    "{} already holds a cluster of {} signers with threshold {}; omit --signers/--threshold or use another --dir",
                    dir.display(),
                    f.signers,
                    f.threshold
                )
                .into());
            }
            f
        }
        None => {
            let n = a.signers.unwrap_or(5);
            let t = a.threshold.unwrap_or(3);
            if !(2..=64).contains(&n) {
                return Err(format!("--signers {n}: must be between 2 and 64").into());
            }
            if t < 2 || t > n {
                return Err(
                    format!("--threshold {t}: must be between 2 and --signers ({n})").into(),
                );
            }
            if std::fs::read_dir(&dir)?.next().is_some() {
                return Err(format!(
                    "{}: not empty and holds no cluster (no cluster.toml)",
                    dir.display()
                )
                .into());
            }
            let hsm = a.hsm.unwrap_or_default();
            eprintln!(
                "custody dev: creating a development cluster in {} ({}; CA key on disk)",
                dir.display(),
                match hsm {
                    cluster::Hsm::Software => "INSECURE: software sealing",
                    cluster::Hsm::Softhsm => "a SoftHSM2 token per signer",
                }
            );
            cluster::init(&layout, n, t, hsm)?
        }
    };
    if a.init_only {
        println!(
            "custody dev: cluster in {} ({} signers, threshold {}); not started (--init-only)",
            dir.display(),
            file.signers,
            file.threshold
        );
        return Ok(());
    }

    // The logs' directory may have been cleaned away since the cluster was made.
    std::fs::create_dir_all(layout.logs())
        .map_err(|e| format!("{}: {e}", layout.logs().display()))?;
    let mut procs: Vec<Proc> = Vec::new();
    let started = start_all(&layout, &file, &mut procs).await;
    let addr = match started {
        Ok(addr) => addr,
        Err(e) => {
            stop_all(&mut procs).await;
            return Err(e);
        }
    };
    let console = std::fs::read_to_string(layout.coordinator_dir().join("console-addr"))
        .map(|a| {
            format!(
                ", console https://{} (sign in: custody console --cluster {})",
                a.trim(),
                dir.display()
            )
        })
        .unwrap_or_default();
    println!(
        "custody dev: cluster ready: coordinator {addr}{console}, {} signers, threshold {}, sealing {}, dir {} (logs in {}; try: custody key create --cluster {} --suite secp256k1-tr)",
        file.signers,
        file.threshold,
        match file.hsm {
            cluster::Hsm::Software => "INSECURE software",
            cluster::Hsm::Softhsm => "SoftHSM2 (PKCS#11)",
        },
        dir.display(),
        layout.logs().display(),
        dir.display()
    );

    let mut metrics = Vec::new();
    for p in &procs {
        if let Ok(a) = std::fs::read_to_string(dir.join(&p.name).join("metrics-addr")) {
            metrics.push(format!("{} http://{}/metrics", p.name, a.trim()));
        }
    }
    if !metrics.is_empty() {
        eprintln!("custody dev: Prometheus metrics: {}", metrics.join(", "));
    }

    // Run until interrupted; report children that die (the cluster tolerates n - t).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut reported = vec![false; procs.len()];
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                for (i, p) in procs.iter_mut().enumerate() {
                    if !reported[i] {
                        if let Ok(Some(status)) = p.child.try_wait() {
                            eprintln!("custody dev: {} exited ({status}); see {}", p.name, log_path(&layout, &p.name).display());
                            reported[i] = true;
                        }
                    }
                }
            }
        }
    }
    eprintln!("custody dev: stopping");
    stop_all(&mut procs).await;
    Ok(())
}

fn log_path(layout: &Layout, name: &str) -> PathBuf {
    layout.logs().join(format!("{name}.log"))
}

async fn start_all(
    layout: &Layout,
    file: &cluster::ClusterFile,
    procs: &mut Vec<Proc>,
) -> Result<String, Error> {
    let mut ready = Vec::new();
    for i in 1..=file.signers {
        let name = Layout::signer_name(i);
        let r = layout.signer_dir(i).join("ready");
        procs.push(spawn(
            layout,
            "signer",
            &name,
            &layout.signer_config(i),
            &r,
        )?);
        ready.push(r);
    }
    for (i, r) in ready.iter().enumerate() {
        wait_ready(layout, &mut procs[i], r).await?;
    }
    let r = layout.coordinator_dir().join("ready");
    procs.push(spawn(
        layout,
        "coordinator",
        "coordinator",
        &layout.coordinator_config(),
        &r,
    )?);
    let last = procs.len() - 1;
    let addr = wait_ready(layout, &mut procs[last], &r).await?;
    cluster::ensure_payments(layout)?;
    ensure_settlement_key(layout, &addr).await?;
    let r = layout.payments_dir().join("ready");
    procs.push(spawn(
        layout,
        "payments",
        "payments",
        &layout.payments_config(),
        &r,
    )?);
    let last = procs.len() - 1;
    wait_ready(layout, &mut procs[last], &r).await?;
    Ok(addr)
}

/// Gives the payments daemon a settlement key on first start: a hot secp256k1-tr key
/// that signs only settlement headers (no raw messages), every currency within generous
/// development limits.
async fn ensure_settlement_key(layout: &Layout, coordinator: &str) -> Result<(), Error> {
    let mut config = custody_payments::Config::load(&layout.payments_config())?;
    if config.settlement.is_some() {
        return Ok(());
    }
    let assets: serde_json::Map<String, serde_json::Value> = custody_payments::model::CURRENCIES
        .iter()
        .map(|c| {
            (
                c.to_string(),
                serde_json::json!({ "per_request": 1_000_000_000_000_000u64, "per_window": 10_000_000_000_000_000u64, "window_secs": 86400 }),
            )
        })
        .collect();
    let policy = serde_json::json!({
        "tier": "hot", "allow_raw": false, "allowlist": null, "assets": assets,
        "approvals": null, "time_lock_secs": 0, "max_age_secs": null, "max_signatures": null,
    });
    let ch = tonic::transport::Endpoint::from_shared(format!("https://{coordinator}"))?
        .tls_config(layout.tls("operator").client()?)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(120))
        .connect()
        .await?;
    let key = custody_protocol::proto::custody_client::CustodyClient::new(ch)
        .create_key(custody_protocol::proto::CreateKeyRequest {
            suite: "secp256k1-tr".into(),
            name: "settlement".into(),
            policy: policy.to_string(),
            ..Default::default()
        })
        .await
        .map_err(|st| format!("creating the settlement key: {}", st.message()))?
        .into_inner();
    config.settlement = Some(custody_payments::config::SettlementConfig {
        key_id: key.key_id,
        coordinator_addr_file: Some(custody_coordinator::addr_file(&layout.coordinator_dir())),
        coordinator: None,
        client_tls: layout.tls("payments"),
        public_key: Some(hex::encode(&key.public_key)),
    });
    let text = toml::to_string_pretty(&config)?;
    std::fs::write(layout.payments_config(), text)?;
    Ok(())
}

fn spawn(
    layout: &Layout,
    cmd: &str,
    name: &str,
    config: &Path,
    ready: &Path,
) -> Result<Proc, Error> {
    let _ = std::fs::remove_file(ready);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(layout, name))?;
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .arg(cmd)
        .arg("--config")
        .arg(config)
        .arg("--ready-file")
        .arg(ready)
        .arg("--stop-on-stdin-eof")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting {name}: {e}"))?;
    Ok(Proc {
        name: name.to_string(),
        child,
    })
}

async fn wait_ready(layout: &Layout, p: &mut Proc, ready: &Path) -> Result<String, Error> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(addr) = std::fs::read_to_string(ready) {
            return Ok(addr.trim().to_string());
        }
        if let Ok(Some(status)) = p.child.try_wait() {
            let log = log_path(layout, &p.name);
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let last = tail
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .to_string();
            return Err(format!(
                "{} exited during start ({status}): {last} (log: {})",
                p.name,
                log.display()
            )
            .into());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} did not start within {} s",
                p.name,
                START_TIMEOUT.as_secs()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Closes every child's standard input (they shut down gracefully), then waits; kills
/// what is still running after the timeout. The coordinator goes first.
async fn stop_all(procs: &mut [Proc]) {
    for p in procs.iter_mut().rev() {
        drop(p.child.stdin.take());
    }
    for p in procs.iter_mut().rev() {
        match tokio::time::timeout(STOP_TIMEOUT, p.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("custody dev: {} did not stop in time; killing it", p.name);
                let _ = p.child.kill().await;
            }
        }
    }
}
