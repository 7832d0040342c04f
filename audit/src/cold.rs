//! The files that carry a cold (air-gapped) signature between the coordinator and an
//! offline signer: two trips, each a request file signed by the coordinator and a
//! response file holding the signer's signed envelope.
//!
//! Trip 1 (`commit`): the signer draws nonces, seals them at rest, records when it
//! first saw the request, and answers with its commitment. Trip 2 (`sign`): the
//! signer checks the coordinator-signed signing package carries that commitment,
//! decides under the key's policy (approvals, limits, its own time lock), marks the
//! nonces used durably, and answers with its signature share.

use serde::{Deserialize, Serialize};

use crate::transcript::{ApprovalRecord, SignedRequest};

/// `format` of a request file.
pub const COLD_REQUEST_FORMAT: &str = "custody-cold-request/v1";
/// `format` of a response file.
pub const COLD_RESPONSE_FORMAT: &str = "custody-cold-response/v1";
/// Domain of the coordinator's signature over a request file.
pub const COLD_REQUEST_DOMAIN: &str = "custody/v1/cold-request";

/// A request to an offline signer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColdRequest {
    /// [`COLD_REQUEST_FORMAT`].
    pub format: String,
    /// `commit` (trip 1) or `sign` (trip 2).
    pub kind: String,
    /// The signer this request is for.
    pub signer: String,
    /// The key.
    pub key_id: String,
    /// The request.
    pub request_id: String,
    /// What is to be signed.
    pub request: SignedRequest,
    /// The approvals of the request.
    #[serde(default)]
    pub approvals: Vec<ApprovalRecord>,
    /// Trip 2: the coordinator-signed signing package (envelope), hex.
    #[serde(default)]
    pub package: String,
    /// The coordinator's certificate (DER), hex: the signer checks it against its CA.
    pub coordinator_certificate: String,
    /// The coordinator's Ed25519 signature over [`ColdRequest::signed_bytes`], hex.
    pub signature: String,
}

impl ColdRequest {
    /// What the coordinator signs: `TaggedHash("custody/v1/cold-request", format, kind,
    /// signer, key id, request id, request JSON, approvals JSON, package bytes)`.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, String> {
        let request = serde_json::to_vec(&self.request).map_err(|e| e.to_string())?;
        let approvals = serde_json::to_vec(&self.approvals).map_err(|e| e.to_string())?;
        let package = hex::decode(&self.package).map_err(|_| "package is not hex")?;
        Ok(custody_protocol::hash::TaggedHash::new(COLD_REQUEST_DOMAIN)
            .part(self.format.as_bytes())
            .part(self.kind.as_bytes())
            .part(self.signer.as_bytes())
            .part(self.key_id.as_bytes())
            .part(self.request_id.as_bytes())
            .part(&request)
            .part(&approvals)
            .part(&package)
            .finish()
            .to_vec())
    }
}

/// An offline signer's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColdResponse {
    /// [`COLD_RESPONSE_FORMAT`].
    pub format: String,
    /// `commit` or `sign`, as the request.
    pub kind: String,
    /// The signer.
    pub signer: String,
    /// The key.
    pub key_id: String,
    /// The request.
    pub request_id: String,
    /// The signer's envelope, hex: a one-commitment batch (commit) or a signature
    /// share with its transcript digest (sign).
    pub envelope: String,
}

/// The session id an offline signer puts on its trip-1 commitment (instead of the all-
/// zero session of online commitment batches), binding it to one key and request:
/// `TaggedHash("custody/v1/cold-commit", key id, request id)`.
pub fn commit_session(key_id: &str, request_id: &str) -> custody_protocol::SessionId {
    custody_protocol::SessionId(
        custody_protocol::hash::TaggedHash::new("custody/v1/cold-commit")
            .part(key_id.as_bytes())
            .part(request_id.as_bytes())
            .finish(),
    )
}
