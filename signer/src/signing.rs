//! Signing: commitments drawn ahead ([`Core::commit`]), and a signature share for a
//! package the coordinator signed ([`Core::sign_share`]), hot or warm; the cold path
//! ([`crate::cold`]) uses the same checks with nonces sealed at rest.
//!
//! Every path runs the same steps, one function each: [`Core::open_package`] (the
//! package decodes, names only this key's signers and at least t of them, carries the
//! request's own message and this signer's commitment), [`Core::admit`] (the policy,
//! durable before the share exists), and [`Core::share_envelope`] (the share, signed
//! into its envelope). Nonces are taken out of the pool before anything else can fail
//! and are never put back.

use std::time::Instant;

use custody_audit::export as ax;
use custody_protocol::sign::{self, SigningPackage, COORDINATOR};
use custody_protocol::wire::{self, Header, Kind};
use custody_protocol::{identity, EngineSuite, IdentityPublic, Roster, SessionId};
use hot_warm_cold::{Approval, DenyReason, Request, Settlement, Transfer};
use rand_core::OsRng;

use crate::config::Fault;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::keys::{with_key, Loaded};

/// Most commitments drawn per call.
pub(crate) const MAX_COMMIT_BATCH: u32 = 256;

/// What a request claims to be, before the signing package's message is bound to it.
#[derive(Debug, Clone)]
pub(crate) enum Claim {
    /// A structured transfer: its message is computed here.
    Transfer(Transfer),
    /// A settlement batch header: its message is computed here.
    Settlement(Settlement),
    /// Raw bytes: the package's message, or the given one (which it must equal).
    Raw {
        request_id: String,
        message: Option<Vec<u8>>,
    },
}

impl Claim {
    /// The one way a request is built from its parts: at most one of a transfer and a
    /// settlement; neither is a raw message (given, or the package's).
    pub fn new(
        request_id: &str,
        transfer: Option<Transfer>,
        settlement: Option<Settlement>,
        message: Option<Vec<u8>>,
    ) -> Result<Claim> {
        match (transfer, settlement) {
            (Some(_), Some(_)) => Err(Error::Invalid(
                "transfer and settlement: at most one".into(),
            )),
            (Some(t), None) => Ok(Claim::Transfer(t)),
            (None, Some(s)) => Ok(Claim::Settlement(s)),
            (None, None) => Ok(Claim::Raw {
                request_id: request_id.to_string(),
                message,
            }),
        }
    }

    /// The request id.
    pub fn request_id(&self) -> &str {
        match self {
            Claim::Transfer(t) => &t.request_id,
            Claim::Settlement(s) => &s.request_id,
            Claim::Raw { request_id, .. } => request_id,
        }
    }

    /// The request, when its message is known without a package (all but a raw
    /// request without its bytes).
    pub fn request(&self) -> Option<Request> {
        Some(match self {
            Claim::Transfer(t) => Request::Transfer(t.clone()),
            Claim::Settlement(s) => Request::Settlement(s.clone()),
            Claim::Raw {
                request_id,
                message: Some(m),
            } => Request::Raw {
                request_id: request_id.clone(),
                message: m.clone(),
            },
            Claim::Raw { message: None, .. } => return None,
        })
    }

    /// The request the package's `message` signs, or why it does not sign this one.
    fn bind(self, key_id: &str, message: &[u8]) -> Result<Request, DenyReason> {
        self.bind_message(key_id, message)
            .map_err(|why| DenyReason::MessageMismatch(why.into()))
    }

    fn bind_message(self, key_id: &str, message: &[u8]) -> Result<Request, &'static str> {
        match self {
            Claim::Transfer(t) if message != t.message(key_id) => {
                Err("signing package message is not the message of the transfer it claims to be")
            }
            Claim::Transfer(t) => Ok(Request::Transfer(t)),
            Claim::Settlement(s) if message != s.message(key_id) => {
                Err("signing package message is not the message of the settlement it claims to be")
            }
            Claim::Settlement(s) => Ok(Request::Settlement(s)),
            Claim::Raw {
                message: Some(m), ..
            } if m != message => Err("signing package message is not the request's message"),
            Claim::Raw { request_id, .. } => Ok(Request::Raw {
                request_id,
                message: message.to_vec(),
            }),
        }
    }
}

