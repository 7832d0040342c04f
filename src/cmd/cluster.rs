//! The layout of a cluster directory, as `custody dev` creates it and client commands
//! (`--cluster DIR`) read it:
//!
//! ```text
//! DIR/cluster.toml                 signers, threshold
//! DIR/pki/ca.pem, ca.key           the cluster CA (dev only: in production it stays offline)
//! DIR/pki/<name>.pem, <name>.key   coordinator, signer-N, operator, auditor, payment-backend
//! DIR/signer-N/signer.toml         each signer's config and data (sealed shares, identity)
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
}

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

/// Creates a whole development cluster: CA, signer and coordinator identities and
/// certificates, client certificates, and every config. Software sealing: development
/// only.
pub fn init(layout: &Layout, signers: u16, threshold: u16) -> Result<ClusterFile, Error> {
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
            sealer: SealerConfig::InsecureSoftware {
                key_file: dir.join("INSECURE-sealing.key"),
            },
            fault_injection: None,
        };
        let identity = custody_signer::init_identity(&config)?;
        ca.issue(&pki, &name, Role::Signer, Some(&identity))?;
        write_toml(&layout.signer_config(i), &config)?;
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
    };
    config.check()?;
    let identity = custody_coordinator::init_identity(&config)?;
    ca.issue(&pki, "coordinator", Role::Coordinator, Some(&identity))?;
    write_toml(&layout.coordinator_config(), &config)?;
    for (name, role) in [
        ("operator", Role::Operator),
        ("auditor", Role::Auditor),
        ("payment-backend", Role::PaymentBackend),
    ] {
        ca.issue(&pki, name, role, None)?;
    }
    let file = ClusterFile { signers, threshold };
    // Written last: its presence means the directory holds a complete cluster.
    write_toml(&layout.cluster_file(), &file)?;
    Ok(file)
}
