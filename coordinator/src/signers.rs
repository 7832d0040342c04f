//! The signers as the coordinator sees them: each one's link ([`SignerLink`]) and
//! what the coordinator knows of its health.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Timeouts;
use crate::link::{LinkError, LinkFuture, SignerLink};

/// One signer as the coordinator sees it.
#[derive(Debug)]
pub struct SignerHandle {
    /// Name, as in its certificate.
    pub name: String,
    link: Arc<dyn SignerLink>,
    clock: Arc<dyn custody_ops::clock::Clock>,
    timeouts: Timeouts,
    health: Mutex<Health>,
    /// The signer's CA-verified certificate (DER), fetched on first contact.
    pub(crate) certificate: Mutex<Option<Vec<u8>>>,
    /// Its sealing backend, as it last described it (`Identity`).
    pub(crate) sealer: Mutex<String>,
    /// Times it was named as a culprit (a share or message that failed its check).
    pub(crate) culprits: std::sync::atomic::AtomicU64,
}

/// Health as last observed.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// The last call reached the signer.
    pub reachable: bool,
    /// Unix milliseconds of the last successful call.
    pub last_seen_ms: u64,
    /// The last transport error, if the last call failed.
    pub last_error: String,
    /// When the signer last failed (for the back-off in quorum choice).
    pub failed_at: Option<Instant>,
    /// Incremented each time the signer is found unreachable: its in-memory nonces may
    /// be gone, so commitments drawn in an older epoch are discarded.
    pub epoch: u64,
}

impl SignerHandle {
    /// A signer named `name`, reached over `link`.
    pub fn new(
        name: &str,
        link: Arc<dyn SignerLink>,
        timeouts: Timeouts,
        clock: Arc<dyn custody_ops::clock::Clock>,
    ) -> Self {
        SignerHandle {
            name: name.to_string(),
            link,
            clock,
            timeouts,
            health: Mutex::new(Health::default()),
            certificate: Mutex::new(None),
            sealer: Mutex::new(String::new()),
            culprits: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The link itself (for calls that manage their own timeout and observation).
    pub fn link(&self) -> Arc<dyn SignerLink> {
        self.link.clone()
    }

    /// Where the signer is reached now.
    pub fn endpoint(&self) -> String {
        self.link.endpoint()
    }

    /// One call over the link, within `timeout`; its outcome updates the health.
    pub async fn call<'a, T>(
        &'a self,
        timeout: Duration,
        f: impl FnOnce(&'a dyn SignerLink) -> LinkFuture<'a, T>,
    ) -> Result<T, LinkError> {
        let r = match tokio::time::timeout(timeout, f(&*self.link)).await {
            Ok(r) => r,
            Err(_) => Err(LinkError::timed_out(format!(
                "signer {} did not answer within {} ms",
                self.name,
                timeout.as_millis()
            ))),
        };
        self.observe(&r);
        r
    }

    /// Records the outcome of a call.
    pub fn observe<T>(&self, r: &Result<T, LinkError>) {
        let mut h = self.health.lock().expect("lock");
        match r {
            Ok(_) => {
                h.reachable = true;
                h.last_seen_ms = self.clock.now_ms();
                h.last_error.clear();
                h.failed_at = None;
            }
            Err(e) if e.is_transport() => {
                h.epoch += 1;
                h.reachable = false;
                h.last_error = format!("{:?}: {e}", e.code());
                h.failed_at = Some(Instant::now());
                // Reconnect from scratch next time (the address may have changed).
                self.link.reset();
            }
            Err(_) => {
                // The signer answered: it is reachable, the request was refused.
                h.reachable = true;
                h.last_seen_ms = self.clock.now_ms();
            }
        }
    }

    /// Records the outcome of a background probe: reachability and last contact only.
    /// A probe never changes the signer's epoch (its pooled commitments stay), its
    /// back-off after a failure or a bad share, or (unless the connection itself failed)
    /// its channel: a slow answer under load must not cost the signing path anything.
    pub fn observe_probe<T>(&self, r: &Result<T, LinkError>) {
        let mut h = self.health.lock().expect("lock");
        match r {
            Ok(_) => {
                h.reachable = true;
                h.last_seen_ms = self.clock.now_ms();
            }
            Err(e) if e.code() == tonic::Code::DeadlineExceeded => {
                h.reachable = false;
                h.last_error = format!("no answer to a probe: {e}");
            }
            Err(e) if e.is_transport() => {
                h.reachable = false;
                h.last_error = format!("{:?}: {e}", e.code());
                drop(h);
                // Reconnect from scratch next time (the address may have changed).
                self.link.reset();
            }
            Err(_) => {
                h.reachable = true;
                h.last_seen_ms = self.clock.now_ms();
            }
        }
    }

    /// Health snapshot.
    pub fn health(&self) -> Health {
        self.health.lock().expect("lock").clone()
    }

    /// Whether the signer failed within the back-off window.
    pub fn backing_off(&self) -> bool {
        self.health
            .lock()
            .expect("lock")
            .failed_at
            .is_some_and(|t| t.elapsed() < self.timeouts.backoff())
    }

    /// Marks the signer as misbehaving: it is passed over in quorum choice for the
    /// back-off window, like a signer that failed.
    pub fn mark_suspect(&self, why: &str) {
        let mut h = self.health.lock().expect("lock");
        h.last_error = format!("misbehaved: {why}");
        h.failed_at = Some(Instant::now());
    }

    /// The current epoch (see [`Health::epoch`]).
    pub fn epoch(&self) -> u64 {
        self.health.lock().expect("lock").epoch
    }

    /// Marks the signer's nonces as lost (it answered "unknown commitment", so it
    /// restarted): commitments of older epochs are discarded.
    pub fn bump_epoch(&self) {
        self.health.lock().expect("lock").epoch += 1;
    }
}
