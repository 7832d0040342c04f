//! Threshold signing across the signers: quorum choice, commitments drawn ahead,
//! parallel share requests, aggregation with culprit detection, retries.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use custody_protocol::proto::{Approval, CommitRequest, SignShareRequest, Transfer};
use custody_protocol::sign::{
    self, CommitmentBatch, Commitments, ShareMessage, SignatureShare, SigningPackage, COORDINATOR,
};
use custody_protocol::wire::{self, Header, Kind};
use custody_protocol::{identity, EngineSuite, Error as EngineError, ParticipantId, SessionId};
use rand_core::OsRng;
use tonic::Status;
use tracing::{debug, warn};

use crate::core::{Core, KeyRt};
use crate::link::LinkError;
use crate::signers::SignerHandle;

/// Commitments fetched per `Commit` call.
const BATCH: u32 = 64;
/// Below this many pooled commitments a background refill starts.
const LOW_WATER: usize = 16;

/// A finished signature.
#[derive(Debug)]
pub(crate) struct Signed {
    pub signature: [u8; 64],
    pub signers: Vec<ParticipantId>,
    pub session: SessionId,
    /// The signing package as the coordinator signed it (an envelope).
    pub package: Vec<u8>,
    /// Every signer's share as it signed it (envelopes), by participant.
    pub shares: BTreeMap<ParticipantId, Vec<u8>>,
}

/// One attempt's request to the quorum.
struct Ask {
    request_id: String,
    transfer: Option<Transfer>,
    settlement: Option<custody_protocol::proto::Settlement>,
    approvals: Vec<Approval>,
    session: SessionId,
    /// The signed signing package.
    package: Vec<u8>,
    /// What every share must confirm ([`sign::transcript_digest`]).
    transcript: [u8; 32],
}

/// Why one signer dropped out of an attempt.
enum Dropout {
    /// Unreachable, timed out or refused: try others.
    Failed(String),
    /// Its commitments were unknown to it (it restarted): retry it with fresh ones.
    Stale,
    /// It sent something provably wrong.
    Culprit(String),
    /// Its policy refuses the request.
    Refused(LinkError),
}

/// Fetches `count` fresh commitments from participant `p` and checks each one's
/// envelope and encoding.
async fn fetch<C: EngineSuite>(
    core: &Core,
    key: &KeyRt<C>,
    p: ParticipantId,
    handle: &SignerHandle,
    count: u32,
) -> Result<Vec<Commitments<C>>, Dropout> {
    let req = CommitRequest {
        key_id: key.meta.key_id.clone(),
        count,
    };
    let resp = handle
        .call(core.timeouts.sign(), |l| l.commit(req))
        .await
        .map_err(|e| Dropout::Failed(format!("{}: {e}", handle.name)))?;
    // Checking the envelope and decoding 2 × count points is CPU work: off the runtime.
    let (roster, batch) = (key.roster.clone(), resp.batch);
    tokio::task::spawn_blocking(move || {
        let zero = SessionId([0; 32]);
        let opened = identity::open_from(&roster, p, &batch)
            .map_err(|e| Dropout::Culprit(format!("commitments: {e}")))?;
        let (_, b) = wire::decode_with(
            opened.body,
            C::SUITE,
            Kind::CommitmentBatch,
            &zero,
            |_, r| CommitmentBatch::<C>::decode_body(r, count as usize),
        )
        .map_err(|e| Dropout::Culprit(format!("commitments: {e}")))?;
        Ok(b.0)
    })
    .await
    .map_err(|e| Dropout::Failed(format!("task: {e}")))?
}

/// Fetches a batch for `p`'s pool in the background; the caller has set `refilling`.
fn spawn_refill<C: EngineSuite>(
    core: &Arc<Core>,
    key: &Arc<KeyRt<C>>,
    p: ParticipantId,
    handle: &Arc<SignerHandle>,
    epoch: u64,
) {
    let (core, key, handle) = (core.clone(), key.clone(), handle.clone());
    tokio::spawn(async move {
        let got = fetch(&core, &key, p, &handle, BATCH).await;
        let mut pools = key.pools.lock().expect("lock");
        let pool = pools.entry(p).or_default();
        pool.refilling = false;
        if let Ok(fresh) = got {
            if pool.epoch == epoch {
                pool.queue.extend(fresh);
            }
        }
    });
}

