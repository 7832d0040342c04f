//! # custody-coordinator: the coordinator daemon
//!
//! The coordinator serves the client-facing `custody.v1.Custody` API and drives the
//! signers through their `custody.v1.Signer` API. It is trusted with no secret:
//! - it relays DKG messages it cannot read (round-2 shares are sealed end to end
//!   between signers) or alter (every message is signed by its sender);
//! - it checks every participant's confirmation of the round-1 echo and the resulting
//!   key before recording a key, as every signer does before activating it;
//! - for each signature it picks `t` healthy signers, relays a signing package it signs
//!   with its own identity, aggregates the shares, and names any signer whose share is
//!   bad, retrying with another quorum.
//!
//! Nonce commitments are drawn ahead of time in batches and kept in memory only (on
//! both sides); each is used at most once. Key metadata and completed signatures are
//! kept in `sled` and flushed before a client hears about them.
//!
//! Signers are reached through [`link::SignerLink`] (over mTLS gRPC: [`link::GrpcLink`];
//! in memory in the tests, [`run_with_links`]); their answers are decoded once into a
//! typed [`link::LinkError`] (stale commitment, refusal by policy with its reason tag,
//! rejection with culprits, transport failure), never by reading their message text.
//! Time is read from one clock passed in.
//!
//! [`run`] serves until `shutdown` resolves; `custody coordinator` is a thin wrapper.

mod audit;
mod cold;
pub mod config;
mod console;
mod core;
mod dkg;
mod lifecycle;
pub mod link;
mod metrics;
mod requests;
mod server;
mod service;
mod signatures;
pub mod signers;
mod signing;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use config::Config;

pub use custody_pki::StartError;

/// The file where a running coordinator writes the address it listens on.
pub fn addr_file(data_dir: &Path) -> PathBuf {
    custody_pki::server::addr_file(data_dir)
}

/// Associated data of the coordinator's sealed identity.
pub fn identity_aad(name: &str) -> Vec<u8> {
    format!("custody/v1/identity\0coordinator\0{name}").into_bytes()
}

/// Loads (or creates) the coordinator's identity and returns its public half, so an
/// operator tool can have the CA certify it.
pub fn init_identity(config: &Config) -> Result<custody_protocol::IdentityPublic, StartError> {
    Ok(core::load_identity(config)?.public())
}

/// Runs the coordinator until `shutdown` resolves. `on_ready` is called with the bound
/// address once it accepts connections.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(SocketAddr) + Send,
) -> Result<(), StartError> {
    server::serve(
        config,
        None,
        custody_ops::clock::system(),
        shutdown,
        on_ready,
    )
    .await
}

/// Runs the coordinator like [`run`], reaching its signers over the given links (by
/// signer name) instead of gRPC and reading time from `clock`: the same drivers over
/// in-process signers, for tests.
pub async fn run_with_links(
    config: Config,
    links: Vec<(String, std::sync::Arc<dyn link::SignerLink>)>,
    clock: std::sync::Arc<dyn custody_ops::clock::Clock>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(SocketAddr) + Send,
) -> Result<(), StartError> {
    server::serve(config, Some(links), clock, shutdown, on_ready).await
}
