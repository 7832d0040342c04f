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
    pending: sled::Tree,
    batches: sled::Tree,
    writer: mpsc::Sender<Job>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
            pending: db.open_tree("pending")?,
            batches: db.open_tree("batches")?,
            writer: mpsc::channel().0,
            db,
        };
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
        let last = self.payments.iter().values().filter_map(|v| {
            v.ok()
                .and_then(|v| serde_json::from_slice::<Payment>(&v).ok())
                .map(|p| p.seq)
        });
        Ok(last.max().map_or(0, |s| s + 1))
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
            let earlier = match self.idem.get(p.idempotency_key.as_bytes()) {
                Ok(Some(v)) => serde_json::from_slice::<(String, String)>(&v).ok(),
                Ok(None) => None,
                Err(e) => return (Err(e.into()), start),
            };
            let earlier = earlier.or_else(|| {
                fresh
                    .iter()
                    .find(|(f, _)| f.idempotency_key == p.idempotency_key)
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
            let r: Result<(), TransactionError<()>> = (&self.payments, &self.pending, &self.idem)
                .transaction(|(payments, pending, idem)| {
                    for (pay, hash) in &fresh {
                        let v = serde_json::to_vec(pay)
                            .map_err(|_| ConflictableTransactionError::Abort(()))?;
                        payments.insert(pay.id.as_bytes(), v)?;
                        pending.insert(&pay.seq.to_be_bytes(), pay.id.as_bytes())?;
                        let i = serde_json::to_vec(&(pay.id.clone(), hex::encode(hash)))
                            .map_err(|_| ConflictableTransactionError::Abort(()))?;
                        idem.insert(pay.idempotency_key.as_bytes(), i)?;
                    }
                    Ok(())
                });
            if let Err(e) = r {
                return (Err(StoreError::Db(format!("{e:?}"))), start);
            }
            if let Err(e) = self.db.flush() {
                return (Err(e.into()), start);
            }
        }
        (Ok(results), seq)
    }

    /// One payment.
    pub fn payment(&self, id: &str) -> Result<Option<Payment>, StoreError> {
        match self.payments.get(id.as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// Payments, newest first (at most `limit`), optionally of one merchant.
    pub fn payments(
        &self,
        merchant: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Payment>, StoreError> {
        let mut all: Vec<Payment> = self
            .payments
            .iter()
            .values()
            .map(|v| Ok(serde_json::from_slice::<Payment>(&v?)?))
            .collect::<Result<_, StoreError>>()?;
        all.retain(|p| merchant.is_none_or(|m| p.merchant == m));
        all.sort_by_key(|p| std::cmp::Reverse(p.seq));
        all.truncate(limit);
        Ok(all)
    }

    /// How many payments wait for a batch.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// The oldest pending payment's time (Unix ms), if any.
    pub fn oldest_pending_ms(&self) -> Result<Option<u64>, StoreError> {
        let Some(first) = self.pending.first()? else {
            return Ok(None);
        };
        let id = String::from_utf8_lossy(&first.1).to_string();
        Ok(self.payment(&id)?.map(|p| p.created_at_ms))
    }

    /// Closes a batch of the oldest `max` pending payments: its header commits to them
    /// (Merkle root, count, totals, period), and in one transaction every payment is
    /// marked as in it and leaves the queue. A payment is in at most one batch.
    pub fn close_batch(&self, max: usize) -> Result<Option<Batch>, StoreError> {
        let mut picked: Vec<Payment> = Vec::new();
        for item in self.pending.iter().take(max) {
            let (_, id) = item?;
            let id = String::from_utf8_lossy(&id).to_string();
            let p = self
                .payment(&id)?
                .ok_or_else(|| StoreError::Db(format!("queued payment {id} missing")))?;
            picked.push(p);
        }
        if picked.is_empty() {
            return Ok(None);
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
            state: "closed".into(),
            signature: String::new(),
            signed_by: None,
        };
        let r: Result<(), TransactionError<()>> = (&self.payments, &self.pending, &self.batches)
            .transaction(|(payments, pending, batches)| {
                for p in &picked {
                    let mut p = p.clone();
                    p.batch = Some(batch.id.clone());
                    let v = serde_json::to_vec(&p)
                        .map_err(|_| ConflictableTransactionError::Abort(()))?;
                    payments.insert(p.id.as_bytes(), v)?;
                    pending.remove(&p.seq.to_be_bytes())?;
                }
                let v = serde_json::to_vec(&batch)
                    .map_err(|_| ConflictableTransactionError::Abort(()))?;
                batches.insert(batch.id.as_bytes(), v)?;
                Ok(())
            });
        r.map_err(|e| StoreError::Db(format!("{e:?}")))?;
        self.db.flush()?;
        Ok(Some(batch))
    }

    /// Stores a batch's new state (its signature) durably.
    pub fn put_batch(&self, b: &Batch) -> Result<(), StoreError> {
        self.batches
            .insert(b.id.as_bytes(), serde_json::to_vec(b)?)?;
        self.db.flush()?;
        Ok(())
    }

    /// One batch.
    pub fn batch(&self, id: &str) -> Result<Option<Batch>, StoreError> {
        match self.batches.get(id.as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// Every batch, newest first.
    pub fn batches(&self) -> Result<Vec<Batch>, StoreError> {
        let mut all: Vec<Batch> = self
            .batches
            .iter()
            .values()
            .map(|v| Ok(serde_json::from_slice::<Batch>(&v?)?))
            .collect::<Result<_, StoreError>>()?;
        all.sort_by_key(|b| std::cmp::Reverse(b.closed_at_ms));
        Ok(all)
    }
}
