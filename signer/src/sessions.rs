//! What a signer keeps between a ceremony's steps: a DKG or refresh session with its
//! typed stage (the protocol's own round types of its suite, taken out by value for a
//! step and put back only when the step did not consume them), and a repair helper's
//! state. The ceremonies themselves are `crate::dkg`, `crate::refresh`, `crate::repair`.

use std::time::{Duration, Instant};

use custody_protocol::dkg;
use custody_protocol::repair::HelperAwaitingDeltas;
use custody_protocol::{KeyShare, ParticipantId, Roster, Suite};

use crate::suites::by_suite;

/// How long an unfinished DKG session is kept.
pub(crate) const DKG_TTL: Duration = Duration::from_secs(300);

/// Messages relayed by the coordinator: `(sender, signed envelope)`.
pub(crate) type Inbox = Vec<(ParticipantId, Vec<u8>)>;

/// Where a DKG (or refresh) session of suite `C` stands.
#[derive(Debug)]
pub(crate) enum Stage<C: custody_protocol::EngineSuite> {
    /// Round 1 sent, waiting for every peer's.
    Round1(dkg::AwaitingRound1<C>),
    /// Echo and sealed shares sent, waiting for every peer's.
    Round2(dkg::AwaitingRound2<C>),
    /// Our share is stored (pending), our confirmation sent; waiting for all of them.
    Confirmed {
        /// The new share.
        share: KeyShare<C>,
        /// Digest of its public key set.
        digest: [u8; 32],
    },
}

/// A session's stage in its suite.
#[derive(Debug)]
pub(crate) enum AnyStage {
    /// secp256k1-tr.
    Secp(Stage<crate::suites::Secp>),
    /// Ed25519.
    Ed(Stage<crate::suites::Ed>),
}

impl AnyStage {
    /// Which step it waits for (1: round 1, 2: round 2, 3: the confirmations).
    pub fn step(&self) -> u8 {
        by_suite!(self, AnyStage, C, s => match s {
            Stage::Round1(_) => 1,
            Stage::Round2(_) => 2,
            Stage::Confirmed { .. } => 3,
        })
    }
}

/// A DKG or refresh session between the coordinator's calls.
#[derive(Debug)]
pub(crate) struct DkgSession {
    /// What the session is.
    pub info: SessionInfo,
    /// Taken out while a step runs.
    pub stage: Option<AnyStage>,
    pub started: Instant,
}

/// What a session is, without its stage.
#[derive(Debug, Clone)]
pub(crate) struct SessionInfo {
    pub key_id: String,
    /// A refresh of existing key `key_id` rather than a new key.
    pub refresh: bool,
    pub policy: hot_warm_cold::Policy,
    pub suite: Suite,
    pub participants: Vec<ParticipantId>,
    pub roster: Roster,
}

/// A helper's state between its two steps, in its suite.
#[derive(Debug)]
pub(crate) enum AnyRepair {
    /// secp256k1-tr.
    Secp(HelperAwaitingDeltas<crate::suites::Secp>),
    /// Ed25519.
    Ed(HelperAwaitingDeltas<crate::suites::Ed>),
}

/// A repair this signer helps with, between its two steps.
#[derive(Debug)]
pub(crate) struct RepairSession {
    pub key_id: String,
    pub roster: Roster,
    pub state: AnyRepair,
    pub started: Instant,
}
