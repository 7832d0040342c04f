//! The coordinator's metrics (Prometheus, on `metrics_listen`) and the recent history
//! the console charts.
//!
//! - `custody_sign_duration_seconds{suite,tier}`: a signature, from the request to the
//!   durable result (commitments, shares, aggregation, audit log, store);
//! - `custody_dkg_duration_seconds{suite,tier}`: key creation, from the request to the
//!   recorded key;
//! - `custody_sign_requests_total{outcome,reason}`: every `Sign` answer: `signed`,
//!   `replayed`, `pending` (waits for approvals), `refused` (a signer's policy, with its
//!   reason tag), `unavailable` (fewer than t signers), `invalid`, `denied` (caller),
//!   `error`;
//! - `custody_signer_culprits_total{signer}`, `custody_signer_up{signer}`,
//!   `custody_signer_last_seen_seconds{signer}` (Unix time), and
//!   `custody_commitments_pooled{signer}` (commitments drawn ahead, all keys);
//! - `custody_keys{tier,state}`, `custody_requests_waiting{state}`;
//! - `custody_audit_appends_total`, `custody_audit_append_failures_total`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use custody_ops::{Exporter, LatencyFamily};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::core::{AnyKey, Core};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SuiteTier {
    pub suite: String,
    pub tier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Outcome {
    pub outcome: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignerLabel {
    signer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabel {
    tier: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// Signatures of one minute, for the console's charts.
#[derive(Clone, Debug, Default)]
pub(crate) struct Minute {
    /// Unix minute.
    pub minute: u64,
    pub count: u64,
    pub sum_ms: f64,
    pub max_ms: f64,
    /// Latencies, sorted lazily (at most [`SAMPLES`] kept per minute).
    pub samples: Vec<f32>,
}

/// Latency samples kept per minute (enough for a median; the histogram has the rest).
const SAMPLES: usize = 2048;
/// Minutes of history.
pub(crate) const HISTORY: usize = 60;

/// The coordinator's instruments.
#[derive(Debug)]
pub(crate) struct Metrics {
    sign_seconds: LatencyFamily<SuiteTier>,
    dkg_seconds: LatencyFamily<SuiteTier>,
    sign_requests: Family<Outcome, Counter>,
    history: Mutex<VecDeque<Minute>>,
}

fn unix_minute() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 60)
        .unwrap_or(0)
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            sign_seconds: custody_ops::latency_family(),
            dkg_seconds: custody_ops::latency_family(),
            sign_requests: Family::default(),
            history: Mutex::new(VecDeque::new()),
        }
    }

    /// A signature made, in `took`.
    pub fn signed(&self, key: &AnyKey, took: Duration) {
        let meta = key.meta();
        self.sign_seconds
            .get_or_create(&SuiteTier {
                suite: meta.suite.clone(),
                tier: meta.tier.name().into(),
            })
            .observe(took.as_secs_f64());
        let ms = took.as_secs_f64() * 1000.0;
        let now = unix_minute();
        let mut h = self.history.lock().expect("lock");
        if h.back().is_none_or(|m| m.minute != now) {
            h.push_back(Minute {
                minute: now,
                ..Minute::default()
            });
            while h.len() > HISTORY {
                h.pop_front();
            }
        }
        let m = h.back_mut().expect("pushed");
        m.count += 1;
        m.sum_ms += ms;
        m.max_ms = m.max_ms.max(ms);
        if m.samples.len() < SAMPLES {
            m.samples.push(ms as f32);
        }
    }

    /// A key created in `took`.
    pub fn dkg(&self, suite: &str, tier: &str, took: Duration) {
        self.dkg_seconds
            .get_or_create(&SuiteTier {
                suite: suite.to_string(),
                tier: tier.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// How a `Sign` call ended.
    pub fn sign_outcome(&self, r: &Result<custody_protocol::proto::SignResponse, tonic::Status>) {
        use tonic::Code;
        let (outcome, reason) = match r {
            Ok(s) if s.state == "pending" => ("pending", String::new()),
            Ok(s) if s.replayed => ("replayed", String::new()),
            Ok(_) => ("signed", String::new()),
            Err(st) => match st.code() {
                Code::PermissionDenied => match st
                    .metadata()
                    .get(custody_protocol::api::DENY_REASON)
                    .and_then(|v| v.to_str().ok())
                {
                    // Only the known tags: a signer cannot mint label values.
                    Some(tag) => (
                        "refused",
                        hot_warm_cold::DenyReason::TAGS
                            .iter()
                            .find(|t| **t == tag)
                            .map_or("other", |t| t)
                            .to_string(),
                    ),
                    None => ("denied", String::new()),
                },
                Code::Unavailable => ("unavailable", String::new()),
                Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition => {
                    ("invalid", format!("{:?}", st.code()))
                }
                _ => ("error", format!("{:?}", st.code())),
            },
        };
        self.sign_requests
            .get_or_create(&Outcome {
                outcome: outcome.into(),
                reason,
            })
            .inc();
    }

    /// The last [`HISTORY`] minutes (oldest first), only minutes with signatures.
    pub fn history(&self) -> Vec<Minute> {
        self.history.lock().expect("lock").iter().cloned().collect()
    }
}

/// Registers the coordinator's metrics; gauges are read from `core` at each scrape.
pub(crate) fn exporter(core: &Arc<Core>) -> Exporter {
    let mut e = Exporter::new("coordinator");
    let m = &core.metrics;
    e.register_seconds(
        "sign_duration",
        "Signatures, from the request to the durable result",
        m.sign_seconds.clone(),
    );
    e.register_seconds(
        "dkg_duration",
        "Key creations (DKG), from the request to the recorded key",
        m.dkg_seconds.clone(),
    );
    e.register(
        "sign_requests",
        "Sign requests by outcome (refused: a signer's policy, with its reason)",
        m.sign_requests.clone(),
    );
    let culprits: Family<SignerLabel, Counter> = Family::default();
    let up: Family<SignerLabel, Gauge> = Family::default();
    let last_seen: Family<SignerLabel, Gauge> = Family::default();
    let pooled: Family<SignerLabel, Gauge> = Family::default();
    let keys: Family<KeyLabel, Gauge> = Family::default();
    let waiting: Family<StateLabel, Gauge> = Family::default();
    e.register(
        "signer_culprits",
        "Times a signer was named as a culprit (a share or message that failed its check)",
        culprits.clone(),
    );
    e.register(
        "signer_up",
        "1 if the signer answered the coordinator's last call or probe",
        up.clone(),
    );
    e.register_seconds(
        "signer_last_seen",
        "Unix time of the signer's last answer",
        last_seen.clone(),
    );
    e.register(
        "commitments_pooled",
        "Signing commitments drawn ahead from the signer (all keys), each usable once",
        pooled.clone(),
    );
    e.register("keys", "Keys by tier and lifecycle state", keys.clone());
    e.register(
        "requests_waiting",
        "Requests of warm and cold keys by state",
        waiting.clone(),
    );
    let weak: Weak<Core> = Arc::downgrade(core);
    e.on_scrape(move || {
        let Some(core) = weak.upgrade() else { return };
        for h in &core.signers {
            let l = SignerLabel {
                signer: h.name.clone(),
            };
            let health = h.health();
            up.get_or_create(&l).set(i64::from(health.reachable));
            last_seen
                .get_or_create(&l)
                .set((health.last_seen_ms / 1000) as i64);
            culprits.get_or_create(&l).inner().store(
                h.culprits.load(std::sync::atomic::Ordering::Relaxed),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        let mut per_signer = std::collections::BTreeMap::<String, i64>::new();
        for h in &core.signers {
            per_signer.insert(h.name.clone(), 0);
        }
        keys.clear();
        for k in core.keys.read().expect("lock").values() {
            let meta = k.meta();
            keys.get_or_create(&KeyLabel {
                tier: meta.tier.name().into(),
                state: meta.state.name().into(),
            })
            .inc();
            for (name, n) in k.pool_levels() {
                *per_signer.entry(name).or_default() += n as i64;
            }
        }
        for (signer, n) in per_signer {
            pooled.get_or_create(&SignerLabel { signer }).set(n);
        }
        waiting.clear();
        if let Ok(all) = core.store.open_waiting() {
            for w in all
                .into_iter()
                .filter(crate::store::WaitingRequest::is_open)
            {
                waiting
                    .get_or_create(&StateLabel {
                        state: w.state.name().into(),
                    })
                    .inc();
            }
        }
    });
    let weak: Weak<Core> = Arc::downgrade(core);
    e.audit_log(move || weak.upgrade().map_or((0, 0), |c| c.audit.counts()));
    e
}
