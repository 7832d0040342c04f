//! Inclusion proofs (`custody-payment-proof/v1`): a payment, its Merkle path, and the
//! header of its batch; verifiable offline.

use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::merkle::{self, Step};
use crate::model::{Batch, Payment};
use crate::store::Store;

/// `format` of a proof.
pub const PROOF_FORMAT: &str = "custody-payment-proof/v1";

/// A payment's inclusion proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proof {
    /// [`PROOF_FORMAT`].
    pub format: String,
    /// The payment (every field its leaf commits to).
    pub payment: Payment,
    /// Its position in the batch.
    pub index: u64,
    /// The path from its leaf to the root.
    pub path: Vec<Step>,
    /// The batch header (without the payment list).
    pub batch: BatchHeader,
}

/// What a batch header says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchHeader {
    /// Batch id.
    pub id: String,
    /// Merkle root, hex.
    pub root: String,
    /// Number of payments.
    pub count: u64,
    /// Totals per currency.
    pub totals: std::collections::BTreeMap<String, u128>,
    /// Period (Unix ms).
    pub period_start_ms: u64,
    pub period_end_ms: u64,
    /// `closed` or `signed`.
    pub state: String,
    /// The settlement signature, hex (empty until signed).
    pub signature: String,
    /// The key that signed it.
    #[serde(default)]
    pub signed_by: Option<crate::model::SignedBy>,
}

/// The proof of payment `id`.
pub fn make(store: &Store, id: &str) -> Result<Proof, Status> {
    let p = store
        .payment(id)
        .map_err(|e| Status::unavailable(e.to_string()))?
        .ok_or_else(|| Status::not_found(format!("payment {id}: no such payment")))?;
    let bid = p.batch.clone().ok_or_else(|| {
        Status::failed_precondition(format!("payment {id} is not in a batch yet"))
    })?;
    let b: Batch = store
        .batch(&bid)
        .map_err(|e| Status::unavailable(e.to_string()))?
        .ok_or_else(|| Status::internal(format!("batch {bid} missing")))?;
    let index = b
        .payments
        .iter()
        .position(|pid| *pid == p.id)
        .ok_or_else(|| Status::internal("payment not in its batch"))?;
    let leaves = match store
        .batch_leaves(&bid)
        .map_err(|e| Status::unavailable(e.to_string()))?
    {
        Some(l) if l.len() == b.payments.len() => l,
        // Batches closed before their leaves were kept: from the payments.
        _ => {
            let mut leaves = Vec::with_capacity(b.payments.len());
            for pid in &b.payments {
                let q = store
                    .payment(pid)
                    .map_err(|e| Status::unavailable(e.to_string()))?
                    .ok_or_else(|| Status::internal(format!("payment {pid} missing")))?;
                leaves.push(q.leaf());
            }
            leaves
        }
    };
    if leaves.get(index) != Some(&p.leaf()) {
        return Err(Status::internal(format!(
            "payment {id}: its leaf is not the batch's leaf {index}"
        )));
    }
    let path = merkle::proof(&leaves, index).ok_or_else(|| Status::internal("proof"))?;
    Ok(Proof {
        format: PROOF_FORMAT.into(),
        payment: p,
        index: index as u64,
        path,
        batch: BatchHeader {
            id: b.id,
            root: b.root,
            count: b.count,
            totals: b.totals,
            period_start_ms: b.period_start_ms,
            period_end_ms: b.period_end_ms,
            state: b.state,
            signature: b.signature,
            signed_by: b.signed_by,
        },
    })
}

/// Checks a proof offline: the payment's leaf leads to the batch's root and the
/// payment names the batch. (The settlement signature over the header is checked by
/// the caller with the settlement key, once batches are signed.)
pub fn verify(p: &Proof, pinned: Option<&str>) -> Result<(), String> {
    if p.format != PROOF_FORMAT {
        return Err(format!("format {:?}, expected {PROOF_FORMAT:?}", p.format));
    }
    if p.payment.batch.as_deref() != Some(p.batch.id.as_str()) {
        return Err("the payment names another batch".into());
    }
    if p.index >= p.batch.count {
        return Err("index beyond the batch".into());
    }
    let root: [u8; 32] = hex::decode(&p.batch.root)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("root: not 32 bytes of hex")?;
    if !merkle::shape_matches(&p.path, p.index, p.batch.count) {
        return Err(format!(
            "the path does not have the shape of position {} of {} payments",
            p.index, p.batch.count
        ));
    }
    if !merkle::verify(&p.payment.leaf(), &p.path, &root) {
        return Err("the payment is not in this batch (its path does not lead to the root)".into());
    }
    let claimed = p.batch.signed_by.is_some() || p.batch.state == "signed" || pinned.is_some();
    if p.batch.signature.is_empty() {
        if claimed {
            return Err(
                "the batch is said to be signed, but the proof carries no signature".into(),
            );
        }
        return Ok(());
    }
    // The header's settlement signature, by the key it names.
    let by = p
        .batch
        .signed_by
        .as_ref()
        .ok_or("a signature without the key that made it")?;
    let settlement = hot_warm_cold::Settlement {
        batch_id: p.batch.id.clone(),
        root,
        count: p.batch.count,
        totals: p.batch.totals.clone(),
        period_start_ms: p.batch.period_start_ms,
        period_end_ms: p.batch.period_end_ms,
        request_id: format!("settle-{}", p.batch.id),
    };
    let suite: custody_protocol::Suite = by.suite.parse().map_err(|e| format!("suite: {e}"))?;
    if let Some(pin) = pinned {
        if !pin
            .trim_start_matches("0x")
            .eq_ignore_ascii_case(&by.public_key)
        {
            return Err("the batch is not signed by the pinned key".into());
        }
    }
    let pk: [u8; 32] = hex::decode(&by.public_key)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("public key: not 32 bytes of hex")?;
    let sig = hex::decode(&p.batch.signature).map_err(|_| "signature: not hex")?;
    if !custody_protocol::verify_signature(suite, &pk, &settlement.message(&by.key_id), &sig) {
        return Err("the batch header's settlement signature does not verify".into());
    }
    Ok(())
}
