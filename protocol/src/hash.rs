//! Domain-separated hashing.
//!
//! Every hash the engine computes is `SHA-256(u32 len(tag) ‖ tag ‖ (u32 len(part) ‖
//! part)*)`: the tag names the purpose (`"custody/v1/…"`), each part is length-prefixed,
//! so no input of one purpose or one split of parts collides with another. Callers bind
//! the session id as one of the parts.

use sha2::{Digest, Sha256};

/// A tagged, length-prefixed hash builder.
#[derive(Debug, Clone)]
pub struct TaggedHash(Sha256);

impl TaggedHash {
    /// Starts a hash for purpose `tag`.
    pub fn new(tag: &str) -> Self {
        let mut h = Sha256::new();
        h.update((tag.len() as u32).to_be_bytes());
        h.update(tag.as_bytes());
        TaggedHash(h)
    }

    /// Adds one length-prefixed part.
    pub fn part(mut self, data: &[u8]) -> Self {
        self.0.update((data.len() as u32).to_be_bytes());
        self.0.update(data);
        self
    }

    /// The digest.
    pub fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}
