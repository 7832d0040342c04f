//! How the coordinator reaches a signer: the [`SignerLink`] trait, its typed
//! [`LinkError`], and [`GrpcLink`], the link over mTLS gRPC.
//!
//! Every driver (DKG, refresh, repair, signing, lifecycle, policy changes, proposals,
//! audit export, probes) talks to signers through a `SignerLink`, so the same drivers
//! run over the network and, in tests, over an in-memory link to signer cores in the
//! same process (`tests/support/inproc.rs`; the coordinator never depends on the
//! signer crate). A signer's answer is decoded into a [`LinkError`] once, from its
//! status code and metadata (never from its message text): a stale commitment, a
//! refusal by policy with its reason tag, a rejection naming culprits, or a transport
//! failure.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use custody_protocol::proto::signer_client::SignerClient;
use custody_protocol::proto::*;
use custody_protocol::{api, ParticipantId};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use crate::config::{SignerEndpoint, Timeouts};

/// A signer's answer to come.
pub type LinkFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, LinkError>> + Send + 'a>>;

/// Why a call to a signer did not succeed, decoded once from its status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The signer could not be reached, or did not answer in time.
    #[error("{message}")]
    Unreachable {
        /// The transport's code (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, …).
        code: Code,
        /// What failed.
        message: String,
    },
    /// The commitment named has no nonces at the signer (it restarted): draw fresh ones.
    #[error("{message}")]
    StaleCommitment {
        /// The signer's words.
        message: String,
    },
    /// The signer's policy refused the request (another quorum would say the same).
    #[error("{message}")]
    Refused {
        /// The signer's words.
        message: String,
        /// The policy's reason tag (`hot_warm_cold::DenyReason::tag`), when it gave one.
        tag: Option<String>,
    },
    /// The signer answered with an error: a bad request, or a peer's message that
    /// failed its checks (naming the culprits).
    #[error("{message}")]
    Rejected {
        /// Its code.
        code: Code,
        /// Its words.
        message: String,
        /// The participants it blamed.
        culprits: Vec<ParticipantId>,
    },
}

impl LinkError {
    /// A signer's status, decoded.
    pub fn from_status(st: &Status) -> LinkError {
        let message = st.message().to_string();
        if st.metadata().contains_key(api::STALE_COMMITMENT) {
            return LinkError::StaleCommitment { message };
        }
        match st.code() {
            Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled => {
                LinkError::Unreachable {
                    code: st.code(),
                    message,
                }
            }
            Code::PermissionDenied => LinkError::Refused {
                message,
                tag: st
                    .metadata()
                    .get(api::DENY_REASON)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
            },
            code => LinkError::Rejected {
                code,
                message,
                culprits: api::culprits(st),
            },
        }
    }

    /// No answer within `timeout`.
    pub fn timed_out(what: impl std::fmt::Display) -> LinkError {
        LinkError::Unreachable {
            code: Code::DeadlineExceeded,
            message: what.to_string(),
        }
    }

    /// Whether the signer could not be reached (as opposed to an answer).
    pub fn is_transport(&self) -> bool {
        matches!(self, LinkError::Unreachable { .. })
    }

    /// The status code the signer answered with.
    pub fn code(&self) -> Code {
        match self {
            LinkError::Unreachable { code, .. } | LinkError::Rejected { code, .. } => *code,
            LinkError::StaleCommitment { .. } => Code::FailedPrecondition,
            LinkError::Refused { .. } => Code::PermissionDenied,
        }
    }

    /// The participants the signer blamed.
    pub fn culprits(&self) -> &[ParticipantId] {
        match self {
            LinkError::Rejected { culprits, .. } => culprits,
            _ => &[],
        }
    }

    /// As a status to pass on (code, message, and the reason tag or culprits).
    pub fn to_status(&self) -> Status {
        let mut st = Status::new(self.code(), self.to_string());
        match self {
            LinkError::Refused { tag: Some(tag), .. } => {
                if let Ok(v) = tag.parse() {
                    st.metadata_mut().insert(api::DENY_REASON, v);
                }
            }
            LinkError::Rejected { culprits, .. } => api::set_culprits(&mut st, culprits),
            _ => {}
        }
        st
    }
}

