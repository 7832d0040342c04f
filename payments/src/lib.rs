//! # custody-payments: the thin payment API
//!
//! Tokenization (card numbers and account identifiers sealed with the `hsm` crate,
//! replaced by random tokens), idempotent payments acknowledged only once durable
//! (group commit), and settlement batches whose headers commit to their payments by a
//! Merkle root, with inclusion proofs that verify offline ([`merkle`]).

pub mod config;
pub mod fuzzing;
pub mod merkle;
pub mod model;
pub mod proof;
pub mod service;
pub mod store;

pub use config::Config;
pub use custody_pki::StartError;

/// Runs the payments daemon until `shutdown` resolves; `on_ready` gets the bound
/// address.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(std::net::SocketAddr) + Send,
) -> Result<(), StartError> {
    service::serve(config, shutdown, on_ready).await
}
