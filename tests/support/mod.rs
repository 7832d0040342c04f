//! A real cluster for black-box tests: `custody dev` and the daemons run as separate
//! processes of the real binary on 127.0.0.1 ports chosen by the OS. Every wait is
//! bounded; dropping a [`Cluster`] kills what it started and removes its directory.

#![allow(dead_code)]

pub mod inproc;
pub mod rogue;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_custody");

/// How long a cluster may take to come up.
const START: Duration = Duration::from_secs(120);

#[derive(Debug)]
pub struct Cluster {
    pub dir: PathBuf,
    dev: Child,
    extra: Vec<Child>,
}

impl Cluster {
    /// Starts `custody dev` with `n` signers and threshold `t` in a fresh directory.
    pub fn start(name: &str, n: u16, t: u16) -> Cluster {
        Self::start_with(name, n, t, &[])
    }

    /// Like [`Cluster::start`], with more `custody dev` arguments.
    pub fn start_with(name: &str, n: u16, t: u16, extra: &[&str]) -> Cluster {
        let dir = std::env::temp_dir().join(format!("custody-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (n, t) = (n.to_string(), t.to_string());
        let mut args = vec!["--signers", n.as_str(), "--threshold", t.as_str()];
        args.extend_from_slice(extra);
        let dev = Self::spawn_dev(&dir, &args);
        Cluster {
            dir,
            dev,
            extra: Vec::new(),
        }
    }

    /// Starts `custody dev` on a copy of a cluster directory made by an earlier
    /// version (`tests/fixtures/VERSION/cluster`, its configs' paths written as
    /// `@DIR@`), to test that what it stored still opens and signs.
    pub fn from_fixture(name: &str, fixture: &Path) -> Cluster {
        let dir = std::env::temp_dir().join(format!("custody-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        copy_tree(fixture, &dir, &dir.to_string_lossy());
        let dev = Self::spawn_dev(&dir, &[]);
        Cluster {
            dir,
            dev,
            extra: Vec::new(),
        }
    }

    fn spawn_dev(dir: &Path, extra: &[&str]) -> Child {
        std::fs::create_dir_all(dir).expect("test dir");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.with_extension("dev-stderr.log"))
            .expect("stderr log");
        let mut dev = Command::new(BIN)
            .arg("dev")
            .arg("--dir")
            .arg(dir)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("start custody dev");
        let stdout = dev.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(START)
            .expect("custody dev printed its ready line in time");
        let err = std::fs::read_to_string(dir.with_extension("dev-stderr.log")).unwrap_or_default();
        assert!(
            line.contains("cluster ready"),
            "custody dev: {line:?} {err}"
        );
        dev
    }

    /// Stops `custody dev` (and so every daemon it started) and starts it again on the
    /// same directory.
    pub fn restart_all(&mut self) {
        for mut c in self.extra.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.dev.kill();
        let _ = self.dev.wait();
        for name in self.daemon_names() {
            self.wait_gone(&name);
        }
        self.dev = Self::spawn_dev(&self.dir, &[]);
    }

    /// The signer and coordinator directories' names (`coordinator`, `signer-1`, …).
    pub fn daemon_names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| n.starts_with("signer-") || n == "coordinator")
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Runs the CLI with `args` (plus `--cluster DIR` after the subcommand words).
    pub fn cli(&self, args: &[&str]) -> Output {
        let split = args
            .iter()
            .position(|a| a.starts_with("--"))
            .unwrap_or(args.len());
        Command::new(BIN)
            .args(&args[..split])
            .arg("--cluster")
            .arg(&self.dir)
            .args(&args[split..])
            .stdin(Stdio::null())
            .output()
            .expect("run custody")
    }

    /// Runs the CLI with exactly `args` (offline commands take no `--cluster`).
    pub fn offline(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run custody")
    }

    /// Runs the CLI, expects success and one JSON value on stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "custody {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "custody {args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Runs the CLI, expects failure, returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(!out.status.success(), "custody {args:?} should have failed");
        String::from_utf8_lossy(&out.stderr).to_string()
    }

    pub fn pid(&self, daemon: &str) -> u32 {
        std::fs::read_to_string(self.dir.join(daemon).join("pid"))
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid")
    }

    /// `kill -9` a daemon (`signer-3`, `coordinator`) and waits until it is gone.
    pub fn kill(&self, daemon: &str) {
        let pid = self.pid(daemon);
        let st = Command::new("kill")
            .arg("-9")
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(st.success(), "kill -9 {daemon} ({pid})");
        self.wait_gone(daemon);
    }

    fn wait_gone(&self, daemon: &str) {
        let Ok(pid) = std::fs::read_to_string(self.dir.join(daemon).join("pid")) else {
            return;
        };
        let proc_dir = PathBuf::from(format!("/proc/{}", pid.trim()));
        let deadline = Instant::now() + Duration::from_secs(20);
        while proc_dir.exists() && Instant::now() < deadline {
            // A zombie (exited, not yet reaped by its parent) no longer serves, once
            // all its threads are gone: the leader turns zombie first, and a thread
            // still finishing an fsync keeps the files (and the database lock) open.
            if let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat")) {
                let threads = std::fs::read_dir(proc_dir.join("task"))
                    .map(|d| d.count())
                    .unwrap_or(0);
                if stat.split_whitespace().nth(2) == Some("Z") && threads <= 1 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !proc_dir.exists(),
            "{daemon} ({}) is still running 20 s after kill -9; its log ends:\n{}",
            pid.trim(),
            self.log_tail(daemon)
        );
    }

    /// Starts a daemon again (after [`Cluster::kill`]) as a child of the test.
    pub fn restart(&mut self, daemon: &str) {
        let (cmd, config) = if daemon == "coordinator" {
            ("coordinator", self.dir.join("coordinator/coordinator.toml"))
        } else if daemon == "payments" {
            ("payments", self.dir.join("payments/payments.toml"))
        } else {
            ("signer", self.dir.join(daemon).join("signer.toml"))
        };
        let ready = self.dir.join(daemon).join("ready");
        let _ = std::fs::remove_file(&ready);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("logs").join(format!("{daemon}.log")))
            .expect("log");
        let child = Command::new(BIN)
            .arg(cmd)
            .arg("--config")
            .arg(&config)
            .arg("--ready-file")
            .arg(&ready)
            .arg("--stop-on-stdin-eof")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("restart daemon");
        self.extra.push(child);
        let deadline = Instant::now() + START;
        while !ready.exists() {
            let child = self.extra.last_mut().expect("child");
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{daemon} exited while restarting ({status}); its log ends:\n{}",
                    self.log_tail(daemon)
                );
            }
            assert!(
                Instant::now() < deadline,
                "{daemon} did not restart in time; its log ends:\n{}",
                self.log_tail(daemon)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of a daemon's log (for failure messages).
    pub fn log_tail(&self, daemon: &str) -> String {
        let log = std::fs::read_to_string(self.dir.join("logs").join(format!("{daemon}.log")))
            .unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `custody audit export --as auditor` into `DIR/<name>`; the file (asserts success).
    pub fn audit_export(&self, name: &str) -> PathBuf {
        let file = self.dir.join(name);
        let out = self.cli(&[
            "audit",
            "export",
            "--as",
            "auditor",
            "--out",
            file.to_str().expect("path"),
        ]);
        assert!(
            out.status.success(),
            "audit export: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        file
    }

    /// `custody audit verify FILE --ca DIR/pki/ca.pem --json` (offline): the report
    /// (asserts that everything checks).
    pub fn audit_verify(&self, file: &Path) -> serde_json::Value {
        let ca = self.dir.join("pki/ca.pem");
        let out = self.offline(&[
            "audit",
            "verify",
            file.to_str().expect("path"),
            "--ca",
            ca.to_str().expect("path"),
            "--json",
        ]);
        assert!(
            out.status.success(),
            "audit verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("verify report")
    }

    /// A daemon's log so far.
    pub fn log(&self, daemon: &str) -> String {
        std::fs::read_to_string(self.dir.join("logs").join(format!("{daemon}.log")))
            .unwrap_or_default()
    }

    /// The coordinator's address.
    pub fn coordinator_addr(&self) -> String {
        std::fs::read_to_string(self.dir.join("coordinator/listen-addr"))
            .expect("coordinator address")
            .trim()
            .to_string()
    }

    /// A daemon's listening address.
    pub fn addr(&self, daemon: &str) -> String {
        std::fs::read_to_string(self.dir.join(daemon).join("listen-addr"))
            .expect("address")
            .trim()
            .to_string()
    }

    /// TLS client config presenting the cluster certificate `name` (None: no
    /// certificate at all).
    pub fn tls(&self, name: Option<&str>) -> tonic::transport::ClientTlsConfig {
        let pki = self.dir.join("pki");
        let ca = std::fs::read_to_string(pki.join("ca.pem")).expect("ca");
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca))
            .domain_name("localhost");
        if let Some(name) = name {
            let cert = std::fs::read_to_string(pki.join(format!("{name}.pem"))).expect("cert");
            let key = std::fs::read_to_string(pki.join(format!("{name}.key"))).expect("key");
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        tls
    }

    /// A gRPC channel to `addr` presenting certificate `name`.
    pub async fn channel(
        &self,
        addr: &str,
        name: Option<&str>,
    ) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?
            .tls_config(self.tls(name))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(60))
            .connect()
            .await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.extra {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.dev.kill();
        let _ = self.dev.wait();
        // Daemons started by `custody dev` stop when its pipe closes; make sure.
        for name in self.daemon_names() {
            if let Ok(pid) = std::fs::read_to_string(self.dir.join(&name).join("pid")) {
                let stat = std::fs::read_to_string(format!("/proc/{}/cmdline", pid.trim()))
                    .unwrap_or_default();
                if stat.contains("custody") {
                    let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
                }
            }
        }
        // `CUSTODY_KEEP_CLUSTER=1` keeps the directory and its logs (to read daemons'
        // debug timings after a benchmark).
        if !std::thread::panicking() && std::env::var_os("CUSTODY_KEEP_CLUSTER").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
            let _ = std::fs::remove_file(self.dir.with_extension("dev-stderr.log"));
        }
    }
}

/// Copies `from` to `to`, replacing `@DIR@` by `dir` in the `.toml` files.
fn copy_tree(from: &Path, to: &Path, dir: &str) {
    std::fs::create_dir_all(to).expect("fixture copy");
    for e in std::fs::read_dir(from).expect("fixture dir") {
        let e = e.expect("fixture entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_tree(&e.path(), &target, dir);
        } else if e.path().extension().is_some_and(|x| x == "toml") {
            let text = std::fs::read_to_string(e.path()).expect("fixture config");
            std::fs::write(&target, text.replace("@DIR@", dir)).expect("fixture config copy");
        } else {
            std::fs::copy(e.path(), &target).expect("fixture file copy");
        }
    }
}

/// Checks a signature with an implementation independent of ours: `k256` BIP340 for
/// secp256k1-tr, `ed25519-dalek` strict verification for ed25519.
pub fn verify_independently(
    suite: &str,
    public_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> bool {
    match suite {
        "secp256k1-tr" => {
            let Ok(vk) = k256::schnorr::VerifyingKey::from_bytes(public_key) else {
                return false;
            };
            let Ok(sig) = k256::schnorr::Signature::try_from(signature) else {
                return false;
            };
            vk.verify_raw(message, &sig).is_ok()
        }
        "ed25519" => {
            let Ok(pk) = <[u8; 32]>::try_from(public_key) else {
                return false;
            };
            let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&pk) else {
                return false;
            };
            let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else {
                return false;
            };
            vk.verify_strict(message, &sig).is_ok()
        }
        other => panic!("unknown suite {other}"),
    }
}

pub fn hexs(v: &serde_json::Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("hex")
}
