//! [`AuditTrail`]: this node's side of the audit log. Entries are appended
//! by the registry in the same transaction as what they record (so there
//! is no unaudited signature); the trail places queued entries, signs
//! checkpoints with the audit key in force (co-signed by the outgoing key
//! after a rotation), and answers auditors ([`super::auditor`]).

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use super::checkpoint::Checkpoint;
use super::log::{AuditLog, Signers};
use crate::config::AuditSettings;
use crate::keys::manager::KeyManager;
use crate::node::{LoadError, Node};

/// The audit log on this node.
pub struct AuditTrail {
    pub(super) node: Node,
    keys: Arc<KeyManager>,
    log: AuditLog,
    integrity: super::integrity::Integrity,
    settings: AuditSettings,
    witnesses: super::witnessing::Witnesses,
}

impl AuditTrail {
    /// The trail of the log named `settings.origin`.
    pub fn new(
        node: Node,
        keys: Arc<KeyManager>,
        settings: AuditSettings,
    ) -> Result<Self, LoadError> {
        Ok(AuditTrail {
            log: AuditLog::new(&settings.origin).map_err(LoadError)?,
            witnesses: super::witnessing::Witnesses::new(&settings)?,
            integrity: super::integrity::Integrity::new(&node.id),
            node,
            keys,
            settings,
        })
    }

    /// Signs a checkpoint if the log grew; logs a failure (the next round
    /// retries).
    pub fn checkpoint(&self) -> Option<u64> {
        let view = self.keys.view();
        let Some((label, key)) = view.audit_key_at(OffsetDateTime::now_utc()) else {
            tracing::warn!("no audit key can sign a checkpoint");
            return None;
        };
        // The first checkpoint after a rotation is co-signed by the key that
        // signed the one before: auditors follow the hand-over.
        let previous_signers = self
            .node
            .registry
            .latest_checkpoint()
            .ok()
            .flatten()
            .map(|(_, note)| Checkpoint::signer_ids_named(&note, &self.settings.origin))
            .unwrap_or_default();
        let outgoing = (!previous_signers.is_empty() && !previous_signers.contains(&key.id()))
            .then(|| {
                view.audit_cosigners
                    .iter()
                    .find(|(l, k)| l != label && previous_signers.contains(&k.id()))
                    .map(|(l, k)| (l.as_str(), k))
            })
            .flatten();
        if outgoing.is_none()
            && !previous_signers.is_empty()
            && !previous_signers.contains(&key.id())
        {
            // The outgoing key is revoked or gone: auditors who pinned the
            // old key cannot follow; they need the new one from officers.
            tracing::warn!(
                label,
                "no key can hand the audit log over to the new audit key: auditors must be given it"
            );
        }
        let known = self.known_audit_keys();
        let signers = Signers {
            current: (label, key),
            outgoing,
            known: &known,
        };
        match self.log.checkpoint(
            self.node.backend,
            self.node.registry.as_ref(),
            &signers,
            Some(&self.integrity),
        ) {
            Ok(size) => {
                self.node.metrics.audit_log_rewritten.set(0);
                if let Some(size) = size {
                    self.node
                        .metrics
                        .audit_checkpoint_size
                        .set(i64::try_from(size).unwrap_or(i64::MAX));
                }
                size
            }
            Err(e) => {
                if matches!(
                    e,
                    super::log::AuditError::Rewritten(_) | super::log::AuditError::Tampered(_)
                ) {
                    self.node.metrics.audit_log_rewritten.set(1);
                }
                tracing::warn!(error = %e, "audit checkpoint failed");
                None
            }
        }
    }

    /// Every audit key the registry records, as notes name them (the
    /// stored checkpoints' possible signers).
    fn known_audit_keys(&self) -> Vec<super::checkpoint::NoteKey> {
        let keys = self.node.registry.keys().unwrap_or_default();
        keys.iter()
            .filter(|k| k.chain == crate::store::AUDIT_CHAIN)
            .filter_map(|k| pkcs11_shim::PublicKey::from_spki_der(&k.public_key).ok())
            .filter_map(|public| {
                super::checkpoint::NoteKey::new(&self.settings.origin, public).ok()
            })
            .collect()
    }

    /// Whether the log has witnesses.
    pub fn has_witnesses(&self) -> bool {
        self.witnesses.any()
    }

    /// Sends the latest checkpoint to the witnesses that have not
    /// cosigned it (see [`super::witnessing`]).
    pub fn witness(&self) {
        self.witnesses
            .round(self.node.registry.as_ref(), &self.node.metrics);
    }

    /// Whether the latest checkpoint has its witnesses' quorum, and what
    /// they said (`None`: no witnesses configured).
    pub fn witness_status(&self) -> Option<(bool, String)> {
        self.witnesses.status()
    }

    /// Places recorded decisions in the log (a no-op where the store places
    /// them as they commit); failures are logged and retried next round.
    pub fn sequence(&self) {
        if let Err(e) = self.node.registry.sequence_audit() {
            tracing::warn!(error = %e, "sequencing audit entries failed");
        }
    }

    /// Whether a checkpoint is due: `checkpoint_entries` uncovered entries,
    /// or any after `checkpoint_interval_ms`.
    pub fn due(&self, since_last: Duration) -> bool {
        let size = self.node.registry.audit_size().unwrap_or(0);
        let covered = self
            .node
            .registry
            .latest_checkpoint()
            .ok()
            .flatten()
            .map_or(0, |(s, _)| s);
        let interval = since_last >= Duration::from_millis(self.settings.checkpoint_interval_ms);
        // A checkpoint beyond the log is a rewrite: the round reports it.
        (covered > size && interval)
            || (size > covered && (size - covered >= self.settings.checkpoint_entries || interval))
    }
}
