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
//!
//! ## Layout
//!
//! A core with thin adapters (STYLE.md, "Daemons"):
//!
//! | file | holds |
//! |---|---|
//! | `grpc.rs` | the gRPC adapter: authorize, convert to typed asks, call the core, map the error |
//! | `cold.rs` | the offline file adapter (air-gapped signing): the same asks and core checks |
//! | `server.rs` | the listener, mTLS and metrics wiring |
//! | `error.rs` | the one error enum; its conversion to a status is the only place that picks codes and metadata |
//! | `core.rs` | the signer's state and the helpers every ceremony shares |
//! | `keys.rs`, `suites.rs` | loaded keys typed by suite (no run-time downcasts); the suites as types |
//! | `sessions.rs` | what a ceremony keeps between steps: typed DKG stages, repair state |
//! | `dkg.rs`, `refresh.rs`, `repair.rs`, `signing.rs` | one file per ceremony |
//! | `admission.rs` | reads the store, calls `hot_warm_cold::admit` (the rules), stores its plan |
//! | `lifecycle.rs` | operator lifecycle events and admin-approved policy changes |
//! | `nonces.rs` | the nonce pool (each nonce handed out once) |
//! | `store.rs` | the only file that names `sled` |
//! | `fault.rs` | fault injection, compiled only with the `fault-injection` feature (tests) |

mod admission;
mod cold;
pub mod config;
mod core;
mod dkg;
mod error;
mod fault;
mod grpc;
mod keys;
mod lifecycle;
mod nonces;
mod refresh;
mod repair;
mod server;
mod sessions;
mod signing;
pub mod store;
mod suites;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;

pub use config::Config;
pub use grpc::SignerApi;

pub use custody_pki::StartError;

/// Loads (or creates) the signer's identity and returns its public half, so an operator
/// tool can have the CA certify it.
pub fn init_identity(config: &Config) -> Result<custody_protocol::IdentityPublic, StartError> {
    Ok(core::open_identity(config)?.0.public())
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
    server::serve(config, shutdown, on_ready).await
}

/// Answers one request file of an air-gapped (cold) signature and returns the response
/// file's bytes. Opens the signer's state without listening anywhere; the signer
/// daemon must not run meanwhile.
pub async fn offline(config: &Config, request: &[u8]) -> Result<Vec<u8>, String> {
    cold::offline(config, request).await
}
