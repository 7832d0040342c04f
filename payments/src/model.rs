//! Payments, tokens and batches, and the checks on what clients send.

use serde::{Deserialize, Serialize};

/// ISO 4217 codes accepted (the active currencies most payment backends settle in;
/// extend the list, not the check).
pub const CURRENCIES: &[&str] = &[
    "AED", "ARS", "AUD", "BGN", "BRL", "CAD", "CHF", "CLP", "CNY", "COP", "CZK", "DKK", "EGP",
    "EUR", "GBP", "HKD", "HUF", "IDR", "ILS", "INR", "ISK", "JPY", "KES", "KRW", "KWD", "MAD",
    "MXN", "MYR", "NGN", "NOK", "NZD", "PEN", "PHP", "PKR", "PLN", "QAR", "RON", "RSD", "SAR",
    "SEK", "SGD", "THB", "TRY", "TWD", "UAH", "USD", "VND", "ZAR",
];

/// Largest amount of one payment, in minor units.
pub const MAX_AMOUNT: u64 = 1 << 53;

/// Why a request is invalid: the field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct Invalid {
    /// The field.
    pub field: &'static str,
    /// What is wrong.
    pub why: String,
}

fn invalid(field: &'static str, why: impl Into<String>) -> Invalid {
    Invalid {
        field,
        why: why.into(),
    }
}

/// The Luhn check of a card number (digits only).
pub fn luhn(digits: &str) -> bool {
    let mut sum = 0u32;
    for (i, c) in digits.bytes().rev().enumerate() {
        let mut d = (c - b'0') as u32;
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum.is_multiple_of(10)
}

/// Checks clear data to tokenize: a card number (12 to 19 digits, spaces allowed,
/// Luhn-valid) or an account identifier (4 to 64 letters, digits, `-` or `_`).
/// Returns the canonical form stored.
pub fn check_clear(kind: &str, data: &str) -> Result<String, Invalid> {
    match kind {
        "card" => {
            let digits: String = data.chars().filter(|c| *c != ' ').collect();
            if !(12..=19).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid("data", "a card number is 12 to 19 digits"));
            }
            if !luhn(&digits) {
                return Err(invalid("data", "card number fails the Luhn check"));
            }
            Ok(digits)
        }
        "account" => {
            if !(4..=64).contains(&data.len())
                || !data
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(invalid(
                    "data",
                    "an account identifier is 4 to 64 letters, digits, '-' or '_'",
                ));
            }
            Ok(data.to_string())
        }
        other => Err(invalid(
            "kind",
            format!("{other:?} is neither card nor account"),
        )),
    }
}

/// A new payment as the client asks for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewPayment {
    /// A token from `Tokenize`.
    pub token: String,
    /// Amount in minor units.
    pub amount: u64,
    /// ISO 4217 code.
    pub currency: String,
    /// Merchant id.
    pub merchant: String,
    /// The client's idempotency key.
    pub idempotency_key: String,
}

fn ident(field: &'static str, s: &str, max: usize) -> Result<(), Invalid> {
    if s.is_empty() || s.len() > max {
        return Err(invalid(field, format!("1 to {max} bytes")));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    {
        return Err(invalid(field, "letters, digits, '-', '_', '.', ':' only"));
    }
    Ok(())
}

impl NewPayment {
    /// Checks every field; the error names the first bad one.
    pub fn check(&self) -> Result<(), Invalid> {
        ident("token", &self.token, 64)?;
        if !self.token.starts_with("tok_") {
            return Err(invalid("token", "not a token (tok_…)"));
        }
        if self.amount == 0 || self.amount > MAX_AMOUNT {
            return Err(invalid("amount", format!("1 to {MAX_AMOUNT} minor units")));
        }
        if !CURRENCIES.contains(&self.currency.as_str()) {
            return Err(invalid(
                "currency",
                format!("{:?} is not an accepted ISO 4217 code", self.currency),
            ));
        }
        ident("merchant", &self.merchant, 64)?;
        ident("idempotency_key", &self.idempotency_key, 128)?;
        Ok(())
    }

    /// What the idempotency key binds: the body.
    pub fn body_hash(&self) -> [u8; 32] {
        custody_protocol::hash::TaggedHash::new("custody/v1/payment-body")
            .part(self.token.as_bytes())
            .part(&self.amount.to_be_bytes())
            .part(self.currency.as_bytes())
            .part(self.merchant.as_bytes())
            .finish()
    }
}

/// A durable payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// `pay_…`.
    pub id: String,
    /// Position in arrival order (batches take payments in this order).
    pub seq: u64,
    /// The payment itself.
    pub token: String,
    /// Amount in minor units.
    pub amount: u64,
    /// ISO 4217 code.
    pub currency: String,
    /// Merchant id.
    pub merchant: String,
    /// The client's idempotency key.
    pub idempotency_key: String,
    /// Unix milliseconds.
    pub created_at_ms: u64,
    /// The batch it is settled in, once batched.
    #[serde(default)]
    pub batch: Option<String>,
}

impl Payment {
    /// The bytes its Merkle leaf commits to: `TaggedHash`-style length-prefixed parts
    /// (id, token, u64 amount, currency, merchant, u64 created_at_ms), all big-endian.
    pub fn leaf_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for part in [
            self.id.as_bytes(),
            self.token.as_bytes(),
            &self.amount.to_be_bytes(),
            self.currency.as_bytes(),
            self.merchant.as_bytes(),
            &self.created_at_ms.to_be_bytes(),
        ] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    /// Its Merkle leaf.
    pub fn leaf(&self) -> [u8; 32] {
        crate::merkle::leaf(&self.leaf_bytes())
    }
}

/// A settlement batch: its header commits to its payments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// `bat_…`.
    pub id: String,
    /// Merkle root of its payments' leaves (in `payments` order), hex.
    pub root: String,
    /// Number of payments.
    pub count: u64,
    /// Total per currency, minor units.
    pub totals: std::collections::BTreeMap<String, u128>,
    /// Unix milliseconds of its first and last payment.
    pub period_start_ms: u64,
    pub period_end_ms: u64,
    /// Payment ids, in leaf order.
    pub payments: Vec<String>,
    /// When it was closed (Unix ms).
    pub closed_at_ms: u64,
    /// `closed` (committed, not signed yet) or `signed`.
    pub state: String,
    /// The threshold signature over the settlement message, hex, once signed.
    #[serde(default)]
    pub signature: String,
    /// The key that signed it: id, suite, external public key (hex).
    #[serde(default)]
    pub signed_by: Option<SignedBy>,
}

/// A settlement key as a verifier needs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedBy {
    /// Key id (bound into the signed message).
    pub key_id: String,
    /// `secp256k1-tr` or `ed25519`.
    pub suite: String,
    /// 32-byte public key, hex.
    pub public_key: String,
}

impl Batch {
    /// The settlement request id of this batch (idempotent at the coordinator).
    pub fn request_id(&self) -> String {
        format!("settle-{}", self.id)
    }

    /// The settlement the signers sign for this batch.
    pub fn settlement(&self) -> Result<hot_warm_cold::Settlement, String> {
        let root: [u8; 32] = hex::decode(&self.root)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("root: not 32 bytes of hex")?;
        Ok(hot_warm_cold::Settlement {
            batch_id: self.id.clone(),
            root,
            count: self.count,
            totals: self.totals.clone(),
            period_start_ms: self.period_start_ms,
            period_end_ms: self.period_end_ms,
            request_id: self.request_id(),
        })
    }
}
