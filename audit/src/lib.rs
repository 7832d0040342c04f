//! # custody-audit: audit logs and ceremony replay
//!
//! - [`entry`] and [`chain`]: the append-only log every daemon keeps: each entry holds
//!   the previous entry's hash and is signed by the writer's identity key.
//! - [`writer`]: the log file with group commit (an entry is on disk before the action
//!   it records is acknowledged).
//! - [`transcript`]: DKG and signing transcripts and their offline replay.
//! - [`export`]: the export bundle an auditor receives, and its full verification.
//!
//! The formats are specified in `docs/audit-format.md`.

pub mod chain;
pub mod cold;
pub mod entry;
pub mod export;
pub mod fuzzing;
pub mod transcript;
pub mod writer;

pub use chain::{verify_log, Follower, LogProblem};
pub use entry::Entry;
pub use transcript::{replay_dkg, replay_signing, DkgTranscript, SigningTranscript, Trust};
pub use writer::{AuditError, AuditLog};
