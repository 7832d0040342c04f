//! The key lifecycle (after NIST SP 800-57 part 1, §5.3 key states), as a state machine
//! whose only way forward is [`State::apply`]: an edge that is not allowed is an error,
//! never a silent change.
//!
//! ```text
//!            DkgCompleted            Suspend
//!  Pending ───────────────▶ Active ─────────▶ Suspended
//!     │                    ▲  │  │ ◀───────── │  Resume
//!     │ DkgFailed          │  │  │            │
//!     ▼                    │  │  └─ StartRefresh ─▶ Refreshing ─ RefreshCompleted / RefreshFailed ─▶ Active
//!  Destroyed ◀─ Destroy ─ Retired ◀─ Retire ─ (Active, Suspended, Rotating)
//!                             ▲
//!         StartRotation       │ RotationCompleted
//!  Active ─────────────▶ Rotating  (RotationFailed ─▶ Active)
//! ```
//!
//! Only `Active` keys sign; `Retired` keys still verify (their public key is kept);
//! `Destroyed` is terminal and keeps only a tombstone.

use serde::{Deserialize, Serialize};

/// Where a key is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// DKG is running.
    Pending,
    /// Signs within policy.
    Active,
    /// Temporarily refused (operator action or an anomaly); can be resumed.
    Suspended,
    /// A successor key is being generated; the key still signs until it is retired.
    Rotating,
    /// Shares are being re-randomized; no signing until it completes.
    Refreshing,
    /// No longer signs; its public key still verifies old signatures.
    Retired,
    /// Shares erased; a tombstone remains. Terminal.
    Destroyed,
}

/// What happens to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    /// Every participant confirmed the DKG.
    DkgCompleted,
    /// The DKG aborted.
    DkgFailed,
    /// Stop signing for now.
    Suspend,
    /// Sign again.
    Resume,
    /// Start making a successor key.
    StartRotation,
    /// The successor exists; this key retires.
    RotationCompleted,
    /// The successor could not be made.
    RotationFailed,
    /// Start a share refresh.
    StartRefresh,
    /// New shares are in place (old ones are useless).
    RefreshCompleted,
    /// The refresh aborted; the old shares stay valid.
    RefreshFailed,
    /// Stop signing for good.
    Retire,
    /// Erase the shares.
    Destroy,
}

/// An edge the lifecycle does not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a {from:?} key cannot take event {event:?}")]
pub struct TransitionError {
    /// The state the key was in (and stays in).
    pub from: State,
    /// The refused event.
    pub event: Event,
}

impl State {
    /// The state after `event`, or an error naming the refused edge.
    pub fn apply(self, event: Event) -> Result<State, TransitionError> {
        use Event::*;
        use State::*;
        let next = match (self, event) {
            (Pending, DkgCompleted) => Active,
            (Pending, DkgFailed) => Destroyed,
            (Active, Suspend) | (Rotating, Suspend) => Suspended,
            (Suspended, Resume) => Active,
            (Active, StartRotation) => Rotating,
            (Rotating, RotationCompleted) => Retired,
            (Rotating, RotationFailed) => Active,
            (Active, StartRefresh) => Refreshing,
            (Refreshing, RefreshCompleted) | (Refreshing, RefreshFailed) => Active,
            (Active, Retire) | (Suspended, Retire) | (Rotating, Retire) => Retired,
            (Retired, Destroy) | (Suspended, Destroy) => Destroyed,
            (from, event) => return Err(TransitionError { from, event }),
        };
        Ok(next)
    }

    /// Whether a key in this state may produce signature shares at all (policy decides
    /// the rest).
    pub fn may_sign(self) -> bool {
        matches!(self, State::Active | State::Rotating)
    }

    /// Every state.
    pub const ALL: [State; 7] = [
        State::Pending,
        State::Active,
        State::Suspended,
        State::Rotating,
        State::Refreshing,
        State::Retired,
        State::Destroyed,
    ];
}

impl State {
    /// The name used in APIs and records.
    pub fn name(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Active => "active",
            State::Suspended => "suspended",
            State::Rotating => "rotating",
            State::Refreshing => "refreshing",
            State::Retired => "retired",
            State::Destroyed => "destroyed",
        }
    }
}

impl Event {
    /// The operator events by name: `suspend`, `resume`, `retire`, `destroy`.
    pub fn operator_event(name: &str) -> Option<Event> {
        Some(match name {
            "suspend" => Event::Suspend,
            "resume" => Event::Resume,
            "retire" => Event::Retire,
            "destroy" => Event::Destroy,
            _ => return None,
        })
    }

    /// Every event.
    pub const ALL: [Event; 12] = [
        Event::DkgCompleted,
        Event::DkgFailed,
        Event::Suspend,
        Event::Resume,
        Event::StartRotation,
        Event::RotationCompleted,
        Event::RotationFailed,
        Event::StartRefresh,
        Event::RefreshCompleted,
        Event::RefreshFailed,
        Event::Retire,
        Event::Destroy,
    ];
}
