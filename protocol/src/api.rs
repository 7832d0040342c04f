//! Helpers shared by every gRPC edge: validating request fields into domain types and
//! turning engine errors into precise statuses.
//!
//! Rules: a malformed field is `INVALID_ARGUMENT` naming the field; an engine error is
//! `INVALID_ARGUMENT` (the peer's message was bad) with the culprits' participant ids in
//! the `custody-culprits` metadata entry (comma-separated), so the caller can exclude
//! them without parsing prose.

use tonic::Status;

use crate::{Error, ParticipantId, SessionId, Suite};

/// Metadata key that carries culprits' participant ids.
pub const CULPRITS_METADATA: &str = "custody-culprits";

/// Longest key id or request id.
pub const MAX_ID_LEN: usize = 128;

/// Checks a key id or request id: 1..=128 characters of `[A-Za-z0-9._:-]`.
pub fn check_id(field: &str, id: &str) -> Result<(), Status> {
    if id.is_empty()
        || id.len() > MAX_ID_LEN
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    {
        return Err(Status::invalid_argument(format!(
            "{field}: must be 1..={MAX_ID_LEN} characters of [A-Za-z0-9._:-]"
        )));
    }
    Ok(())
}

/// A 32-byte session id.
pub fn session(field: &str, bytes: &[u8]) -> Result<SessionId, Status> {
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| Status::invalid_argument(format!("{field}: must be 32 bytes")))?;
    Ok(SessionId(arr))
}

/// A non-zero participant id that fits in 16 bits.
pub fn participant(field: &str, v: u32) -> Result<ParticipantId, Status> {
    u16::try_from(v)
        .ok()
        .and_then(ParticipantId::new)
        .ok_or_else(|| Status::invalid_argument(format!("{field}: invalid participant id {v}")))
}

/// A suite name.
pub fn suite(field: &str, name: &str) -> Result<Suite, Status> {
    name.parse()
        .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

/// An engine error as a status, culprits in the metadata.
pub fn engine_status(context: &str, e: Error) -> Status {
    let mut st = Status::invalid_argument(format!("{context}: {e}"));
    set_culprits(&mut st, &e.culprits());
    st
}

/// Adds culprits to a status.
pub fn set_culprits(st: &mut Status, culprits: &[ParticipantId]) {
    if culprits.is_empty() {
        return;
    }
    let list = culprits
        .iter()
        .map(|p| p.get().to_string())
        .collect::<Vec<_>>()
        .join(",");
    if let Ok(v) = list.parse() {
        st.metadata_mut().insert(CULPRITS_METADATA, v);
    }
}

/// The culprits a status names (see [`engine_status`]).
pub fn culprits(st: &Status) -> Vec<ParticipantId> {
    st.metadata()
        .get(CULPRITS_METADATA)
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.split(',')
                .filter_map(|p| p.parse::<u16>().ok().and_then(ParticipantId::new))
                .collect()
        })
        .unwrap_or_default()
}

/// Metadata key of a signer's refusal: the policy's reason tag (`time-locked`,
/// `not-enough-approvals`, …; the kebab-case names of `hot_warm_cold::DenyReason`), so
/// callers act on it without reading the message.
pub const DENY_REASON: &str = "custody-deny-reason";

/// Metadata key of a signer's answer that the commitment it was asked to sign with has
/// no nonces there (never drawn, used, evicted, or from before a restart): the caller
/// drops it and draws fresh ones, without reading the message.
pub const STALE_COMMITMENT: &str = "custody-stale-commitment";

/// Checks an export nonce: 16 to 64 bytes.
pub fn check_nonce(nonce: &[u8]) -> Result<(), Status> {
    if !(16..=64).contains(&nonce.len()) {
        return Err(Status::invalid_argument(format!(
            "nonce: {} bytes, 16 to 64 required",
            nonce.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_culprits() {
        assert!(check_id("key_id", "k-1.a:b_c").is_ok());
        for bad in ["", "a b", "é", &"x".repeat(129)] {
            let st = check_id("key_id", bad).unwrap_err();
            assert_eq!(st.code(), tonic::Code::InvalidArgument);
            assert!(st.message().starts_with("key_id:"));
        }
        let p = ParticipantId::new(3).unwrap();
        let st = engine_status("x", Error::InvalidProofOfKnowledge { culprit: p });
        assert_eq!(culprits(&st), vec![p]);
        assert!(participant("me", 0).is_err());
        assert!(participant("me", 70000).is_err());
        assert!(session("session", &[0; 31]).is_err());
    }
}
