//! # custody-payments: the thin payment API
//!
//! Tokenization (card numbers and account identifiers sealed with the `hsm` crate,
//! replaced by random tokens), idempotent payments acknowledged only once durable
//! (group commit), and settlement batches whose headers commit to their payments by a
//! Merkle root, with inclusion proofs that verify offline ([`merkle`]).

pub mod merkle;
pub mod model;
pub mod store;
