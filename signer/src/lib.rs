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

pub use custody_pki::StartError;

/// Loads (or creates) the signer's identity and returns its public half, so an operator
/// tool can have the CA certify it.
pub fn init_identity(config: &Config) -> Result<custody_protocol::IdentityPublic, StartError> {
    Ok(service::open_identity(config)?.0.public())
}

/// The file where a running signer writes the address it listens on.
pub fn addr_file(data_dir: &Path) -> std::path::PathBuf {
    custody_pki::server::addr_file(data_dir)
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

/// Answers one request file of an air-gapped (cold) signature and returns the response
/// file's bytes. Opens the signer's state without listening anywhere; the signer
/// daemon must not run meanwhile.
pub async fn offline(config: &Config, request: &[u8]) -> Result<Vec<u8>, String> {
    service::offline(config, request).await
}
