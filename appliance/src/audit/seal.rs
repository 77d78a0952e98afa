//! Seals on audit entries: an HMAC, under a key the HSM derives for the
//! entry's node, over the entry's canonical bytes without the seal. A
//! database writer without the HSM cannot make one, so an uncheckpointed
//! entry it edits, renumbers or moves to another node no longer verifies;
//! a deleted one leaves a gap in the node's numbers (see
//! [`super::integrity`]).
//!
//! The node key is `HMAC(response-seal key, "dojang-audit-seal-key-v1\0" ‖
//! node)`, computed once per node name in the HSM (the response-seal key's
//! other use starts `dojang-idempotency-v1\0`: the inputs never collide,
//! and no new key ceremony is needed). Every node of a cluster shares the
//! HSM keys, so any node can check any node's seals.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use pkcs11_shim::KeyBackend;

use super::entry::AuditEntry;

const KEY_CONTEXT: &[u8] = b"dojang-audit-seal-key-v1\0";
const SEAL_CONTEXT: &[u8] = b"dojang-audit-seal-v1\0";

/// Why an entry cannot be sealed or checked.
#[derive(Debug, Clone, thiserror::Error)]
#[error("audit seal key: {0}")]
pub struct SealError(pub String);

type Derive = dyn Fn(&str) -> Result<[u8; 32], SealError> + Send + Sync;

/// Seals entries and checks seals; the node keys are derived once each.
pub struct Sealer {
    derive: Box<Derive>,
    keys: Mutex<HashMap<String, [u8; 32]>>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer")
    }
}

impl Sealer {
    /// Node keys from the HMAC key `label` (purpose `response-seal`).
    pub fn from_hsm(backend: Arc<dyn KeyBackend>, label: &str) -> Arc<Self> {
        let label = label.to_owned();
        Self::with_derivation(Box::new(move |node: &str| {
            let mut input = KEY_CONTEXT.to_vec();
            input.extend_from_slice(node.as_bytes());
            hsm_hmac(backend.as_ref(), &label, &input)
        }))
    }

    /// A sealer whose node keys come from `derive` (the HSM in service;
    /// a fixed function in unit tests of the logic around seals).
    pub fn with_derivation(derive: Box<Derive>) -> Arc<Self> {
        Arc::new(Sealer {
            derive,
            keys: Mutex::new(HashMap::new()),
        })
    }

    fn key(&self, node: &str) -> Result<[u8; 32], SealError> {
        if let Some(key) = self
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(node)
        {
            return Ok(*key);
        }
        let key = (self.derive)(node)?;
        let _ = self
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node.to_owned(), key);
        Ok(key)
    }

    /// The seal of `entry` (whatever seal it carries is left out).
    pub fn seal_of(&self, entry: &AuditEntry) -> Result<[u8; 32], SealError> {
        let key = self.key(&entry.node)?;
        let mut unsealed = entry.clone();
        unsealed.seal = None;
        let mut input = SEAL_CONTEXT.to_vec();
        input.extend_from_slice(&unsealed.encode());
        software_hmac(&key, &input)
    }

    /// `entry` with its seal set.
    pub fn seal(&self, mut entry: AuditEntry) -> Result<AuditEntry, SealError> {
        entry.seal = Some(self.seal_of(&entry)?);
        Ok(entry)
    }

    /// Whether `entry` carries its node's seal over exactly its content.
    pub fn verifies(&self, entry: &AuditEntry) -> Result<bool, SealError> {
        let Some(seal) = entry.seal else {
            return Ok(false);
        };
        let expected = self.seal_of(entry)?;
        Ok(openssl::memcmp::eq(&expected, &seal))
    }
}

// The one place audit seal keys are derived: from the response-seal key,
// under a context no idempotency seal starts with.
#[allow(clippy::disallowed_methods)]
fn hsm_hmac(backend: &dyn KeyBackend, label: &str, input: &[u8]) -> Result<[u8; 32], SealError> {
    backend
        .hmac_sha256(label, pkcs11_shim::KeyPurpose::ResponseSeal, input)
        .map_err(|e| SealError(e.to_string()))
}

// A node key the HSM derived, used in software: one HSM call per node, not
// one per entry.
#[allow(clippy::disallowed_methods)]
fn software_hmac(key: &[u8; 32], input: &[u8]) -> Result<[u8; 32], SealError> {
    pkcs11_shim::digest::hmac_sha256(key, input)
        .ok_or_else(|| SealError("HMAC refused its key".into()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A sealer with keys from a fixed function of the node name.
    pub(crate) fn test_sealer() -> Arc<Sealer> {
        Sealer::with_derivation(Box::new(|node: &str| {
            Ok(pkcs11_shim::digest::sha256(
                format!("test key {node}").as_bytes(),
            ))
        }))
    }

    fn entry() -> AuditEntry {
        AuditEntry {
            time: 1_800_000_000,
            node: "node-a".into(),
            seq: 3,
            actor: "counter".into(),
            action: "issue".into(),
            outcome: "allow".into(),
            ..AuditEntry::default()
        }
    }

    #[test]
    fn a_sealed_entry_verifies_and_any_change_breaks_it() {
        let sealer = test_sealer();
        let sealed = sealer.seal(entry()).unwrap();
        assert!(sealer.verifies(&sealed).unwrap());
        let mut renumbered = sealed.clone();
        renumbered.seq = 4;
        assert!(!sealer.verifies(&renumbered).unwrap());
        let mut edited = sealed.clone();
        edited.outcome = "deny".into();
        assert!(!sealer.verifies(&edited).unwrap());
        // Moved to another node: that node's key does not vouch for it.
        let mut moved = sealed.clone();
        moved.node = "node-b".into();
        assert!(!sealer.verifies(&moved).unwrap());
        let mut unsealed = sealed;
        unsealed.seal = None;
        assert!(!sealer.verifies(&unsealed).unwrap());
    }

    #[test]
    fn node_keys_are_derived_once_each() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let sealer = Sealer::with_derivation(Box::new(move |node: &str| {
            let _ = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(pkcs11_shim::digest::sha256(node.as_bytes()))
        }));
        for _ in 0..3 {
            let _ = sealer.seal(entry()).unwrap();
        }
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
