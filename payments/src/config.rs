//! `payments.toml` (unknown fields refused).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use custody_hsm::SealerConfig;
pub use custody_pki::TlsFiles;

/// The payments daemon's configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Its name; must match its certificate (role `payments`).
    pub name: String,
    /// Where it listens (port 0: the OS picks, kept across restarts when possible).
    pub listen: SocketAddr,
    /// Payments, tokens and batches.
    pub data_dir: PathBuf,
    /// mTLS files.
    pub tls: TlsFiles,
    /// How card and account data are sealed at rest (PKCS#11 where configured).
    pub sealer: SealerConfig,
    /// When batches close.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Who signs batch headers (without it, batches stay `closed`, unsigned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settlement: Option<SettlementConfig>,
    /// Prometheus metrics (`GET /metrics`, plain HTTP) on this address; none by
    /// default. Port 0: the OS picks one (written to `metrics-addr` in the data dir).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
}

/// The threshold key that signs settlement batch headers, and how to reach the
/// coordinator (as a payment backend).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettlementConfig {
    /// The key.
    pub key_id: String,
    /// The file where the coordinator writes its address (or give `coordinator`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator_addr_file: Option<PathBuf>,
    /// The coordinator's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<String>,
    /// Client certificate for the coordinator (role `payments`: only it may ask for
    /// settlements).
    pub client_tls: TlsFiles,
    /// The settlement key's public key (hex), pinned: a coordinator that reports
    /// another is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

/// A batch closes when this many payments wait, or when the oldest has waited this
/// long. A key left out of a `[batch]` table keeps its default.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Most payments in a batch.
    pub max_count: usize,
    /// Longest wait of a payment before its batch closes, seconds.
    pub max_age_secs: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_count: 10_000,
            max_age_secs: 60,
        }
    }
}

impl Config {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses and checks a config's text.
    pub fn parse(text: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        if c.batch.max_count == 0 || c.batch.max_count > 1_000_000 {
            return Err("batch.max_count: 1 to 1000000".into());
        }
        if c.batch.max_age_secs == 0 || c.batch.max_age_secs > 86_400 * 365 {
            return Err("batch.max_age_secs: 1 to 31536000".into());
        }
        if let Some(s) = &c.settlement {
            // Two sources would leave one silently unused; none would fail every
            // settlement attempt, long after start.
            if s.coordinator.is_some() == s.coordinator_addr_file.is_some() {
                return Err(
                    "settlement: give exactly one of coordinator and coordinator_addr_file".into(),
                );
            }
            custody_protocol::api::check_id("settlement.key_id", &s.key_id)
                .map_err(|st| st.message().to_string())?;
            if let Some(pk) = &s.public_key {
                if pk.len() != 64 || hex::decode(pk).is_err() {
                    return Err(format!(
                        "settlement.public_key: 64 hex digits (32 bytes) expected, got {pk:?}"
                    ));
                }
            }
        }
        Ok(c)
    }
}