/// The coordinator's ask for this signer's share.
#[derive(Debug)]
pub(crate) struct SignAsk {
    pub key_id: String,
    /// The key, as loaded when the request came in (looked up once).
    pub key: crate::keys::AnyKey,
    pub claim: Claim,
    pub approvals: Vec<Approval>,
    /// The signing package, in the coordinator's envelope.
    pub package: Vec<u8>,
    /// The coordinator's identity, from its certificate.
    pub coordinator: IdentityPublic,
}

/// A signing package opened and checked for this signer.
pub(crate) struct Opened<C: EngineSuite> {
    pub session: SessionId,
    /// The package's encoded body (what the transcript digest covers).
    pub body: Vec<u8>,
    pub package: SigningPackage<C>,
    pub request: Request,
    /// This signer's commitment in it, encoded (the nonce pool's tag).
    pub mine: Vec<u8>,
}

impl Core {
    /// Draws `count` commitments for `key_id`; returns them signed as one batch (session
    /// all zero: bound to a session only by the signing package), the nonces kept.
    pub async fn commit(&self, key_id: &str, count: u32) -> Result<Vec<u8>> {
        if count == 0 || count > MAX_COMMIT_BATCH {
            return Err(Error::Invalid(format!(
                "count: must be 1..={MAX_COMMIT_BATCH}"
            )));
        }
        let k = self.active_key(key_id)?;
        let identity = self.identity.clone();
        with_key!(k, C, k => {
            let share = k.share.clone();
            let (batch, fresh) = tokio::task::spawn_blocking(move || {
                let mut batch = Vec::with_capacity(count as usize);
                let mut fresh = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    let (nonces, commitments) = sign::commit(&share, &mut OsRng);
                    fresh.push((encode(&commitments)?, nonces));
                    batch.push(commitments);
                }
                let header = Header {
                    suite: C::SUITE,
                    kind: Kind::CommitmentBatch,
                    session: SessionId([0; 32]),
                    from: share.id(),
                    to: Some(COORDINATOR),
                };
                let env = identity::signed(&*identity, &header, &sign::CommitmentBatch(batch))
                    .map_err(|e| Error::internal("encode", e))?;
                Ok::<_, Error>((env, fresh))
            })
            .await
            .map_err(|e| Error::internal("commit task", e))??;
            k.nonces.lock().expect("lock").extend(fresh);
            Ok(batch)
        })
    }

    /// This signer's share for `ask`: checked, admitted and recorded first. The share
    /// leaves only once its `share-issued` entry is durable in our audit log.
    pub async fn sign_share(&self, ask: SignAsk) -> Result<Vec<u8>> {
        let t0 = Instant::now();
        let k = ask.key.clone();
        let mut roster = Roster::new();
        roster.insert(COORDINATOR, ask.coordinator);
        let opened = identity::open_from(&roster, COORDINATOR, &ask.package)
            .map_err(Error::protocol("signing package"))?;
        let session = opened.header.session;
        let body = opened.body.to_vec();
        let t_open = t0.elapsed();
        #[cfg(feature = "fault-injection")]
        if self.faults.is(Fault::StallSigning) {
            // Never answer (until the coordinator gives up on us).
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
        let (env, logged) = with_key!(&k, C, k => self.sign_hot::<C>(k, ask, body, session))?;
        // The share leaves only once its issue is on disk in our audit log (the entry
        // was handed to the log before the share was computed, and synced meanwhile).
        let t_signed = t0.elapsed();
        logged.await?;
        let env = self.replay_fault(env);
        self.counters.shares_issued.inc();
        tracing::debug!(
            open_us = t_open.as_micros() as u64,
            sign_us = (t_signed - t_open).as_micros() as u64,
            audit_wait_us = (t0.elapsed() - t_signed).as_micros() as u64,
            "signature share"
        );
        Ok(env)
    }

    /// Fault injection (`replay-shares`): from the second request on, the first share
    /// again.
    fn replay_fault(&self, env: Vec<u8>) -> Vec<u8> {
        if !self.faults.is(Fault::ReplayShares) {
            return env;
        }
        let mut first = self.replayed.lock().expect("lock");
        match first.as_ref() {
            Some(old) => old.clone(),
            None => {
                *first = Some(env.clone());
                env
            }
        }
    }

    /// The hot path: open and check the package, take the nonces, admit, hand the
    /// `share-issued` entry to the log, compute the share. What could make computing
    /// the share fail is checked before the entry; were it ever to fail anyway, the
    /// entry would name a share that never left, never the reverse.
    fn sign_hot<C: EngineSuite>(
        &self,
        k: &Loaded<C>,
        ask: SignAsk,
        body: Vec<u8>,
        session: SessionId,
    ) -> Result<(Vec<u8>, custody_audit::writer::PendingAppend)> {
        let key_id = ask.key_id.as_str();
        let o = self.open_package(k, key_id, ask.claim, body, session)?;
        // Removed before use: whatever happens next, they are gone.
        let nonces = k
            .nonces
            .lock()
            .expect("lock")
            .take(&o.mine)
            .ok_or(Error::StaleCommitment)?;
        // Check, then persist, then sign.
        self.admit(key_id, k, &o.request, &ask.approvals)?;
        let transcript = sign::transcript_digest(key_id, o.request.request_id(), &o.body);
        let logged = self.audit.append_started(
            ax::SHARE_ISSUED,
            &ax::ShareIssued {
                key_id: key_id.to_string(),
                request_id: o.request.request_id().to_string(),
                session: session.to_string(),
                transcript: hex::encode(transcript),
            },
        )?;
        let env = self.share_envelope(k, nonces, &o, transcript)?;
        Ok((env, logged))
    }

    /// Decodes the package in `body` and checks it for this signer before any nonce or
    /// allowance is spent: only this key's signers, at least t of them (so that once
    /// the request is admitted the share cannot fail), the message of the request it
    /// claims to be (refused by policy otherwise), and this signer's commitment.
    pub(crate) fn open_package<C: EngineSuite>(
        &self,
        k: &Loaded<C>,
        key_id: &str,
        claim: Claim,
        body: Vec<u8>,
        session: SessionId,
    ) -> Result<Opened<C>> {
        let (_, package) =
            wire::decode_with(&body, C::SUITE, Kind::SigningPackage, &session, |_, r| {
                SigningPackage::<C>::decode_body(r)
            })
            .map_err(Error::protocol("signing package"))?;
        package
            .check_against(k.share.public())
            .map_err(Error::protocol("signing package"))?;
        let request_id = claim.request_id().to_string();
        let request = claim
            .bind(key_id, package.message())
            .map_err(|why| self.deny(key_id, &request_id, why))?;
        let mine = package
            .commitments_of(k.share.id())
            .ok_or_else(|| Error::Invalid("signing package does not include this signer".into()))?;
        Ok(Opened {
            session,
            mine: encode(&mine)?,
            body,
            package,
            request,
        })
    }

    /// The share of `o` with `nonces` (consumed), signed into its envelope to the
    /// coordinator.
    pub(crate) fn share_envelope<C: EngineSuite>(
        &self,
        k: &Loaded<C>,
        nonces: sign::Nonces<C>,
        o: &Opened<C>,
        transcript: [u8; 32],
    ) -> Result<Vec<u8>> {
        let mut share = nonces
            .sign(&k.share, &o.package)
            .map_err(Error::protocol("sign"))?;
        if self.faults.is(Fault::CorruptSignatureShares) {
            share = crate::fault::corrupt::<C>(&share);
        }
        let header = Header {
            suite: C::SUITE,
            kind: Kind::SignatureShare,
            session: o.session,
            from: k.share.id(),
            to: Some(COORDINATOR),
        };
        identity::signed(
            &*self.identity,
            &header,
            &sign::ShareMessage { transcript, share },
        )
        .map_err(|e| Error::internal("encode", e))
    }
}

/// A wire body, encoded.
pub(crate) fn encode(body: &impl wire::Body) -> Result<Vec<u8>> {
    let mut w = wire::Writer::default();
    body.encode_body(&mut w)
        .map_err(|e| Error::internal("encode", e))?;
    Ok(w.into_vec())
}
