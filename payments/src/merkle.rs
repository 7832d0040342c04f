//! The commitment of a settlement batch to its payments: a SHA-256 Merkle tree with
//! domain-separated leaves and nodes.
//!
//! - leaf  = `TaggedHash("custody/v1/settlement-leaf", payment bytes)` (see
//!   [`crate::model::Payment::leaf_bytes`]);
//! - node  = `TaggedHash("custody/v1/settlement-node", left, right)`;
//! - a level with an odd count carries its last hash up unchanged (never duplicated, so
//!   no two different leaf lists share a root the way Bitcoin's duplication allows);
//! - the root of zero leaves does not exist (a batch is never empty).
//!
//! An inclusion proof lists, from the leaf up, each sibling and which side it is on.

use custody_protocol::hash::TaggedHash;
use serde::{Deserialize, Serialize};

/// A leaf hash.
pub fn leaf(bytes: &[u8]) -> [u8; 32] {
    TaggedHash::new("custody/v1/settlement-leaf")
        .part(bytes)
        .finish()
}

fn node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    TaggedHash::new("custody/v1/settlement-node")
        .part(left)
        .part(right)
        .finish()
}

/// One step of a proof: the sibling hash, and whether it is on the left.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The sibling, hex.
    pub sibling: String,
    /// Whether the sibling is the left child.
    pub left: bool,
}

/// The root of `leaves` (None when empty).
pub fn root(leaves: &[[u8; 32]]) -> Option<[u8; 32]> {
    let mut level = leaves.to_vec();
    if level.is_empty() {
        return None;
    }
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|c| {
                if c.len() == 2 {
                    node(&c[0], &c[1])
                } else {
                    c[0]
                }
            })
            .collect();
    }
    Some(level[0])
}

/// The proof that leaf `index` is in the tree of `leaves`.
pub fn proof(leaves: &[[u8; 32]], mut index: usize) -> Option<Vec<Step>> {
    if index >= leaves.len() {
        return None;
    }
    let mut level = leaves.to_vec();
    let mut steps = Vec::new();
    while level.len() > 1 {
        let sibling = index ^ 1;
        if sibling < level.len() {
            steps.push(Step {
                sibling: hex::encode(level[sibling]),
                left: sibling < index,
            });
        }
        level = level
            .chunks(2)
            .map(|c| {
                if c.len() == 2 {
                    node(&c[0], &c[1])
                } else {
                    c[0]
                }
            })
            .collect();
        index /= 2;
    }
    Some(steps)
}

/// Whether `steps` lead from `leaf` to `root`.
pub fn verify(leaf: &[u8; 32], steps: &[Step], root: &[u8; 32]) -> bool {
    let mut h = *leaf;
    for s in steps {
        let Some(sib) = hex::decode(&s.sibling)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
        else {
            return false;
        };
        h = if s.left {
            node(&sib, &h)
        } else {
            node(&h, &sib)
        };
    }
    h == *root
}

/// Whether `steps` have the shape of the proof of leaf `index` among `count` leaves:
/// one step per level where the leaf's node has a sibling, each on the side its
/// position says. Binds a proof's claimed index to its path.
pub fn shape_matches(steps: &[Step], mut index: u64, count: u64) -> bool {
    if index >= count {
        return false;
    }
    let mut len = count;
    let mut expected = Vec::new();
    while len > 1 {
        let sibling = index ^ 1;
        if sibling < len {
            expected.push(sibling < index);
        }
        index /= 2;
        len = len.div_ceil(2);
    }
    expected.len() == steps.len() && expected.iter().zip(steps).all(|(l, s)| *l == s.left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_proof_has_the_shape_of_its_index_and_no_other() {
        for count in 1..70usize {
            let leaves: Vec<[u8; 32]> = (0..count).map(|i| leaf(&[i as u8])).collect();
            let r = root(&leaves).unwrap();
            for i in 0..count {
                let p = proof(&leaves, i).unwrap();
                assert!(verify(&leaves[i], &p, &r));
                assert!(shape_matches(&p, i as u64, count as u64));
                for j in (0..count).filter(|j| *j != i) {
                    assert!(
                        !shape_matches(&p, j as u64, count as u64),
                        "{i} vs {j} of {count}"
                    );
                }
                assert!(!shape_matches(&p, count as u64, count as u64));
            }
        }
    }
}
