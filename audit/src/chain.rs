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
    let mut prev = [0u8; 32];
    for (i, e) in entries.iter().enumerate() {
        if e.seq != i as u64 {
            return Err(problem(
                i,
                format!(
                    "sequence number {} where {i} was due (entries dropped, reordered or inserted)",
                    e.seq
                ),
            ));
        }
        if e.prev != prev {
            return Err(problem(
                i,
                "previous-entry hash does not match (entries dropped, reordered or altered)",
            ));
        }
        if !e.verify_signature(writer) {
            return Err(problem(
                i,
                "signature does not verify under the writer's identity key",
            ));
        }
        e.json().map_err(|why| problem(i, why))?;
        prev = e.hash();
    }
    let first = entries.first().ok_or_else(|| problem(0, "empty log"))?;
    if first.kind != GENESIS {
        return Err(problem(
            0,
            format!("first entry is {:?}, not {GENESIS:?}", first.kind),
        ));
    }
    let g: Genesis = serde_json::from_slice(&first.body)
        .map_err(|e| problem(0, format!("genesis body: {e}")))?;
    let id = hex::decode(&g.identity).map_err(|_| problem(0, "genesis identity is not hex"))?;
    if id.len() != 64 || id[..32] != writer[..] {
        return Err(problem(
            0,
            "genesis names another identity than the writer's",
        ));
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
