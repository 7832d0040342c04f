//! Deliberate misbehaviour, for the tests of the coordinator's culprit detection and
//! failover only.
//!
//! Compiled in only with the `fault-injection` cargo feature, which the test builds
//! turn on and release builds leave out: without it, a config that asks for a fault
//! is refused at start, and none of the code below exists in the binary.

use crate::config::Fault;
use crate::error::Result;

/// The fault this signer was configured with, if any.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Faults(
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))] Option<Fault>,
);

impl Faults {
    /// The configured fault, refused when this build has no fault injection.
    pub fn from_config(fault: Option<Fault>, name: &str) -> Result<Faults, String> {
        let Some(fault) = fault else {
            return Ok(Faults(None));
        };
        if cfg!(feature = "fault-injection") {
            tracing::warn!(
                "signer {name} runs with FAULT INJECTION {fault:?}: it misbehaves on purpose, for tests only"
            );
            Ok(Faults(Some(fault)))
        } else {
            Err(format!(
                "fault_injection = {fault:?}: this build has no fault injection (it is built only with the fault-injection feature, for tests)"
            ))
        }
    }

    /// Whether `fault` is on.
    #[inline]
    pub fn is(self, fault: Fault) -> bool {
        #[cfg(feature = "fault-injection")]
        {
            self.0 == Some(fault)
        }
        #[cfg(not(feature = "fault-injection"))]
        {
            let _ = fault;
            false
        }
    }
}

/// `envelope` again, signed by us, with one bit of its body flipped at `from_end`
/// bytes before the body's end.
#[cfg(feature = "fault-injection")]
pub(crate) fn resign_altered(
    identity: &dyn custody_protocol::Identity,
    envelope: &[u8],
    from_end: usize,
) -> Result<Vec<u8>> {
    use crate::error::Error;
    use custody_protocol::identity;
    let mut body = identity::envelope_body(envelope)
        .map_err(|e| Error::internal("fault injection", e))?
        .to_vec();
    let at = body
        .len()
        .checked_sub(from_end)
        .ok_or_else(|| Error::internal("fault injection", "short body"))?;
    body[at] ^= 1;
    identity::seal_envelope(identity, &body).map_err(|e| Error::internal("fault injection", e))
}

/// Without fault injection there is nothing to alter.
#[cfg(not(feature = "fault-injection"))]
pub(crate) fn resign_altered(
    _identity: &dyn custody_protocol::Identity,
    envelope: &[u8],
    _from_end: usize,
) -> Result<Vec<u8>> {
    Ok(envelope.to_vec())
}

/// A wrong but well-formed share: one bit in the middle of the scalar flipped,
/// re-decoded so it stays a canonical scalar.
#[cfg(feature = "fault-injection")]
pub(crate) fn corrupt<C: custody_protocol::EngineSuite>(
    share: &custody_protocol::sign::SignatureShare<C>,
) -> custody_protocol::sign::SignatureShare<C> {
    use custody_protocol::wire;
    let mut w = wire::Writer::default();
    if wire::Body::encode_body(share, &mut w).is_err() {
        return *share;
    }
    let mut bytes = w.into_vec();
    bytes[C::SCALAR_LEN / 2] ^= 1;
    let mut r = wire::Reader::new(&bytes);
    custody_protocol::sign::SignatureShare::<C>::decode_body(&mut r).unwrap_or(*share)
}

/// Without fault injection the share is the share.
#[cfg(not(feature = "fault-injection"))]
pub(crate) fn corrupt<C: custody_protocol::EngineSuite>(
    share: &custody_protocol::sign::SignatureShare<C>,
) -> custody_protocol::sign::SignatureShare<C> {
    *share
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config that names a fault starts only where fault injection is compiled in
    /// (tests); a build without it refuses the config at start, naming the feature.
    #[test]
    fn a_fault_in_the_config_needs_the_feature() {
        let got = Faults::from_config(Some(Fault::StallSigning), "signer-1");
        if cfg!(feature = "fault-injection") {
            assert!(got.expect("compiled in").is(Fault::StallSigning));
        } else {
            let err = got.expect_err("a release build refuses it");
            assert!(err.contains("fault-injection feature"), "{err}");
        }
        let honest = Faults::from_config(None, "signer-1").expect("no fault");
        assert!(!honest.is(Fault::StallSigning));
    }
}
