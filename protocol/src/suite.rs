//! The two ciphersuites, chosen at run time by name.
//!
//! - `secp256k1-tr`: FROST(secp256k1, SHA-256) with BIP340 (Taproot) signatures, from
//!   `frost-secp256k1-tr`. The group key gets the BIP341 unspendable-script tweak after
//!   DKG; the public key we publish is the 32-byte x-only key.
//! - `ed25519`: FROST(Ed25519, SHA-512) from `frost-ed25519`, RFC 8032 signatures.
//!
//! Engine code is generic over [`EngineSuite`]; [`with_suite!`](crate::with_suite)
//! dispatches a run-time [`Suite`] to the generic code.

use core::fmt;
use core::str::FromStr;

use frost_core::{Ciphersuite, Signature, VerifyingKey};

/// Run-time name of a ciphersuite.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Suite {
    /// BIP340 Schnorr over secp256k1 (Bitcoin Taproot).
    Secp256k1Tr,
    /// Ed25519 (RFC 8032).
    Ed25519,
}

impl Suite {
    /// All suites.
    pub const ALL: [Suite; 2] = [Suite::Secp256k1Tr, Suite::Ed25519];

    /// The name used in configs, CLIs and APIs.
    pub const fn name(self) -> &'static str {
        match self {
            Suite::Secp256k1Tr => "secp256k1-tr",
            Suite::Ed25519 => "ed25519",
        }
    }

    /// The byte that identifies the suite on the wire.
    pub const fn wire_id(self) -> u8 {
        match self {
            Suite::Secp256k1Tr => 1,
            Suite::Ed25519 => 2,
        }
    }

    /// Inverse of [`Suite::wire_id`].
    pub const fn from_wire_id(id: u8) -> Option<Suite> {
        match id {
            1 => Some(Suite::Secp256k1Tr),
            2 => Some(Suite::Ed25519),
            _ => None,
        }
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Debug for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name given is not a known suite.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown suite {0:?}: expected \"secp256k1-tr\" or \"ed25519\"")]
pub struct UnknownSuite(pub String);

impl FromStr for Suite {
    type Err = UnknownSuite;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "secp256k1-tr" => Ok(Suite::Secp256k1Tr),
            "ed25519" => Ok(Suite::Ed25519),
            other => Err(UnknownSuite(other.to_string())),
        }
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for frost_secp256k1_tr::Secp256K1Sha256TR {}
    impl Sealed for frost_ed25519::Ed25519Sha512 {}
}

/// A FROST ciphersuite the engine supports. Sealed: implemented for exactly the two
/// suites above.
pub trait EngineSuite: Ciphersuite + sealed::Sealed + Send + Sync + 'static {
    /// Run-time name.
    const SUITE: Suite;
    /// Length of an encoded group element.
    const ELEMENT_LEN: usize;
    /// Length of an encoded scalar.
    const SCALAR_LEN: usize = 32;
    /// Length of an encoded signature.
    const SIGNATURE_LEN: usize = 64;

    /// The public key as external verifiers use it: BIP340 x-only (32 bytes) for
    /// secp256k1-tr, the RFC 8032 encoding (32 bytes) for ed25519.
    fn external_public_key(vk: &VerifyingKey<Self>) -> [u8; 32];

    /// The public half of the suite's post-DKG step (frost's `post_dkg`), for a public
    /// key package re-derived from DKG commitments alone (an auditor's replay): the
    /// BIP341 tweak with an unspendable script path for secp256k1-tr, nothing for
    /// ed25519.
    fn post_dkg_public(
        package: frost_core::keys::PublicKeyPackage<Self>,
    ) -> frost_core::keys::PublicKeyPackage<Self>;

    /// Whether `bytes`, which the group's decoder accepted, is the one canonical
    /// encoding of its point, without re-encoding it (re-encoding costs a field
    /// inversion per point, on every message). The wire tests and fuzz targets check
    /// it against a re-encode.
    fn accepted_is_canonical(bytes: &[u8]) -> bool;
}

impl EngineSuite for frost_secp256k1_tr::Secp256K1Sha256TR {
    const SUITE: Suite = Suite::Secp256k1Tr;
    const ELEMENT_LEN: usize = 33;

    fn accepted_is_canonical(bytes: &[u8]) -> bool {
        // At 33 bytes k256 decodes the SEC1 compressed form (tag 02 or 03, y from x and
        // the tag) and also the "compact" form (tag 05, y chosen from x): a second
        // encoding of half the points, which the property tests found. x is always
        // below p (k256 refuses larger values), so the tag is all that can differ.
        matches!(bytes.first(), Some(2 | 3))
    }

