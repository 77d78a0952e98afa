//! The daemon's side of the audit log. Entries are appended by the registry
//! in the same transaction as what they record (so there is no unaudited
//! signature); this module signs checkpoints over them with the audit key in
//! the HSM and answers auditors' questions (entries, proofs).
//!
//! The tree is rebuilt from the stored leaf hashes: a frontier (O(log n)
//! hashes) follows the log for checkpoints; proofs read the leaves they need.

use std::sync::Mutex;

use pkcs11_shim::KeyBackend;

use crate::audit::checkpoint::{Checkpoint, NoteKey, handover_line};
use crate::audit::merkle::{self, Frontier, Hash};
use crate::store::{Registry, StoreError};

/// Largest page of entries or range of a proof an auditor may ask for at once.
pub const MAX_PAGE: u64 = 1000;
/// Largest tree a proof is computed over by reading its leaves (32 MiB of
/// hashes); beyond it proofs need stored subtree hashes (not built yet).
const MAX_PROOF_TREE: u64 = 1_000_000;

/// One proof at a time: each reads and hashes up to MAX_PROOF_TREE leaves.
static PROOF: Mutex<()> = Mutex::new(());

/// The log as this node sees it.
pub struct AuditLog {
    origin: String,
    frontier: Mutex<Frontier>,
}

/// Who signs a checkpoint: the audit key in force, and the outgoing one on
/// the first checkpoint after a rotation (the hand-over auditors follow).
pub struct Signers<'a> {
    /// The key in force: (label in the token, note key).
    pub current: (&'a str, &'a NoteKey),
    /// The key that signed the previous checkpoint, if it is another one.
    pub outgoing: Option<(&'a str, &'a NoteKey)>,
}

/// An auditor's question that cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The question is malformed or out of range (400/404).
    #[error("{0}")]
    Range(String),
    /// The store failed (503).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another proof is being computed (503).
    #[error("another proof is being computed")]
    Busy,
    /// Signing failed (503).
    #[error("signing a checkpoint: {0}")]
    Signing(String),
}

impl AuditLog {
    /// The log `origin`.
    pub fn new(origin: &str) -> Result<Self, String> {
        if origin.is_empty() || origin.contains(char::is_whitespace) || origin.contains('+') {
            return Err(format!(
                "audit origin {origin:?}: no spaces or '+' (it names the log and its keys)"
            ));
        }
        Ok(AuditLog {
            origin: origin.to_owned(),
            frontier: Mutex::new(Frontier::new()),
        })
    }

    /// The log's origin line.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Signs a checkpoint of the whole log if it grew past the last one;
    /// the new size, if one was signed.
    pub fn checkpoint(
        &self,
        backend: &dyn KeyBackend,
        registry: &dyn Registry,
        signers: &Signers<'_>,
    ) -> Result<Option<u64>, AuditError> {
        let mut frontier = self
            .frontier
            .lock()
            .map_err(|_| AuditError::Signing("frontier lock poisoned".into()))?;
        while registry.sequence_audit()? > 0 {}
        let size = registry.audit_size()?;
        while frontier.size() < size {
            let next = (frontier.size() + MAX_PAGE * 10).min(size);
            for leaf in registry.audit_leaves(frontier.size(), next)? {
                frontier.append(leaf);
            }
            if frontier.size() < next {
                return Err(AuditError::Store(StoreError::Internal(
                    "the audit log has a gap".into(),
                )));
            }
        }
        let last = registry.latest_checkpoint()?.map_or(0, |(s, _)| s);
        if size == 0 || size <= last {
            return Ok(None);
        }
        let checkpoint = Checkpoint {
            origin: self.origin.clone(),
            size,
            root: frontier.root(),
            // The outgoing key signs that the incoming one follows it.
            extensions: signers
                .outgoing
                .map(|_| vec![handover_line(signers.current.1)])
                .unwrap_or_default(),
        };
        let (label, key) = signers.current;
        let mut note = checkpoint
            .sign(backend, label, key)
            .map_err(|e| AuditError::Signing(e.to_string()))?;
        if let Some((label, key)) = signers.outgoing {
            note = Checkpoint::cosign(&note, backend, label, key)
                .map_err(|e| AuditError::Signing(e.to_string()))?;
        }
        registry.add_checkpoint(size, &note)?;
        Ok(Some(size))
    }

    /// The tree size of the latest checkpoint and its signed note.
    pub fn latest(registry: &dyn Registry) -> Result<Option<(u64, String)>, AuditError> {
        Ok(registry.latest_checkpoint()?)
    }

    fn leaves(registry: &dyn Registry, size: u64) -> Result<Vec<Hash>, AuditError> {
        let logged = registry.audit_size()?;
        if size == 0 || size > logged {
            return Err(AuditError::Range(format!(
                "tree size {size} is not in 1..={logged}"
            )));
        }
        if size > MAX_PROOF_TREE {
            return Err(AuditError::Range(format!(
                "proofs over more than {MAX_PROOF_TREE} entries are not served"
            )));
        }
        Ok(registry.audit_leaves(0, size)?)
    }

    /// The inclusion proof of entry `index` in the tree of `size` entries,
    /// with the entry's leaf hash.
    pub fn inclusion(
        registry: &dyn Registry,
        index: u64,
        size: u64,
    ) -> Result<(Hash, Vec<Hash>), AuditError> {
        if index >= size {
            return Err(AuditError::Range(format!(
                "index {index} is not below size {size}"
            )));
        }
        let leaves = Self::leaves(registry, size)?;
        let proof = merkle::inclusion_proof(index as usize, &leaves)
            .ok_or_else(|| AuditError::Range("no such proof".into()))?;
        let leaf = leaves
            .get(index as usize)
            .copied()
            .ok_or_else(|| AuditError::Range("no such entry".into()))?;
        Ok((leaf, proof))
    }

    /// The consistency proof between trees of `from` and `to` entries.
    pub fn consistency(
        registry: &dyn Registry,
        from: u64,
        to: u64,
    ) -> Result<Vec<Hash>, AuditError> {
        if from == 0 || from > to {
            return Err(AuditError::Range(format!(
                "sizes {from} and {to}: need 0 < from <= to"
            )));
        }
        let _one = PROOF.try_lock().map_err(|_| AuditError::Busy)?;
        let leaves = Self::leaves(registry, to)?;
        merkle::consistency_proof(from as usize, &leaves)
            .ok_or_else(|| AuditError::Range("no such proof".into()))
    }
}
