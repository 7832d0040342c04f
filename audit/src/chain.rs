//! Verifying a whole log: records, sequence, hash chain, signatures, genesis and the
//! export seal.

use serde::{Deserialize, Serialize};

use crate::entry::{parse_records, Entry};

/// Kind of the first entry of every log.
pub const GENESIS: &str = "log-opened";
/// Kind of the entry a writer appends when it exports its log; an exported log must
/// end with one carrying the export's nonce.
pub const EXPORT: &str = "audit-export";

/// Body of the [`GENESIS`] entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    /// The writer's name (`coordinator`, `signer-1`, …).
    pub writer: String,
    /// `coordinator` or `signer`.
    pub role: String,
    /// The writer's public identity, hex (64 bytes: Ed25519 verifying key, X25519 key).
    pub identity: String,
}

/// Body of the [`EXPORT`] entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSeal {
    /// The nonce the exporter chose, hex.
    pub nonce: String,
}

/// The first thing wrong with a log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LogProblem {
    /// Index of the bad entry (entries are numbered from 0 in file order).
    pub index: usize,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for LogProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "entry {}: {}", self.index, self.reason)
    }
}

fn problem(index: usize, reason: impl Into<String>) -> LogProblem {
    LogProblem {
        index,
        reason: reason.into(),
    }
}

/// Verifies a log written by the holder of Ed25519 key `writer`: every record well
/// formed, `seq` = position, each `prev` the hash of the entry before (zero for the
/// first), every signature valid, the first entry a [`GENESIS`] naming `writer`. When
/// `nonce` is given, the last entry must be an [`EXPORT`] seal with it, so a log cut
/// short (even at an entry boundary) is detected. Returns the entries.
pub fn verify_log(
    bytes: &[u8],
    writer: &[u8; 32],
    nonce: Option<&[u8]>,
) -> Result<Vec<Entry>, LogProblem> {
    let entries = parse_records(bytes).map_err(|(i, e)| problem(i, e.to_string()))?;
    let mut f = Follower::new(*writer);
    for e in &entries {
        f.check(e)?;
    }
    if entries.is_empty() {
        return Err(problem(0, "empty log"));
    }
    if let Some(nonce) = nonce {
        let last = entries.len() - 1;
        let e = &entries[last];
        if e.kind != EXPORT {
            return Err(problem(
                last,
                format!(
                    "log does not end with the export seal (last entry is {:?}): truncated",
                    e.kind
                ),
            ));
        }
        let seal: ExportSeal = serde_json::from_slice(&e.body)
            .map_err(|err| problem(last, format!("export seal: {err}")))?;
        if hex::decode(&seal.nonce).ok().as_deref() != Some(nonce) {
            return Err(problem(
                last,
                "export seal carries another nonce than this export's (an older export)",
            ));
        }
    }
    Ok(entries)
}

/// Checks a log entry by entry, in order, as it grows (what [`verify_log`] does for a
/// whole file; the operator console follows the live log with it).
#[derive(Clone, Debug)]
pub struct Follower {
    writer: [u8; 32],
    next: u64,
    prev: [u8; 32],
}

impl Follower {
    /// A follower of the log of the holder of Ed25519 key `writer`, before its first
    /// entry.
    pub fn new(writer: [u8; 32]) -> Follower {
        Follower {
            writer,
            next: 0,
            prev: [0; 32],
        }
    }

    /// Entries checked so far.
    pub fn count(&self) -> u64 {
        self.next
    }

    /// Checks `e` as the next entry: its sequence number, the previous entry's hash,
    /// its signature, a JSON body and, for the first, a [`GENESIS`] naming the writer.
    pub fn check(&mut self, e: &Entry) -> Result<(), LogProblem> {
        let i = self.next as usize;
        if e.seq != self.next {
            return Err(problem(
                i,
                format!(
                    "sequence number {} where {i} was due (entries dropped, reordered or inserted)",
                    e.seq
                ),
            ));
        }
        if e.prev != self.prev {
            return Err(problem(
                i,
                "previous-entry hash does not match (entries dropped, reordered or altered)",
            ));
        }
        if !e.verify_signature(&self.writer) {
            return Err(problem(
                i,
                "signature does not verify under the writer's identity key",
            ));
        }
        e.json().map_err(|why| problem(i, why))?;
        if i == 0 {
            if e.kind != GENESIS {
                return Err(problem(
                    0,
                    format!("first entry is {:?}, not {GENESIS:?}", e.kind),
                ));
            }
            let g: Genesis = serde_json::from_slice(&e.body)
                .map_err(|err| problem(0, format!("genesis body: {err}")))?;
            let id =
                hex::decode(&g.identity).map_err(|_| problem(0, "genesis identity is not hex"))?;
            if id.len() != 64 || id[..32] != self.writer[..] {
                return Err(problem(
                    0,
                    "genesis names another identity than the writer's",
                ));
            }
        }
        self.prev = e.hash();
        self.next += 1;
        Ok(())
    }
}
