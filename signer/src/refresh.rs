//! Refresh: a new share of the same key (FROST `keys::refresh`), by the DKG's rounds
//! ([`crate::dkg`]) with this file's start and end.
//!
//! The refreshed share is stored beside the old one when this signer confirms
//! ([`Core::store_refreshed`]) and replaces it only when every participant's
//! confirmation arrives ([`Core::apply_refresh`], from the durable record, so also
//! after a restart); [`Core::abandon_refresh`] drops it and the old share signs again.

use std::sync::Arc;

use custody_audit::export as ax;
use custody_protocol::sign::COORDINATOR;
use custody_protocol::{dkg, sim, KeyShare, ParticipantId, SessionId};
use rand_core::OsRng;
use tracing::{info, warn};

use crate::core::Core;
use crate::dkg::{confirmed_entry, DkgStart, Round2Done, SessionInfo, Stage, DKG_TTL};
use crate::error::{stored_hex, Error, Result};
use crate::keys::{with_key, Typed};
use crate::store::{self, KeyRecord, KeyState};

impl Core {
    /// Starts refreshing this signer's share of an existing key.
    pub(crate) async fn start_refresh(self: &Arc<Self>, ask: DkgStart) -> Result<Vec<u8>> {
        let key_id = ask.key_id.clone();
        let _held = self.lock_record(&key_id).await;
        let mut rec = self.record(&key_id)?;
        if rec.suite().map_err(|e| Error::internal("record", e))? != ask.suite
            || rec.me != ask.me.get()
        {
            return Err(Error::Invalid(format!(
                "key {key_id}: suite or participant id is not this signer's"
            )));
        }
        if rec.pending_refresh.is_some() {
            return Err(Error::Precondition(format!(
                "key {key_id}: a confirmed refresh is pending; complete it first"
            )));
        }
        {
            let mut dkg = self.dkg.lock().expect("lock");
            dkg.retain(|_, s| s.started.elapsed() < DKG_TTL);
            if dkg
                .values()
                .any(|s| s.info.refresh && s.info.key_id == key_id)
            {
                return Err(Error::Precondition(format!(
                    "key {key_id}: another refresh of it is running; abandon it first"
                )));
            }
        }
        let mut roster = rec.roster().map_err(|e| Error::internal("record", e))?;
        let participants = roster.ids();
        let mut asked: Vec<ParticipantId> = ask.participants.iter().map(|(p, _)| *p).collect();
        asked.sort();
        if asked != participants {
            return Err(Error::Invalid(format!(
                "key {key_id}: a refresh takes exactly the key's participants"
            )));
        }
        let next = match rec.state {
            KeyState::Refreshing => KeyState::Refreshing,
            s => s
                .apply(hot_warm_cold::Event::StartRefresh)
                .map_err(|e| Error::Precondition(format!("key {key_id}: {e}")))?,
        };
        let loaded = self
            .key(&key_id)
            .ok_or_else(|| Error::Precondition(format!("key {key_id} is not loaded")))?;
        let threshold = ask.threshold;
        let (stage, round1) = with_key!(&loaded, C, k => {
            let share: KeyShare<C> = (*k.share).clone();
            if share.public().threshold() != threshold {
                return Err(Error::Invalid(format!(
                    "key {key_id}: threshold is {}, not {threshold}",
                    share.public().threshold()
                )));
            }
            let (s, m) = dkg::start_refresh::<C, _>(ask.session, share, &*self.identity, &mut OsRng)
                .map_err(Error::protocol("refresh start"))?;
            (C::stage(Stage::Round1(s)), m)
        });
        if next != rec.state {
            self.log_lifecycle(&key_id, "start-refresh", next).await?;
            rec.state = next;
            self.store.put(&rec)?;
            loaded.set_state(next);
        }
        roster.insert(COORDINATOR, ask.coordinator);
        self.new_session(
            ask.session,
            SessionInfo {
                key_id: key_id.clone(),
                refresh: true,
                policy: rec.policy.clone(),
                suite: ask.suite,
                participants,
                roster,
            },
            stage,
        )?;
        info!(%key_id, suite = %ask.suite, me = %ask.me, "refresh started");
        Ok(round1)
    }

