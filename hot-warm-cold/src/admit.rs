//! Admission: everything a signer decides about a signing request before a share
//! leaves, as one pure function.
//!
//! [`admit`] takes what the signer read from its own store (the key's state and age,
//! its [`Usage`] record, the digest a settlement of this batch was admitted with, when
//! it first saw the request) and its clock, and returns either a refusal with its
//! [`DenyReason`] or an [`Admitted`] value: a retry of a request already admitted and
//! counted (nothing to store), or a [`Plan`] of what to store durably before the share
//! leaves (check, then persist, then sign). The signer only reads, calls this, and
//! writes the plan; the rules (request-id replay, batch reuse, the ledger's update and
//! pruning) live here once, and are property-tested (`tests/admission.rs`).
//!
//! [`first_seen`] is the same for a request's first sighting (time locks count from
//! it): the signer records what it returns.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::decide::{decide, Decision, DenyReason, KeyStatus, SpendLedger};
use crate::lifecycle::State;
use crate::policy::Policy;
use crate::request::{Approval, Request};

/// What a signer has released for a key: the count of signature shares and the
/// transfers within the policy's longest window. Stored durably before a share leaves
/// the signer, for keys whose policy has limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Signature shares released.
    pub signatures: u64,
    /// Transfers released, within the longest window.
    pub ledger: SpendLedger,
    /// Requests admitted within the longest window: request id → (time, hash of the
    /// signed message). A retry of the same request (another quorum, a lost answer)
    /// is not counted twice; the same id for another message is refused.
    #[serde(default)]
    pub requests: BTreeMap<String, (u64, [u8; 32])>,
}

/// What the signer read before deciding, and its clock.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// The key.
    pub key_id: &'a str,
    /// Its lifecycle state now.
    pub state: State,
    /// When its share was stored (Unix seconds).
    pub created_at: u64,
    /// The policy this signer enforces for it.
    pub policy: &'a Policy,
    /// Its usage record.
    pub usage: &'a Usage,
    /// For a settlement: the digest its batch was admitted with before, if it was
    /// (kept for good, not only for the policy's window).
    pub settled: Option<[u8; 32]>,
    /// The request's first sighting stored on this signer, if any (time locks count
    /// from it; see [`first_seen`]).
    pub sighting: Option<Sighting>,
    /// The signer's clock (Unix seconds).
    pub now: u64,
}

/// What to store before the share leaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The key's next usage record (counted, recorded, pruned), when the policy keeps
    /// a ledger.
    pub usage: Option<Usage>,
    /// For a settlement: the digest to keep for its batch, for good.
    pub settled: Option<[u8; 32]>,
}

impl Plan {
    /// Whether there is nothing to store.
    pub fn is_empty(&self) -> bool {
        self.usage.is_none() && self.settled.is_none()
    }
}

/// A request the policy admits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admitted {
    /// The same request was admitted and counted before (another quorum, a lost
    /// answer): sign again, store nothing.
    Retry,
    /// A new request: store the plan durably, then sign.
    New(Plan),
}

/// What admission decided, and the first sighting to store whatever it decided (a
/// time lock counts from the first time the request reached the decision).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Admitted, or refused and why.
    pub result: Result<Admitted, DenyReason>,
    /// A new first sighting of the request, to store durably before answering.
    pub sighting: Option<Sighting>,
}

/// The digest a request is admitted under: the same request id with another digest is
/// another request.
pub fn admitted_digest(key_id: &str, request: &Request) -> [u8; 32] {
    custody_protocol::hash::TaggedHash::new("custody/v1/admitted-request")
        .part(&request.message(key_id))
        .finish()
}

/// May the key sign `request` now, and what must be stored first?
///
/// In order: the key's state and age (which hold for retries too), a settlement's batch
/// (one content per batch id, for good), the request id (one message per id within the
/// window, a retry passes), then [`decide`] with the ledger, the approvals and the time
/// lock. The plan counts the signature, records the amounts in the ledger, remembers
/// the request id, and prunes both to the policy's longest window.
pub fn admit(cx: &Context<'_>, request: &Request, approvals: &[Approval]) -> Outcome {
    let mut sighting = None;
    let result = admit_inner(cx, request, approvals, &mut sighting);
    Outcome { result, sighting }
}

