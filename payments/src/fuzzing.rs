//! Entry points for the fuzz targets in `fuzz/` (one line each there): everything the
//! payments side reads from outside. None may panic, whatever the bytes.

use prost::Message as _;

/// An inclusion proof (custody-payment-proof/v1 JSON), checked offline as
/// `custody payments verify-proof` does, with and without a pinned key.
pub fn proof(bytes: &[u8]) {
    if let Ok(p) = serde_json::from_slice::<crate::proof::Proof>(bytes) {
        let _ = crate::proof::verify(&p, None);
        let _ = crate::proof::verify(&p, Some(&"ab".repeat(32)));
    }
}

/// A payment backend's request as the daemon checks it before storing anything: the
/// first byte picks `CreatePayment` (even) or `Tokenize` (odd), the rest is protobuf.
pub fn request(bytes: &[u8]) {
    let Some((which, rest)) = bytes.split_first() else {
        return;
    };
    if which % 2 == 0 {
        if let Ok(r) = custody_protocol::proto::CreatePaymentRequest::decode(rest) {
            let p = crate::model::NewPayment {
                token: r.token,
                amount: r.amount,
                currency: r.currency,
                merchant: r.merchant,
                idempotency_key: r.idempotency_key,
            };
            if p.check().is_ok() {
                let _ = p.body_hash();
            }
        }
    } else if let Ok(r) = custody_protocol::proto::TokenizeRequest::decode(rest) {
        let _ = crate::model::check_clear(&r.kind, &r.data);
    }
}

/// `payments.toml`.
pub fn config(bytes: &[u8]) {
    if let Ok(s) = std::str::from_utf8(bytes) {
        let _ = crate::config::Config::parse(s);
    }
}
