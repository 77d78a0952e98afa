//! What the registry tells the daemon's audit integrity check
//! ([`crate::audit::integrity`]): the seal this process writes entries
//! with, the numbers it committed, and where a node's numbers are.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::StoreError;
use crate::audit::seal::Sealer;

/// One of a node's numbers as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    /// The number in the node's sequence.
    pub number: u64,
    /// Its place in the log; `None` while it waits in a queue.
    pub place: Option<u64>,
    /// The canonical entry (`None` for a decision an earlier build queued).
    pub entry: Option<Vec<u8>>,
}

/// A node's audit numbers and seals, as this process and the database
/// know them.
pub trait AuditNumbers {
    /// Seals every audit entry this process writes from now on with
    /// `sealer` (the daemon and the operator's tool do; without one,
    /// entries are written unsealed). The first sealer set stays.
    fn seal_audit_with(&self, sealer: Arc<Sealer>);
    /// The sealer set, if any.
    fn audit_sealer(&self) -> Option<Arc<Sealer>>;
    /// Numbers of `node` this process committed that the integrity check
    /// has not yet found in the log.
    fn audit_committed(&self, node: &str) -> BTreeSet<u64>;
    /// Forgets committed numbers the check found.
    fn audit_found(&self, node: &str, numbers: &BTreeSet<u64>);
    /// `node`'s numbers `from..=to`, placed or queued.
    fn audit_node_entries(
        &self,
        node: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<NodeEntry>, StoreError>;
}
