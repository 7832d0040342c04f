//! The signer's one error type, and its one conversion to a gRPC status.
//!
//! Every core function returns [`Error`]; the gRPC adapter turns it into a
//! [`tonic::Status`] with [`Error::into_status`], the only place that picks status
//! codes and sets the metadata callers act on without reading prose: the policy's
//! deny-reason tag ([`api::DENY_REASON`]), the culprits of a bad protocol message
//! ([`api::CULPRITS_METADATA`]) and the stale-commitment mark
//! ([`api::STALE_COMMITMENT`]). The cold file path prints the same errors as text.

use custody_protocol::api;
use tonic::Status;

/// Why the signer did not do what it was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A malformed field of the request (`INVALID_ARGUMENT`; the text names it).
    #[error("{0}")]
    Invalid(String),
    /// A peer's protocol message failed a check (`INVALID_ARGUMENT`, its culprits in
    /// the metadata).
    #[error("{context}: {source}")]
    Protocol {
        /// Which step.
        context: &'static str,
        /// The engine's error, naming culprits.
        source: custody_protocol::Error,
    },
    /// No such key or session here (`NOT_FOUND`).
    #[error("{0}")]
    NotFound(String),
    /// It exists already (`ALREADY_EXISTS`).
    #[error("{0}")]
    AlreadyExists(String),
    /// Not in a state that allows it (`FAILED_PRECONDITION`).
    #[error("{0}")]
    Precondition(String),
    /// The commitment named for this signer has no nonces here (never drawn, used,
    /// evicted, or from before a restart): draw new ones (`FAILED_PRECONDITION`,
    /// marked stale in the metadata).
    #[error("unknown or already used commitment for this signer")]
    StaleCommitment,
    /// Refused by this signer's policy, recorded in its audit log
    /// (`PERMISSION_DENIED`, the reason's tag in the metadata).
    #[error("{reason}")]
    Refused {
        /// What the caller reads.
        reason: String,
        /// The policy's reason tag (`hot_warm_cold::DenyReason::tag`).
        tag: &'static str,
    },
    /// The caller may not do this (`PERMISSION_DENIED`), not a policy decision.
    #[error("{0}")]
    Forbidden(String),
    /// The audit entry that must precede the action could not be written
    /// (`UNAVAILABLE`): the action is refused.
    #[error("{0}: refused because it cannot be recorded")]
    Unrecorded(#[from] custody_audit::AuditError),
    /// The identity key or sealer is unavailable (`UNAVAILABLE`).
    #[error("{0}")]
    Unavailable(String),
    /// A fault of ours: storage, encoding (`INTERNAL`; logged where it happens).
    #[error("{context}: {detail}")]
    Internal {
        /// Which step.
        context: &'static str,
        /// What went wrong.
        detail: String,
    },
}

/// The signer's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An internal error, logged once here.
    pub fn internal(context: &'static str, e: impl std::fmt::Display) -> Error {
        tracing::warn!("{context}: {e}");
        Error::Internal {
            context,
            detail: e.to_string(),
        }
    }

    /// An engine error at step `context`.
    pub fn protocol(context: &'static str) -> impl FnOnce(custody_protocol::Error) -> Error {
        move |source| Error::Protocol { context, source }
    }

    /// A field check of `custody_protocol::api` (which answers with a status) as ours.
    pub fn from_field(st: Status) -> Error {
        Error::Invalid(st.message().to_string())
    }

    /// The gRPC status: the one place that picks codes and metadata.
    pub fn into_status(self) -> Status {
        let msg = self.to_string();
        match self {
            Error::Invalid(_) => Status::invalid_argument(msg),
            Error::Protocol { source, .. } => {
                let mut st = Status::invalid_argument(msg);
                api::set_culprits(&mut st, &source.culprits());
                st
            }
            Error::NotFound(_) => Status::not_found(msg),
            Error::AlreadyExists(_) => Status::already_exists(msg),
            Error::Precondition(_) => Status::failed_precondition(msg),
            Error::StaleCommitment => {
                let mut st = Status::failed_precondition(msg);
                st.metadata_mut().insert(
                    api::STALE_COMMITMENT,
                    tonic::metadata::MetadataValue::from_static("1"),
                );
                st
            }
            Error::Refused { tag, .. } => {
                let mut st = Status::permission_denied(msg);
                st.metadata_mut().insert(
                    api::DENY_REASON,
                    tonic::metadata::MetadataValue::from_static(tag),
                );
                st
            }
            Error::Forbidden(_) => Status::permission_denied(msg),
            Error::Unrecorded(e) => {
                tracing::error!("{e}");
                Status::unavailable(msg)
            }
            Error::Unavailable(_) => Status::unavailable(msg),
            Error::Internal { .. } => Status::internal(msg),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        e.into_status()
    }
}

/// Decodes hex from a stored record: malformed hex is damage, never an empty value.
pub(crate) fn stored_hex(what: &'static str, s: &str) -> Result<Vec<u8>> {
    hex::decode(s).map_err(|e| Error::internal(what, format!("stored value is not hex: {e}")))
}
