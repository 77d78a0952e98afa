//! [`Reloader`]: what SIGHUP (and an approved policy change, or an IACA
//! generated on another node) reloads, built completely before anything
//! is replaced: the policy file (only if officers adopted it), the IACA
//! and the registry's keys, and the free quota the policy sets.

use std::sync::Arc;

use time::OffsetDateTime;

use crate::keys::manager::KeyManager;
use crate::node::{LoadError, Node};
use crate::officers::Reload;
use crate::policy::PolicyState;

/// Reloads the policy and the keys together.
pub struct Reloader {
    node: Node,
    policy: Arc<PolicyState>,
    keys: Arc<KeyManager>,
}

impl Reloader {
    /// A reloader of these owners.
    pub fn new(node: Node, policy: Arc<PolicyState>, keys: Arc<KeyManager>) -> Self {
        Reloader { node, policy, keys }
    }

    /// Loads everything; swaps only if all of it loaded.
    pub fn reload_now(&self, now: OffsetDateTime) -> Result<(), LoadError> {
        let policy = Arc::new(self.policy.load(now)?);
        self.keys.reload(&policy.hash, now, |view| {
            if let Err(e) = view.signer(now) {
                tracing::warn!(error = %e, "no DS key can sign: issuance refused until one is ready");
            }
            // The one step that can fail comes before the swap.
            self.node
                .registry
                .set_free_quota(policy.free_quota)
                .map_err(|e| LoadError(format!("setting the free quota: {e}")))
        })?;
        self.policy.install(policy);
        Ok(())
    }
}

impl Reload for Reloader {
    fn reload(&self, now: OffsetDateTime) -> Result<(), LoadError> {
        self.reload_now(now)
    }
}
