//! One audit log entry and the hash chain that links entries.
//!
//! Record layout (all integers big-endian), as stored on disk and exported:
//!
//! | size | field |
//! |---|---|
//! | 4 | `len`: length of everything after this field |
//! | 1 | format version, `1` |
//! | 8 | `seq`: 0 for the first entry, then +1 |
//! | 8 | `time_ms`: writer's clock, milliseconds since the Unix epoch |
//! | 32 | `prev`: hash of the previous entry, all zero for `seq` 0 |
//! | 1 | kind length `k` (1..=64) |
//! | k | kind, ASCII `[a-z0-9-]` |
//! | 4 | body length `b` (at most [`MAX_BODY`]) |
//! | b | body: a UTF-8 JSON object |
//! | 64 | Ed25519 signature by the writer's identity key |
//!
//! The entry's *signed bytes* are `"custody/v1/audit-entry\0"` followed by everything
//! from the version to the end of the body; the signature is over them
//! (`verify_strict`), and the entry's *hash* is `SHA-256(signed bytes)`, which the next
//! entry carries as `prev`.

use sha2::{Digest, Sha256};

/// Format version of an entry.
pub const ENTRY_VERSION: u8 = 1;
/// Domain separation prefix of the signed bytes.
pub const ENTRY_DOMAIN: &[u8] = b"custody/v1/audit-entry\0";
/// Largest body (8 MiB: a signing transcript with a 1 MiB message, hex-encoded).
pub const MAX_BODY: usize = 8 << 20;
/// Longest kind.
pub const MAX_KIND: usize = 64;
/// Fixed bytes of a record besides kind and body.
const FIXED: usize = 1 + 8 + 8 + 32 + 1 + 4 + 64;
/// The longest a record can be after its 4-byte length (readers bound their buffers
/// by it).
pub const MAX_RECORD: usize = FIXED + MAX_KIND + MAX_BODY;

/// A decoded entry.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Entry {
    /// Position in the log.
    pub seq: u64,
    /// Writer's clock, ms since the epoch.
    pub time_ms: u64,
    /// Hash of the previous entry.
    pub prev: [u8; 32],
    /// What happened (`signature`, `key-created`, …).
    pub kind: String,
    /// Details, a JSON object.
    pub body: Vec<u8>,
    /// Writer's signature over [`Entry::signed_bytes`].
    pub sig: [u8; 64],
}

/// Why bytes are not a well-formed record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The bytes end inside a record.
    #[error("truncated record (needs {needed} bytes, {available} left)")]
    Truncated {
        /// Bytes the record claims.
        needed: usize,
        /// Bytes left.
        available: usize,
    },
    /// A field is out of range.
    #[error("malformed record: {0}")]
    Malformed(String),
}

fn valid_kind(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= MAX_KIND
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Entry {
    /// Builds the signed bytes of an entry that is not signed yet.
    pub fn signed_bytes_of(
        seq: u64,
        time_ms: u64,
        prev: &[u8; 32],
        kind: &str,
        body: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENTRY_DOMAIN.len() + FIXED + kind.len() + body.len());
        out.extend_from_slice(ENTRY_DOMAIN);
        out.push(ENTRY_VERSION);
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&time_ms.to_be_bytes());
        out.extend_from_slice(prev);
        out.push(kind.len() as u8);
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    /// What the writer signs.
    pub fn signed_bytes(&self) -> Vec<u8> {
        Self::signed_bytes_of(self.seq, self.time_ms, &self.prev, &self.kind, &self.body)
    }

    /// The entry's hash (the next entry's `prev`).
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.signed_bytes()).into()
    }

    /// Checks kind and body limits (what every writer must respect).
    pub fn check_fields(kind: &str, body: &[u8]) -> Result<(), FormatError> {
        if !valid_kind(kind) {
            return Err(FormatError::Malformed(format!("invalid kind {kind:?}")));
        }
        if body.len() > MAX_BODY {
            return Err(FormatError::Malformed(format!(
                "body of {} bytes exceeds {MAX_BODY}",
                body.len()
            )));
        }
        Ok(())
    }

    /// The record: `u32 len ‖ version ‖ … ‖ body ‖ signature`.
    pub fn to_record(&self) -> Vec<u8> {
        let signed = self.signed_bytes();
        let rest = &signed[ENTRY_DOMAIN.len()..];
        let mut out = Vec::with_capacity(4 + rest.len() + 64);
        out.extend_from_slice(&((rest.len() + 64) as u32).to_be_bytes());
        out.extend_from_slice(rest);
        out.extend_from_slice(&self.sig);
        out
    }

    /// Decodes the record at the front of `bytes`; returns it and the bytes it used.
    pub fn from_record(bytes: &[u8]) -> Result<(Entry, usize), FormatError> {
        let take = |at: usize, n: usize| -> Result<&[u8], FormatError> {
            bytes.get(at..at + n).ok_or(FormatError::Truncated {
                needed: at + n,
                available: bytes.len(),
            })
        };
        let len = u32::from_be_bytes(take(0, 4)?.try_into().expect("4 bytes")) as usize;
        if !(FIXED + 1..=MAX_RECORD).contains(&len) {
            return Err(FormatError::Malformed(format!("record length {len}")));
        }
        let rec = take(4, len)?;
        let total = 4 + len;
        let mut at = 0usize;
        let mut next = |n: usize| -> Result<&[u8], FormatError> {
            let s = rec
                .get(at..at + n)
                .ok_or_else(|| FormatError::Malformed("fields overrun the record".into()))?;
            at += n;
            Ok(s)
        };
        let version = next(1)?[0];
        if version != ENTRY_VERSION {
            return Err(FormatError::Malformed(format!("version {version}")));
        }
        let seq = u64::from_be_bytes(next(8)?.try_into().expect("8 bytes"));
        let time_ms = u64::from_be_bytes(next(8)?.try_into().expect("8 bytes"));
        let prev: [u8; 32] = next(32)?.try_into().expect("32 bytes");
        let klen = next(1)?[0] as usize;
        let kind = std::str::from_utf8(next(klen)?)
            .map_err(|_| FormatError::Malformed("kind is not ASCII".into()))?
            .to_string();
        let blen = u32::from_be_bytes(next(4)?.try_into().expect("4 bytes")) as usize;
        let body = next(blen)?.to_vec();
        Entry::check_fields(&kind, &body)?;
        if std::str::from_utf8(&body).is_err() {
            return Err(FormatError::Malformed("body is not UTF-8".into()));
        }
        let sig: [u8; 64] = next(64)?.try_into().expect("64 bytes");
        if at != rec.len() {
            return Err(FormatError::Malformed(format!(
                "{} trailing bytes in the record",
                rec.len() - at
            )));
        }
        Ok((
            Entry {
                seq,
                time_ms,
                prev,
                kind,
                body,
                sig,
            },
            total,
        ))
    }

    /// Checks the signature with the writer's Ed25519 key.
    pub fn verify_signature(&self, writer: &[u8; 32]) -> bool {
        let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(writer) else {
            return false;
        };
        vk.verify_strict(
            &self.signed_bytes(),
            &ed25519_dalek::Signature::from_bytes(&self.sig),
        )
        .is_ok()
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("body is not JSON: {e}"))
    }
}

/// Splits a log into records (without checking the chain or signatures).
pub fn parse_records(mut bytes: &[u8]) -> Result<Vec<Entry>, (usize, FormatError)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (e, used) = Entry::from_record(bytes).map_err(|err| (out.len(), err))?;
        out.push(e);
        bytes = &bytes[used..];
    }
    Ok(out)
}
