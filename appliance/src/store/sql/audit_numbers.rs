//! [`AuditNumbers`] over a driver: the process's numbering and the log's
//! (and on PostgreSQL the queue's) rows of one node.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::tx::{Driver, SqlRegistry, args};
use crate::audit::seal::Sealer;
use crate::store::{AuditNumbers, NodeEntry, StoreError};

impl<D: Driver> AuditNumbers for SqlRegistry<D> {
    fn seal_audit_with(&self, sealer: Arc<Sealer>) {
        self.driver.numbering().set_sealer(sealer);
    }

    fn audit_sealer(&self) -> Option<Arc<Sealer>> {
        self.driver.numbering().sealer().cloned()
    }

    fn audit_committed(&self, node: &str) -> BTreeSet<u64> {
        self.driver.numbering().committed(node)
    }

    fn audit_found(&self, node: &str, numbers: &BTreeSet<u64>) {
        self.driver.numbering().found(node, numbers);
    }

    fn audit_node_entries(
        &self,
        node: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<NodeEntry>, StoreError> {
        // One statement: a decision moving from the queue to the log
        // meanwhile is seen in one of them, never in neither.
        let sql = if D::KIND == "postgres" {
            "SELECT node_seq, seq, entry FROM audit_log
               WHERE node = $1 AND node_seq >= $2 AND node_seq <= $3
             UNION ALL
             SELECT node_seq, NULL, entry FROM audit_queue
               WHERE node = $1 AND node_seq >= $2 AND node_seq <= $3"
        } else {
            "SELECT node_seq, seq, entry FROM audit_log
               WHERE node = $1 AND node_seq >= $2 AND node_seq <= $3"
        };
        self.driver.read(|tx| {
            tx.query(sql, args![node, from, to])?
                .iter()
                .map(|row| {
                    Ok(NodeEntry {
                        number: row.count(0)?,
                        place: row.opt_int(1)?.map(|p| p as u64),
                        entry: row.opt_blob(2)?,
                    })
                })
                .collect()
        })
    }
}