    /// The refreshed share waits beside the old one until every confirmation is in;
    /// durable and recorded before our confirmation leaves.
    pub(crate) async fn store_refreshed(
        &self,
        info: &SessionInfo,
        session: &SessionId,
        done: &Round2Done,
    ) -> Result<()> {
        let key_id = &info.key_id;
        let _held = self.lock_record(key_id).await;
        let mut rec = self.record(key_id)?;
        rec.pending_refresh = Some(store::PendingRefresh {
            session: session.to_string(),
            sealed_share: hex::encode(&done.sealed),
            public_key_set: hex::encode(&done.public_key_set),
        });
        self.store.put(&rec)?;
        self.audit
            .append(
                ax::REFRESH_CONFIRMED,
                &confirmed_entry(key_id, session, &done.public_key, &rec.policy),
            )
            .await?;
        info!(%key_id, "refreshed share stored (pending confirmation)");
        Ok(())
    }

    /// Checks every participant's confirmation of refresh `session` and replaces the
    /// share with the refreshed one. Idempotent.
    pub(crate) async fn apply_refresh(
        &self,
        rec: KeyRecord,
        session: &SessionId,
        confirmations: &[(ParticipantId, Vec<u8>)],
    ) -> Result<()> {
        let key_id = rec.key_id.clone();
        // Read again under the record's lock (it may have changed since it was found).
        let _held = self.lock_record(&key_id).await;
        let mut rec = self.record(&key_id)?;
        let Some(pending) = rec.pending_refresh.clone() else {
            // Already applied (a retry).
            return Ok(());
        };
        let suite = rec.suite().map_err(|e| Error::internal("record", e))?;
        let roster = rec.roster().map_err(|e| Error::internal("record", e))?;
        let pks = stored_hex("pending public key set", &pending.public_key_set)?;
        let digest = custody_protocol::with_suite!(suite, C => {
            custody_protocol::PublicKeySet::<C>::from_bytes(&pks)
                .map_err(|e| Error::internal("record", e))?
                .digest()
        });
        dkg::check_confirmations(
            &roster,
            suite,
            dkg::REFRESH_KINDS,
            session,
            &roster.ids(),
            &digest,
            sim::labelled(confirmations),
        )
        .map_err(Error::protocol("refresh confirmations"))?;
        let next = match rec.state {
            KeyState::Refreshing => rec
                .state
                .apply(hot_warm_cold::Event::RefreshCompleted)
                .map_err(|e| Error::Precondition(format!("key {key_id}: {e}")))?,
            s => s,
        };
        rec.sealed_share = pending.sealed_share;
        rec.public_key_set = pending.public_key_set;
        rec.pending_refresh = None;
        rec.last_refresh = session.to_string();
        rec.state = next;
        let loaded = self.unseal(&rec)?;
        // The usage record goes on (one mutex for the key's spending, old share or new).
        let loaded = match self.key(&key_id) {
            Some(old) => loaded.keep_usage_of(&old),
            None => loaded,
        };
        self.log_lifecycle(&key_id, "refresh", next).await?;
        self.store.put(&rec)?;
        // The old share goes, and the commitments drawn for it with it (nonces never
        // outlive a share).
        self.insert_key(&key_id, loaded);
        self.end_session(session);
        warn!(%key_id, "key refreshed: the old share is gone");
        Ok(())
    }

    /// Abandons an unfinished refresh of `key_id`: the pending share (if any) is
    /// dropped and the old one signs again. Idempotent.
    pub(crate) async fn abandon_refresh(&self, key_id: &str) -> Result<KeyState> {
        let _held = self.lock_record(key_id).await;
        let mut rec = self.record(key_id)?;
        self.dkg
            .lock()
            .expect("lock")
            .retain(|_, s| !(s.info.refresh && s.info.key_id == key_id));
        if rec.state != KeyState::Refreshing {
            // A stale pending share (a race with an abandon) must not block the next
            // refresh.
            if rec.pending_refresh.take().is_some() {
                self.store.put(&rec)?;
            }
            return Ok(rec.state);
        }
        let next = rec
            .state
            .apply(hot_warm_cold::Event::RefreshFailed)
            .map_err(|e| Error::Precondition(format!("key {key_id}: {e}")))?;
        self.log_lifecycle(key_id, "refresh-failed", next).await?;
        rec.state = next;
        rec.pending_refresh = None;
        self.store.put(&rec)?;
        if let Some(k) = self.key(key_id) {
            k.set_state(next);
        }
        warn!(%key_id, "refresh abandoned: the old share stays");
        Ok(next)
    }
}
