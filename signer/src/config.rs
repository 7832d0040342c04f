//! Signer configuration (TOML, unknown fields refused).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use custody_hsm::SealerConfig;
pub use custody_pki::TlsFiles;

/// `signer.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This signer's name; must match the name in its certificate.
    pub name: String,
    /// Address to listen on. Port 0: the OS picks one (and the signer tries to keep it
    /// across restarts, see `listen-addr` in the data directory).
    pub listen: SocketAddr,
    /// Where shares (sealed), the sealed identity and the address file live.
    pub data_dir: PathBuf,
    /// mTLS files.
    pub tls: TlsFiles,
    /// How secrets are sealed at rest.
    pub sealer: SealerConfig,
    /// Deliberate misbehaviour, for tests of the coordinator's culprit detection only.
    /// Never set it on a signer that matters: the signer logs a loud warning at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_injection: Option<Fault>,
    /// Prometheus metrics (`GET /metrics`, plain HTTP) on this address; none by
    /// default. Port 0: the OS picks one (written to `metrics-addr` in the data dir).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
}

/// A deliberate misbehaviour (tests only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Every signature share is altered before it is signed into its envelope, so the
    /// envelope is valid but the share is wrong: the aggregator must name this signer.
    CorruptSignatureShares,
    /// DKG round 1: the proof of knowledge of our secret is wrong (in a validly signed
    /// envelope): every peer must name this signer and the DKG abort.
    BadProofOfKnowledge,
    /// DKG round 2: every encrypted share we send is garbage (in validly signed
    /// envelopes): each recipient must name this signer and the DKG abort.
    GarbageRound2,
    /// Signing: we never answer a share request (we stall): the coordinator must time
    /// out and sign with another quorum.
    StallSigning,
    /// Signing: from the second request on, we answer with our first share again (a
    /// replay): the coordinator must name this signer and sign with another quorum.
    ReplayShares,
}

impl Config {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses a config's text (TOML; unknown keys are refused).
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}