/// Starts filling the pools of healthy members outside `quorum` whose pools are empty,
/// so the next quorums can rotate over every signer without a Commit round trip.
fn prefetch_others<C: EngineSuite>(
    core: &Arc<Core>,
    key: &Arc<KeyRt<C>>,
    quorum: &[(ParticipantId, Arc<SignerHandle>)],
) {
    let mut pools = key.pools.lock().expect("lock");
    for (p, h) in &key.members {
        if quorum.iter().any(|(q, _)| q == p) || h.backing_off() {
            continue;
        }
        let epoch = h.epoch();
        let pool = pools.entry(*p).or_default();
        if pool.epoch != epoch {
            pool.queue.clear();
            pool.epoch = epoch;
        }
        if pool.queue.is_empty() && !pool.refilling {
            pool.refilling = true;
            spawn_refill(core, key, *p, h, epoch);
        }
    }
}

/// One commitment of `p` for `key`: from the pool, or fetched now if the pool is empty.
/// Starts a background refill when the pool runs low.
async fn take_commitment<C: EngineSuite>(
    core: &Arc<Core>,
    key: &Arc<KeyRt<C>>,
    p: ParticipantId,
    handle: &Arc<SignerHandle>,
) -> Result<Commitments<C>, Dropout> {
    let epoch = handle.epoch();
    {
        let mut pools = key.pools.lock().expect("lock");
        let pool = pools.entry(p).or_default();
        if pool.epoch != epoch {
            pool.queue.clear();
            pool.epoch = epoch;
        }
        if let Some(c) = pool.queue.pop_front() {
            if pool.queue.len() < LOW_WATER && !pool.refilling {
                pool.refilling = true;
                spawn_refill(core, key, p, handle, epoch);
            }
            return Ok(c);
        }
    }
    let mut fresh = fetch(core, key, p, handle, BATCH).await?.into_iter();
    let first = fresh
        .next()
        .ok_or_else(|| Dropout::Culprit("returned no commitments".into()))?;
    let mut pools = key.pools.lock().expect("lock");
    let pool = pools.entry(p).or_default();
    if pool.epoch == epoch {
        pool.queue.extend(fresh);
    }
    Ok(first)
}

/// Asks `p` for its share of `package_env` and checks the answer.
async fn request_share<C: EngineSuite>(
    core: &Core,
    key: &KeyRt<C>,
    p: ParticipantId,
    handle: &SignerHandle,
    ask: Arc<Ask>,
) -> Result<(SignatureShare<C>, Vec<u8>), Dropout> {
    let req = SignShareRequest {
        key_id: key.meta.key_id.clone(),
        package: ask.package.clone(),
        request_id: ask.request_id.clone(),
        transfer: ask.transfer.clone(),
        settlement: ask.settlement.clone(),
        approvals: ask.approvals.clone(),
    };
    let resp = match handle
        .call(core.timeouts.sign(), |l| l.sign_share(req))
        .await
    {
        Ok(r) => r,
        Err(LinkError::StaleCommitment { .. }) => {
            handle.bump_epoch();
            return Err(Dropout::Stale);
        }
        // The signer's own policy said no: another quorum would say the same.
        Err(e @ LinkError::Refused { .. }) => return Err(Dropout::Refused(e)),
        Err(e) => return Err(Dropout::Failed(format!("{}: {e}", handle.name))),
    };
    let opened = identity::open_from(&key.roster, p, &resp.share)
        .map_err(|e| Dropout::Culprit(format!("signature share: {e}")))?;
    let (_, msg) = wire::decode_with(
        opened.body,
        C::SUITE,
        Kind::SignatureShare,
        &ask.session,
        |_, r| ShareMessage::<C>::decode_body(r),
    )
    .map_err(|e| Dropout::Culprit(format!("signature share: {e}")))?;
    if msg.transcript != ask.transcript {
        return Err(Dropout::Culprit(
            "signature share confirms another request or signing package".into(),
        ));
    }
    Ok((msg.share, resp.share))
}

