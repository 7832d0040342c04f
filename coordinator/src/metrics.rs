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
use std::sync::Mutex;
use std::time::Duration;

use custody_ops::LatencyFamily;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

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
pub(crate) struct SignerLabel {
    pub(crate) signer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KeyLabel {
    pub(crate) tier: String,
    pub(crate) state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StateLabel {
    pub(crate) state: String,
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
    pub(crate) sign_seconds: LatencyFamily<SuiteTier>,
    pub(crate) dkg_seconds: LatencyFamily<SuiteTier>,
    pub(crate) sign_requests: Family<Outcome, Counter>,
    history: Mutex<VecDeque<Minute>>,
    /// The coordinator's clock (the history's minutes).
    clock: std::sync::Arc<dyn custody_ops::clock::Clock>,
}

impl Metrics {
    pub fn new(clock: std::sync::Arc<dyn custody_ops::clock::Clock>) -> Metrics {
        Metrics {
            clock,
            sign_seconds: custody_ops::latency_family(),
            dkg_seconds: custody_ops::latency_family(),
            sign_requests: Family::default(),
            history: Mutex::new(VecDeque::new()),
        }
    }

    /// A signature made, in `took`.
    pub fn signed(&self, meta: &crate::store::KeyMeta, took: Duration) {
        self.sign_seconds
            .get_or_create(&SuiteTier {
                suite: meta.suite.clone(),
                tier: meta.tier.name().into(),
            })
            .observe(took.as_secs_f64());
        let ms = took.as_secs_f64() * 1000.0;
        let now = self.clock.now_secs() / 60;
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
