//! Admission on this signer: read what the decision needs from the store, call the
//! pure [`hot_warm_cold::admit`], store what it says, durably, before the share
//! exists. The rules live in `hot-warm-cold`; this file only reads and writes.
//!
//! Hot, warm and cold requests all come through [`Core::admit`]; proposals (a warm or
//! cold request's first sighting, from which its time lock counts) through
//! [`Core::propose`].

use custody_audit::export as ax;
use hot_warm_cold::{Admitted, Approval, Request};

use crate::core::Core;
use crate::error::Result;
use crate::keys::Loaded;

impl Core {
    /// Decides `request` under the key's policy with this signer's own usage record
    /// and clock and, when allowed, records what the decision says durably before
    /// returning: check, then persist, then (the caller) sign.
    pub fn admit<C: custody_protocol::EngineSuite>(
        &self,
        key_id: &str,
        k: &Loaded<C>,
        request: &Request,
        approvals: &[Approval],
    ) -> Result<()> {
        let now = self.now();
        // Held until the plan is stored: concurrent requests cannot both spend.
        let mut usage = k.usage.lock().expect("lock");
        let request_id = request.request_id();
        let settled = match request {
            Request::Settlement(_) => self.store.settled(key_id, request_id)?,
            _ => None,
        };
        let sighting = if k.policy.time_lock_secs > 0 {
            self.store.sighting(key_id, request_id)?
        } else {
            None
        };
        let outcome = hot_warm_cold::admit(
            &hot_warm_cold::Context {
                key_id,
                state: k.state(),
                created_at: k.created_at,
                policy: &k.policy,
                usage: &usage,
                settled,
                sighting,
                now,
            },
            request,
            approvals,
        );
        if let Some(s) = &outcome.sighting {
            self.store.put_sighting(key_id, request_id, s)?;
        }
        match outcome.result {
            Err(reason) => Err(self.deny(key_id, request_id, reason)),
            Ok(Admitted::Retry) => Ok(()),
            Ok(Admitted::New(plan)) => {
                self.store.store_plan(key_id, request_id, &plan)?;
                if let Some(next) = plan.usage {
                    *usage = next;
                }
                Ok(())
            }
        }
    }

    /// Records when this signer first saw `request` (a warm or cold request, before
    /// its approvals), durably, with a `request-seen` audit entry the first time;
    /// returns that time. The same request id for another message is refused.
    pub async fn propose(&self, key_id: &str, request: &Request) -> Result<u64> {
        let request_id = request.request_id();
        let stored = self.store.sighting(key_id, request_id)?;
        let (sighting, new) = hot_warm_cold::admit::first_seen(key_id, request, stored, self.now())
            .map_err(|reason| self.deny(key_id, request_id, reason))?;
        if new {
            self.store.put_sighting(key_id, request_id, &sighting)?;
            self.audit
                .append(
                    ax::REQUEST_SEEN,
                    &ax::RequestSeen {
                        key_id: key_id.to_string(),
                        request_id: request_id.to_string(),
                        first_seen: sighting.at,
                    },
                )
                .await?;
        }
        Ok(sighting.at)
    }
}