impl From<Status> for LinkError {
    fn from(st: Status) -> LinkError {
        LinkError::from_status(&st)
    }
}

/// The `custody.v1.Signer` API as the coordinator uses it.
pub trait SignerLink: Send + Sync + std::fmt::Debug {
    /// Who the signer is.
    fn identity(&self) -> LinkFuture<'_, IdentityResponse>;
    /// DKG step 1.
    fn dkg_start(&self, r: DkgStartRequest) -> LinkFuture<'_, DkgStartResponse>;
    /// DKG step 2.
    fn dkg_round1(&self, r: DkgRound1Request) -> LinkFuture<'_, DkgRound1Response>;
    /// DKG step 3.
    fn dkg_round2(&self, r: DkgRound2Request) -> LinkFuture<'_, DkgRound2Response>;
    /// DKG step 4.
    fn dkg_finalize(&self, r: DkgFinalizeRequest) -> LinkFuture<'_, DkgFinalizeResponse>;
    /// Fresh commitments.
    fn commit(&self, r: CommitRequest) -> LinkFuture<'_, CommitResponse>;
    /// A signature share.
    fn sign_share(&self, r: SignShareRequest) -> LinkFuture<'_, SignShareResponse>;
    /// A lifecycle event.
    fn key_lifecycle(&self, r: KeyLifecycleRequest) -> LinkFuture<'_, KeyLifecycleResponse>;
    /// Repair, as a helper, step 1.
    fn repair_help(&self, r: RepairHelpRequest) -> LinkFuture<'_, RepairHelpResponse>;
    /// Repair, as a helper, step 2.
    fn repair_sigma(&self, r: RepairSigmaRequest) -> LinkFuture<'_, RepairSigmaResponse>;
    /// Repair, as the signer that lost its share.
    fn repair_recover(&self, r: RepairRecoverRequest) -> LinkFuture<'_, RepairRecoverResponse>;
    /// A policy change.
    fn set_policy(&self, r: SetPolicyRequest) -> LinkFuture<'_, SetPolicyResponse>;
    /// A request's first sighting.
    fn propose(&self, r: ProposeRequest) -> LinkFuture<'_, ProposeResponse>;
    /// The signer's sealed audit log, whole.
    fn export_audit(&self, nonce: Vec<u8>) -> LinkFuture<'_, Vec<u8>>;
    /// Forgets any connection (the next call connects again: the address may change).
    fn reset(&self) {}
    /// Where the signer is reached, for status displays.
    fn endpoint(&self) -> String;
}

/// A signer over mTLS gRPC, connecting lazily and reusing the connection until it
/// fails.
#[derive(Debug)]
pub struct GrpcLink {
    name: String,
    source: SignerEndpoint,
    tls: ClientTlsConfig,
    timeouts: Timeouts,
    channel: Mutex<Option<SignerClient<Channel>>>,
}

impl GrpcLink {
    /// A link to the signer at `source`.
    pub fn new(source: SignerEndpoint, tls: ClientTlsConfig, timeouts: Timeouts) -> GrpcLink {
        GrpcLink {
            name: source.name.clone(),
            source,
            tls,
            timeouts,
            channel: Mutex::new(None),
        }
    }

    /// Where the signer listens now (re-reading its address file).
    pub fn endpoint(&self) -> Result<String, LinkError> {
        match (&self.source.endpoint, &self.source.addr_file) {
            (Some(e), _) => Ok(e.clone()),
            (None, Some(f)) => std::fs::read_to_string(f)
                .map(|s| s.trim().to_string())
                .map_err(|e| LinkError::Unreachable {
                    code: Code::Unavailable,
                    message: format!("signer {}: address file {}: {e}", self.name, f.display()),
                }),
            (None, None) => Err(LinkError::Unreachable {
                code: Code::Internal,
                message: format!("signer {}: no address", self.name),
            }),
        }
    }

