//! Durable state in `sled`: tokens (sealed clear data), payments, idempotency keys, the
//! queue of payments not yet batched, and batches.
//!
//! Every acknowledged write is flushed first. Payments go through one writer thread
//! that commits each group of concurrent requests in a single transaction and one
//! flush (group commit); the same thread checks idempotency keys, so two requests with
//! one key can never both create a payment, and a crash leaves either all of a group's
//! trees updated or none (a payment is never queued for settlement without its
//! idempotency record, so a retry after a crash cannot create a second one).

use std::sync::mpsc;

use rand_core::{OsRng, RngCore};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use tokio::sync::oneshot;

use crate::merkle;
use crate::model::{Batch, NewPayment, Payment};

/// Most payments committed per flush.
const MAX_GROUP: usize = 2048;

/// A storage failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database: {0}")]
    Db(String),
    /// The writer thread is gone.
    #[error("payment writer stopped")]
    Stopped,
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

/// What creating a payment did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    /// A new payment, durable.
    New(Payment),
    /// The same idempotency key and body as before: that payment.
    Existing(Payment),
    /// The same idempotency key with another body: refused; the payment it names.
    Conflict(String),
}

type Job = (NewPayment, oneshot::Sender<Result<Created, StoreError>>);

/// The payments database.
#[derive(Clone, Debug)]
pub struct Store {
    db: sled::Db,
    tokens: sled::Tree,
    payments: sled::Tree,
    idem: sled::Tree,
    /// Every payment by arrival: u64 seq (BE) → id. Batches take contiguous ranges.
    by_seq: sled::Tree,
    /// `batched-upto`: the first seq not in any batch.
    meta: sled::Tree,
    /// Batch ranges: u64 first seq (BE) → (end seq, batch id).
    ranges: sled::Tree,
    batches: sled::Tree,
    /// Batches not signed yet: id → (). What the settler looks at, instead of every
    /// batch ever closed.
    unsigned: sled::Tree,
    /// Each batch's Merkle leaves (32 bytes each, in order), for proofs without
    /// re-reading every payment of the batch.
    leaves: sled::Tree,
    writer: mpsc::Sender<Job>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Idempotency keys are per merchant.
fn idem_key(merchant: &str, key: &str) -> Vec<u8> {
    format!("{merchant}\0{key}").into_bytes()
}

fn random_id(prefix: &str) -> String {
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    format!("{prefix}{}", hex::encode(b))
}

impl Store {
    /// Opens (or creates) the database at `path` and starts the writer.
    pub fn open(path: &std::path::Path) -> Result<Store, StoreError> {
        let db = sled::open(path)?;
        let store = Store {
            tokens: db.open_tree("tokens")?,
            payments: db.open_tree("payments")?,
            idem: db.open_tree("idempotency")?,
            by_seq: db.open_tree("by-seq")?,
            meta: db.open_tree("meta")?,
            ranges: db.open_tree("batch-ranges")?,
            batches: db.open_tree("batches")?,
            unsigned: db.open_tree("unsigned-batches")?,
            leaves: db.open_tree("batch-leaves")?,
            writer: mpsc::channel().0,
            db,
        };
        store.index_unsigned()?;
        let (tx, rx) = mpsc::channel::<Job>();
        let w = store.clone();
        std::thread::Builder::new()
            .name("payment-writer".into())
            .spawn(move || w.write_loop(&rx))
            .map_err(|e| StoreError::Db(e.to_string()))?;
        Ok(Store {
            writer: tx,
            ..store
        })
    }

    /// Databases made before the unsigned-batch index get it once, from every batch.
    fn index_unsigned(&self) -> Result<(), StoreError> {
        if self.meta.get(b"unsigned-indexed")?.is_some() {
            return Ok(());
        }
        for v in self.batches.iter().values() {
            let b: Batch = serde_json::from_slice(&v?)?;
            if b.state != "signed" {
                self.unsigned.insert(b.id.as_bytes(), &[])?;
            }
        }
        self.meta.insert(b"unsigned-indexed", &[1])?;
        self.db.flush()?;
        Ok(())
    }

    /// Stores a sealed token durably.
    pub fn put_token(&self, token: &str, sealed: &[u8]) -> Result<(), StoreError> {
        self.tokens.insert(token.as_bytes(), sealed)?;
        self.db.flush()?;
        Ok(())
    }

    /// A sealed token.
    pub fn token(&self, token: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tokens.get(token.as_bytes())?.map(|v| v.to_vec()))
    }

