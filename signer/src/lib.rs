//! # custody-signer: the signer daemon
//!
//! A signer holds one share of each key it took part in generating, runs its side of
//! DKG and signing, and trusts the coordinator with nothing:
//! - it answers only callers whose certificate says `coordinator` (mTLS, cluster CA);
//! - it takes peers' identity keys only from CA-signed certificates, never from the
//!   coordinator's word;
//! - round-2 shares reach it sealed end to end; envelopes prove who sent what;
//! - shares are sealed at rest (`custody-hsm`) and written durably before it confirms a
//!   DKG; a key becomes active only when every participant confirmed the same key;
//! - nonces live in memory only, are removed at first use and die with the process.
//!
//! [`run`] serves until `shutdown` resolves; `custody signer` is a thin wrapper.

pub mod config;
mod service;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;

pub use config::Config;

/// Errors that stop a signer from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration or files.
    #[error("{0}")]
    Config(String),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The server failed.
    #[error("server: {0}")]
    Serve(String),
}

/// Loads (or creates) the signer's identity and returns its public half, so an operator
/// tool can have the CA certify it.
pub fn init_identity(config: &Config) -> Result<custody_protocol::IdentityPublic, StartError> {
    use custody_protocol::Identity;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| StartError::Config(format!("{}: {e}", config.data_dir.display())))?;
    let sealer = config
        .sealer
        .open()
        .map_err(|e| StartError::Config(e.to_string()))?;
    let key = custody_pki::load_or_create_identity(
        &config.data_dir.join("identity.sealed"),
        sealer.as_ref(),
        &store::identity_aad(&config.name),
    )
    .map_err(|e| StartError::Config(e.to_string()))?;
    Ok(key.public())
}

/// The file where a running signer writes the address it listens on.
pub fn addr_file(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("listen-addr")
}

/// Runs the signer until `shutdown` resolves. `on_ready` is called with the bound
/// address once the signer accepts connections.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(SocketAddr) + Send,
) -> Result<(), StartError> {
    service::serve(config, shutdown, on_ready).await
}
