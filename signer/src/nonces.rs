//! The unused signing nonces of one key share.
//!
//! Nonces live in memory only and die with the process (or the share: a refresh or
//! destruction drops the pool with the key). [`NoncePool::take`] removes the nonces
//! behind a commitment before they are used, so whatever happens next they are gone:
//! a nonce is handed out at most once (property-tested below).

use std::collections::{HashMap, VecDeque};

/// Most unused nonces kept per key.
pub(crate) const MAX_NONCES_PER_KEY: usize = 4096;

/// The unused nonces of one key, by their encoded commitments, oldest first.
///
/// Bounded: when more than [`MAX_NONCES_PER_KEY`] are outstanding (a coordinator that
/// restarted forgets the commitments it held), the oldest are dropped. Dropping a nonce
/// is always safe; the coordinator then gets "unknown commitment" and draws new ones.
#[derive(Debug)]
pub(crate) struct NoncePool<N> {
    by_commitment: HashMap<Vec<u8>, N>,
    order: VecDeque<Vec<u8>>,
}

impl<N> Default for NoncePool<N> {
    fn default() -> Self {
        NoncePool {
            by_commitment: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<N> NoncePool<N> {
    /// Adds freshly drawn nonces, each under its encoded commitment.
    pub fn extend(&mut self, fresh: Vec<(Vec<u8>, N)>) {
        for (tag, nonces) in fresh {
            self.order.push_back(tag.clone());
            self.by_commitment.insert(tag, nonces);
        }
        while self.by_commitment.len() > MAX_NONCES_PER_KEY {
            match self.order.pop_front() {
                Some(old) => {
                    self.by_commitment.remove(&old);
                }
                None => break,
            }
        }
        if self.order.len() > 2 * MAX_NONCES_PER_KEY {
            let live = &self.by_commitment;
            self.order.retain(|t| live.contains_key(t));
        }
    }

    /// Removes and returns the nonces behind `tag`: whatever happens next, they are gone.
    pub fn take(&mut self, tag: &[u8]) -> Option<N> {
        self.by_commitment.remove(tag)
    }

    /// Drops every unused nonce.
    pub fn clear(&mut self) {
        self.by_commitment.clear();
        self.order.clear();
    }

    /// Unused nonces held.
    pub fn len(&self) -> usize {
        self.by_commitment.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        /// The coordinator draws this many commitments.
        Draw(usize),
        /// It asks for a share over the commitment drawn `n`-th (wrapping): any tag,
        /// fresh, used, evicted or from before a restart.
        Sign(usize),
        /// The signer process restarts: nonces live in memory only.
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1usize..1500).prop_map(Op::Draw),
            6 => any::<usize>().prop_map(Op::Sign),
            1 => Just(Op::Restart),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Over any interleaving of draws, signing requests (including repeats and
        /// stale commitments) and restarts, the nonces behind a commitment are handed
        /// out at most once, only if drawn since the last restart and not evicted.
        #[test]
        fn nonces_are_used_at_most_once(ops in proptest::collection::vec(op(), 1..60)) {
            let mut pool = NoncePool::<()>::default();
            let mut drawn: Vec<Vec<u8>> = Vec::new();
            // The model: live tags in drawing order (the oldest are evicted first).
            let mut live: VecDeque<Vec<u8>> = Default::default();
            let mut used = std::collections::HashSet::new();
            let mut next = 0u64;
            for op in ops {
                match op {
                    Op::Draw(k) => {
                        let mut fresh = Vec::new();
                        for _ in 0..k {
                            let tag = next.to_be_bytes().to_vec();
                            next += 1;
                            drawn.push(tag.clone());
                            live.push_back(tag.clone());
                            fresh.push((tag, ()));
                        }
                        pool.extend(fresh);
                        while live.len() > MAX_NONCES_PER_KEY {
                            live.pop_front();
                        }
                    }
                    Op::Sign(i) => {
                        if drawn.is_empty() {
                            continue;
                        }
                        let tag = &drawn[i % drawn.len()];
                        let got = pool.take(tag).is_some();
                        let expected = live.iter().position(|t| t == tag);
                        prop_assert_eq!(got, expected.is_some());
                        if let Some(at) = expected {
                            live.remove(at);
                        }
                        if got {
                            prop_assert!(used.insert(tag.clone()), "a nonce handed out twice");
                        }
                    }
                    Op::Restart => {
                        pool = NoncePool::default();
                        live.clear();
                    }
                }
            }
            prop_assert_eq!(pool.len(), live.len());
        }
    }
}
