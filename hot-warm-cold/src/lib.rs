//! # hot-warm-cold: custody policy as pure logic
//!
//! Everything a signer needs to decide, by itself, whether a key may sign a request
//! now, with no I/O and no clock of its own (time is always an argument), so every
//! rule can be property-tested:
//!
//! - [`Tier`]s (hot, warm, cold) and per-key [`Policy`]: per-request and rolling-window
//!   limits per asset, a destination allowlist, whether raw messages may be signed at
//!   all, a k-of-m approval rule over Ed25519 approver keys, a time lock, a maximum key
//!   age and a maximum number of signatures;
//! - the key [`lifecycle`]: pending → active ⇄ suspended → retired → destroyed, with
//!   rotating and refreshing; only allowed edges succeed (NIST SP 800-57 key states);
//! - structured [`request`]s whose signed message is a domain-separated canonical hash
//!   computed by each signer, so a relay cannot substitute bytes;
//! - [`decide`], the one function that says allow or deny, with a reason;
//! - [`admit`], what a signer does around it: request-id replay, batch reuse, and the
//!   ledger's update and pruning, returned as a [`Plan`] the signer stores before the
//!   share leaves.
//!
//! The signer daemon keeps the durable parts (its spend ledger, approvals it has
//! checked, when it first saw a request) and calls [`decide`] before any share leaves.

pub mod admit;
pub mod decide;
pub mod lifecycle;
pub mod policy;
pub mod request;

pub use admit::{admit, Admitted, Context, Outcome, Plan, Usage};
pub use decide::{decide, Decision, DenyReason, KeyStatus, SpendLedger};
pub use lifecycle::{Event, State, TransitionError};
pub use policy::{ApprovalRule, AssetLimits, Policy, Tier};
pub use request::{approval_digest, Approval, Request, Settlement, Transfer};
