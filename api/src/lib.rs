//! # custody-api: the gRPC messages as the domain's types
//!
//! The one conversion of each API message the daemons and the CLI read into the
//! policy crate's types ([`hot_warm_cold`] knows nothing of the wire): a transfer, a
//! settlement, approvals, and [`ask`], the one builder of what a request asks to sign.
//! Every error names the field (`INVALID_ARGUMENT` material); there is no transport
//! here, so errors are plain text that each edge maps to its own.

use std::collections::BTreeMap;

use custody_protocol::proto;
use hot_warm_cold::{Approval, Request, Settlement, Transfer};

/// Most approvals one request may carry.
pub const MAX_APPROVALS: usize = 256;

/// The transfer a request describes, checked.
pub fn transfer(t: &proto::Transfer, request_id: &str) -> Result<Transfer, String> {
    let amount: u128 = t.amount.parse().map_err(|_| {
        format!(
            "transfer.amount: {:?} is not a whole number of minor units",
            t.amount
        )
    })?;
    let out = Transfer {
        asset: t.asset.clone(),
        amount,
        destination: t.destination.clone(),
        request_id: request_id.to_string(),
        memo: t.memo.clone(),
    };
    out.check().map_err(|e| format!("transfer.{e}"))?;
    Ok(out)
}

/// The settlement a request describes, checked.
pub fn settlement(s: &proto::Settlement, request_id: &str) -> Result<Settlement, String> {
    let root: [u8; 32] = s
        .root
        .as_slice()
        .try_into()
        .map_err(|_| "settlement.root: must be 32 bytes".to_string())?;
    let mut totals = BTreeMap::new();
    for t in &s.totals {
        let amount: u128 = t.amount.parse().map_err(|_| {
            format!(
                "settlement.totals: {:?} is not a whole number of minor units",
                t.amount
            )
        })?;
        if totals.insert(t.currency.clone(), amount).is_some() {
            return Err(format!("settlement.totals: {} listed twice", t.currency));
        }
    }
    let out = Settlement {
        batch_id: s.batch_id.clone(),
        root,
        count: s.count,
        totals,
        period_start_ms: s.period_start_ms,
        period_end_ms: s.period_end_ms,
        request_id: request_id.to_string(),
    };
    out.check().map_err(|e| format!("settlement.{e}"))?;
    Ok(out)
}

/// Approvals as the policy takes them; malformed ones are refused.
pub fn approvals(list: &[proto::Approval]) -> Result<Vec<Approval>, String> {
    if list.len() > MAX_APPROVALS {
        return Err(format!("approvals: at most {MAX_APPROVALS}"));
    }
    list.iter()
        .map(|a| {
            let approver: [u8; 32] = a
                .approver
                .as_slice()
                .try_into()
                .map_err(|_| "approvals.approver: must be 32 bytes".to_string())?;
            if a.signature.len() != 64 {
                return Err("approvals.signature: must be 64 bytes".into());
            }
            Ok(Approval {
                approver,
                signature: a.signature.clone(),
            })
        })
        .collect()
}

/// What a request asks to sign: a structured transfer or settlement (whose message
/// every signer derives), or raw bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ask {
    /// A transfer.
    Transfer(Transfer),
    /// A settlement batch header.
    Settlement(Settlement),
    /// Exact bytes.
    Raw(Vec<u8>),
}

impl Ask {
    /// The bytes the signers sign with key `key_id`.
    pub fn message(&self, key_id: &str) -> Vec<u8> {
        match self {
            Ask::Transfer(t) => t.message(key_id).to_vec(),
            Ask::Settlement(s) => s.message(key_id).to_vec(),
            Ask::Raw(m) => m.clone(),
        }
    }

    /// As the policy's request under `request_id`.
    pub fn into_request(self, request_id: &str) -> Request {
        match self {
            Ask::Transfer(t) => Request::Transfer(t),
            Ask::Settlement(s) => Request::Settlement(s),
            Ask::Raw(message) => Request::Raw {
                request_id: request_id.to_string(),
                message,
            },
        }
    }
}

/// The one builder of what a request asks to sign, from its parts: at most one of a
/// transfer and a settlement, and with either no raw message (theirs is derived).
pub fn ask(
    request_id: &str,
    message: &[u8],
    transfer: Option<&proto::Transfer>,
    settlement: Option<&proto::Settlement>,
) -> Result<Ask, String> {
    match (transfer, settlement) {
        (Some(_), Some(_)) => Err("transfer and settlement: at most one".into()),
        (Some(_), None) | (None, Some(_)) if !message.is_empty() => Err(
            "message: must be empty with a transfer or a settlement (their message is derived)"
                .into(),
        ),
        (Some(t), None) => Ok(Ask::Transfer(self::transfer(t, request_id)?)),
        (None, Some(s)) => Ok(Ask::Settlement(self::settlement(s, request_id)?)),
        (None, None) => Ok(Ask::Raw(message.to_vec())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(amount: &str) -> proto::Transfer {
        proto::Transfer {
            asset: "BTC".into(),
            amount: amount.into(),
            destination: "alice".into(),
            memo: String::new(),
        }
    }

    #[test]
    fn one_builder_one_rule() {
        let s = proto::Settlement {
            batch_id: "b1".into(),
            root: vec![1; 32],
            count: 1,
            totals: vec![proto::SettlementTotal {
                currency: "EUR".into(),
                amount: "5".into(),
            }],
            period_start_ms: 0,
            period_end_ms: 1,
        };
        assert!(ask("r", b"", Some(&t("1")), Some(&s)).is_err());
        assert!(ask("r", b"x", Some(&t("1")), None)
            .unwrap_err()
            .starts_with("message:"));
        assert!(ask("r", b"", Some(&t("one")), None)
            .unwrap_err()
            .starts_with("transfer.amount:"));
        assert!(ask("settle-b1", b"", None, Some(&s)).is_ok());
        let a = ask("r", b"", Some(&t("7")), None).expect("transfer");
        assert_eq!(a.message("k").len(), 32);
        assert_eq!(
            ask("r", b"raw", None, None).unwrap(),
            Ask::Raw(b"raw".to_vec())
        );
        assert!(approvals(&[proto::Approval {
            approver: vec![0; 31],
            signature: vec![0; 64]
        }])
        .is_err());
    }
}