    fn client(&self) -> Result<SignerClient<Channel>, LinkError> {
        let mut ch = self.channel.lock().expect("lock");
        if let Some(c) = ch.as_ref() {
            return Ok(c.clone());
        }
        let addr = self.endpoint()?;
        // A signer we cannot even dial (a bad address or TLS setting) is unreachable.
        let bad = |e: String| LinkError::Unreachable {
            code: Code::Internal,
            message: e,
        };
        let ep = Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|e| bad(format!("signer {} endpoint {addr}: {e}", self.name)))?
            .tls_config(self.tls.clone())
            .map_err(|e| bad(format!("signer {} tls: {e}", self.name)))?
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
}

/// One RPC over the link's client: `$method(request)`, its answer or decoded error.
macro_rules! rpc {
    ($self:ident, $method:ident, $r:expr) => {{
        let client = $self.client();
        Box::pin(async move {
            let mut c = client?;
            c.$method($r)
                .await
                .map(tonic::Response::into_inner)
                .map_err(|st| LinkError::from_status(&st))
        })
    }};
}

impl SignerLink for GrpcLink {
    fn identity(&self) -> LinkFuture<'_, IdentityResponse> {
        rpc!(self, identity, IdentityRequest {})
    }
    fn dkg_start(&self, r: DkgStartRequest) -> LinkFuture<'_, DkgStartResponse> {
        rpc!(self, dkg_start, r)
    }
    fn dkg_round1(&self, r: DkgRound1Request) -> LinkFuture<'_, DkgRound1Response> {
        rpc!(self, dkg_round1, r)
    }
    fn dkg_round2(&self, r: DkgRound2Request) -> LinkFuture<'_, DkgRound2Response> {
        rpc!(self, dkg_round2, r)
    }
    fn dkg_finalize(&self, r: DkgFinalizeRequest) -> LinkFuture<'_, DkgFinalizeResponse> {
        rpc!(self, dkg_finalize, r)
    }
    fn commit(&self, r: CommitRequest) -> LinkFuture<'_, CommitResponse> {
        rpc!(self, commit, r)
    }
    fn sign_share(&self, r: SignShareRequest) -> LinkFuture<'_, SignShareResponse> {
        rpc!(self, sign_share, r)
    }
    fn key_lifecycle(&self, r: KeyLifecycleRequest) -> LinkFuture<'_, KeyLifecycleResponse> {
        rpc!(self, key_lifecycle, r)
    }
    fn repair_help(&self, r: RepairHelpRequest) -> LinkFuture<'_, RepairHelpResponse> {
        rpc!(self, repair_help, r)
    }
    fn repair_sigma(&self, r: RepairSigmaRequest) -> LinkFuture<'_, RepairSigmaResponse> {
        rpc!(self, repair_sigma, r)
    }
    fn repair_recover(&self, r: RepairRecoverRequest) -> LinkFuture<'_, RepairRecoverResponse> {
        rpc!(self, repair_recover, r)
    }
    fn set_policy(&self, r: SetPolicyRequest) -> LinkFuture<'_, SetPolicyResponse> {
        rpc!(self, set_policy, r)
    }
    fn propose(&self, r: ProposeRequest) -> LinkFuture<'_, ProposeResponse> {
        rpc!(self, propose, r)
    }
    fn export_audit(&self, nonce: Vec<u8>) -> LinkFuture<'_, Vec<u8>> {
        let client = self.client();
        Box::pin(async move {
            let mut c = client?;
            let mut stream = c
                .export_audit(ExportAuditRequest { nonce })
                .await
                .map_err(|st| LinkError::from_status(&st))?
                .into_inner();
            let mut log = Vec::new();
            while let Some(chunk) = stream
                .message()
                .await
                .map_err(|st| LinkError::from_status(&st))?
            {
                log.extend_from_slice(&chunk.data);
            }
            Ok(log)
        })
    }
    fn reset(&self) {
        *self.channel.lock().expect("lock") = None;
    }
    fn endpoint(&self) -> String {
        GrpcLink::endpoint(self).unwrap_or_else(|e| e.to_string())
    }
}