fn admit_inner(
    cx: &Context<'_>,
    request: &Request,
    approvals: &[Approval],
    new_sighting: &mut Option<Sighting>,
) -> Result<Admitted, DenyReason> {
    let key_id = cx.key_id;
    let policy = cx.policy;
    if !cx.state.may_sign() {
        return Err(DenyReason::NotActive(cx.state));
    }
    if let Some(max) = policy.max_age_secs {
        let age = cx.now.saturating_sub(cx.created_at);
        if age > max {
            return Err(DenyReason::TooOld {
                age_secs: age,
                max_secs: max,
            });
        }
    }
    let digest = admitted_digest(key_id, request);
    let settlement = matches!(request, Request::Settlement(_));
    if settlement {
        if let Some(seen) = cx.settled {
            if seen == digest {
                return Ok(Admitted::Retry);
            }
            return Err(DenyReason::BatchReused(request.request_id().to_string()));
        }
    }
    if policy.needs_ledger() {
        if let Some((_, seen)) = cx.usage.requests.get(request.request_id()) {
            if *seen == digest {
                return Ok(Admitted::Retry);
            }
            return Err(DenyReason::RequestIdReused(
                request.request_id().to_string(),
            ));
        }
    }
    // A time lock counts from when this signer first saw the request (a proposal
    // before, or now), on its own clock.
    let first_seen = if policy.time_lock_secs > 0 {
        let (s, new) = first_seen(key_id, request, cx.sighting, cx.now)?;
        if new {
            *new_sighting = Some(s);
        }
        s.at
    } else {
        cx.now
    };
    let status = KeyStatus {
        key_id: key_id.to_string(),
        state: cx.state,
        created_at: cx.created_at,
        signatures: cx.usage.signatures,
    };
    if let Decision::Deny(reason) = decide(
        &status,
        policy,
        &cx.usage.ledger,
        request,
        approvals,
        first_seen,
        cx.now,
    ) {
        return Err(reason);
    }
    let usage = policy.needs_ledger().then(|| {
        let now = cx.now;
        let mut next = cx.usage.clone();
        next.signatures += 1;
        match request {
            Request::Transfer(t) => next.ledger.record(now, &t.asset, t.amount),
            Request::Settlement(s) => {
                for (currency, total) in &s.totals {
                    next.ledger.record(now, currency, *total);
                }
            }
            Request::Raw { .. } => {}
        }
        next.requests
            .insert(request.request_id().to_string(), (now, digest));
        let horizon = now.saturating_sub(policy.longest_window());
        next.ledger.prune(horizon);
        next.requests.retain(|_, (t, _)| *t >= horizon);
        next
    });
    Ok(Admitted::New(Plan {
        usage,
        settled: settlement.then_some(digest),
    }))
}

/// A request's first sighting on a signer, as it is stored: when, and the digest of
/// what was proposed under its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sighting {
    /// When (Unix seconds, the signer's clock).
    pub at: u64,
    /// [`proposed_digest`] of the request.
    pub digest: [u8; 32],
}

/// The digest a request is proposed under.
pub fn proposed_digest(key_id: &str, request: &Request) -> [u8; 32] {
    custody_protocol::hash::TaggedHash::new("custody/v1/proposed-request")
        .part(&request.message(key_id))
        .finish()
}

/// When this signer first saw `request`, given what it stored (`stored`) and its clock:
/// `Ok((sighting, true))` when it is new and the sighting must be stored, `Ok((sighting,
/// false))` when it was seen before, and a refusal when its id was proposed before for
/// another message.
pub fn first_seen(
    key_id: &str,
    request: &Request,
    stored: Option<Sighting>,
    now: u64,
) -> Result<(Sighting, bool), DenyReason> {
    let digest = proposed_digest(key_id, request);
    match stored {
        Some(s) if s.digest == digest => Ok((s, false)),
        Some(_) => Err(DenyReason::ProposedForAnother(
            request.request_id().to_string(),
        )),
        None => Ok((Sighting { at: now, digest }, true)),
    }
}
