//! A counter of changes to credentials' statuses on this node: whoever
//! changes one (a revocation, a supersession, a key's emergency
//! revocation) bumps it, and a status list signed before the bump is
//! signed again at its next fetch.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Shared by every owner that changes statuses and the publisher.
#[derive(Debug, Clone, Default)]
pub struct StatusChanges(Arc<AtomicU64>);

impl StatusChanges {
    /// Statuses changed: lists signed before now are stale.
    pub fn bump(&self) {
        let _ = self.0.fetch_add(1, Ordering::AcqRel);
    }

    /// The count so far.
    pub fn current(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}