    fn post_dkg_public(
        package: frost_core::keys::PublicKeyPackage<Self>,
    ) -> frost_core::keys::PublicKeyPackage<Self> {
        use frost_secp256k1_tr::keys::Tweak;
        package.tweak::<&[u8]>(None)
    }

    fn external_public_key(vk: &VerifyingKey<Self>) -> [u8; 32] {
        // Invariant: a VerifyingKey is never the identity, so it serializes to 33 bytes
        // (SEC1 compressed); the x-only key is the x coordinate.
        let bytes = vk.serialize().expect("verifying key is not the identity");
        let mut out = [0u8; 32];
        out.copy_from_slice(&bytes[1..33]);
        out
    }
}

impl EngineSuite for frost_ed25519::Ed25519Sha512 {
    const SUITE: Suite = Suite::Ed25519;
    const ELEMENT_LEN: usize = 32;

    fn accepted_is_canonical(bytes: &[u8]) -> bool {
        // curve25519-dalek reduces a y-coordinate at or above p = 2^255 - 19 instead of
        // refusing it; those 19 values (with either sign bit) give the only second
        // encodings of points. frost-ed25519 already refuses all of them, since none is
        // of prime order (eprint 2020/1244), as it refuses y = 1 and y = -1 (the only
        // points where a set sign bit would be a second encoding); this byte check
        // keeps the rule local and costs nothing.
        let Ok(b) = <&[u8; 32]>::try_from(bytes) else {
            return false;
        };
        let at_least_p =
            b[0] >= 0xed && b[1..31].iter().all(|x| *x == 0xff) && b[31] & 0x7f == 0x7f;
        !at_least_p
    }

    fn post_dkg_public(
        package: frost_core::keys::PublicKeyPackage<Self>,
    ) -> frost_core::keys::PublicKeyPackage<Self> {
        package
    }

    fn external_public_key(vk: &VerifyingKey<Self>) -> [u8; 32] {
        let bytes = vk.serialize().expect("verifying key is not the identity");
        let mut out = [0u8; 32];
        out.copy_from_slice(&bytes[..32]);
        out
    }
}

/// Runs `$body` with the type alias `$C` bound to the frost ciphersuite of `$suite`.
///
/// ```
/// use custody_protocol::{with_suite, EngineSuite, Suite};
/// let n = with_suite!(Suite::Ed25519, C => C::ELEMENT_LEN);
/// assert_eq!(n, 32);
/// ```
#[macro_export]
macro_rules! with_suite {
    ($suite:expr, $C:ident => $body:expr) => {
        match $suite {
            $crate::Suite::Secp256k1Tr => {
                #[allow(dead_code)]
                type $C = $crate::frost_secp256k1_tr::Secp256K1Sha256TR;
                $body
            }
            $crate::Suite::Ed25519 => {
                #[allow(dead_code)]
                type $C = $crate::frost_ed25519::Ed25519Sha512;
                $body
            }
        }
    };
}

/// Verifies a final signature over `message` under an external 32-byte public key.
///
/// This is the engine's own verifier (via frost); tests also check every signature
/// with independent implementations (`k256` BIP340 and `ed25519-dalek`).
pub fn verify_signature(
    suite: Suite,
    public_key: &[u8; 32],
    message: &[u8],
    signature: &[u8],
) -> bool {
    match suite {
        Suite::Secp256k1Tr => {
            // x-only key: lift to the even-y point as BIP340 does.
            let mut sec1 = [0u8; 33];
            sec1[0] = 0x02;
            sec1[1..].copy_from_slice(public_key);
            type C = frost_secp256k1_tr::Secp256K1Sha256TR;
            let (Ok(vk), Ok(sig)) = (
                VerifyingKey::<C>::deserialize(&sec1),
                Signature::<C>::deserialize(signature),
            ) else {
                return false;
            };
            vk.verify(message, &sig).is_ok()
        }
        Suite::Ed25519 => {
            type C = frost_ed25519::Ed25519Sha512;
            let (Ok(vk), Ok(sig)) = (
                VerifyingKey::<C>::deserialize(public_key),
                Signature::<C>::deserialize(signature),
            ) else {
                return false;
            };
            vk.verify(message, &sig).is_ok()
        }
    }
}
