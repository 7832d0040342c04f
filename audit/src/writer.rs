//! The append-only log file a daemon writes, with group commit.
//!
//! [`AuditLog::append`] returns only after the entry is signed, written and on disk
//! (`fdatasync`): a daemon appends *before* it acknowledges what the entry records,
//! and refuses the action when the append fails. One thread owns the file; entries
//! that arrive while it syncs are written and synced together, so concurrent
//! requests share one `fdatasync`. After any write error the log is *failed*: every
//! later append fails too (what reached the disk is unknown) until the daemon restarts
//! and [`AuditLog::open`] re-reads the file.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use custody_protocol::Identity;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::chain::{ExportSeal, Genesis, EXPORT, GENESIS};
use crate::entry::{Entry, FormatError};

/// The identity a log is signed with.
pub type SharedIdentity = Arc<dyn Identity + Send + Sync>;

/// Most entries written per `fdatasync`.
const MAX_GROUP: usize = 512;

/// Why an append or an open failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// The file could not be read, written or synced.
    #[error("audit log {path}: {why}")]
    Io {
        /// The log file.
        path: String,
        /// The I/O error.
        why: String,
    },
    /// An earlier write failed; nothing more is accepted until restart.
    #[error(
        "audit log {path} failed earlier ({why}); nothing is recorded until the daemon restarts"
    )]
    Failed {
        /// The log file.
        path: String,
        /// The first error.
        why: String,
    },
    /// The existing file is not a log this writer can continue.
    #[error("audit log {path} is damaged at entry {index}: {why}")]
    Damaged {
        /// The log file.
        path: String,
        /// The bad entry.
        index: usize,
        /// What is wrong.
        why: String,
    },
    /// The entry is not acceptable (kind or body size).
    #[error("audit entry: {0}")]
    Entry(String),
    /// The identity key could not sign.
    #[error("audit log: identity key cannot sign: {0}")]
    Identity(String),
    /// The writer thread is gone.
    #[error("audit log writer stopped")]
    Stopped,
}

/// Where an appended entry landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Its sequence number.
    pub seq: u64,
    /// Length of the file up to and including it.
    pub end: u64,
}

struct Job {
    kind: String,
    body: Vec<u8>,
    reply: Option<oneshot::Sender<Result<Appended, AuditError>>>,
}

/// Whether everything `reader` has left is zeros.
fn rest_is_zeros(reader: &mut impl Read, path: &Path) -> Result<bool, AuditError> {
    let mut buf = [0u8; 64 << 10];
    loop {
        let n = reader.read(&mut buf).map_err(|e| io(path, e))?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
    }
}

/// An entry handed to the writer ([`AuditLog::append_started`]): resolves once it is
/// on disk (or failed).
#[derive(Debug)]
#[must_use = "the entry is durable only once this resolves"]
pub struct PendingAppend(oneshot::Receiver<Result<Appended, AuditError>>);

impl std::future::Future for PendingAppend {
    type Output = Result<Appended, AuditError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(AuditError::Stopped)))
    }
}

/// What [`AuditLog::open`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// Entries already in the file.
    pub entries: u64,
    /// Bytes of an incomplete last record cut off (a write interrupted by a crash;
    /// never acknowledged).
    pub truncated_tail: usize,
}

/// An append-only, hash-chained, signed log file.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Job>,
    path: PathBuf,
    counts: Arc<Counts>,
}

/// What the writer did since the log was opened (for metrics).
#[derive(Debug, Default)]
struct Counts {
    appended: AtomicU64,
    failed: AtomicU64,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish()
    }
}

struct State {
    file: File,
    path: PathBuf,
    identity: SharedIdentity,
    next_seq: u64,
    prev: [u8; 32],
    len: u64,
    failed: Option<String>,
    counts: Arc<Counts>,
}

