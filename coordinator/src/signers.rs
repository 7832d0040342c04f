//! Connections to the signers and what the coordinator knows of their health.

use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use custody_protocol::proto::signer_client::SignerClient;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use crate::config::{SignerEndpoint, Timeouts};

/// One signer as the coordinator sees it.
#[derive(Debug)]
pub struct SignerHandle {
    /// Name, as in its certificate.
    pub name: String,
    source: SignerEndpoint,
    tls: ClientTlsConfig,
    timeouts: Timeouts,
    channel: Mutex<Option<SignerClient<Channel>>>,
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

/// Whether a status means the signer could not be reached (as opposed to an answer).
pub fn is_transport(st: &Status) -> bool {
    matches!(
        st.code(),
        Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl SignerHandle {
    pub(crate) fn new(source: SignerEndpoint, tls: ClientTlsConfig, timeouts: Timeouts) -> Self {
        SignerHandle {
            name: source.name.clone(),
            source,
            tls,
            timeouts,
            channel: Mutex::new(None),
            health: Mutex::new(Health::default()),
            certificate: Mutex::new(None),
            sealer: Mutex::new(String::new()),
            culprits: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Where the signer listens now (re-reading its address file).
    pub fn endpoint(&self) -> Result<String, Status> {
        match (&self.source.endpoint, &self.source.addr_file) {
            (Some(e), _) => Ok(e.clone()),
            (None, Some(f)) => std::fs::read_to_string(f)
                .map(|s| s.trim().to_string())
                .map_err(|e| {
                    Status::unavailable(format!(
                        "signer {}: address file {}: {e}",
                        self.name,
                        f.display()
                    ))
                }),
            (None, None) => Err(Status::internal("signer without address")),
        }
    }

    /// A client, connecting lazily; reused until the signer fails.
    pub fn client(&self) -> Result<SignerClient<Channel>, Status> {
        let mut ch = self.channel.lock().expect("lock");
        if let Some(c) = ch.as_ref() {
            return Ok(c.clone());
        }
        let addr = self.endpoint()?;
        let ep = Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|e| Status::internal(format!("signer {} endpoint {addr}: {e}", self.name)))?
            .tls_config(self.tls.clone())
            .map_err(|e| Status::internal(format!("signer {} tls: {e}", self.name)))?
            .connect_timeout(self.timeouts.connect())
            .tcp_nodelay(true)
            .http2_keep_alive_interval(std::time::Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let client = SignerClient::new(ep.connect_lazy())
            .max_decoding_message_size(8 << 20)
            .max_encoding_message_size(8 << 20);
        *ch = Some(client.clone());
        Ok(client)
    }

    /// Records the outcome of a call.
    pub fn observe<T>(&self, r: &Result<T, Status>) {
        let mut h = self.health.lock().expect("lock");
        match r {
            Ok(_) => {
                h.reachable = true;
                h.last_seen_ms = now_ms();
                h.last_error.clear();
                h.failed_at = None;
            }
            Err(st) if is_transport(st) => {
                h.epoch += 1;
                h.reachable = false;
                h.last_error = format!("{:?}: {}", st.code(), st.message());
                h.failed_at = Some(Instant::now());
                // Reconnect from scratch next time (the address may have changed).
                *self.channel.lock().expect("lock") = None;
            }
            Err(_) => {
                // The signer answered: it is reachable, the request was refused.
                h.reachable = true;
                h.last_seen_ms = now_ms();
            }
        }
    }

    /// Records the outcome of a background probe: reachability and last contact only.
    /// A probe never changes the signer's epoch (its pooled commitments stay), its
    /// back-off after a failure or a bad share, or (unless the connection itself failed)
    /// its channel: a slow answer under load must not cost the signing path anything.
    pub fn observe_probe<T>(&self, r: &Result<T, Status>) {
        let mut h = self.health.lock().expect("lock");
        match r {
            Ok(_) => {
                h.reachable = true;
                h.last_seen_ms = now_ms();
            }
            Err(st) if st.code() == Code::DeadlineExceeded => {
                h.reachable = false;
                h.last_error = format!("no answer to a probe: {}", st.message());
            }
            Err(st) if is_transport(st) => {
                h.reachable = false;
                h.last_error = format!("{:?}: {}", st.code(), st.message());
                drop(h);
                // Reconnect from scratch next time (the address may have changed).
                *self.channel.lock().expect("lock") = None;
            }
            Err(_) => {
                h.reachable = true;
                h.last_seen_ms = now_ms();
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

/// How often every signer is asked who it is (so an idle cluster still shows a signer
/// that went away, and the console shows each one's sealing backend), and how long
/// one probe may take.
const PROBE: std::time::Duration = std::time::Duration::from_secs(2);
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Probes every signer in the background, until the coordinator stops.
pub(crate) fn spawn_prober(core: std::sync::Arc<crate::core::Core>) {
    let weak = std::sync::Arc::downgrade(&core);
    drop(core);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROBE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(core) = weak.upgrade() else { return };
            let timeout = PROBE_TIMEOUT.max(core.timeouts.connect());
            let mut tasks = Vec::new();
            for h in core.signers.iter().cloned() {
                tasks.push(tokio::spawn(async move {
                    let r = match h.client() {
                        Ok(mut c) => match tokio::time::timeout(
                            timeout,
                            c.identity(custody_protocol::proto::IdentityRequest {}),
                        )
                        .await
                        {
                            Ok(r) => r.map(tonic::Response::into_inner),
                            Err(_) => Err(Status::deadline_exceeded("no answer")),
                        },
                        Err(e) => Err(e),
                    };
                    h.observe_probe(&r);
                    if let Ok(id) = r {
                        *h.sealer.lock().expect("lock") = id.sealer;
                    }
                }));
            }
            drop(core);
            for t in tasks {
                let _ = t.await;
            }
        }
    });
}
