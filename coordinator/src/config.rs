//! Coordinator configuration (TOML, unknown fields refused).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use custody_hsm::SealerConfig;
pub use custody_pki::TlsFiles;

/// `coordinator.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The coordinator's name; must match the name in its certificate.
    pub name: String,
    /// Address to listen on for clients. Port 0: the OS picks one (kept across restarts
    /// when possible, see `listen-addr` in the data directory).
    pub listen: SocketAddr,
    /// Key metadata, signing results, transcripts, the sealed identity.
    pub data_dir: PathBuf,
    /// Threshold of new keys when a request does not name one.
    pub default_threshold: u16,
    /// mTLS files.
    pub tls: TlsFiles,
    /// How the coordinator's identity key is sealed at rest.
    pub sealer: SealerConfig,
    /// The signers, in the order that fixes their default participant ids.
    pub signers: Vec<SignerEndpoint>,
    /// Timeouts (milliseconds); defaults suit a LAN.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Prometheus metrics (`GET /metrics`, plain HTTP) on this address; none by
    /// default. Keep it on loopback or a monitoring network: it names signers and shows
    /// volumes. Port 0: the OS picks one (written to `metrics-addr` in the data dir).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// The operator console (HTTPS with this coordinator's certificate; operators and
    /// auditors sign in with `custody console`); none by default. Port 0: the OS picks
    /// one (written to `console-addr` in the data dir).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_listen: Option<SocketAddr>,
}

/// Where one signer listens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerEndpoint {
    /// The signer's name, as in its certificate.
    pub name: String,
    /// `host:port` of the signer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Or: a file holding `host:port`, re-read on every reconnect (used by
    /// `custody dev`, whose signers listen on ports chosen by the OS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr_file: Option<PathBuf>,
}

/// Timeouts in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Connecting to a signer.
    pub connect_ms: u64,
    /// One signing RPC to one signer (commitments or a share); past it the coordinator
    /// tries another quorum.
    pub sign_ms: u64,
    /// One DKG step on one signer.
    pub dkg_ms: u64,
    /// How long a signer that failed is passed over when choosing quorums.
    pub backoff_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_ms: 1_000,
            sign_ms: 2_000,
            dkg_ms: 30_000,
            backoff_ms: 2_000,
        }
    }
}

impl Timeouts {
    pub(crate) fn connect(&self) -> Duration {
        Duration::from_millis(self.connect_ms)
    }
    pub(crate) fn sign(&self) -> Duration {
        Duration::from_millis(self.sign_ms)
    }
    pub(crate) fn dkg(&self) -> Duration {
        Duration::from_millis(self.dkg_ms)
    }
    pub(crate) fn backoff(&self) -> Duration {
        Duration::from_millis(self.backoff_ms)
    }
}

impl Config {
    /// Reads and parses a config file, and checks it.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses and checks a config's text (TOML; unknown keys are refused).
    pub fn parse(text: &str) -> Result<Config, String> {
        let cfg: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Checks what serde cannot: every signer has exactly one address source, names are
    /// unique, the default threshold fits, timeouts are at most an hour (and not 0, but
    /// for the back-off).
    pub fn check(&self) -> Result<(), String> {
        if self.signers.is_empty() {
            return Err("signers: at least one signer is required".into());
        }
        let mut names = std::collections::HashSet::new();
        for s in &self.signers {
            if !names.insert(s.name.as_str()) {
                return Err(format!("signers: {} is listed twice", s.name));
            }
            if s.endpoint.is_some() == s.addr_file.is_some() {
                return Err(format!(
                    "signers.{}: give exactly one of endpoint and addr_file",
                    s.name
                ));
            }
        }
        let n = self.signers.len();
        if n > custody_protocol::wire::MAX_PARTICIPANTS {
            return Err(format!(
                "signers: {n} configured, at most {} allowed",
                custody_protocol::wire::MAX_PARTICIPANTS
            ));
        }
        if self.default_threshold < 2 || self.default_threshold as usize > n {
            return Err(format!(
                "default_threshold {}: need 2 <= t <= {n} (the number of signers)",
                self.default_threshold
            ));
        }
        // A zero timeout fails every call; one past an hour hangs a request for good.
        // A zero back-off is meaningful: a failed signer is not passed over.
        for (name, ms, least) in [
            ("connect_ms", self.timeouts.connect_ms, 1),
            ("sign_ms", self.timeouts.sign_ms, 1),
            ("dkg_ms", self.timeouts.dkg_ms, 1),
            ("backoff_ms", self.timeouts.backoff_ms, 0),
        ] {
            if ms < least || ms > 3_600_000 {
                return Err(format!(
                    "timeouts.{name} = {ms}: need {least}..=3600000 (milliseconds)"
                ));
            }
        }
        if let Some(a) = self.console_listen {
            if a.ip().is_unspecified() {
                return Err(format!(
                    "console_listen {a}: give the address operators reach (its sign-in links name it), not an unspecified one"
                ));
            }
        }
        Ok(())
    }
}
