//! The layout of a cluster directory, as `custody dev` creates it and client commands
//! (`--cluster DIR`) read it:
//!
//! ```text
//! DIR/cluster.toml                 signers, threshold
//! DIR/pki/ca.pem, ca.key           the cluster CA (dev only: in production it stays offline)
//! DIR/pki/<name>.pem, <name>.key   coordinator, signer-N, operator, auditor, payment-backend
//! DIR/signer-N/signer.toml         each signer's config and data (sealed shares, identity)
//! DIR/signer-N/softhsm/            with `--hsm softhsm`: the signer's own SoftHSM2 token
//! DIR/signer-N/token.pin           and its user PIN (0600)
//! DIR/coordinator/coordinator.toml the coordinator's config and data
//! DIR/logs/<name>.log              daemon logs
//! ```

use std::path::{Path, PathBuf};

use custody_hsm::SealerConfig;
use custody_pki::{Ca, Role, TlsFiles};
use serde::{Deserialize, Serialize};

use super::Error;

/// `DIR/cluster.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Number of signers.
    pub signers: u16,
    /// Default threshold of new keys.
    pub threshold: u16,
    /// How the signers seal their secrets.
    #[serde(default)]
    pub hsm: Hsm,
}

/// How a development cluster's signers seal their secrets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Hsm {
    /// The INSECURE software sealer (a key file in each signer's directory).
    #[default]
    Software,
    /// A SoftHSM2 token per signer, through PKCS#11 (needs `softhsm2`).
    Softhsm,
}

/// Where Debian and Ubuntu install the SoftHSM2 module.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Paths inside a cluster directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: &Path) -> Self {
        Layout {
            dir: dir.to_path_buf(),
        }
    }
    pub fn cluster_file(&self) -> PathBuf {
        self.dir.join("cluster.toml")
    }
    pub fn pki(&self) -> PathBuf {
        self.dir.join("pki")
    }
    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }
    pub fn tls(&self, name: &str) -> TlsFiles {
        TlsFiles::in_dir(&self.pki(), name)
    }
    pub fn signer_name(i: u16) -> String {
        format!("signer-{i}")
    }
    pub fn signer_dir(&self, i: u16) -> PathBuf {
        self.dir.join(Self::signer_name(i))
    }
    pub fn signer_config(&self, i: u16) -> PathBuf {
        self.signer_dir(i).join("signer.toml")
    }
    pub fn payments_dir(&self) -> PathBuf {
        self.dir.join("payments")
    }
    pub fn payments_config(&self) -> PathBuf {
        self.payments_dir().join("payments.toml")
    }
    /// The payments daemon's current address, as it wrote it.
    pub fn payments_addr(&self) -> Result<String, Error> {
        let f = custody_pki::server::addr_file(&self.payments_dir());
        std::fs::read_to_string(&f)
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("{}: {e} (is the cluster running?)", f.display()).into())
    }
    pub fn coordinator_dir(&self) -> PathBuf {
        self.dir.join("coordinator")
    }
    pub fn coordinator_config(&self) -> PathBuf {
        self.coordinator_dir().join("coordinator.toml")
    }
    /// The coordinator's current address, as it wrote it.
    pub fn coordinator_addr(&self) -> Result<String, Error> {
        let f = custody_coordinator::addr_file(&self.coordinator_dir());
        std::fs::read_to_string(&f)
            .map(|s| s.trim().to_string())
            .map_err(|e| {
                format!(
                    "{}: {e} (is the cluster running? start it with `custody dev --dir {}`)",
                    f.display(),
                    self.dir.display()
                )
                .into()
            })
    }

    /// Reads `cluster.toml`, if the directory holds a cluster.
    pub fn load(&self) -> Result<Option<ClusterFile>, Error> {
        let f = self.cluster_file();
        if !f.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        Ok(Some(
            toml::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?,
        ))
    }
}

fn write_toml<T: Serialize>(path: &Path, v: &T) -> Result<(), Error> {
    let text = toml::to_string_pretty(v)?;
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()).into())
}

/// Runs `custody <daemon> --config CONFIG --print-identity` and parses the identity. A
/// separate process, because a PKCS#11 module is configured by its environment once
/// per process, and each signer has its own token.
fn daemon_identity(daemon: &str, config: &Path) -> Result<custody_protocol::IdentityPublic, Error> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .arg(daemon)
        .arg("--config")
        .arg(config)
        .arg("--print-identity")
        .stdin(std::process::Stdio::null())
        .output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(format!(
            "{daemon} {}: creating its identity failed: {last}",
            config.display()
        )
        .into());
    }
    let hex_id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let bytes = hex::decode(&hex_id).map_err(|e| format!("{daemon} identity: {e}"))?;
    Ok(custody_protocol::IdentityPublic::from_bytes(&bytes)
        .map_err(|e| format!("{daemon} identity: {e}"))?)
}

