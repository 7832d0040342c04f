//! Keys loaded for signing, typed by suite.
//!
//! A key's share, policy, state, usage record and unused nonces live together in one
//! [`Loaded<C>`] of its suite; [`AnyKey`] is the closed enum of the two suites (as the
//! coordinator's `AnyKey`), so code generic over the suite gets the share and nonce
//! types it expects by construction, never by a run-time downcast. [`with_key!`]
//! matches an [`AnyKey`] into a block generic over its suite; [`Typed`] goes back.

use std::sync::{Arc, Mutex};

use custody_protocol::{sign, EngineSuite, KeyShare};

use custody_protocol::repair::HelperAwaitingDeltas;

use crate::nonces::NoncePool;
use crate::sessions::{AnyRepair, AnyStage, Stage};
use crate::store::{KeyState, Usage};
pub(crate) use crate::suites::{by_suite, Ed, Secp};

/// A key ready for signing in suite `C`.
#[derive(Debug)]
pub(crate) struct Loaded<C: EngineSuite> {
    /// This signer's share.
    pub share: Arc<KeyShare<C>>,
    /// The policy this signer enforces.
    pub policy: Arc<hot_warm_cold::Policy>,
    /// When the share was stored (Unix seconds).
    pub created_at: u64,
    /// Lifecycle state (only active and rotating keys sign).
    pub state: Arc<Mutex<KeyState>>,
    /// Held while a request is decided and its usage recorded, so concurrent requests
    /// cannot both spend the same budget.
    pub usage: Arc<Mutex<Usage>>,
    /// Unused nonces of this share, by commitment; they die with the share.
    pub nonces: Arc<Mutex<NoncePool<sign::Nonces<C>>>>,
}

impl<C: EngineSuite> Clone for Loaded<C> {
    fn clone(&self) -> Self {
        Loaded {
            share: self.share.clone(),
            policy: self.policy.clone(),
            created_at: self.created_at,
            state: self.state.clone(),
            usage: self.usage.clone(),
            nonces: self.nonces.clone(),
        }
    }
}

impl<C: EngineSuite> Loaded<C> {
    /// A key loaded from its share and stored record.
    pub fn new(
        share: KeyShare<C>,
        policy: hot_warm_cold::Policy,
        created_at: u64,
        state: KeyState,
        usage: Usage,
    ) -> Self {
        Loaded {
            share: Arc::new(share),
            policy: Arc::new(policy),
            created_at,
            state: Arc::new(Mutex::new(state)),
            usage: Arc::new(Mutex::new(usage)),
            nonces: Arc::default(),
        }
    }

    /// The lifecycle state now.
    pub fn state(&self) -> KeyState {
        *self.state.lock().expect("lock")
    }
}

/// A loaded key in its suite.
#[derive(Debug, Clone)]
pub(crate) enum AnyKey {
    /// secp256k1-tr.
    Secp(Loaded<Secp>),
    /// Ed25519.
    Ed(Loaded<Ed>),
}

/// [`by_suite!`] over an [`AnyKey`].
macro_rules! with_key {
    ($k:expr, $C:ident, $v:ident => $body:expr) => {{
        use $crate::keys::AnyKey;
        $crate::suites::by_suite!($k, AnyKey, $C, $v => $body)
    }};
}
pub(crate) use with_key;

impl AnyKey {
    /// The lifecycle state now.
    pub fn state(&self) -> KeyState {
        with_key!(self, C, k => k.state())
    }

    /// Sets the lifecycle state (after it is durable).
    pub fn set_state(&self, state: KeyState) {
        with_key!(self, C, k => *k.state.lock().expect("lock") = state)
    }

    /// The policy.
    pub fn policy(&self) -> Arc<hot_warm_cold::Policy> {
        with_key!(self, C, k => k.policy.clone())
    }

    /// The same key under another policy (state, usage and nonces shared).
    pub fn with_policy(&self, policy: hot_warm_cold::Policy) -> AnyKey {
        with_key!(self, C, k => C::key(Loaded { policy: Arc::new(policy), ..k.clone() }))
    }

    /// This key with `old`'s usage record (the same one, shared): a refreshed share
    /// keeps counting where the old one was, even against a request still admitting
    /// under the old key object.
    pub fn keep_usage_of(self, old: &AnyKey) -> AnyKey {
        match (self, old) {
            (AnyKey::Secp(mut n), AnyKey::Secp(o)) => {
                n.usage = o.usage.clone();
                AnyKey::Secp(n)
            }
            (AnyKey::Ed(mut n), AnyKey::Ed(o)) => {
                n.usage = o.usage.clone();
                AnyKey::Ed(n)
            }
            (n, _) => n,
        }
    }

    /// Drops every unused nonce (the share is being replaced or destroyed).
    pub fn drop_nonces(&self) {
        with_key!(self, C, k => k.nonces.lock().expect("lock").clear())
    }

    /// Unused nonces held.
    pub fn nonces_pooled(&self) -> usize {
        with_key!(self, C, k => k.nonces.lock().expect("lock").len())
    }
}

/// The two suites, each able to wrap its typed values into the closed enums.
pub(crate) trait Typed: EngineSuite {
    /// A loaded key of this suite.
    fn key(k: Loaded<Self>) -> AnyKey;
    /// A DKG stage of this suite.
    fn stage(s: Stage<Self>) -> AnyStage;
    /// A repair helper's state of this suite.
    fn repair(s: HelperAwaitingDeltas<Self>) -> AnyRepair;
}

impl Typed for Secp {
    fn key(k: Loaded<Self>) -> AnyKey {
        AnyKey::Secp(k)
    }
    fn stage(s: Stage<Self>) -> AnyStage {
        AnyStage::Secp(s)
    }
    fn repair(s: HelperAwaitingDeltas<Self>) -> AnyRepair {
        AnyRepair::Secp(s)
    }
}

impl Typed for Ed {
    fn key(k: Loaded<Self>) -> AnyKey {
        AnyKey::Ed(k)
    }
    fn stage(s: Stage<Self>) -> AnyStage {
        AnyStage::Ed(s)
    }
    fn repair(s: HelperAwaitingDeltas<Self>) -> AnyRepair {
        AnyRepair::Ed(s)
    }
}