fn io(path: &Path, e: impl std::fmt::Display) -> AuditError {
    AuditError::Io {
        path: path.display().to_string(),
        why: e.to_string(),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl AuditLog {
    /// Opens (or creates, with its genesis entry) the log at `path`, checks that it is
    /// a chain this `identity` signed, cuts off an incomplete last record, and starts
    /// the writer thread.
    pub fn open(
        path: &Path,
        identity: SharedIdentity,
        writer: &str,
        role: &str,
    ) -> Result<(AuditLog, Opened), AuditError> {
        Self::open_visiting(path, identity, writer, role, &mut |_| {})
    }

    /// Like [`AuditLog::open`], and shows `visit` every entry already in the file, in
    /// order, as the chain is checked (a daemon rebuilds what its log holds and its
    /// database lost). Use what it saw only if the open succeeds.
    pub fn open_visiting(
        path: &Path,
        identity: SharedIdentity,
        writer: &str,
        role: &str,
        visit: &mut dyn FnMut(&Entry),
    ) -> Result<(AuditLog, Opened), AuditError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io(path, e))?;
        Self::open_inner(path, file, identity, writer, role, visit)
    }

    /// Like [`AuditLog::open`] on a file the caller opened (positioned anywhere; it
    /// must be readable). Tests open a log read-only to get a disk that refuses writes.
    pub fn open_file(
        path: &Path,
        file: File,
        identity: SharedIdentity,
        writer: &str,
        role: &str,
    ) -> Result<(AuditLog, Opened), AuditError> {
        Self::open_inner(path, file, identity, writer, role, &mut |_| {})
    }

    fn open_inner(
        path: &Path,
        mut file: File,
        identity: SharedIdentity,
        writer: &str,
        role: &str,
        visit: &mut dyn FnMut(&Entry),
    ) -> Result<(AuditLog, Opened), AuditError> {
        // Read record by record (a log of years does not fit in memory), with the
        // rules of a whole-file parse: a record cut short at the end of the file, or a
        // malformed one followed only by zeros (where the file grew before its data
        // landed: a crash inside an unacknowledged write), is a torn tail; anything
        // else malformed is damage.
        file.seek(SeekFrom::Start(0)).map_err(|e| io(path, e))?;
        let file_len = file.metadata().map_err(|e| io(path, e))?.len();
        let damaged = |index: usize, why: String| AuditError::Damaged {
            path: path.display().to_string(),
            index,
            why,
        };
        let mut at = 0u64;
        let mut prev = [0u8; 32];
        let mut last: Option<Entry> = None;
        let mut count = 0u64;
        let mut truncated_tail = 0usize;
        {
            let mut reader = std::io::BufReader::with_capacity(1 << 20, &file);
            let mut rec: Vec<u8> = Vec::new();
            while at < file_len {
                let remaining = file_len - at;
                let head = remaining.min(4) as usize;
                rec.clear();
                rec.resize(head, 0);
                reader.read_exact(&mut rec).map_err(|e| io(path, e))?;
                if head == 4 {
                    let len = u32::from_be_bytes(rec[..4].try_into().expect("4 bytes")) as u64;
                    // A length the format refuses is judged before the body is read.
                    let body = if len as usize <= crate::entry::MAX_RECORD {
                        len.min(remaining - 4) as usize
                    } else {
                        0
                    };
                    rec.resize(4 + body, 0);
                    reader.read_exact(&mut rec[4..]).map_err(|e| io(path, e))?;
                }
                match Entry::from_record(&rec) {
                    Ok((e, used)) => {
                        if e.seq != count || e.prev != prev {
                            return Err(damaged(count as usize, "chain broken".into()));
                        }
                        prev = e.hash();
                        count += 1;
                        at += used as u64;
                        visit(&e);
                        last = Some(e);
                    }
                    Err(FormatError::Truncated { .. }) => {
                        truncated_tail = remaining as usize;
                        break;
                    }
                    Err(_) if rec.iter().all(|b| *b == 0) && rest_is_zeros(&mut reader, path)? => {
                        truncated_tail = remaining as usize;
                        break;
                    }
                    Err(e) => return Err(damaged(count as usize, e.to_string())),
                }
            }
        }
        let me = identity.public();
        if let Some(e) = &last {
            if !e.verify_signature(&me.verify) {
                return Err(damaged(
                    count as usize - 1,
                    "last entry is not signed by this daemon's identity".into(),
                ));
            }
        }
        if truncated_tail > 0 {
            file.set_len(at).map_err(|e| io(path, e))?;
            file.sync_data().map_err(|e| io(path, e))?;
            tracing::warn!(path = %path.display(), bytes = truncated_tail, "audit log: cut off an incomplete last record (a write interrupted by a crash)");
        }
        file.seek(SeekFrom::Start(at)).map_err(|e| io(path, e))?;
        let mut state = State {
            file,
            path: path.to_path_buf(),
            identity,
            next_seq: count,
            prev,
            len: at,
            failed: None,
            counts: Arc::new(Counts::default()),
        };
        if count == 0 {
            let genesis = Genesis {
                writer: writer.to_string(),
                role: role.to_string(),
                identity: hex::encode(me.to_bytes()),
            };
            let body =
                serde_json::to_vec(&genesis).map_err(|e| AuditError::Entry(e.to_string()))?;
            let mut jobs = vec![Job {
                kind: GENESIS.into(),
                body,
                reply: None,
            }];
            state.write(&mut jobs)?;
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let counts = state.counts.clone();
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || state.run(rx))
            .map_err(|e| io(path, e))?;
        Ok((
            AuditLog {
                tx,
                path: path.to_path_buf(),
                counts,
            },
            Opened {
                entries: count,
                truncated_tail,
            },
        ))
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Entries written durably since the log was opened, and entries refused (a write
    /// error, or a log that failed earlier).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.counts.appended.load(Ordering::Relaxed),
            self.counts.failed.load(Ordering::Relaxed),
        )
    }

    fn send(
        &self,
        kind: &str,
        body: Vec<u8>,
        reply: Option<oneshot::Sender<Result<Appended, AuditError>>>,
    ) -> Result<(), AuditError> {
        Entry::check_fields(kind, &body).map_err(|e| AuditError::Entry(e.to_string()))?;
        self.tx
            .send(Job {
                kind: kind.to_string(),
                body,
                reply,
            })
            .map_err(|_| AuditError::Stopped)
    }

    /// Appends an entry and waits until it is on disk.
    pub async fn append<T: Serialize + ?Sized>(
        &self,
        kind: &str,
        body: &T,
    ) -> Result<Appended, AuditError> {
        self.append_started(kind, body)?.await
    }

    /// Hands an entry to the writer now and returns what waits until it is on disk, so
    /// the caller can work while the entry is synced (a signer computes its share
    /// meanwhile, and lets the share leave only once both are done).
    pub fn append_started<T: Serialize + ?Sized>(
        &self,
        kind: &str,
        body: &T,
    ) -> Result<PendingAppend, AuditError> {
        let body = serde_json::to_vec(body).map_err(|e| AuditError::Entry(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        self.send(kind, body, Some(tx))?;
        Ok(PendingAppend(rx))
    }

    /// Appends an entry without waiting (for events that acknowledge nothing, such as a
    /// refused caller). A failure is logged, not returned.
    pub fn record<T: Serialize + ?Sized>(&self, kind: &str, body: &T) {
        let r = serde_json::to_vec(body)
            .map_err(|e| AuditError::Entry(e.to_string()))
            .and_then(|b| self.send(kind, b, None));
        if let Err(e) = r {
            tracing::error!("{e}");
        }
    }

    /// Seals the log with an [`EXPORT`] entry carrying `nonce` and returns every
    /// record up to and including it.
    pub async fn export(&self, nonce: &[u8]) -> Result<Vec<u8>, AuditError> {
        let seal = ExportSeal {
            nonce: hex::encode(nonce),
        };
        let at = self.append(EXPORT, &seal).await?;
        let mut f = File::open(&self.path).map_err(|e| io(&self.path, e))?;
        let mut out = vec![0u8; at.end as usize];
        f.read_exact(&mut out).map_err(|e| io(&self.path, e))?;
        Ok(out)
    }
}

impl State {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            while jobs.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            let _ = self.write(&mut jobs);
        }
    }

    /// Signs, writes and syncs `jobs` as one group, then answers each.
    fn write(&mut self, jobs: &mut [Job]) -> Result<(), AuditError> {
        let result = self.write_group(jobs);
        let counter = if result.is_ok() {
            &self.counts.appended
        } else {
            &self.counts.failed
        };
        counter.fetch_add(jobs.len() as u64, Ordering::Relaxed);
        match &result {
            Ok(ends) => {
                for (job, at) in jobs.iter_mut().zip(ends) {
                    if let Some(r) = job.reply.take() {
                        let _ = r.send(Ok(*at));
                    }
                }
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), "audit log cannot be written: {e}");
                for job in jobs.iter_mut() {
                    if let Some(r) = job.reply.take() {
                        let _ = r.send(Err(e.clone()));
                    }
                }
            }
        }
        result.map(|_| ())
    }

    fn write_group(&mut self, jobs: &[Job]) -> Result<Vec<Appended>, AuditError> {
        if let Some(why) = &self.failed {
            return Err(AuditError::Failed {
                path: self.path.display().to_string(),
                why: why.clone(),
            });
        }
        let mut buf = Vec::new();
        let mut ends = Vec::with_capacity(jobs.len());
        let (mut seq, mut prev, mut len) = (self.next_seq, self.prev, self.len);
        let time_ms = now_ms();
        for job in jobs {
            let signed = Entry::signed_bytes_of(seq, time_ms, &prev, &job.kind, &job.body);
            let sig = self
                .identity
                .sign_raw(&signed)
                .map_err(|e| AuditError::Identity(e.to_string()))?;
            let entry = Entry {
                seq,
                time_ms,
                prev,
                kind: job.kind.clone(),
                body: job.body.clone(),
                sig,
            };
            let rec = entry.to_record();
            len += rec.len() as u64;
            buf.extend_from_slice(&rec);
            ends.push(Appended { seq, end: len });
            prev = entry.hash();
            seq += 1;
        }
        let written = self
            .file
            .write_all(&buf)
            .and_then(|_| self.file.sync_data());
        if let Err(e) = written {
            self.failed = Some(e.to_string());
            return Err(io(&self.path, e));
        }
        self.next_seq = seq;
        self.prev = prev;
        self.len = len;
        Ok(ends)
    }
}
