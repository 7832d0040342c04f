//! The two suites as types, and the one way to match a closed per-suite enum into code
//! generic over its suite.

/// The secp256k1-tr suite (BIP340, Taproot).
pub(crate) type Secp = custody_protocol::frost_secp256k1_tr::Secp256K1Sha256TR;
/// The Ed25519 suite (RFC 8032).
pub(crate) type Ed = custody_protocol::frost_ed25519::Ed25519Sha512;

/// Runs `$body` with `$v` bound to the value inside one of the closed per-suite enums
/// (`AnyKey`, `AnyStage`, …: variants `Secp` and `Ed`, the enum in scope) and `$C` to
/// its suite's type.
macro_rules! by_suite {
    ($e:expr, $Enum:ident, $C:ident, $v:ident => $body:expr) => {
        match $e {
            $Enum::Secp($v) => {
                #[allow(dead_code)]
                type $C = $crate::suites::Secp;
                $body
            }
            $Enum::Ed($v) => {
                #[allow(dead_code)]
                type $C = $crate::suites::Ed;
                $body
            }
        }
    };
}
pub(crate) use by_suite;