/// Signs `message` with `key`: picks `t` signers, retries with others on failure, and
/// names every signer whose share was bad. `UNAVAILABLE` when fewer than `t` signers
/// can sign.
pub(crate) async fn sign<C: EngineSuite>(
    core: &Arc<Core>,
    key: &Arc<KeyRt<C>>,
    message: Vec<u8>,
    request_id: &str,
    transfer: Option<Transfer>,
    settlement: Option<custody_protocol::proto::Settlement>,
    approvals: Vec<Approval>,
) -> Result<Signed, Status> {
    let t = key.public.threshold() as usize;
    let n = key.members.len();
    let mut tracker = Tracker::default();
    let message = Arc::new(message);
    loop {
        // Quorum: healthy signers first, then those with commitments ready, rotating
        // the start so load spreads over the signers.
        let t0 = std::time::Instant::now();
        let start = core.rotation.fetch_add(1, Ordering::Relaxed);
        let mut candidates: Vec<(usize, &(ParticipantId, Arc<SignerHandle>))> = key
            .members
            .iter()
            .enumerate()
            .filter(|(_, (p, _))| !tracker.excluded.contains(p))
            .collect();
        if candidates.len() < t {
            let mut msg = format!(
                "key {} needs {t} of its {n} signers and only {} can sign now",
                key.meta.key_id,
                candidates.len()
            );
            if !tracker.reasons.is_empty() {
                msg.push_str(&format!(" ({})", tracker.reasons.join("; ")));
            }
            return Err(Status::unavailable(msg));
        }
        {
            let pools = key.pools.lock().expect("lock");
            candidates.sort_by_key(|(i, (p, h))| {
                let empty = pools.get(p).is_none_or(|pl| pl.queue.is_empty());
                (h.backing_off(), empty, (i + n - start % n) % n)
            });
        }
        let quorum: Vec<(ParticipantId, Arc<SignerHandle>)> = candidates
            .iter()
            .take(t)
            .map(|(_, m)| (*m).clone())
            .collect();

        prefetch_others(core, key, &quorum);
        // Round 1: commitments (usually from the pool).
        let Some(commitments) = on_quorum(&quorum, &mut tracker, key, |p, h| {
            let (core, key) = (core.clone(), key.clone());
            async move { take_commitment(&core, &key, p, &h).await }
        })
        .await?
        else {
            tracker.check_stale(n)?;
            continue;
        };

        let t1 = t0.elapsed();
        // Round 2: the package, signed by us, to every member of the quorum at once.
        let session = SessionId::random(&mut OsRng);
        let package = SigningPackage::new(commitments, message.to_vec())
            .map_err(|e| Status::internal(format!("signing package: {e}")))?;
        let header = Header {
            suite: C::SUITE,
            kind: Kind::SigningPackage,
            session,
            from: COORDINATOR,
            to: None,
        };
        let package_msg = wire::encode(&header, &package)
            .map_err(|e| Status::internal(format!("signing package: {e}")))?;
        let ask = Arc::new(Ask {
            request_id: request_id.to_string(),
            transfer: transfer.clone(),
            settlement: settlement.clone(),
            approvals: approvals.clone(),
            session,
            transcript: sign::transcript_digest(&key.meta.key_id, request_id, &package_msg),
            package: identity::seal_envelope(&*core.identity, &package_msg)
                .map_err(|e| Status::internal(format!("signing package: {e}")))?,
        });
        // Most of the aggregation needs only the package: it runs here while the
        // signers compute their shares.
        let (answers, prepared) = on_quorum_meanwhile(
            &quorum,
            &mut tracker,
            key,
            |p, h| {
                let (core, key, ask) = (core.clone(), key.clone(), ask.clone());
                async move { request_share(&core, &key, p, &h, ask).await }
            },
            || sign::prepare_aggregate(&key.public, &package),
        )
        .await?;
        let Some(answers) = answers else {
            tracker.check_stale(n)?;
            continue;
        };

        let t2 = t0.elapsed();
        let shares: BTreeMap<_, _> = answers.iter().map(|(p, (s, _))| (*p, *s)).collect();
        let aggregated =
            prepared.and_then(|prepared| prepared.finish(&key.public, &package, &shares));
        debug!(
            key_id = %key.meta.key_id,
            commitments_us = t1.as_micros() as u64,
            shares_us = (t2 - t1).as_micros() as u64,
            aggregate_us = (t0.elapsed() - t2).as_micros() as u64,
            "signing phases"
        );
        match aggregated {
            Ok(signature) => {
                return Ok(Signed {
                    signature,
                    signers: shares.keys().copied().collect(),
                    session,
                    package: ask.package.clone(),
                    shares: answers.into_iter().map(|(p, (_, env))| (p, env)).collect(),
                })
            }
            Err(EngineError::InvalidSignatureShare { culprits }) if !culprits.is_empty() => {
                for p in culprits {
                    tracker.note(key, p, Dropout::Culprit("invalid signature share".into()));
                }
            }
            Err(e) => return Err(Status::internal(format!("aggregation: {e}"))),
        }
    }
}

/// Who dropped out of a request so far, and why.
#[derive(Default)]
struct Tracker {
    /// A signer's policy refused the request: stop, and say why.
    refused: Option<LinkError>,
    excluded: BTreeSet<ParticipantId>,
    reasons: Vec<String>,
    stale_retries: usize,
}