    /// Creates a payment (or finds the one with this idempotency key); returns once it
    /// is on disk.
    pub async fn create(&self, p: NewPayment) -> Result<Created, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer.send((p, tx)).map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    fn next_seq(&self) -> Result<u64, StoreError> {
        Ok(match self.by_seq.last()? {
            Some((k, _)) => {
                u64::from_be_bytes(
                    k.as_ref()
                        .try_into()
                        .map_err(|_| StoreError::Db("seq key".into()))?,
                ) + 1
            }
            None => 0,
        })
    }

    fn batched_upto(&self) -> Result<u64, StoreError> {
        Ok(match self.meta.get(b"batched-upto")? {
            Some(v) => u64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| StoreError::Db("watermark".into()))?,
            ),
            None => 0,
        })
    }

    /// The batch holding payment number `seq`, if any.
    fn batch_of(&self, seq: u64) -> Result<Option<String>, StoreError> {
        let Some((_, v)) = self
            .ranges
            .range(..=seq.to_be_bytes())
            .next_back()
            .transpose()?
        else {
            return Ok(None);
        };
        let (end, id): (u64, String) = serde_json::from_slice(&v)?;
        Ok((seq < end).then_some(id))
    }

    fn write_loop(&self, rx: &mpsc::Receiver<Job>) {
        let mut seq = match self.next_seq() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("payments: {e}");
                return;
            }
        };
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            while jobs.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            let (results, next) = self.commit_group(&jobs, seq);
            match results {
                Ok(results) => {
                    seq = next;
                    for ((_, reply), r) in jobs.into_iter().zip(results) {
                        let _ = reply.send(Ok(r));
                    }
                }
                Err(e) => {
                    tracing::error!("payments not stored: {e}");
                    for (_, reply) in jobs {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// Decides every job of a group, commits the new payments in one transaction, and
    /// flushes.
    fn commit_group(&self, jobs: &[Job], mut seq: u64) -> (Result<Vec<Created>, StoreError>, u64) {
        let start = seq;
        let mut results = Vec::with_capacity(jobs.len());
        let mut fresh: Vec<(Payment, [u8; 32])> = Vec::new();
        let now = now_ms();
        for (p, _) in jobs {
            let hash = p.body_hash();
            // An earlier payment with this key: on disk, or earlier in this group.
            let earlier = match self.idem.get(idem_key(&p.merchant, &p.idempotency_key)) {
                Ok(Some(v)) => serde_json::from_slice::<(String, String)>(&v).ok(),
                Ok(None) => None,
                Err(e) => return (Err(e.into()), start),
            };
            let earlier = earlier.or_else(|| {
                fresh
                    .iter()
                    .find(|(f, _)| {
                        f.idempotency_key == p.idempotency_key && f.merchant == p.merchant
                    })
                    .map(|(f, h)| (f.id.clone(), hex::encode(h)))
            });
            if let Some((id, h)) = earlier {
                if h != hex::encode(hash) {
                    results.push(Created::Conflict(id));
                    continue;
                }
                let existing = fresh
                    .iter()
                    .find(|(f, _)| f.id == id)
                    .map(|(f, _)| f.clone());
                let existing = match existing {
                    Some(e) => e,
                    None => match self.payment(&id) {
                        Ok(Some(e)) => e,
                        Ok(None) => {
                            return (Err(StoreError::Db(format!("payment {id} missing"))), start)
                        }
                        Err(e) => return (Err(e), start),
                    },
                };
                results.push(Created::Existing(existing));
                continue;
            }
            let pay = Payment {
                id: random_id("pay_"),
                seq,
                token: p.token.clone(),
                amount: p.amount,
                currency: p.currency.clone(),
                merchant: p.merchant.clone(),
                idempotency_key: p.idempotency_key.clone(),
                created_at_ms: now,
                batch: None,
            };
            seq += 1;
            results.push(Created::New(pay.clone()));
            fresh.push((pay, hash));
        }
        if !fresh.is_empty() {
            let r: Result<(), TransactionError<()>> = (&self.payments, &self.by_seq, &self.idem)
                .transaction(|(payments, by_seq, idem)| {
                    for (pay, hash) in &fresh {
                        let v = serde_json::to_vec(pay)
                            .map_err(|_| ConflictableTransactionError::Abort(()))?;
                        payments.insert(pay.id.as_bytes(), v)?;
                        // A sequence number is never given twice.
                        if by_seq
                            .insert(&pay.seq.to_be_bytes(), pay.id.as_bytes())?
                            .is_some()
                        {
                            return Err(ConflictableTransactionError::Abort(()));
                        }
                        let i = serde_json::to_vec(&(pay.id.clone(), hex::encode(hash)))
                            .map_err(|_| ConflictableTransactionError::Abort(()))?;
                        idem.insert(idem_key(&pay.merchant, &pay.idempotency_key), i)?;
                    }
                    Ok(())
                });
            if let Err(e) = r {
                return (Err(StoreError::Db(format!("{e:?}"))), start);
            }
            if let Err(e) = self.db.flush() {
                // The transaction is in the tree: its numbers are taken.
                return (Err(e.into()), seq);
            }
        }
        (Ok(results), seq)
    }

    /// One payment.
    pub fn payment(&self, id: &str) -> Result<Option<Payment>, StoreError> {
        match self.payments.get(id.as_bytes())? {
            Some(v) => {
                let mut p: Payment = serde_json::from_slice(&v)?;
                p.batch = self.batch_of(p.seq)?;
                Ok(Some(p))
            }
            None => Ok(None),
        }
    }

    /// Payments, newest first (at most `limit`), optionally of one merchant.
    pub fn payments(
        &self,
        merchant: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Payment>, StoreError> {
        // Newest first, by arrival, until `limit` match.
        let mut all: Vec<Payment> = Vec::new();
        for item in self.by_seq.iter().rev() {
            if all.len() >= limit {
                break;
            }
            let (_, id) = item?;
            let v = self
                .payments
                .get(&id)?
                .ok_or_else(|| StoreError::Db("payment missing".into()))?;
            let p: Payment = serde_json::from_slice(&v)?;
            if merchant.is_none_or(|m| p.merchant == m) {
                all.push(p);
            }
        }
        for p in &mut all {
            p.batch = self.batch_of(p.seq)?;
        }
        Ok(all)
    }

    /// How many payments wait for a batch.
    pub fn pending_count(&self) -> usize {
        match (self.next_seq(), self.batched_upto()) {
            (Ok(n), Ok(w)) => n.saturating_sub(w) as usize,
            _ => 0,
        }
    }

    /// The oldest pending payment's time (Unix ms), if any.
    pub fn oldest_pending_ms(&self) -> Result<Option<u64>, StoreError> {
        let Some(id) = self.by_seq.get(self.batched_upto()?.to_be_bytes())? else {
            return Ok(None);
        };
        let id = String::from_utf8_lossy(&id).to_string();
        Ok(self.payment(&id)?.map(|p| p.created_at_ms))
    }

    /// Closes a batch of the oldest `max` pending payments: its header commits to them
    /// (Merkle root, count, totals, period). Batches take contiguous ranges of arrival
    /// order; one transaction moves the watermark and records the batch, so a payment
    /// is in at most one batch, whatever crashes.
    pub fn close_batch(&self, max: usize) -> Result<Option<Batch>, StoreError> {
        let from = self.batched_upto()?;
        let mut picked: Vec<Payment> = Vec::new();
        for item in self.by_seq.range(from.to_be_bytes()..).take(max) {
            let (_, id) = item?;
            let id = String::from_utf8_lossy(&id).to_string();
            let v = self
                .payments
                .get(id.as_bytes())?
                .ok_or_else(|| StoreError::Db(format!("payment {id} missing")))?;
            picked.push(serde_json::from_slice(&v)?);
        }
        if picked.is_empty() {
            return Ok(None);
        }
        let end = from + picked.len() as u64;
        if picked.last().map(|p| p.seq) != Some(end - 1) {
            return Err(StoreError::Db("payment sequence has a gap".into()));
        }
        let leaves: Vec<[u8; 32]> = picked.iter().map(Payment::leaf).collect();
        let root = merkle::root(&leaves).expect("not empty");
        let mut totals = std::collections::BTreeMap::new();
        for p in &picked {
            *totals.entry(p.currency.clone()).or_insert(0u128) += p.amount as u128;
        }
        let batch = Batch {
            id: random_id("bat_"),
            root: hex::encode(root),
            count: picked.len() as u64,
            totals,
            period_start_ms: picked.iter().map(|p| p.created_at_ms).min().unwrap_or(0),
            period_end_ms: picked.iter().map(|p| p.created_at_ms).max().unwrap_or(0),
            payments: picked.iter().map(|p| p.id.clone()).collect(),
            closed_at_ms: now_ms(),
            // "closed" (signable) only once on disk, below.
            state: "committed".into(),
            signature: String::new(),
            signed_by: None,
        };
        let range = serde_json::to_vec(&(end, batch.id.clone()))?;
        let record = serde_json::to_vec(&batch)?;
        let leaf_bytes: Vec<u8> = leaves.concat();
        let r: Result<(), TransactionError<()>> = (
            &self.meta,
            &self.ranges,
            &self.batches,
            &self.unsigned,
            &self.leaves,
        )
            .transaction(|(meta, ranges, batches, unsigned, leaf_tree)| {
                let now = meta
                    .get(b"batched-upto")?
                    .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                    .map_or(0, u64::from_be_bytes);
                if now != from {
                    return Err(ConflictableTransactionError::Abort(()));
                }
                meta.insert(b"batched-upto", &end.to_be_bytes())?;
                ranges.insert(&from.to_be_bytes(), range.clone())?;
                batches.insert(batch.id.as_bytes(), record.clone())?;
                unsigned.insert(batch.id.as_bytes(), &[])?;
                leaf_tree.insert(batch.id.as_bytes(), leaf_bytes.as_slice())?;
                Ok(())
            });
        r.map_err(|e| StoreError::Db(format!("{e:?}")))?;
        self.db.flush()?;
        // Durable now (with every payment in it: they were written before): it may be
        // signed. A batch signed before it is on disk could be closed again, under
        // another id, after a crash.
        let mut batch = batch;
        batch.state = "closed".into();
        self.put_batch(&batch)?;
        Ok(Some(batch))
    }

    /// Batches recorded but not yet marked signable when the process stopped: on disk
    /// now, so signable.
    pub fn recover_committed(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for mut b in self.unsigned_batches()? {
            if b.state == "committed" {
                b.state = "closed".into();
                self.put_batch(&b)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Stores a batch's new state (its signature) durably.
    pub fn put_batch(&self, b: &Batch) -> Result<(), StoreError> {
        self.batches
            .insert(b.id.as_bytes(), serde_json::to_vec(b)?)?;
        if b.state == "signed" {
            // A crash before this leaves a signed batch in the index: skipped (and
            // dropped) by `unsigned_batches`.
            self.unsigned.remove(b.id.as_bytes())?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// Batches not signed yet (committed or closed), oldest first.
    pub fn unsigned_batches(&self) -> Result<Vec<Batch>, StoreError> {
        let mut out = Vec::new();
        for id in self.unsigned.iter().keys() {
            let id = id?;
            match self.batches.get(&id)? {
                Some(v) => {
                    let b: Batch = serde_json::from_slice(&v)?;
                    if b.state == "signed" {
                        self.unsigned.remove(&id)?;
                    } else {
                        out.push(b);
                    }
                }
                None => {
                    self.unsigned.remove(&id)?;
                }
            }
        }
        // Oldest first by the payments they hold (arrival order; two batches can
        // close within the same millisecond).
        let mut keyed = Vec::with_capacity(out.len());
        for b in out {
            let first = match b.payments.first() {
                Some(id) => self.payment(id)?.map_or(u64::MAX, |p| p.seq),
                None => u64::MAX,
            };
            keyed.push((first, b));
        }
        keyed.sort_by_key(|(first, _)| *first);
        Ok(keyed.into_iter().map(|(_, b)| b).collect())
    }

    /// The Merkle leaves of batch `id`, in order (batches closed before leaves were
    /// kept have none: recompute them from the payments).
    pub fn batch_leaves(&self, id: &str) -> Result<Option<Vec<[u8; 32]>>, StoreError> {
        Ok(self.leaves.get(id.as_bytes())?.map(|v| {
            v.chunks_exact(32)
                .map(|c| <[u8; 32]>::try_from(c).expect("32-byte chunks"))
                .collect()
        }))
    }

    /// The `limit` most recent batches, newest first (by the payments they hold).
    pub fn recent_batches(&self, limit: usize) -> Result<Vec<Batch>, StoreError> {
        let mut out = Vec::new();
        for item in self.ranges.iter().rev().take(limit) {
            let (_, v) = item?;
            let (_, id): (u64, String) = serde_json::from_slice(&v)?;
            if let Some(b) = self.batch(&id)? {
                out.push(b);
            }
        }
        Ok(out)
    }

    /// One batch.
    pub fn batch(&self, id: &str) -> Result<Option<Batch>, StoreError> {
        match self.batches.get(id.as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }
}