/// Creates signer `name`'s SoftHSM2 token in `dir/softhsm` with a random user PIN in
/// `dir/token.pin` (0600), and returns the sealer config that uses it.
fn softhsm_token(dir: &Path, name: &str) -> Result<SealerConfig, Error> {
    use rand_core::RngCore;
    if !Path::new(SOFTHSM_MODULE).exists() {
        return Err(format!(
            "--hsm softhsm: {SOFTHSM_MODULE} is missing (apt-get install softhsm2)"
        )
        .into());
    }
    let tokens = dir.join("softhsm/tokens");
    std::fs::create_dir_all(&tokens).map_err(|e| format!("{}: {e}", tokens.display()))?;
    let conf = dir.join("softhsm/softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .map_err(|e| format!("{}: {e}", conf.display()))?;
    let random = || {
        let mut b = [0u8; 16];
        rand_core::OsRng.fill_bytes(&mut b);
        hex::encode(b)
    };
    let (pin, so_pin) = (
        zeroize::Zeroizing::new(random()),
        zeroize::Zeroizing::new(random()),
    );
    let out = std::process::Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            name,
            "--so-pin",
            &so_pin,
            "--pin",
            &pin,
        ])
        .env("SOFTHSM2_CONF", &conf)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            format!("--hsm softhsm: running softhsm2-util: {e} (apt-get install softhsm2)")
        })?;
    if !out.status.success() {
        return Err(format!(
            "softhsm2-util --init-token {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    let pin_file = dir.join("token.pin");
    custody_hsm::write_private(&pin_file, pin.as_bytes())
        .map_err(|e| format!("{}: {e}", pin_file.display()))?;
    Ok(SealerConfig::Pkcs11 {
        module: SOFTHSM_MODULE.into(),
        token_label: name.to_string(),
        key_label: "custody-sealing-key".into(),
        pin_file: Some(pin_file),
        pin_env: None,
        module_env: [("SOFTHSM2_CONF".to_string(), conf.display().to_string())].into(),
    })
}

/// Creates a whole development cluster: CA, signer and coordinator identities and
/// certificates, client certificates, and every config. The CA key stays in the
/// directory and, without `hsm`, secrets are sealed in software: development only.
pub fn init(layout: &Layout, signers: u16, threshold: u16, hsm: Hsm) -> Result<ClusterFile, Error> {
    let pki = layout.pki();
    for d in [&layout.dir, &pki, &layout.logs()] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let ca = Ca::create(&pki, "dev")?;
    let listen: std::net::SocketAddr = "127.0.0.1:0".parse()?;
    let mut endpoints = Vec::new();
    for i in 1..=signers {
        let name = Layout::signer_name(i);
        let dir = layout.signer_dir(i);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let config = custody_signer::Config {
            name: name.clone(),
            listen,
            data_dir: dir.clone(),
            tls: layout.tls(&name),
            sealer: match hsm {
                Hsm::Software => SealerConfig::InsecureSoftware {
                    key_file: dir.join("INSECURE-sealing.key"),
                },
                Hsm::Softhsm => softhsm_token(&dir, &name)?,
            },
            fault_injection: None,
            metrics_listen: Some(listen),
        };
        write_toml(&layout.signer_config(i), &config)?;
        let identity = daemon_identity("signer", &layout.signer_config(i))?;
        ca.issue(&pki, &name, Role::Signer, Some(&identity))?;
        endpoints.push(custody_coordinator::config::SignerEndpoint {
            name,
            endpoint: None,
            addr_file: Some(custody_signer::addr_file(&dir)),
        });
    }
    let cdir = layout.coordinator_dir();
    std::fs::create_dir_all(&cdir).map_err(|e| format!("{}: {e}", cdir.display()))?;
    let config = custody_coordinator::Config {
        name: "coordinator".into(),
        listen,
        data_dir: cdir.clone(),
        default_threshold: threshold,
        tls: layout.tls("coordinator"),
        sealer: SealerConfig::InsecureSoftware {
            key_file: cdir.join("INSECURE-sealing.key"),
        },
        signers: endpoints,
        timeouts: Default::default(),
        metrics_listen: Some(listen),
        console_listen: Some(listen),
    };
    config.check()?;
    write_toml(&layout.coordinator_config(), &config)?;
    let identity = daemon_identity("coordinator", &layout.coordinator_config())?;
    ca.issue(&pki, "coordinator", Role::Coordinator, Some(&identity))?;
    for (name, role) in [
        ("operator", Role::Operator),
        ("auditor", Role::Auditor),
        ("payment-backend", Role::PaymentBackend),
        ("approver", Role::Approver),
    ] {
        ca.issue(&pki, name, role, None)?;
    }
    ensure_payments(layout)?;
    let file = ClusterFile {
        signers,
        threshold,
        hsm,
    };
    // Written last: its presence means the directory holds a complete cluster.
    write_toml(&layout.cluster_file(), &file)?;
    Ok(file)
}

/// Creates the payments daemon's directory, config and certificate, and the
/// detokenizer's client certificate, if the cluster has none yet (clusters made before
/// payments existed get them on their next start).
pub fn ensure_payments(layout: &Layout) -> Result<(), Error> {
    if layout.payments_config().exists() {
        return Ok(());
    }
    let dir = layout.payments_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let pki = layout.pki();
    let ca = Ca::load(&pki)?;
    ca.issue(&pki, "payments", Role::Payments, None)?;
    ca.issue(&pki, "detokenizer", Role::Detokenizer, None)?;
    let config = custody_payments::Config {
        name: "payments".into(),
        listen: "127.0.0.1:0".parse().expect("address"),
        data_dir: dir.clone(),
        tls: layout.tls("payments"),
        sealer: SealerConfig::InsecureSoftware {
            key_file: dir.join("INSECURE-sealing.key"),
        },
        // A development cluster closes batches quickly, to show them.
        batch: custody_payments::config::BatchConfig {
            max_count: 10_000,
            max_age_secs: 2,
        },
        // Filled in by `custody dev` once the coordinator runs (a key needs a DKG).
        settlement: None,
        metrics_listen: Some("127.0.0.1:0".parse().expect("address")),
    };
    write_toml(&layout.payments_config(), &config)
}