impl Tracker {
    fn note<C: EngineSuite>(&mut self, key: &KeyRt<C>, p: ParticipantId, d: Dropout) {
        let handle = key.members.iter().find(|(q, _)| *q == p).map(|(_, h)| h);
        let name = handle.map(|h| h.name.clone()).unwrap_or_default();
        match d {
            Dropout::Stale => {
                self.stale_retries += 1;
                debug!(key_id = %key.meta.key_id, participant = %p, signer = %name, "stale commitments discarded");
            }
            Dropout::Failed(why) => {
                warn!(key_id = %key.meta.key_id, participant = %p, signer = %name, "signer dropped from quorum: {why}");
                self.excluded.insert(p);
                self.reasons.push(why);
            }
            Dropout::Refused(e) => {
                warn!(key_id = %key.meta.key_id, participant = %p, signer = %name, "refused by the signer's policy: {e}");
                self.refused = Some(e);
            }
            Dropout::Culprit(why) => {
                warn!(
                    key_id = %key.meta.key_id, culprit = %p, signer = %name,
                    "CULPRIT: participant {p} ({name}) misbehaved: {why}; excluded, retrying with another quorum"
                );
                if let Some(h) = handle {
                    h.mark_suspect(&why);
                    h.culprits
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                self.excluded.insert(p);
                self.reasons
                    .push(format!("participant {p} ({name}) misbehaved: {why}"));
            }
        }
    }

    /// Gives up when signers keep answering that fresh commitments are unknown.
    fn check_stale(&self, n: usize) -> Result<(), Status> {
        if let Some(e) = &self.refused {
            // The signer's refusal as it is (its reason tag in the metadata too).
            return Err(e.to_status());
        }
        if self.stale_retries > 2 * n {
            return Err(Status::unavailable(
                "signers keep refusing fresh commitments; giving up",
            ));
        }
        Ok(())
    }
}

/// Runs `f` for every member of the quorum at once. Returns every answer, or `None`
/// (after noting who dropped out) when any member failed.
async fn on_quorum<C, T, Fut>(
    quorum: &[(ParticipantId, Arc<SignerHandle>)],
    tracker: &mut Tracker,
    key: &KeyRt<C>,
    f: impl Fn(ParticipantId, Arc<SignerHandle>) -> Fut,
) -> Result<Option<BTreeMap<ParticipantId, T>>, Status>
where
    C: EngineSuite,
    T: Send + 'static,
    Fut: std::future::Future<Output = Result<T, Dropout>> + Send + 'static,
{
    collect(ask_all(quorum, f), tracker, key).await
}

/// Like [`on_quorum`], and runs `meanwhile` once every member has been asked, before
/// waiting for the answers.
async fn on_quorum_meanwhile<C, T, Fut, M>(
    quorum: &[(ParticipantId, Arc<SignerHandle>)],
    tracker: &mut Tracker,
    key: &KeyRt<C>,
    f: impl Fn(ParticipantId, Arc<SignerHandle>) -> Fut,
    meanwhile: impl FnOnce() -> M,
) -> Result<(Option<BTreeMap<ParticipantId, T>>, M), Status>
where
    C: EngineSuite,
    T: Send + 'static,
    Fut: std::future::Future<Output = Result<T, Dropout>> + Send + 'static,
{
    let tasks = ask_all(quorum, f);
    // Let the requests start (the runtime would otherwise keep the last one spawned
    // for this thread, after `meanwhile`).
    tokio::task::yield_now().await;
    let m = meanwhile();
    Ok((collect(tasks, tracker, key).await?, m))
}

type Asked<T> = Vec<tokio::task::JoinHandle<(ParticipantId, Result<T, Dropout>)>>;

/// Starts `f` for every member of the quorum.
fn ask_all<T, Fut>(
    quorum: &[(ParticipantId, Arc<SignerHandle>)],
    f: impl Fn(ParticipantId, Arc<SignerHandle>) -> Fut,
) -> Asked<T>
where
    T: Send + 'static,
    Fut: std::future::Future<Output = Result<T, Dropout>> + Send + 'static,
{
    quorum
        .iter()
        .map(|(p, h)| {
            let (p, fut) = (*p, f(*p, h.clone()));
            tokio::spawn(async move { (p, fut.await) })
        })
        .collect()
}

/// Every answer of `tasks`, or `None` (after noting who dropped out) when any failed.
async fn collect<C: EngineSuite, T>(
    tasks: Asked<T>,
    tracker: &mut Tracker,
    key: &KeyRt<C>,
) -> Result<Option<BTreeMap<ParticipantId, T>>, Status> {
    let mut out = BTreeMap::new();
    let mut complete = true;
    for task in tasks {
        let (p, r) = task
            .await
            .map_err(|e| Status::internal(format!("task: {e}")))?;
        match r {
            Ok(v) => {
                out.insert(p, v);
            }
            Err(d) => {
                complete = false;
                tracker.note(key, p, d);
            }
        }
    }
    Ok(complete.then_some(out))
}
